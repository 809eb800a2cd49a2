//! Test fixtures: a sandbox on an ephemeral port, a small MiniMax client written from the
//! reference (not from the sandbox's types), a PNG encoder and a callback receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};

pub const KEY: &str = "test-key";

/// A config for tests: short latency, generous limits.
pub fn fast_config() -> SandboxConfig {
    SandboxConfig { latency_ms: Some(300), rpm: 10_000, ..SandboxConfig::default() }
}

pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub base: String,
    pub http: reqwest::Client,
    pub key: String,
}

impl TestSandbox {
    pub async fn spawn(config: SandboxConfig) -> TestSandbox {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let sandbox = Sandbox::start(config, listener).await.expect("sandbox starts");
        let base = sandbox.base_url();
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        TestSandbox { sandbox, base, http, key: KEY.into() }
    }

    pub async fn fast() -> TestSandbox {
        Self::spawn(fast_config()).await
    }

    /// POSTs a create body and returns the JSON answer (asserting HTTP 200).
    pub async fn create_as(&self, key: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/v1/video_generation", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("create request");
        assert_eq!(resp.status(), 200, "create answers HTTP 200");
        assert!(resp.headers().contains_key("trace-id"), "Trace-Id header");
        resp.json().await.expect("create answers JSON")
    }

    pub async fn create(&self, body: &Value) -> Value {
        self.create_as(&self.key, body).await
    }

    /// Creates a task and returns its id, asserting success.
    pub async fn create_ok(&self, body: &Value) -> String {
        self.create_ok_as(&self.key, body).await
    }

    /// Creates a task with `key` and returns its id, asserting success.
    pub async fn create_ok_as(&self, key: &str, body: &Value) -> String {
        let v = self.create_as(key, body).await;
        assert_eq!(v["base_resp"]["status_code"], 0, "create refused: {v}");
        let id = v["task_id"].as_str().expect("task_id is a string").to_owned();
        assert!((15..=18).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()), "task_id {id}");
        id
    }

    pub async fn get_json(&self, path_and_query: &str, key: &str) -> Value {
        let resp =
            self.http.get(format!("{}{path_and_query}", self.base)).bearer_auth(key).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("JSON body")
    }

    pub async fn query(&self, task_id: &str) -> Value {
        self.get_json(&format!("/v1/query/video_generation?task_id={task_id}"), &self.key).await
    }

    pub async fn retrieve(&self, file_id: &str) -> Value {
        self.get_json(&format!("/v1/files/retrieve?file_id={file_id}"), &self.key).await
    }

    /// Polls until the task is terminal (deadline 20 s) and returns the last answer.
    pub async fn wait_done(&self, task_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.query(task_id).await;
            let status = v["status"].as_str().unwrap_or("");
            if status == "Success" || status == "Fail" {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {task_id} not done in time: {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates, waits, retrieves: the download URL of a new successful task.
    pub async fn finished_file(&self, body: &Value) -> (String, Value) {
        let id = self.create_ok(body).await;
        let done = self.wait_done(&id).await;
        assert_eq!(done["status"], "Success", "{done}");
        let file_id = done["file_id"].as_str().expect("file_id string").to_owned();
        let file = self.retrieve(&file_id).await;
        assert_eq!(file["base_resp"]["status_code"], 0, "{file}");
        (file_id, file)
    }
}

pub fn t2v(prompt: &str) -> Value {
    json!({"model": "MiniMax-Hailuo-2.3", "prompt": prompt})
}

/// An RGB PNG of the given size, uncompressed (stored deflate blocks) but valid.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(((width * 3 + 1) * height) as usize);
    for y in 0..height {
        raw.push(0);
        for x in 0..width {
            raw.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// How a callback receiver answers the challenge.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    Correct,
    Wrong,
    After(Duration),
}

/// A webhook receiver on port 0 that records every POST body.
pub struct Receiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub async fn spawn(echo: Echo) -> Receiver {
        use axum::routing::post;
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body.clone());
                    match (body.get("challenge"), echo) {
                        (Some(c), Echo::Correct) => axum::Json(json!({ "challenge": c })),
                        (Some(_), Echo::Wrong) => axum::Json(json!({ "challenge": "not-it" })),
                        (Some(c), Echo::After(d)) => {
                            tokio::time::sleep(d).await;
                            axum::Json(json!({ "challenge": c }))
                        }
                        (None, _) => axum::Json(json!({ "status": "success" })),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, bodies }
    }

    pub fn pushes(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().iter().filter(|b| b.get("challenge").is_none()).cloned().collect()
    }
}

/// Resident set size of this process, in KiB (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
