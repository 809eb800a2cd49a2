//! Prompt markers: deterministic faults aimed at one job.

use std::time::Duration;

use sandbox::SandboxConfig;
use serde_json::Value;

use crate::helpers::{fast_config, t2v, TestSandbox};

fn code(v: &Value) -> i64 {
    v["base_resp"]["status_code"].as_i64().expect("status_code")
}

#[tokio::test]
async fn create_refusals_and_transients() {
    let sb = TestSandbox::fast().await;
    for _ in 0..3 {
        let v = sb.create(&t2v("nope [sandbox:fail-1026]")).await;
        assert_eq!((code(&v), v["base_resp"]["status_msg"].as_str()), (1026, Some("input new_sensitive")));
    }
    // Fails the first two creates of this exact prompt, then works.
    let prompt = "retry me [sandbox:transient-1000x2]";
    assert_eq!(code(&sb.create(&t2v(prompt)).await), 1000);
    assert_eq!(code(&sb.create(&t2v(prompt)).await), 1000);
    sb.create_ok(&t2v(prompt)).await;
    // Without a count: once.
    assert_eq!(code(&sb.create(&t2v("[sandbox:transient-1013]")).await), 1013);
    sb.create_ok(&t2v("[sandbox:transient-1013]")).await;
    // A typo is refused, not ignored.
    let v = sb.create(&t2v("[sandbox:transiant-1000]")).await;
    assert_eq!(code(&v), 2013);
    assert!(v["base_resp"]["status_msg"].as_str().unwrap().contains("unknown sandbox marker"));
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn task_failures() {
    let sb = TestSandbox::fast().await;
    let id = sb.create_ok(&t2v("bad output [sandbox:fail-1027]")).await;
    let done = sb.wait_done(&id).await;
    assert_eq!(done["status"], "Fail");
    assert_eq!((code(&done), done["base_resp"]["status_msg"].as_str()), (1027, Some("output new_sensitive")));
    assert_eq!(done["file_id"], "");
    let id = sb.create_ok(&t2v("[sandbox:task-fail-1000]")).await;
    assert_eq!(code(&sb.wait_done(&id).await), 1000);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn proxy_errors_and_hangs() {
    let sb = TestSandbox::fast().await;
    let url = format!("{}/v1/video_generation", sb.base);
    let prompt = "[sandbox:http-502x2]";
    for _ in 0..2 {
        let resp = sb.http.post(&url).bearer_auth(&sb.key).json(&t2v(prompt)).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(resp.text().await.unwrap().contains("502 Bad Gateway"));
    }
    sb.create_ok(&t2v(prompt)).await;
    // Proxy errors never reached "MiniMax": they are not in the create counters.
    assert_eq!(sb.sandbox.stats().creates_total, 1);

    let prompt = "[sandbox:hang]";
    let hung =
        sb.http.post(&url).bearer_auth(&sb.key).json(&t2v(prompt)).timeout(Duration::from_millis(400)).send().await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    sb.create_ok(&t2v(prompt)).await;

    // A hung request is released by shutdown rather than holding it up.
    let http = sb.http.clone();
    let key = sb.key.clone();
    let pending =
        tokio::spawn(async move { http.post(url).bearer_auth(key).json(&t2v("[sandbox:hangx9]")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), sb.sandbox.shutdown()).await.expect("shutdown is not held up");
    let _ = pending.await;
}

#[tokio::test]
async fn malformed_json_and_query_errors() {
    let sb = TestSandbox::fast().await;
    let id = sb.create_ok(&t2v("[sandbox:malformed-json]")).await;
    let url = format!("{}/v1/query/video_generation?task_id={id}", sb.base);
    let text = sb.http.get(&url).bearer_auth(&sb.key).send().await.unwrap().text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "truncated: {text}");
    assert!(text.starts_with("{\"task_id\""));
    assert_eq!(code(&sb.query(&id).await), 0);

    let id = sb.create_ok(&t2v("[sandbox:query-error-1002x2]")).await;
    assert_eq!(code(&sb.query(&id).await), 1002);
    assert_eq!(code(&sb.query(&id).await), 1002);
    assert_eq!(code(&sb.query(&id).await), 0);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn expired_links_and_truncated_downloads() {
    let sb = TestSandbox::fast().await;
    let (file_id, first) = sb.finished_file(&t2v("[sandbox:expired-link]")).await;
    for field in ["download_url", "backup_download_url"] {
        let resp = sb.http.get(first["file"][field].as_str().unwrap()).send().await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["content-type"], "application/xml");
        let body = resp.text().await.unwrap();
        assert!(body.contains("<Code>AccessDenied</Code>") && body.contains("Request has expired."), "{body}");
    }
    let again = sb.retrieve(&file_id).await;
    let resp = sb.http.get(again["file"]["download_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let (_, file) = sb.finished_file(&t2v("[sandbox:truncated-download]")).await;
    let url = file["file"]["download_url"].as_str().unwrap();
    let resp = sb.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let announced: u64 = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(resp.bytes().await.is_err(), "the body breaks off");
    let full = sb.http.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(full.len() as u64, announced);

    let id = sb.create_ok(&t2v("[sandbox:retrieve-error-1000]")).await;
    let done = sb.wait_done(&id).await;
    let f = done["file_id"].as_str().unwrap();
    assert_eq!(code(&sb.retrieve(f).await), 1000);
    assert_eq!(code(&sb.retrieve(f).await), 0);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn slow_and_stuck() {
    let sb = TestSandbox::spawn(SandboxConfig { latency_ms: Some(200), ..fast_config() }).await;
    let slow = sb.create_ok(&t2v("[sandbox:slow]")).await;
    let stuck = sb.create_ok(&t2v("[sandbox:stuck]")).await;
    let normal = sb.create_ok(&t2v("normal")).await;
    sb.wait_done(&normal).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sb.query(&slow).await["status"], "Processing");
    assert_eq!(sb.wait_done(&slow).await["status"], "Success");
    assert_eq!(sb.query(&stuck).await["status"], "Processing");
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn random_faults_are_reproducible_with_a_seed() {
    let config = || SandboxConfig {
        faults: sandbox::FaultConfig { seed: Some(7), create_error: 0.5, ..Default::default() },
        ..fast_config()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sb = TestSandbox::spawn(config()).await;
        let mut codes = Vec::new();
        for i in 0..20 {
            codes.push(code(&sb.create(&t2v(&format!("{i}"))).await));
        }
        sb.sandbox.shutdown().await;
        runs.push(codes);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&0) && runs[0].contains(&1000), "{:?}", runs[0]);
}
