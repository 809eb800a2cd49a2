//! The HTTP surface: MiniMax's three endpoints, the signed download links, and our own
//! `/sandbox/stats`. This module owns the shared state, authentication and the `Trace-Id`
//! header; one file per endpoint family does the rest.
//!
//! Authentication mirrors MiniMax: a missing or malformed `Authorization` header is 1004 with the
//! real login-fail text, an unknown key is 2049, and both travel as HTTP 200 with `base_resp`.

mod create;
mod files;
mod query;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng as _;
use tokio::sync::watch;

use crate::callback::Pusher;
use crate::config::SandboxConfig;
use crate::images::ImageStore;
use crate::limits::Limiter;
use crate::links::Signer;
use crate::saved::TaskFiles;
use crate::tasks::{Clock, TaskTable};
use crate::videos::VideoCache;
use crate::wire::{self, BaseResp};

/// Largest create body accepted: two 20 MB images as base64 data URLs fit.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Key suffixes that script account-level failures (documented in the crate doc).
const KEY_FAULTS: [(&str, i64); 3] = [
    ("-insufficient-balance", wire::INSUFFICIENT_BALANCE),
    ("-invalid-key", wire::INVALID_API_KEY),
    ("-usage-limit", wire::USAGE_LIMIT),
];

/// Everything the handlers share.
pub struct Shared {
    pub config: SandboxConfig,
    pub latency_ms: u64,
    pub base_url: String,
    pub clock: Clock,
    pub tasks: TaskTable,
    /// Where tasks are kept across restarts; None with a temporary data directory.
    pub saved: Option<Arc<TaskFiles>>,
    pub limiter: Arc<Limiter>,
    pub images: Arc<ImageStore>,
    pub videos: Arc<VideoCache>,
    pub signer: Signer,
    pub pusher: Pusher,
    pub http: reqwest::Client,
    /// Fault RNG (seeded from `faults.seed` when set).
    pub rng: Mutex<rand::rngs::StdRng>,
    /// Owner ids by key digest, for the keys seen so far: a task remembers a u32, not the key,
    /// and a kept task remembers the digest (see `saved`).
    owners: Mutex<HashMap<[u8; 32], u32>>,
    /// Create attempts per exact prompt, only for prompts that carry create markers.
    pub attempts: Mutex<HashMap<String, u64>>,
    /// Flips to true on shutdown; hung requests wait on it.
    pub shutdown: watch::Receiver<bool>,
}

/// The parts of [`Shared`] that `Sandbox::start` builds before the state exists.
pub struct Parts {
    pub config: SandboxConfig,
    pub latency_ms: u64,
    pub base_url: String,
    /// How far back the clock's time line reaches, for tasks kept from an earlier run.
    pub past_ms: u64,
    pub tasks: TaskTable,
    pub saved: Option<Arc<TaskFiles>>,
    pub limiter: Arc<Limiter>,
    pub images: Arc<ImageStore>,
    pub videos: Arc<VideoCache>,
    pub signer: Signer,
    pub http: reqwest::Client,
    pub rng: rand::rngs::StdRng,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(p: Parts) -> Self {
        Shared {
            config: p.config,
            latency_ms: p.latency_ms,
            base_url: p.base_url,
            clock: Clock::new(p.past_ms),
            tasks: p.tasks,
            saved: p.saved,
            limiter: p.limiter,
            images: p.images,
            videos: p.videos,
            signer: p.signer,
            pusher: Pusher::default(),
            http: p.http,
            rng: Mutex::new(p.rng),
            owners: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            shutdown: p.shutdown,
        }
    }

    /// True with probability `p` (never when `p` is 0, without touching the RNG).
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("rng lock poisoned only by a panic inside it").random::<f64>() < p
    }

    /// The owner id of a key, assigned on first sight.
    pub fn owner(&self, key: &str) -> u32 {
        self.owner_of_digest(key_digest(key))
    }

    /// The owner id of a key's SHA-256 digest, assigned on first sight.
    pub fn owner_of_digest(&self, digest: [u8; 32]) -> u32 {
        let mut owners = self.owners.lock().expect("owner lock poisoned only by a panic inside it");
        let next = owners.len() as u32;
        *owners.entry(digest).or_insert(next)
    }

    /// Waits until the sandbox shuts down.
    pub async fn until_shutdown(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The SHA-256 digest of a bearer key.
pub fn key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// The sandbox's router over its shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/video_generation", post(create::create_video).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
        .route("/v1/query/video_generation", get(query::query_video))
        .route("/v1/files/retrieve", get(files::retrieve_file))
        .route("/sandbox/files/{file_id}/output.mp4", get(files::download_primary))
        .route("/sandbox/backup/{file_id}/output.mp4", get(files::download_backup))
        .route("/sandbox/stats", get(get_stats))
        .layer(axum::middleware::map_response(add_trace_id))
        .with_state(shared)
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Json<crate::SandboxStats> {
    Json(shared.limiter.stats())
}

/// Every answer carries a `Trace-Id`, which MiniMax's own client reads for error reports.
async fn add_trace_id(mut response: Response) -> Response {
    let id = crate::images::hex(&rand::random::<[u8; 16]>());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("trace-id", value);
    }
    response
}

/// Checks the bearer key: Ok(key) or the `base_resp` to answer with.
pub fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<String, BaseResp> {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| BaseResp::new(wire::AUTH_FAILED, wire::LOGIN_FAIL_MSG))?;
    if key.ends_with("-invalid-key") {
        return Err(BaseResp::code(wire::INVALID_API_KEY));
    }
    // Fault keys are accepted even when not listed, so a test needs no extra configuration.
    let fault_key = KEY_FAULTS.iter().any(|(suffix, _)| key.ends_with(suffix));
    if !fault_key && !shared.config.keys.is_empty() && !shared.config.keys.iter().any(|k| k == key) {
        return Err(BaseResp::code(wire::INVALID_API_KEY));
    }
    Ok(key.to_owned())
}

/// The account-level fault a key's suffix scripts for create calls, if any.
pub fn key_fault(key: &str) -> Option<BaseResp> {
    KEY_FAULTS.iter().find(|(suffix, _)| key.ends_with(suffix)).map(|&(_, code)| BaseResp::code(code))
}

/// A JSON answer with HTTP 200, MiniMax's way for successes and business errors alike.
pub fn ok_json(body: &impl serde::Serialize) -> Response {
    Json(body).into_response()
}
