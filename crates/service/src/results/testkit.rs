//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`).
//!
//! [`TestS3::get`] finds one: `REELGATE_TEST_S3_ENDPOINT` (which `scripts/test` sets after
//! starting one), else a `moto_server` on `PATH` that this test process starts once and
//! shares. Without either the test fails, unless `REELGATE_SKIP_S3=1`, when it prints
//! SKIP and returns: an S3 test never passes silently without S3.
//!
//! moto accepts any credentials and checks no signatures, so the helpers here that look
//! inside a bucket (create it, count its objects and unfinished uploads) send plain
//! unsigned requests; the code under test signs its own as it would for AWS.
//! Test-only: compiled for the service's unit tests and with the `testkit` feature.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{S3Config, VideoUrls, MAX_PRESIGNED_URL_TTL_SECS};

/// The variable naming a running S3-compatible server for the tests.
pub const ENDPOINT_VAR: &str = "REELGATE_TEST_S3_ENDPOINT";
/// Set to `1` to let S3 tests skip (loudly) when no server can be found.
pub const SKIP_VAR: &str = "REELGATE_SKIP_S3";

/// A reachable test S3 server.
#[derive(Clone, Debug)]
pub struct TestS3 {
    /// Its base URL, e.g. `http://127.0.0.1:5000`.
    pub endpoint: String,
    http: reqwest::Client,
}

impl TestS3 {
    /// The server for the test `test`: `None` (after printing SKIP) only when none can
    /// be found and `REELGATE_SKIP_S3=1`; otherwise a missing server fails the test.
    pub async fn get(test: &str) -> Option<Self> {
        let endpoint = match std::env::var(ENDPOINT_VAR).ok().filter(|v| !v.is_empty()) {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => match tokio::task::spawn_blocking(own_server).await.expect("starting moto_server") {
                Ok(endpoint) => endpoint,
                Err(why) if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
                    // Straight to the terminal: the harness captures the output of passing tests.
                    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why} ({SKIP_VAR}=1)");
                    return None;
                }
                Err(why) => panic!(
                    "{test} needs an S3-compatible server: {why}. Run scripts/test (it starts moto_server), \
                     set {ENDPOINT_VAR}, install moto[server] (pip install 'moto[server]'), \
                     or set {SKIP_VAR}=1 to skip"
                ),
            },
        };
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("HTTP client");
        Some(Self { endpoint, http })
    }

    /// Settings for `bucket` on this server, as an operator would write them.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: Some(bucket.to_string()),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: Some("reelgate-test".into()),
            secret_access_key: Some("reelgate-test-secret".into()),
            prefix: "results/".into(),
            path_style: true,
            video_urls: VideoUrls::Proxy,
            presigned_url_ttl_secs: MAX_PRESIGNED_URL_TTL_SECS,
        }
    }

    /// Creates a new, empty bucket with a unique name and returns the name.
    pub async fn create_bucket(&self) -> String {
        let name = format!("reelgate-test-{}", uuid::Uuid::new_v4().simple());
        let r = self.http.put(format!("{}/{name}", self.endpoint)).send().await.expect("create bucket");
        assert!(r.status().is_success(), "creating bucket {name}: HTTP {}", r.status());
        name
    }

    /// The object `key` of `bucket`, if it exists.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.http.get(format!("{}/{bucket}/{key}", self.endpoint)).send().await.expect("get object");
        match r.status().as_u16() {
            200 => Some(r.bytes().await.expect("object body").to_vec()),
            404 => None,
            other => panic!("GET {bucket}/{key}: HTTP {other}"),
        }
    }

    /// How many objects `bucket` holds.
    pub async fn object_count(&self, bucket: &str) -> usize {
        self.count(bucket, "list-type=2", "<Key>").await
    }

    /// How many objects of `bucket` have keys starting with `prefix` (plain characters only).
    pub async fn object_count_under(&self, bucket: &str, prefix: &str) -> usize {
        self.count(bucket, &format!("list-type=2&prefix={prefix}"), "<Key>").await
    }

    /// How many multipart uploads of `bucket` are neither completed nor aborted.
    pub async fn multipart_uploads(&self, bucket: &str) -> usize {
        self.count(bucket, "uploads", "<Upload>").await
    }

    async fn count(&self, bucket: &str, query: &str, element: &str) -> usize {
        let r = self.http.get(format!("{}/{bucket}?{query}", self.endpoint)).send().await.expect("list bucket");
        assert!(r.status().is_success(), "listing {bucket}?{query}: HTTP {}", r.status());
        r.text().await.expect("listing body").matches(element).count()
    }
}

/// The `moto_server` this process started, shared by its tests.
static OWN_SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// Starts `moto_server` on a free loopback port (once per process) and waits for it.
fn own_server() -> Result<String, String> {
    OWN_SERVER.get_or_init(start_moto).clone()
}

fn start_moto() -> Result<String, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join("moto_server").is_file()) {
        return Err(format!("{ENDPOINT_VAR} is unset and moto_server is not on PATH"));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    // A static cannot stop the server when the process exits, so a small shell watches
    // this process and stops the server (by its pid) once the tests are gone.
    let watchdog = r#"moto_server -H 127.0.0.1 -p "$1" >/dev/null 2>&1 &
server=$!
while kill -0 "$2" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 1; done
kill "$server" 2>/dev/null"#;
    std::process::Command::new("sh")
        .args(["-c", watchdog, "sh", &port.to_string(), &std::process::id().to_string()])
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run moto_server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("moto_server did not listen on port {port} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!("http://127.0.0.1:{port}"))
}
