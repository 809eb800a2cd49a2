//! A standalone server that speaks MiniMax's video generation wire protocol.
//!
//! The sandbox is reelgate's stand-in for the paid MiniMax API: `reelgate sim` runs it for
//! developers, `reelgate serve` starts it in-process when no MiniMax account is configured, and
//! every test of the engine uses it as the upstream. It is an independent implementation of the
//! protocol described in `reference/minimax.md` and shares no types with the engine's client.
//!
//! # Endpoints
//!
//! | endpoint | what it does |
//! |---|---|
//! | `POST /v1/video_generation` | create a task: `{"task_id": "<18 digits>", "base_resp": {...}}` |
//! | `GET /v1/query/video_generation?task_id=` | `Preparing` → `Queueing` → `Processing` → `Success` / `Fail` |
//! | `GET /v1/files/retrieve?file_id=` | the file object with `download_url` and `backup_download_url` |
//! | `GET /sandbox/files/{file_id}/output.mp4?Expires=&OSSAccessKeyId=&Signature=` | primary download link |
//! | `GET /sandbox/backup/{file_id}/output.mp4?…` | backup download link (same file, other path) |
//! | `GET /sandbox/stats` | our own JSON counters, see [`SandboxStats`] |
//!
//! Business errors are HTTP 200 with a non-zero `base_resp.status_code`, as MiniMax answers.
//! Every response carries a `Trace-Id` header. On an error, create answers `task_id: ""`, query
//! answers `{"task_id", "base_resp"}` without a status, retrieve answers `{"base_resp"}` only.
//! A task or file id that is unknown or belongs to another key answers 2013
//! `invalid params, task not found` / `invalid params, file not found`.
//!
//! # Timeline
//!
//! A task spends 10% of its latency in `Preparing`, 20% in `Queueing`, the rest in `Processing`,
//! then is `Success` (or `Fail`). The latency is [`SandboxConfig::latency_ms`], else 10 s
//! (`reelgate sim` fills it from `REELGATE_SANDBOX_LATENCY_MS`). Status is computed from the
//! clock on each query: nothing runs per task. Before `Success`, a query answers `file_id: ""`,
//! `video_width: 0`, `video_height: 0`; then the real file id (a string) and the output size.
//! The file is rendered on first retrieve/download, once per distinct request (cached on disk).
//!
//! # Restarts
//!
//! With [`SandboxConfig::data_dir`] set, every task is written to `<data_dir>/tasks/` and synced
//! before the create call answers, and a sandbox started on the same directory restores them: a
//! task stays queryable by its key and its file retrievable, and its status keeps following the
//! time since its original creation. Records older than [`SandboxConfig::task_retention_secs`]
//! are deleted at start. Scripted `xN` counts, rate-limit windows, stats and the download-link
//! secret start afresh. Without a data directory tasks live in memory only.
//!
//! # Authentication and key suffixes
//!
//! `Authorization: Bearer <key>`. No or empty key: 1004 `login fail: Please carry the API secret
//! key in the 'Authorization' field of the request header`. If [`SandboxConfig::keys`] is empty any
//! non-empty key is accepted, otherwise an unlisted key answers 2049 `invalid api key`. A task is
//! visible only to the key that created it. Keys with these suffixes script account problems
//! (and are accepted even when not listed):
//!
//! | key suffix | effect |
//! |---|---|
//! | `-insufficient-balance` | every create answers 1008 `insufficient balance` |
//! | `-invalid-key` | every call answers 2049 `invalid api key` |
//! | `-usage-limit` | every create answers 2056 `usage limit exceeded` |
//!
//! # Rate limit
//!
//! Creates are limited per key to [`SandboxConfig::rpm`] in any sliding 60 s window (default 20);
//! an excess create answers 1002 `rate limit` and does not enter the window. Queries and retrieves
//! do not count, unless [`SandboxConfig::query_rpm`] sets a separate limit for them.
//!
//! # Prompt markers
//!
//! A marker in the prompt scripts a fault for that one job. `xN` repeats it N times (default once),
//! counted per exact prompt for create faults (retries must resend the same prompt; a create
//! refused with 1002 by the rate limit does not count) and per task for the others. Create faults chain in the order they appear:
//! `[sandbox:http-502][sandbox:transient-1000]` gives a 502, then a 1000, then a task.
//! An unknown marker is refused with 2013 so that a typo cannot pass silently.
//!
//! | marker | effect |
//! |---|---|
//! | `[sandbox:fail-1026]` | every create answers 1026 `input new_sensitive` (any known code works: `fail-1008`, …) |
//! | `[sandbox:fail-1027]` | the task ends `Fail` with 1027 `output new_sensitive` |
//! | `[sandbox:task-fail-CODE]` | the task ends `Fail` with CODE (e.g. 1000, 1024) |
//! | `[sandbox:transient-CODE]`, `…xN` | the first N creates answer CODE (e.g. 1000, 1002, 1013), then a task |
//! | `[sandbox:http-502]`, `…xN` | the first N creates answer HTTP 502 with an nginx HTML page (any 4xx/5xx) |
//! | `[sandbox:hang]`, `…xN` | the first N creates never answer (the connection is held until the client gives up) |
//! | `[sandbox:malformed-json]`, `…xN` | the first N queries of the task answer a JSON body cut in half |
//! | `[sandbox:query-error-CODE]`, `…xN` | the first N queries of the task answer CODE |
//! | `[sandbox:retrieve-error-CODE]`, `…xN` | the first N retrieves of the file answer CODE |
//! | `[sandbox:expired-link]`, `…xN` | the first N retrieves hand out links that are already expired (403 XML) |
//! | `[sandbox:truncated-download]`, `…xN` | the first N downloads stop half way (Content-Length announces all) |
//! | `[sandbox:slow]`, `[sandbox:slowxN]` | the task takes 5 (or N) times the configured latency |
//! | `[sandbox:stuck]` | the task never leaves `Processing` |
//!
//! Counts saturate at 255 per task: `xN` with N ≥ 255 means "always".
//! Random faults of the same kinds are configured in [`FaultConfig`] (with an optional seed).
//!
//! # Callbacks
//!
//! With `callback_url`, the create call first POSTs `{"challenge": "<random>"}` and needs the same
//! value echoed as JSON within 3 s, else the create answers 2013 `invalid params, fail to check
//! callback url`. Then the sandbox POSTs `processing` and `success` / `failed` (lower case) with
//! the query shape minus the sizes: `{"task_id", "status", "file_id", "base_resp"}`. Pushes are not
//! retried.
//!
//! # Stats
//!
//! `GET /sandbox/stats` (no authentication) serves [`SandboxStats`] as JSON, e.g.
//!
//! ```text
//! {"creates_total": 6, "creates_rate_limited": 2, "max_creates_in_window": 3, "tasks_created": 4,
//!  "queries_total": 10, "retrieves_total": 0, "downloads_total": 0, "renders": 0,
//!  "callback_handshakes": 0, "callback_pushes": 0, "callback_push_failures": 0,
//!  "keys": {"test-key": {"creates_total": 5, "creates_rate_limited": 2, "max_creates_in_window": 3,
//!                        "tasks_created": 3, "queries_total": 10, "retrieves_total": 0,
//!                        "queries_rate_limited": 0}, …}}
//! ```
//!
//! `max_creates_in_window` is the largest number of admitted creates in any 60 s window: a client
//! that respects an RPM budget keeps it at or below that budget. Sandbox keys are fixtures, not
//! secrets, so they appear in full.
//!
//! # Downloads
//!
//! Links are signed (HMAC-SHA256 with a per-process secret) and expire after
//! [`SandboxConfig::link_ttl_secs`] (1 h). A bad signature or an expired link answers 403 with an
//! OSS-style XML body; `Range` requests answer 206 or 416.

#![forbid(unsafe_code)]

mod api;
mod callback;
mod config;
mod images;
mod limits;
mod links;
mod markers;
mod pushes;
mod renderer;
mod rules;
mod saved;
mod tasks;
mod videos;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use rand::{RngCore as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{FaultConfig, SandboxConfig, DEFAULT_LATENCY_MS, LATENCY_ENV};
pub use limits::{KeyStats, SandboxStats};

/// A running sandbox server. [`Sandbox::shutdown`] stops it and waits; dropping it stops it
/// without waiting.
pub struct Sandbox {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<api::Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    pusher: JoinHandle<()>,
    /// The default data directory, removed when the sandbox is dropped.
    _temp_dir: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Starts serving on `listener` (bind port 0 in tests) and returns once it accepts requests.
    pub async fn start(config: SandboxConfig, listener: tokio::net::TcpListener) -> anyhow::Result<Sandbox> {
        let addr = listener.local_addr().context("sandbox listener has no local address")?;
        let (temp_dir, data_dir) = match &config.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let t = tempfile::Builder::new().prefix("reelgate-sandbox-").tempdir()?;
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let base_url = match &config.public_base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let mut rng = match config.faults.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        let table_rng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        let mut secret = [0u8; 32];
        // The signing secret is never seeded: links from one run must not verify in another.
        rand::rng().fill_bytes(&mut secret);

        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent("reelgate-sandbox")
            .build()
            .context("building the sandbox HTTP client")?;
        let limiter = Arc::new(limits::Limiter::new(config.rpm, config.query_rpm));
        let images = Arc::new(
            images::ImageStore::new(data_dir.join("images"), http.clone(), config.max_image_fetch_bytes)
                .with_context(|| format!("creating {}", data_dir.join("images").display()))?,
        );
        let videos = Arc::new(
            videos::VideoCache::new(
                data_dir.join("videos"),
                images.clone(),
                config.effective_render_concurrency(),
                limiter.clone(),
            )
            .with_context(|| format!("creating {}", data_dir.join("videos").display()))?,
        );
        // Tasks are kept only where they can outlive this process: a temporary directory is
        // removed with it.
        let (saved, records) = match &config.data_dir {
            Some(dir) => {
                let dir = dir.join("tasks");
                let keep_after = tasks::unix_now_ms().saturating_sub(config.task_retention_secs.saturating_mul(1000));
                let (files, records) = tokio::task::spawn_blocking(move || {
                    let files = saved::TaskFiles::open(dir.clone())?;
                    let records = files.load(keep_after)?;
                    Ok::<_, std::io::Error>((files, records))
                })
                .await
                .context("loading the sandbox's tasks")?
                .with_context(|| format!("loading the sandbox's tasks from {}", data_dir.join("tasks").display()))?;
                (Some(Arc::new(files)), records)
            }
            None => (None, Vec::new()),
        };
        let now_unix_ms = tasks::unix_now_ms();
        let past_ms = records.iter().map(|r| now_unix_ms.saturating_sub(r.created_unix_ms)).max().unwrap_or(0);
        let (stop, stopped) = watch::channel(false);
        let latency_ms = config.effective_latency_ms();
        let shared = Arc::new(api::Shared::new(api::Parts {
            config,
            latency_ms,
            base_url: base_url.clone(),
            past_ms,
            tasks: tasks::TaskTable::new(table_rng),
            saved,
            limiter,
            images,
            videos,
            signer: links::Signer::new(secret),
            http,
            rng,
            shutdown: stopped.clone(),
        }));

        let restored = restore(&shared, records);
        if restored > 0 {
            tracing::info!(tasks = restored, "sandbox restored the tasks of earlier runs");
        }

        let pusher = tokio::spawn(pushes::run(shared.clone(), stopped.clone()));
        let app = api::router(shared.clone());
        let mut server_stop = stopped;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Sandbox { addr, base_url, shared, stop, server, pusher, _temp_dir: temp_dir })
    }

    /// The URL clients should use as the MiniMax host, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The total latency each task takes (before jitter and `[sandbox:slow]`), in ms.
    pub fn latency_ms(&self) -> u64 {
        self.shared.latency_ms
    }

    /// A snapshot of the counters also served at `GET /sandbox/stats`.
    pub fn stats(&self) -> SandboxStats {
        self.shared.limiter.stats()
    }

    /// Number of tasks known: created since start, plus those restored from the data directory.
    pub fn task_count(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Stops accepting requests, releases hung ones, and waits for the server to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        match (&mut self.server).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "sandbox server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "sandbox server task failed"),
            Ok(Ok(())) => {}
        }
        let _ = (&mut self.pusher).await;
    }
}

/// Puts tasks kept from earlier runs back into the table, on their original time line, and
/// queues the callback pushes still ahead of them; returns how many were restored.
///
/// A push whose moment passed while the sandbox was down is not sent: pushes are never retried
/// anyway, and a client polls.
fn restore(shared: &api::Shared, records: Vec<saved::TaskRecord>) -> usize {
    let now = shared.clock.now_ms();
    let mut restored = 0;
    for r in records {
        let image = |i: &Option<saved::SavedImage>| i.as_ref().map(|i| i.to_ref().ok_or(())).transpose();
        let (Some(digest), Ok(first), Ok(last)) =
            (saved::unhex32(&r.key_sha256), image(&r.first_frame), image(&r.last_frame))
        else {
            tracing::warn!(task.id = r.task_id, "sandbox skipped a task record with a malformed hash");
            continue;
        };
        let spec = tasks::RenderSpec {
            width: r.width,
            height: r.height,
            seconds: r.seconds,
            prompt: shared.tasks.intern_prompt(&r.prompt),
            first_frame: first,
            last_frame: last,
        };
        // Faults are the prompt's markers, parsed as at create; the drawn ones are in the record.
        let faults = markers::parse(&r.prompt).ok().and_then(|m| m.task_faults());
        let has_callback = r.callback_url.is_some();
        let new = tasks::NewTask {
            owner: shared.owner_of_digest(digest),
            created_ms: shared.clock.ms_of_unix(r.created_unix_ms),
            latency_ms: r.latency_ms,
            spec,
            fail_code: r.fail_code,
            faults,
            callback_url: r.callback_url,
        };
        if !shared.tasks.restore(r.task_id, r.file_id, new) {
            tracing::warn!(task.id = r.task_id, "sandbox skipped a task record whose ids are taken");
            continue;
        }
        restored += 1;
        if has_callback {
            let due = shared.tasks.with_task(r.task_id, None, |t, _| (t.processing_at(), t.done_at()));
            match due {
                Some((processing, _)) if processing > now => {
                    shared.pusher.schedule(processing, r.task_id, callback::Stage::Processing)
                }
                Some((_, Some(done))) if done > now => {
                    shared.pusher.schedule(done, r.task_id, callback::Stage::Terminal)
                }
                _ => {}
            }
        }
    }
    restored
}

impl Drop for Sandbox {
    /// A dropped sandbox stops serving too (without waiting): its temporary data directory is
    /// about to be removed, so it could not render anything any more.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
