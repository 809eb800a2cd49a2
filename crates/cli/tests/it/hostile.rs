//! Hostile bodies at the front door: a refusal must cost the server little, however much
//! the body asks it to report (issue 13, item 1). The figures these tests print are the
//! ones in docs/BENCHMARKS.md ("Refusing hostile bodies").

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestApp;

/// Concurrent hostile requests, as in the issue.
const CONCURRENT: usize = 48;
/// Largest answer allowed for one refusal.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Largest growth of the process's resident memory once the burst is answered.
const MAX_RSS_GROWTH: u64 = 50 * 1024 * 1024;
/// Largest growth at the burst's peak. The 48 bodies themselves, each up to the 1 MiB
/// body limit, are read at once, so the peak holds them (and the reads' buffers); what
/// this bounds is everything a refusal adds beyond that, which was 1.9 GB.
const MAX_PEAK_GROWTH: u64 = 128 * 1024 * 1024;
/// How long the allocator may take to give freed memory back after the burst.
const SETTLE: Duration = Duration::from_secs(3);

/// `{"model":…,"prompt":…,"webhookEvents":[0,0,…]}` with 500,000 wrong items: about 1 MB.
fn many_wrong_events() -> Bytes {
    let mut body = String::from(r#"{"model":"hailuo-2.3","prompt":"x","webhookEvents":["#);
    body.push_str(&"0,".repeat(499_999));
    body.push_str("0]}");
    Bytes::from(body)
}

/// A body of about 1 MB made of unknown keys 100 characters long (about 9,500 of them).
fn many_unknown_keys() -> Bytes {
    let mut body = String::from(r#"{"model":"hailuo-2.3","prompt":"x""#);
    let mut i = 0;
    while body.len() < 1_000_000 {
        body.push_str(&format!(",\"{i:0>100}\":0"));
        i += 1;
    }
    body.push('}');
    Bytes::from(body)
}

/// This process's resident set, in bytes.
fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// The most this process has had resident since [`reset_peak_rss`], in bytes.
fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// Resets the kernel's high-water mark of resident memory (`VmHWM`) to the current RSS.
fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets the peak RSS. Best effort: without it the
    // peak figure includes what the process held before the test.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("a number of kB")
}

/// Sends `body` [`CONCURRENT`] times at once; checks each answer and the memory the burst
/// cost the server. The test server runs inside this process, so the process's RSS is
/// the server's; the request body is built once, before measuring, and shared by every
/// request (`Bytes` clones share the buffer), so the growth measured is the server's.
async fn burst(name: &str, body: Bytes) {
    let app = TestApp::spawn().await;
    let key = app.create_key(1000).await;
    // One request first, so lazily made things (connection pools, caches) exist before measuring.
    let warm = send(&app, &key.key, body.clone()).await;
    assert_eq!(warm.0, 400);

    let before = rss_bytes();
    reset_peak_rss();
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..CONCURRENT).map(|_| send(&app, &key.key, body.clone()))).await;
    let elapsed = started.elapsed();
    let peak = peak_rss_bytes();
    let answered = rss_bytes();
    // The allocator gives freed pages back a little later, when its threads next
    // allocate (mimalloc purges after a delay): what matters is what the server still
    // holds while it goes on serving, so keep it serving, with a deadline, meanwhile.
    let settle_start = Instant::now();
    let mut after = answered;
    while after.saturating_sub(before) >= MAX_RSS_GROWTH && settle_start.elapsed() < SETTLE {
        let healthz = app.http.get(app.url("/healthz")).send().await.expect("healthz");
        assert!(healthz.status().is_success());
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = rss_bytes();
    }

    let mut largest = 0;
    for (status, text) in &answers {
        assert_eq!(*status, 400, "{}", &text[..text.len().min(300)]);
        largest = largest.max(text.len());
        let body: Value = serde_json::from_str(text).expect("the answer is JSON");
        assert!(body["error"].is_string(), "in the envelope: {body}");
        let details = body["details"].as_object().expect("validation details");
        assert!(details.len() <= 51, "at most 50 problems and the count: {}", details.len());
        assert!(details["body"][0].is_string(), "the body as a whole is named: {body}");
    }
    let growth = after.saturating_sub(before);
    let peak_growth = peak.saturating_sub(before);
    eprintln!(
        "{name}: {CONCURRENT} requests of {} bytes in {elapsed:?}; largest answer {largest} bytes; \
         RSS {} MiB before, +{} MiB when answered, +{} MiB {:?} later, peak +{} MiB",
        body.len(),
        before >> 20,
        answered.saturating_sub(before) >> 20,
        growth >> 20,
        settle_start.elapsed(),
        peak_growth >> 20,
    );
    assert!(largest < MAX_ANSWER_BYTES, "{name}: an answer of {largest} bytes");
    assert!(growth < MAX_RSS_GROWTH, "{name}: RSS grew by {} MiB", growth >> 20);
    assert!(peak_growth < MAX_PEAK_GROWTH, "{name}: RSS peaked {} MiB higher", peak_growth >> 20);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (1000, 1000), "{name}: no credit moved");
    app.stop().await.unwrap();
}

/// One request on its own connection, written straight from the shared body: an HTTP
/// client library may copy a body into its write buffer, and 48 copies of a megabyte in
/// this process would be counted as the server's.
async fn send(app: &TestApp, key: &str, body: Bytes) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        body.len()
    );
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(60), exchange).await.expect("answered in time").expect("I/O");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    // axum answers a JSON error with Content-Length, never chunked.
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_million_wrong_webhook_events_get_a_small_answer_at_small_cost() {
    burst("webhookEvents x 500,000", many_wrong_events()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_unknown_keys_get_a_small_answer_at_small_cost() {
    burst("9,500 unknown keys of 100 characters", many_unknown_keys()).await;
}
