//! Outbound requests and proxies: the proxy variables of the server's environment are
//! ignored, so they cannot carry client-supplied URLs past the SSRF guard; a proxy
//! named in the configuration (`egress.proxy_url`) is used for every request.
//!
//! The environment is set for a spawned `reelgate serve` only: the test process's own
//! environment is shared by the tests running beside it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{TestApp, TestData};

/// A loopback listener that records the first line of every request sent to it (for a
/// proxy: `GET http://host/path HTTP/1.1`) and answers 502.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]);
                    log.lock().unwrap().push(text.lines().next().unwrap_or("<connected>").to_string());
                    let _ = conn
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Self { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A `reelgate serve` child process, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn proxy_variables_in_the_environment_do_not_carry_private_urls_past_the_guard() {
    let proxy = Recorder::start().await;
    // Where the image and the webhook would be fetched from, had the guard let them.
    let target = Recorder::start().await;
    let data = TestData::new();
    let (ok, out, err) = data.reelgate(&["keys", "create", "--name", "egress", "--credits", "100"]);
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = data.command();
    command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env(name, proxy.url());
    }
    for name in ["NO_PROXY", "no_proxy", "REELGATE_ALLOW_PRIVATE_URLS", "REELGATE_ENGINE__ALLOW_PRIVATE_URLS"] {
        command.env_remove(name);
    }
    let server = Server(
        command
            .env("REELGATE_ENGINE__FIRST_POLL_DELAY_MS", "200")
            .env("REELGATE_ENGINE__POLL_INTERVAL_MS", "200")
            .env("REELGATE_MINIMAX__SANDBOX_LATENCY_MS", "1000")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("REELGATE_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    // The test's own client ignores the proxy variables too (it has none, but be plain).
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A name (not an address) for a loopback host: only resolving it shows where it goes.
    let body = json!({
        "model": "hailuo-2.3-fast",
        "prompt": "x",
        "hailuoParams": {"image": format!("http://localhost:{}/cat.png", target.port)},
        "webhookUrl": format!("http://localhost:{}/hook", target.port),
    });
    let r = http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();

    // And a job with nothing client-supplied to fetch: MiniMax (the sandbox, on
    // loopback) and the result download are reached directly, not through the proxy.
    let plain = json!({"model": "hailuo-2.3", "prompt": "a lighthouse at dusk"});
    let r =
        http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&plain).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let plain_id = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();

    let get = |path: String| {
        let (http, key) = (http.clone(), key.clone());
        async move { http.get(path).header("X-API-Key", key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let terminal = |id: String| {
        let (get, base) = (&get, &base);
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let job = get(format!("{base}/v2/jobs/{id}")).await;
                if job["status"] == "FAILED" || job["status"] == "COMPLETED" {
                    return job;
                }
                assert!(Instant::now() < deadline, "job still {}", job["status"]);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let job = terminal(plain_id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let job = terminal(id.clone()).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    let error = job["error"].to_string();
    assert!(error.contains("not allowed") && error.contains("loopback"), "refused by the guard: {job}");

    // The failure's webhook was refused the same way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempt = loop {
        let hooks = get(format!("{base}/v2/jobs/{id}/webhooks")).await;
        if let Some(attempt) = hooks["events"][0]["attempts"].get(0) {
            break attempt.clone();
        }
        assert!(Instant::now() < deadline, "no webhook attempt: {hooks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = attempt["error"].to_string();
    assert!(error.contains("not allowed") && error.contains("loopback"), "refused by the guard: {attempt}");

    assert_eq!(proxy.seen(), Vec::<String>::new(), "the proxy was contacted");
    assert_eq!(target.seen(), Vec::<String>::new(), "the private target was contacted");
    drop(server);
    data.remove().await;
}

#[tokio::test]
async fn a_configured_proxy_carries_outbound_requests_and_literal_private_addresses_stay_refused() {
    let proxy = Recorder::start().await;
    let proxy_url = proxy.url();
    let app = TestApp::spawn_engine(|c, _| {
        c.egress.proxy_url = Some(proxy_url);
        c.engine.allow_private_urls = false;
    })
    .await;
    let key = app.create_key(100).await;

    // A name only the proxy resolves: the request goes to the proxy, in absolute form.
    let image = "http://images.example.invalid/cat.png";
    let body = json!({"model": "hailuo-2.3-fast", "prompt": "x", "hailuoParams": {"image": image}});
    let id = app.submit(&key, &body).await;
    let job = app.wait_terminal(&key, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert!(job["error"].to_string().contains("502"), "the proxy's answer: {job}");
    assert_eq!(proxy.seen(), vec![format!("GET {image} HTTP/1.1")]);

    // An IP-literal private address is still refused (at submission, before any charge),
    // and never sent to the proxy.
    let body =
        json!({"model": "hailuo-2.3-fast", "prompt": "x", "hailuoParams": {"image": "http://127.0.0.1:9/cat.png"}});
    let refused = app.generate(&key, &body).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert!(refused.body["details"]["hailuoParams.image"].to_string().contains("loopback"), "{:?}", refused.body);
    // The first job was charged and refunded when it failed; the refused one moved nothing.
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
    assert_eq!(app.all_job_ids(&key).await.len(), 1);
    assert_eq!(proxy.seen().len(), 1, "{:?}", proxy.seen());
    app.stop().await.unwrap();
}
