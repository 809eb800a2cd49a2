//! The HTTP edge under slow and hostile clients: timeouts close what stalls, the
//! connection cap keeps the server reachable, shutdown has a deadline, and early answers
//! reach clients that are still sending.
//!
//! These tests speak HTTP/1.1 over raw TCP: a client library would not send half a
//! request, stall on purpose or keep writing after the server has answered.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, TestData};
use crate::lifecycle::{create_key, free_port, Server};

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response with a `Content-Length` body off `stream`.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let mut response = RawResponse { status, head, body: buf[head_end..].to_vec() };
    let length: usize = response.header("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
    while response.body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside a body"));
        }
        response.body.extend_from_slice(&chunk[..n]);
    }
    Ok(response)
}

/// Waits until the server closes `stream` (end of stream or reset), reading and
/// ignoring anything it sends first; the time it took, or None if it stayed open for
/// `patience`.
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    let closed = tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.is_ok().then(|| started.elapsed())
}

#[tokio::test]
async fn slow_and_idle_clients_are_closed_within_the_timeouts() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout_ms = 600;
        c.server.body_read_timeout_ms = 600;
        c.server.idle_timeout_ms = 60_000;
    })
    .await;
    let key = app.create_key(100).await;
    let patience = Duration::from_secs(10);

    // Slowloris: the request line and a header, then one more header byte now and then.
    let mut slowloris = TcpStream::connect(app.addr).await.unwrap();
    slowloris.write_all(b"POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slowloris.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let mut probe = TcpStream::connect(app.addr).await.unwrap();
    let (_, silent) = tokio::join!(trickle, closed_within(&mut probe, patience));
    assert!(silent.is_some(), "a connection that never sends a request is closed");
    assert!(closed_within(&mut slowloris, patience).await.is_some(), "a slowloris client is closed");

    // A keep-alive connection that goes quiet after one request.
    let mut keep_alive = TcpStream::connect(app.addr).await.unwrap();
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut keep_alive).await.unwrap().status, 200);
    assert!(closed_within(&mut keep_alive, patience).await.is_some(), "an idle keep-alive connection is closed");

    // A body that stops arriving: the answer is a JSON 408, and nothing was written.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"model\":",
        key.key
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(patience, read_response(&mut stalled)).await.expect("answered").unwrap();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.json()["error"].as_str().unwrap().contains("timed out"), "{answer:?}");
    assert!(closed_within(&mut stalled, patience).await.is_some(), "the stalled connection is closed");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
    assert!(app.all_job_ids(&key).await.is_empty());
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_a_408_at_the_deadline() {
    let app = TestApp::spawn_with(|c| {
        c.server.body_read_timeout_ms = 5_000;
        c.server.body_deadline_ms = 1_500;
    })
    .await;
    let key = app.create_key(100).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Length: 500\r\n\r\n",
        key.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: never a gap as long as the body timeout, never the whole body.
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let answer = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    let answer = tokio::select! {
        answer = answer => answer,
        () = trickle => panic!("no answer while the body trickled for 20 s"),
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
}

#[tokio::test]
async fn a_connection_on_which_nothing_moves_is_closed_by_the_idle_timeout() {
    // The header timeout is long here, so only the idle timeout can close it.
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout_ms = 60_000;
        c.server.idle_timeout_ms = 500;
    })
    .await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    silent.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_headers = 20;
        c.server.max_header_bytes = 4096;
    })
    .await;
    let http = reqwest::Client::new();
    let mut many = http.get(app.url("/healthz"));
    for i in 0..40 {
        many = many.header(format!("x-filler-{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let large = http.get(app.url("/healthz")).header("x-filler", "a".repeat(8000)).send().await.unwrap();
    assert_eq!(large.status(), 431);
    assert_eq!(http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

/// `reelgate serve` under a file limit of 1,024 (as a common service manager sets it),
/// with a short header timeout and the engine off.
async fn serve_with_file_limit(data: &TestData, port: u16, env: &[(&str, &str)]) -> Server {
    let template = data.command();
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -n 1024 && exec \"$@\"", "sh"]).arg(template.get_program()).args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    for (name, value) in template.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
        .envs(env.iter().copied())
        .env("REELGATE_ENGINE__ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("REELGATE_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
    let server = Server(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_past_the_file_limit_do_not_lock_a_normal_client_out() {
    let data = TestData::new();
    let key = create_key(&data, "normal", 100);
    let port = free_port();
    let _server = serve_with_file_limit(&data, port, &[("REELGATE_SERVER__HEADER_READ_TIMEOUT_MS", "2000")]).await;

    // 1,100 clients each send half a request and then hold their connection: more than
    // the server's limit of 1,024 descriptors allows.
    let mut slow = Vec::new();
    for _ in 0..1100 {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await
        else {
            continue; // the backlog is full: this one is not even waiting
        };
        let _ = stream.write_all(b"GET /v2/me HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(stream);
    }
    assert!(slow.len() >= 1000, "only {} slow connections opened", slow.len());

    // A normal client is served while they are held (once the header timeout has
    // cleared the ones ahead of it), and the server keeps working after.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let me = http
        .get(format!("http://127.0.0.1:{port}/v2/me"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("a normal client is served despite 1,100 slow connections");
    assert_eq!(me.status(), 200);
    let body = json!({"model": "hailuo-2.3", "prompt": "after the flood"});
    let generated = http
        .post(format!("http://127.0.0.1:{port}/v2/videos/generate"))
        .header("X-API-Key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(generated.status(), 202);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_half_sent_requests_after_the_grace_period_and_keeps_acknowledged_jobs() {
    let data = TestData::new();
    let key = create_key(&data, "grace", 100);
    let port = free_port();
    let mut server = serve_with_file_limit(
        &data,
        port,
        &[
            ("REELGATE_SERVER__SHUTDOWN_GRACE_MS", "1000"),
            ("REELGATE_SERVER__HEADER_READ_TIMEOUT_MS", "600000"),
            ("REELGATE_SERVER__BODY_READ_TIMEOUT_MS", "600000"),
            ("REELGATE_SERVER__IDLE_TIMEOUT_MS", "600000"),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let accepted: Value = http
        .post(format!("{base}/v2/videos/generate"))
        .header("X-API-Key", &key)
        .json(&json!({"model": "hailuo-2.3", "prompt": "acknowledged before the signal"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["jobId"].as_str().expect("a job id").to_string();

    // One client stops inside its headers, another inside its body.
    let mut half_headers = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half_headers.write_all(b"POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut half_body = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 400\r\n\r\n{{\"model\""
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let kill = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None; // `server` is dropped here, which kills it
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let status = exited.expect("the server exits once the grace period is over, despite the half-sent requests");
    assert!(status.success(), "exit status {status:?}");
    drop((half_headers, half_body));

    let store = service::open_store(&data.config()).await.unwrap();
    let account = store.list_api_keys(None).await.unwrap()[0].account_id;
    assert!(store.get_job(account, job_id.parse().unwrap()).await.unwrap().is_some(), "acknowledged job kept");
    store.close().await;
}

/// What a client that writes an 8 MB body in chunks sees when the server answers early:
/// `request_head` is sent, then the body, while the answer is read at the same time.
async fn send_large_body(stream: &mut TcpStream, request_head: &str, body_len: usize) -> RawResponse {
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(request_head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            writer.write_all(&chunk[..n]).await?;
            sent += n;
        }
        writer.flush().await
    };
    let read = async {
        // read_response needs the TcpStream; read the head by hand through the half.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let mut response = RawResponse { status, head, body: buf[i + 4..].to_vec() };
                let length: usize = response.header("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
                while response.body.len() < length {
                    let n = reader.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in body"));
                    }
                    response.body.extend_from_slice(&chunk[..n]);
                }
                return Ok(response);
            }
        }
    };
    let (written, read) = tokio::join!(write, read);
    written.expect("the whole body could be sent (no broken pipe)");
    read.expect("the early answer arrived")
}

#[tokio::test]
async fn early_answers_reach_a_client_still_sending_a_large_body() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    const LEN: usize = 8 * 1024 * 1024;
    let cases = [
        ("POST /v2/videos/generate", None, 401, "API key is required"),
        ("POST /v2/videos/generate", Some(key.key.as_str()), 413, "too large"),
        ("POST /v2/no-such-route", Some(key.key.as_str()), 404, "No such route"),
        ("PUT /v2/videos/generate", Some(key.key.as_str()), 405, "Method not allowed"),
    ];
    for (request_line, api_key, status, message) in cases {
        let head = format!(
            "{request_line} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {LEN}\r\n{}\r\n",
            api_key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default()
        );
        // On a fresh connection...
        let mut fresh = TcpStream::connect(app.addr).await.unwrap();
        let answer = send_large_body(&mut fresh, &head, LEN).await;
        assert_eq!(answer.status, status, "{request_line}: {answer:?}");
        assert!(answer.json()["error"].as_str().unwrap().contains(message), "{request_line}: {answer:?}");

        // ...and on a keep-alive connection that already served a request, which stays
        // usable afterwards.
        let mut kept = TcpStream::connect(app.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut kept).await.unwrap().status, 200);
        let answer = send_large_body(&mut kept, &head, LEN).await;
        assert_eq!(answer.status, status, "{request_line} (keep-alive): {answer:?}");
        assert!(answer.json()["error"].as_str().unwrap().contains(message), "{request_line}: {answer:?}");
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut kept).await.unwrap().status, 200, "{request_line}: connection kept");
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
}

#[tokio::test]
async fn a_body_beyond_the_discard_limit_gets_its_answer_and_a_closed_connection() {
    let app = TestApp::spawn_with(|c| c.server.max_discard_bytes = 1024 * 1024).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /v2/videos/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream).await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await.is_some(), "the server closes it");
}
