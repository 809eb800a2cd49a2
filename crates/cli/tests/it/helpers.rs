//! Test harness: [`TestApp`] starts the real application through `service::run`, and
//! every response seen through it is checked against the reference Apiframe spec.
//!
//! Each app keeps its state in a [`TestData`]: SQLite in a temporary directory, or a fresh
//! PostgreSQL schema when `REELGATE_TEST_DATABASE_URL` is set (see [`data`]).

pub mod browser;
pub mod data;
pub mod spec_check;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use service::Config;
use store::{NewApiKey, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use data::TestData;
pub use spec_check::ReferenceSpec;

/// A key made for a test, with its account.
#[derive(Clone, Debug)]
pub struct TestKey {
    pub key: String,
    pub key_id: domain::ApiKeyId,
    pub account_id: domain::AccountId,
}

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// The running application.
pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    pub http: reqwest::Client,
    /// A second handle on the same database, as the admin CLI would open it.
    pub store: Arc<dyn Store>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), service::RunError>>>,
    /// The data directory and, on PostgreSQL, the schema; kept across [`TestApp::restart`].
    data: TestData,
}

impl TestApp {
    /// Starts the front door alone: the job engine is off, so jobs stay QUEUED and the
    /// front-door tests see exactly what they wrote.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the front door alone after `tweak` adjusts the configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start(TestData::new(), move |c, _| {
            c.engine.enabled = false;
            tweak(c);
        })
        .await
    }

    /// Starts the whole application, engine included, on the built-in sandbox with
    /// test-speed timings; `tweak` sees the address the server will listen on.
    pub async fn spawn_engine(tweak: impl FnOnce(&mut Config, SocketAddr)) -> Self {
        Self::start(TestData::new(), move |c, addr| {
            fast_engine(c);
            tweak(c, addr);
        })
        .await
    }

    /// Stops this app and starts a new one on the same data directory and database.
    pub async fn restart(mut self, tweak: impl FnOnce(&mut Config, SocketAddr)) -> Self {
        let _ = self.shut_down().await;
        Self::start(self.data, tweak).await
    }

    async fn start(data: TestData, tweak: impl FnOnce(&mut Config, SocketAddr)) -> Self {
        init_test_log();
        let mut config = data.config();
        no_rate_limits(&mut config);
        // Input images and webhook receivers in the tests are served from loopback; the
        // tests about the guard turn this off in their tweak.
        config.engine.allow_private_urls = true;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tweak(&mut config, addr);
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(service::run(config.clone(), listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        // The server creates the database; wait for it to answer before opening a second handle.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let store = service::open_store(&config).await.expect("second store handle");
        Self { addr, config, http, store, shutdown: Some(tx), server: Some(server), data }
    }

    /// This app's data directory and database, for a `reelgate` child process or a
    /// [`Config`] of its own (see [`TestData::command`] and [`TestData::config`]).
    pub fn data(&self) -> &TestData {
        &self.data
    }

    /// Waits until the job reaches a terminal status and returns it.
    pub async fn wait_terminal(&self, key: &TestKey, id: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get_job(key, id).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            if matches!(r.body["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED")) {
                return r.body;
            }
            assert!(start.elapsed() < within, "job {id} still {} after {within:?}", r.body["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        self.http.get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("metrics body")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Creates a key on a new account holding `credits`.
    pub async fn create_key(&self, credits: i64) -> TestKey {
        self.create_key_on(None, credits).await
    }

    /// Creates a key, on `account` if given.
    pub async fn create_key_on(&self, account: Option<domain::AccountId>, credits: i64) -> TestKey {
        let secret = domain::ApiKeySecret::generate();
        let (acct, key) = self
            .store
            .create_api_key(NewApiKey {
                account_id: account,
                name: "test".into(),
                email: "test@reelgate.local".into(),
                prefix: secret.prefix.clone(),
                digest: secret.digest,
                initial_credits: credits,
                plan: "self-hosted".into(),
                max_concurrent_jobs: 10,
            })
            .await
            .expect("create key");
        TestKey { key: secret.plaintext, key_id: key.id, account_id: acct.id }
    }

    /// Sends a request and checks the response against the reference spec's schema for
    /// `template` (the spec's path template, e.g. `/v2/jobs/{id}`).
    pub async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        extra_headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        for (name, value) in extra_headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} -> {status}: body is not JSON ({e}): {text:?}"));
        assert!(headers.contains_key("x-request-id"), "{method} {path}: no x-request-id");
        ReferenceSpec::get().check(method.as_str(), template, status.as_u16(), &body);
        Reply { status, headers, body }
    }

    pub async fn generate(&self, key: &TestKey, body: &Value) -> Reply {
        self.call(Method::POST, "/v2/videos/generate", "/v2/videos/generate", Some(&key.key), Some(body), &[]).await
    }

    /// Submits a job that must be accepted (202) and returns its id.
    pub async fn submit(&self, key: &TestKey, body: &Value) -> String {
        let r = self.generate(key, body).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.body["jobId"].as_str().expect("jobId").to_string()
    }

    pub async fn generate_idem(&self, key: &TestKey, body: &Value, idem: &str) -> Reply {
        let headers = [("Idempotency-Key", idem)];
        self.call(Method::POST, "/v2/videos/generate", "/v2/videos/generate", Some(&key.key), Some(body), &headers)
            .await
    }

    pub async fn get_job(&self, key: &TestKey, id: &str) -> Reply {
        self.call(Method::GET, "/v2/jobs/{id}", &format!("/v2/jobs/{id}"), Some(&key.key), None, &[]).await
    }

    pub async fn list_jobs(&self, key: &TestKey, query: &str) -> Reply {
        self.call(Method::GET, "/v2/jobs", &format!("/v2/jobs{query}"), Some(&key.key), None, &[]).await
    }

    pub async fn me(&self, key: &str) -> Reply {
        self.call(Method::GET, "/v2/me", "/v2/me", Some(key), None, &[]).await
    }

    /// The account's balance and the sum of its ledger; tests assert they agree.
    pub async fn balance_and_ledger(&self, account: domain::AccountId) -> (i64, i64) {
        let acct = self.store.get_account(account).await.expect("read").expect("account exists");
        let ledger = self.store.ledger(account).await.expect("ledger");
        (acct.credits, ledger.iter().map(|e| e.amount).sum())
    }

    /// Every job of the account, via the API (scope=team), paging to the end.
    pub async fn all_job_ids(&self, key: &TestKey) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("?scope=team&limit=100&cursor={c}"),
                None => "?scope=team&limit=100".to_string(),
            };
            let r = self.list_jobs(key, &q).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            ids.extend(r.body["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()));
            match r.body["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        ids
    }

    /// Stops the server gracefully and returns how `run` ended; the PostgreSQL schema, if
    /// any, is dropped afterwards.
    pub async fn stop(mut self) -> Result<(), service::RunError> {
        let result = self.shut_down().await;
        self.data.remove().await;
        result
    }

    /// Stops the server and closes the second store handle, keeping the data.
    async fn shut_down(&mut self) -> Result<(), service::RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = self.server.take().expect("server handle").await.expect("server task");
        self.store.close().await;
        result
    }
}

/// Prints the server's log when `REELGATE_TEST_LOG` holds a filter (`info`,
/// `service=debug`, ...): a failing test's 5xx answers say only "retry shortly", and the
/// cause is logged. Off by default to keep passing runs quiet.
fn init_test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("REELGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Turns the per-key rate limits off: many tests submit as fast as they can from one
/// key, and only the rate limit tests (`ratelimit.rs`) are about the limits; they set
/// their own in the tweak, which runs after this.
pub fn no_rate_limits(config: &mut Config) {
    config.rate_limits.generate_per_sec = 0;
    config.rate_limits.read_per_sec = 0;
}

/// Engine timings for tests: sandbox tasks take about a second and are polled often.
pub fn fast_engine(c: &mut Config) {
    c.engine.enabled = true;
    c.engine.first_poll_delay_ms = 200;
    c.engine.poll_interval_ms = 200;
    c.engine.retry_base_ms = 100;
    c.engine.retry_max_ms = 1000;
    c.minimax.sandbox_latency_ms = 1000;
    c.minimax.sandbox_create_rpm = 1000;
}

/// A valid minimal request.
pub fn video(model: &str, prompt: &str) -> Value {
    json!({"model": model, "prompt": prompt})
}

/// Waits until `check` holds, polling, or fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
