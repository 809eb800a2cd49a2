//! Configuration: a typed struct loaded from the built-in defaults, an optional file
//! and `REELGATE_*` environment variables, then validated as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domain::{Catalog, PriceOverrides};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The built-in defaults, every setting commented.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database and result files; created on first start.
    pub data_dir: PathBuf,
    /// A `postgres://` URL: keep state in PostgreSQL, shared by every node given the same
    /// URL, instead of SQLite in the data directory (`REELGATE_DATABASE_URL`).
    #[serde(default)]
    pub database_url: Option<DatabaseUrl>,
    /// Optional TOML file overriding credit prices.
    #[serde(default)]
    pub catalog_file: Option<PathBuf>,
    /// Defaults for new accounts.
    pub accounts: AccountDefaults,
    /// API key handling.
    pub auth: AuthConfig,
    /// Request limits.
    pub limits: Limits,
    /// Connections: timeouts, limits and the shutdown deadline.
    pub server: ServerConfig,
    /// Requests per second per API key.
    pub rate_limits: RateLimitConfig,
    /// Outbound HTTP: whether it goes through a proxy.
    pub egress: EgressConfig,
    /// The job engine.
    pub engine: EngineConfig,
    /// MiniMax accounts; none means the built-in sandbox.
    pub minimax: MiniMaxConfig,
    /// Client webhook delivery.
    pub webhooks: WebhookConfig,
    /// Where result videos are stored.
    pub results: ResultsConfig,
    /// Files clients upload (`POST /v2/uploads`).
    pub uploads: UploadsConfig,
    /// Job event streams (`GET /v2/jobs/{id}/events`, `GET /v2/jobs/events`).
    pub events: EventsConfig,
    /// The Prometheus endpoint, `GET /metrics`.
    pub metrics: MetricsConfig,
    /// The operator's admin API and console.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The operator's admin API (`/admin/v1`) and console (`/admin`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API and console only on this address (e.g. a private interface),
    /// and not on `listen`; unset serves them on `listen` with the public API.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// The Prometheus endpoint, `GET /metrics`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A token scrapers must send as `Authorization: Bearer <token>`; empty leaves
    /// `/metrics` open to anyone who can reach the port.
    pub bearer_token: SecretString,
}

/// Job event streams.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Milliseconds a token from `POST /v2/jobs/events/token` opens streams.
    pub token_ttl_ms: u64,
    /// Milliseconds between a stream's own re-reads of its jobs, which cover a change
    /// whose announcement was lost (a node that crashed between its commit and its
    /// announcement).
    pub recheck_ms: u64,
}

/// Files clients upload (`POST /v2/uploads`), kept in the result store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// Seconds an uploaded file stays fetchable and usable in jobs; then it is deleted.
    pub ttl_secs: u64,
    /// How often expired uploads are deleted, in milliseconds.
    pub reap_interval_ms: u64,
    /// How long an upload body may take to arrive in full, however steadily it trickles.
    pub body_deadline_ms: u64,
}

/// Where result videos are stored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// `fs` (files under `<data_dir>/results/`) or `s3` (an S3-compatible bucket).
    pub backend: ResultsBackend,
    /// The bucket, for `backend = "s3"`.
    pub s3: S3Config,
}

/// Which [`ResultStore`](crate::results::ResultStore) holds result videos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultsBackend {
    /// Files in the data directory.
    Fs,
    /// An S3-compatible object store.
    S3,
}

/// What a completed job's `videoUrl` points at when results are in S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoUrls {
    /// reelgate's own URL; reelgate streams the video from the bucket (Range supported).
    Proxy,
    /// A presigned GET URL for the object, made on every read of the job.
    Presigned,
}

/// An S3-compatible bucket for result videos.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket name (required for `backend = "s3"`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// The service URL, for S3-compatible servers (MinIO, Ceph, R2, ...); unset means
    /// AWS. `http://` is allowed for loopback hosts only.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket's region (request signatures include it).
    pub region: String,
    /// Access key id; unset: the `AWS_ACCESS_KEY_ID` environment variable.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; unset: the `AWS_SECRET_ACCESS_KEY` environment variable. Never logged.
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Put before `<job id>.mp4` to make each object's key, e.g. `results/`.
    pub prefix: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) instead of the host name
    /// (`bucket.endpoint/key`). Most self-hosted servers need this.
    pub path_style: bool,
    /// `proxy`: `videoUrl` is reelgate's own URL. `presigned`: a presigned URL of the
    /// object, so clients download straight from the bucket.
    pub video_urls: VideoUrls,
    /// How long a presigned URL stays valid, in seconds (at most 604800, 7 days).
    pub presigned_url_ttl_secs: u64,
}

/// The longest validity S3 accepts for a presigned URL (SigV4: 7 days).
pub const MAX_PRESIGNED_URL_TTL_SECS: u64 = 7 * 24 * 3600;

/// A PostgreSQL connection URL: a secret (it may carry a password), printed with the
/// password left out so logs still show which database is meant.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// The URL, password included, for connecting.
    pub fn as_str(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(SecretString::from(url))
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for DatabaseUrl {}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres://user:password@host/... → postgres://user:<redacted>@host/...
        let url = self.as_str();
        let redacted = match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let credentials = &url[scheme_end + 3..at];
                match credentials.find(':') {
                    Some(colon) => {
                        format!("{}{}:<redacted>{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..])
                    }
                    None => url.to_owned(),
                }
            }
            _ => url.to_owned(),
        };
        write!(f, "{redacted:?}")
    }
}

/// Client webhook delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Deliver webhooks from this process (runs with the engine).
    pub enabled: bool,
    /// Delay before each attempt, the first one included; after the last, give up.
    pub retry_schedule_ms: Vec<u64>,
    /// An attempt that has not answered 2xx by then has failed.
    pub timeout_ms: u64,
    /// Attempts in flight at once.
    pub max_concurrent: usize,
    /// Attempts in flight at once to one destination (scheme, host and port).
    pub max_per_destination: usize,
    /// Longest `Retry-After` honoured on 429 and 503.
    pub max_retry_after_ms: u64,
}

/// The job engine: scheduling, polling, retries and result storage.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Run the engine in this process.
    pub enabled: bool,
    /// This server's public URL as clients and MiniMax reach it. Result URLs are built
    /// from it, and when set MiniMax is also given a callback URL on it.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Delay before a submitted task is first polled.
    pub first_poll_delay_ms: u64,
    /// Delay between polls of a running task.
    pub poll_interval_ms: u64,
    /// A job not finished this long after the engine took it fails with a refund.
    pub job_deadline_ms: u64,
    /// Timeout of one create call (MiniMax's callback handshake happens inside it).
    pub submit_timeout_ms: u64,
    /// Timeout of one query or retrieve call.
    pub query_timeout_ms: u64,
    /// Timeout of one result download.
    pub download_timeout_ms: u64,
    /// Create calls tried for one job before it fails with a refund.
    pub max_submit_attempts: u32,
    /// Download attempts for one result before the job fails with a refund.
    pub max_download_attempts: u32,
    /// First retry delay after a transient error; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Largest retry delay.
    pub retry_max_ms: u64,
    /// How long a MiniMax account with an account problem (bad key, no balance, plan
    /// quota) stays out of rotation before it is tried again.
    pub account_cooloff_ms: u64,
    /// Create calls in flight at once.
    pub max_concurrent_submits: usize,
    /// Polls in flight at once.
    pub max_concurrent_polls: usize,
    /// Result downloads in flight at once.
    pub max_concurrent_downloads: usize,
    /// Let client-supplied URLs (input images, webhooks) reach loopback and private
    /// addresses (`REELGATE_ENGINE__ALLOW_PRIVATE_URLS`; the older
    /// `REELGATE_ALLOW_PRIVATE_URLS=1` still works, deprecated).
    pub allow_private_urls: bool,
    /// Largest input image fetched from a URL, in bytes (MiniMax's limit is 20 MB).
    pub max_input_image_bytes: u64,
    /// Largest result video accepted, in bytes.
    pub max_result_bytes: u64,
    /// Days a result video is kept before the reaper deletes it and marks the job expired.
    pub result_retention_days: u32,
}

/// MiniMax accounts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiniMaxConfig {
    /// The accounts jobs are spread over. Empty: run the built-in sandbox in-process (on
    /// PostgreSQL, on one node at a time; see `claim_builtin_sandbox`).
    #[serde(default)]
    pub accounts: Vec<MiniMaxAccount>,
    /// Total generation time of a sandbox task (built-in sandbox only).
    pub sandbox_latency_ms: u64,
    /// Create calls per minute the built-in sandbox allows.
    pub sandbox_create_rpm: u32,
}

/// One MiniMax account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiniMaxAccount {
    /// A name for logs and metrics.
    pub name: String,
    /// The API key (Bearer). Never logged.
    pub api_key: SecretString,
    /// `https://api.minimax.io` (international) or `https://api.minimaxi.com` (China);
    /// keys are bound to their region.
    #[serde(default = "default_minimax_base_url")]
    pub base_url: String,
    /// Create calls allowed per minute (MiniMax allows as few as 5-20).
    #[serde(default = "default_create_rpm")]
    pub create_rpm: u32,
    /// Tasks allowed in flight upstream at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Query and retrieve calls allowed per minute.
    #[serde(default = "default_query_rpm")]
    pub query_rpm: u32,
}

fn default_minimax_base_url() -> String {
    "https://api.minimax.io".into()
}
fn default_create_rpm() -> u32 {
    20
}
fn default_max_in_flight() -> u32 {
    50
}
fn default_query_rpm() -> u32 {
    600
}

/// Defaults for new accounts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountDefaults {
    /// Plan label shown in GET /v2/me for new accounts.
    pub default_plan: String,
    /// Jobs an account may have in PROCESSING at once.
    pub default_max_concurrent_jobs: u32,
}

/// API key handling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a looked-up API key is trusted before it is read again.
    pub key_cache_ttl_ms: u64,
}

/// Connections: timeouts, limits and the shutdown deadline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// How long a client may take to send a request's headers, counted from when the
    /// connection starts waiting for a request; so an idle keep-alive connection is
    /// closed after this long too.
    pub header_read_timeout_ms: u64,
    /// How long a request body may go without delivering any bytes.
    pub body_read_timeout_ms: u64,
    /// How long a JSON request body (at most `limits.max_body_bytes`) may take to
    /// arrive in full, however steadily it trickles; also bounds reading an unread body
    /// away before an early answer.
    pub body_deadline_ms: u64,
    /// A connection on which nothing is read or written for this long is closed (also
    /// one whose client stopped reading its answer).
    pub idle_timeout_ms: u64,
    /// Open client connections at most; past it new ones wait in the listen backlog
    /// while the open ones are served. Lowered at start to the process's open-file
    /// limit minus 256.
    pub max_connections: usize,
    /// Request headers at most (more: 431).
    pub max_headers: usize,
    /// Bytes of request line and headers at most (more: 431).
    pub max_header_bytes: usize,
    /// Request body bytes read and thrown away so that an early answer (401, 404, 413,
    /// ...) reaches a client that is still sending; past it the connection is closed.
    pub max_discard_bytes: u64,
    /// On SIGTERM, how long open connections may take to finish before they are dropped.
    pub shutdown_grace_ms: u64,
}

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest `POST /v2/uploads` body (the whole multipart body), in bytes.
    pub max_upload_bytes: u64,
    /// How long an Idempotency-Key is remembered, in hours.
    pub idempotency_ttl_hours: u32,
}

/// Requests per second per API key, as token buckets kept by each node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Generate requests (replays of an idempotent one included) per second per key; 0: no limit.
    pub generate_per_sec: u32,
    /// Generate requests a key may send at once after a quiet spell.
    pub generate_burst: u32,
    /// Every other authenticated request (reads, lists, cancels) per second per key; 0: no limit.
    pub read_per_sec: u32,
    /// Other requests a key may send at once after a quiet spell.
    pub read_burst: u32,
}

/// Outbound HTTP requests (MiniMax, input images, webhooks, result downloads, S3).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Send every outbound request through this proxy (`http://` or `https://`). Unset: no proxy, whatever `HTTP_PROXY`, `HTTPS_PROXY` or
    /// `ALL_PROXY` say. With a proxy the SSRF guard checks only IP-literal URLs; the
    /// proxy must refuse private destinations itself.
    #[serde(default)]
    pub proxy_url: Option<String>,
}

impl std::fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A proxy URL may carry credentials; print it the way database URLs are printed.
        f.debug_struct("EgressConfig").field("proxy_url", &self.proxy_url.clone().map(DatabaseUrl::from)).finish()
    }
}

impl Limits {
    /// The oldest creation time (unix ms) an Idempotency-Key may have at `now_ms` and
    /// still replay its job; older keys are forgotten.
    pub fn idempotency_window_start_ms(&self, now_ms: i64) -> i64 {
        now_ms - i64::from(self.idempotency_ttl_hours) * 3_600_000
    }
}

/// Configuration that cannot be loaded or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values parse but contradict a rule.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Applies the environment variables of earlier versions that name settings without
/// their section, when the current name is not set as well (it wins):
/// `REELGATE_ALLOW_PRIVATE_URLS` (now `REELGATE_ENGINE__ALLOW_PRIVATE_URLS`) and
/// `REELGATE_SANDBOX_LATENCY_MS` (now `REELGATE_MINIMAX__SANDBOX_LATENCY_MS`). Deprecated:
/// they are read here, once, so nothing else consults the process environment.
fn apply_deprecated_env(config: &mut Config, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    if var("REELGATE_ENGINE__ALLOW_PRIVATE_URLS").is_none() {
        if let Some(v) = var("REELGATE_ALLOW_PRIVATE_URLS") {
            tracing::warn!("REELGATE_ALLOW_PRIVATE_URLS is deprecated; use REELGATE_ENGINE__ALLOW_PRIVATE_URLS");
            config.engine.allow_private_urls = v == "1" || v.eq_ignore_ascii_case("true");
        }
    }
    if var("REELGATE_MINIMAX__SANDBOX_LATENCY_MS").is_none() {
        if let Some(ms) = var("REELGATE_SANDBOX_LATENCY_MS") {
            config.minimax.sandbox_latency_ms = ms
                .trim()
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("REELGATE_SANDBOX_LATENCY_MS is not a number: {ms:?}")))?;
        }
    }
    Ok(())
}

impl Config {
    /// Loads defaults, then `file`, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Variables read elsewhere (the log filter) or below (the deprecated spellings
        // without a section) are not configuration keys; without this,
        // deny_unknown_fields would refuse to start.
        // REELGATE_REQUIRE_* are the test suite's switches (scripts/test sets them).
        // REELGATE_TEST_* and REELGATE_SKIP_* belong to the test suite, not to the server.
        let env = Env::prefixed("REELGATE_")
            .filter(|key| !(key.starts_with("test_") || key.starts_with("skip_")))
            .split("__")
            .ignore(&["log", "allow_private_urls", "sandbox_latency_ms", "require_ffmpeg", "require_chromium"]);
        let mut config: Config = figment.merge(env).extract().map_err(Box::new)?;
        // The S3 credentials may come from where every AWS tool looks for them.
        let s3 = &mut config.results.s3;
        if s3.access_key_id.is_none() {
            s3.access_key_id = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|v| !v.is_empty());
        }
        if s3.secret_access_key.is_none() {
            s3.secret_access_key =
                std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|v| !v.is_empty()).map(Into::into);
        }
        apply_deprecated_env(&mut config, |name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults alone, ignoring files and environment (used by tests and `bench`).
    pub fn defaults() -> Self {
        Figment::from(Toml::string(DEFAULT_TOML)).extract().expect("the built-in defaults always parse")
    }

    /// Checks rules that span fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url {
            if !(url.as_str().starts_with("postgres://") || url.as_str().starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(
                    "database_url must be a postgres:// or postgresql:// URL (unset it to use SQLite)".into(),
                ));
            }
        }
        if self.auth.key_cache_ttl_ms >= 2000 {
            return Err(ConfigError::Invalid(
                "auth.key_cache_ttl_ms must be below 2000 so revocations take effect within 2 s".into(),
            ));
        }
        if self.accounts.default_max_concurrent_jobs == 0 {
            return Err(ConfigError::Invalid("accounts.default_max_concurrent_jobs must be at least 1".into()));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("limits.max_body_bytes must be at least 1024".into()));
        }
        if self.limits.max_upload_bytes < 1024 {
            return Err(ConfigError::Invalid("limits.max_upload_bytes must be at least 1024".into()));
        }
        if self.uploads.ttl_secs == 0 || self.uploads.reap_interval_ms == 0 || self.uploads.body_deadline_ms == 0 {
            return Err(ConfigError::Invalid(
                "uploads.ttl_secs, uploads.reap_interval_ms and uploads.body_deadline_ms must be positive".into(),
            ));
        }
        if self.events.token_ttl_ms == 0 || self.events.recheck_ms == 0 {
            return Err(ConfigError::Invalid("events.token_ttl_ms and events.recheck_ms must be positive".into()));
        }
        if self.limits.idempotency_ttl_hours == 0 {
            return Err(ConfigError::Invalid("limits.idempotency_ttl_hours must be at least 1".into()));
        }
        let server = &self.server;
        if server.header_read_timeout_ms == 0
            || server.body_read_timeout_ms == 0
            || server.body_deadline_ms == 0
            || server.idle_timeout_ms == 0
            || server.max_connections == 0
            || server.max_headers == 0
        {
            return Err(ConfigError::Invalid(
                "server: the timeouts, max_connections and max_headers must be positive".into(),
            ));
        }
        if server.max_header_bytes < 1024 {
            return Err(ConfigError::Invalid("server.max_header_bytes must be at least 1024".into()));
        }
        let r = &self.rate_limits;
        if (r.generate_per_sec > 0 && r.generate_burst == 0) || (r.read_per_sec > 0 && r.read_burst == 0) {
            return Err(ConfigError::Invalid(
                "rate_limits: a burst must be at least 1 where its rate is set (a rate of 0 turns the limit off)"
                    .into(),
            ));
        }
        if let Some(proxy) = &self.egress.proxy_url {
            let scheme_ok = proxy.starts_with("http://") || proxy.starts_with("https://");
            if !scheme_ok || reqwest::Proxy::all(proxy).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "egress.proxy_url {proxy:?} must be an http:// or https:// proxy URL"
                )));
            }
        }
        let e = &self.engine;
        if e.max_concurrent_submits == 0 || e.max_concurrent_polls == 0 || e.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid("engine.max_concurrent_* must be at least 1".into()));
        }
        if e.max_submit_attempts == 0 || e.max_download_attempts == 0 {
            return Err(ConfigError::Invalid("engine.max_*_attempts must be at least 1".into()));
        }
        if e.retry_base_ms == 0 || e.retry_max_ms < e.retry_base_ms {
            return Err(ConfigError::Invalid("engine.retry_base_ms must be positive and <= retry_max_ms".into()));
        }
        if let Some(url) = &e.public_base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.ends_with('/') {
                return Err(ConfigError::Invalid(
                    "engine.public_base_url must be an http(s) URL without a trailing slash".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.minimax.accounts {
            if a.name.is_empty() || !names.insert(a.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "minimax account names must be unique and non-empty: {:?}",
                    a.name
                )));
            }
            if a.api_key.expose_secret().trim().is_empty() {
                return Err(ConfigError::Invalid(format!("minimax account {}: api_key is empty", a.name)));
            }
            if a.create_rpm == 0 || a.max_in_flight == 0 || a.query_rpm == 0 {
                return Err(ConfigError::Invalid(format!(
                    "minimax account {}: create_rpm, max_in_flight and query_rpm must be at least 1",
                    a.name
                )));
            }
        }
        let w = &self.webhooks;
        if w.retry_schedule_ms.is_empty() || w.max_concurrent == 0 || w.max_per_destination == 0 || w.timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "webhooks: retry_schedule_ms needs at least one entry; max_concurrent, max_per_destination and timeout_ms must be positive".into(),
            ));
        }
        if self.minimax.sandbox_create_rpm == 0 {
            return Err(ConfigError::Invalid("minimax.sandbox_create_rpm must be at least 1".into()));
        }
        if self.results.backend == ResultsBackend::S3 {
            self.results.s3.validate()?;
        }
        self.catalog()?;
        Ok(())
    }

    /// Where result videos are kept.
    pub fn results_dir(&self) -> PathBuf {
        self.data_dir.join("results")
    }

    /// The SQLite database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("reelgate.db")
    }

    /// The effective catalog: built-in prices with the catalog file's overrides.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        let overrides = match &self.catalog_file {
            None => PriceOverrides::default(),
            Some(path) => Figment::from(Toml::file_exact(path))
                .extract::<PriceOverrides>()
                .map_err(|e| ConfigError::Invalid(format!("catalog file {}: {e}", path.display())))?,
        };
        Catalog::with_overrides(&overrides).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

impl S3Config {
    /// Checks the settings `backend = "s3"` needs.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(format!("results.s3: {msg}")));
        match self.bucket.as_deref() {
            None | Some("") => {
                return Err(ConfigError::Invalid("results.backend = \"s3\" needs results.s3.bucket".into()))
            }
            Some(b) if b.contains('/') || b.trim() != b => {
                return invalid(format!("bucket {b:?} is not a bucket name"))
            }
            Some(_) => {}
        }
        if self.region.trim().is_empty() {
            return invalid("region is empty (use the bucket's region, e.g. \"us-east-1\")".into());
        }
        if self.access_key_id.as_deref().unwrap_or("").is_empty()
            || self.secret_access_key.as_ref().is_none_or(|k| k.expose_secret().is_empty())
        {
            return invalid(
                "access_key_id and secret_access_key are required (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into(),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            let url = match url::Url::parse(endpoint) {
                Ok(url) => url,
                Err(e) => return invalid(format!("endpoint {endpoint:?} is not a URL: {e}")),
            };
            if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                return invalid(format!(
                    "endpoint {endpoint:?} must be a plain URL (no credentials, query or fragment)"
                ));
            }
            match url.scheme() {
                "https" => {}
                // Plain HTTP would expose every video and request signature on the
                // network; on loopback (a local MinIO, the test server) nothing travels.
                "http" if is_loopback(&url) => {}
                "http" => return invalid(format!("endpoint {endpoint:?}: http is allowed for loopback hosts only")),
                other => return invalid(format!("endpoint {endpoint:?}: unsupported scheme {other:?}")),
            }
        }
        if let Err(why) = check_prefix(&self.prefix) {
            return invalid(format!("prefix {:?}: {why}", self.prefix));
        }
        if self.presigned_url_ttl_secs == 0 || self.presigned_url_ttl_secs > MAX_PRESIGNED_URL_TTL_SECS {
            return invalid(format!(
                "presigned_url_ttl_secs must be between 1 and {MAX_PRESIGNED_URL_TTL_SECS} (7 days, the S3 maximum)"
            ));
        }
        Ok(())
    }
}

// Checks of S3 settings, here rather than in `results::s3` (which uses them too) so that
// the configuration does not import the result store that imports it.

/// Whether `url` points at this machine (where plain HTTP exposes nothing).
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks that `prefix` followed by a file name is a valid, canonical object key: no
/// leading `/`, no empty, `.` or `..` segment, no control characters.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.starts_with('/') {
        return Err("must not start with '/'".into());
    }
    object_store::path::Path::parse(format!("{prefix}x.mp4")).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deprecated_variables_still_work_and_the_new_names_win() {
        type Vars = &'static [(&'static str, &'static str)];
        let env = |vars: Vars| move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let cases: [(Vars, bool, u64); 5] = [
            (&[], false, 10_000),
            (&[("REELGATE_ALLOW_PRIVATE_URLS", "1"), ("REELGATE_SANDBOX_LATENCY_MS", " 250 ")], true, 250),
            (&[("REELGATE_ALLOW_PRIVATE_URLS", "TRUE")], true, 10_000),
            (&[("REELGATE_ALLOW_PRIVATE_URLS", "0")], false, 10_000),
            // The new names were already applied by the loader; the old ones must not undo them.
            (
                &[
                    ("REELGATE_ALLOW_PRIVATE_URLS", "1"),
                    ("REELGATE_ENGINE__ALLOW_PRIVATE_URLS", "false"),
                    ("REELGATE_SANDBOX_LATENCY_MS", "5"),
                    ("REELGATE_MINIMAX__SANDBOX_LATENCY_MS", "10000"),
                ],
                false,
                10_000,
            ),
        ];
        for (vars, allow, latency) in cases {
            let mut c = Config::defaults();
            apply_deprecated_env(&mut c, env(vars)).unwrap();
            assert_eq!((c.engine.allow_private_urls, c.minimax.sandbox_latency_ms), (allow, latency), "{vars:?}");
        }
        let mut c = Config::defaults();
        assert!(apply_deprecated_env(&mut c, env(&[("REELGATE_SANDBOX_LATENCY_MS", "soon")])).is_err());
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
    }

    #[test]
    fn a_catalog_file_overrides_prices_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("reelgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[prices.\"hailuo-2.3-fast\"]\n\"768p-6s\" = 4\n").unwrap();
        let mut c = Config::defaults();
        c.catalog_file = Some(good);
        let catalog = c.catalog().unwrap();
        let fast = catalog.model(domain::ModelId::Hailuo23Fast);
        assert_eq!(fast.cost_min(), 4);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[prices.\"hailuo-2.3\"]\n\"1080p-10s\" = 4\n").unwrap();
        c.catalog_file = Some(bad);
        assert!(c.validate().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn s3(tweak: impl FnOnce(&mut S3Config)) -> Result<(), String> {
        let mut c = Config::defaults();
        c.results.backend = ResultsBackend::S3;
        c.results.s3.bucket = Some("videos".into());
        c.results.s3.access_key_id = Some("AKID".into());
        c.results.s3.secret_access_key = Some("secret".into());
        tweak(&mut c.results.s3);
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn s3_settings_are_checked_only_when_s3_is_the_backend() {
        let c = Config::defaults();
        assert_eq!(c.results.backend, ResultsBackend::Fs);
        assert_eq!(c.results.s3.video_urls, VideoUrls::Proxy);
        assert_eq!(c.results.s3.presigned_url_ttl_secs, MAX_PRESIGNED_URL_TTL_SECS);
        assert!(c.results.s3.bucket.is_none(), "fs needs no bucket");

        s3(|_| {}).unwrap();
        s3(|c| c.endpoint = Some("https://minio.example.com".into())).unwrap();
        s3(|c| c.endpoint = Some("http://127.0.0.1:9000".into())).unwrap();
        s3(|c| c.endpoint = Some("http://localhost:9000".into())).unwrap();
        s3(|c| c.prefix = String::new()).unwrap();
        s3(|c| c.prefix = "a/b/".into()).unwrap();
        type Tweak = fn(&mut S3Config);
        let refused: [(&str, Tweak); 9] = [
            ("needs results.s3.bucket", |c| c.bucket = None),
            ("needs results.s3.bucket", |c| c.bucket = Some(String::new())),
            ("AWS_ACCESS_KEY_ID", |c| c.access_key_id = None),
            ("AWS_SECRET_ACCESS_KEY", |c| c.secret_access_key = None),
            ("loopback hosts only", |c| c.endpoint = Some("http://minio.internal:9000".into())),
            ("not a URL", |c| c.endpoint = Some("minio.internal".into())),
            ("prefix", |c| c.prefix = "/abs/".into()),
            ("prefix", |c| c.prefix = "a//b/".into()),
            ("presigned_url_ttl_secs", |c| c.presigned_url_ttl_secs = MAX_PRESIGNED_URL_TTL_SECS + 1),
        ];
        for (expected, tweak) in refused {
            let err = s3(tweak).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn proxy_urls_and_rate_limits_are_checked_and_proxy_passwords_never_print() {
        let mut c = Config::defaults();
        assert!(c.egress.proxy_url.is_none(), "no proxy unless configured");
        assert_eq!((c.rate_limits.generate_per_sec, c.rate_limits.read_per_sec), (20, 100));
        c.egress.proxy_url = Some("http://user:hunter2@proxy.internal:3128".into());
        c.validate().unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2") && printed.contains("proxy.internal"), "{printed}");
        for bad in ["proxy.internal:3128", "ftp://proxy.internal", "socks5://proxy.internal:1080", "http://"] {
            c.egress.proxy_url = Some(bad.into());
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("egress.proxy_url"), "{bad}: {err}");
        }
        c.egress.proxy_url = None;
        c.rate_limits.generate_burst = 0;
        assert!(c.validate().unwrap_err().to_string().contains("burst"));
        c.rate_limits.generate_per_sec = 0;
        c.validate().unwrap();
    }

    #[test]
    fn the_secret_access_key_never_prints() {
        let mut c = Config::defaults();
        c.results.s3.secret_access_key = Some("very-secret-value".into());
        let printed = format!("{c:#?}");
        assert!(!printed.contains("very-secret-value"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
    }
}
