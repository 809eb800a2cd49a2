//! callback_url: the challenge handshake inside create, then lower-case status pushes.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Echo, Receiver, TestSandbox};

fn with_callback(prompt: &str, url: &str) -> serde_json::Value {
    json!({"model": "MiniMax-Hailuo-2.3", "prompt": prompt, "callback_url": url})
}

/// Waits until the receiver holds `n` pushes (deadline 10 s).
async fn pushes(receiver: &Receiver, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = receiver.pushes();
        if p.len() >= n {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} pushes: {p:?}", p.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn handshake_then_lower_case_pushes() {
    let sb = TestSandbox::fast().await;
    let receiver = Receiver::spawn(Echo::Correct).await;
    let id = sb.create_ok(&with_callback("cb ok", &receiver.url)).await;
    let first = receiver.bodies.lock().unwrap()[0].clone();
    assert!(first["challenge"].as_str().is_some_and(|c| !c.is_empty()), "{first}");

    let p = pushes(&receiver, 2).await;
    assert_eq!(p[0]["status"], "processing");
    assert_eq!(p[0]["task_id"], id.as_str());
    assert_eq!(p[0]["file_id"], "");
    assert_eq!(p[1]["status"], "success");
    assert_eq!(p[1]["base_resp"]["status_code"], 0);
    let file_id = p[1]["file_id"].as_str().unwrap();
    assert!(!file_id.is_empty());
    assert!(p[1].get("video_width").is_none() && p[1].get("video_height").is_none());
    // Polling still works for a task with a callback, and agrees.
    assert_eq!(sb.query(&id).await["file_id"], file_id);

    // A failing task pushes "failed" with the reason.
    sb.create_ok(&with_callback("cb fail [sandbox:fail-1027]", &receiver.url)).await;
    let p = pushes(&receiver, 4).await;
    let failed = p.iter().find(|b| b["status"] == "failed").expect("failed push");
    assert_eq!(failed["base_resp"]["status_code"], 1027);
    let stats = sb.sandbox.stats();
    assert_eq!((stats.callback_handshakes, stats.callback_pushes), (2, 4));
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn handshake_failures_refuse_the_create() {
    let sb = TestSandbox::fast().await;
    let wrong = Receiver::spawn(Echo::Wrong).await;
    let slow = Receiver::spawn(Echo::After(Duration::from_millis(3500))).await;
    let closed = "http://127.0.0.1:9/hook".to_owned();
    for url in [&wrong.url, &slow.url, &closed] {
        let v = sb.create(&with_callback("cb", url)).await;
        assert_eq!(v["task_id"], "");
        assert_eq!(v["base_resp"]["status_code"], 2013);
        assert_eq!(v["base_resp"]["status_msg"], "invalid params, fail to check callback url");
    }
    assert_eq!(sb.sandbox.stats().tasks_created, 0);
    sb.sandbox.shutdown().await;
}
