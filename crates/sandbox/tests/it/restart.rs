//! A sandbox with a data directory keeps its tasks across a restart, as MiniMax keeps them
//! whatever happens to its servers: a task created before the restart is still queryable by
//! its key alone, moves on from its original creation time, and its file is retrievable.

use std::time::{Duration, Instant};

use sandbox::SandboxConfig;

use crate::helpers::{fast_config, t2v, Echo, Receiver, TestSandbox};

#[tokio::test]
async fn tasks_survive_a_restart_on_their_original_time_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig { latency_ms: Some(3000), data_dir: Some(dir.path().to_path_buf()), ..fast_config() };
    let before = TestSandbox::spawn(config.clone()).await;
    let created = Instant::now();
    let mine = before.create_ok(&t2v("a lighthouse in fog")).await;
    let theirs = before.create_ok_as("other-key", &t2v("a lighthouse in fog")).await;
    // Not shut down: dropped, as close to a crash as one process allows. The task was on disk
    // before the create answered, so nothing more is needed.
    drop(before);
    tokio::time::sleep_until((created + Duration::from_millis(1500)).into()).await;

    let after = TestSandbox::spawn(config).await;
    let v = after.query(&mine).await;
    assert_eq!(v["base_resp"]["status_code"], 0, "the task is still known: {v}");
    assert_eq!(v["status"], "Processing", "1.5 s into a 3 s task it is processing, not back to the start: {v}");
    let other = after.get_json(&format!("/v1/query/video_generation?task_id={mine}"), "other-key").await;
    assert_eq!(other["base_resp"]["status_code"], 2013, "still visible only to its own key: {other}");
    assert_eq!(other["base_resp"]["status_msg"], "invalid params, task not found");
    let other = after.get_json(&format!("/v1/query/video_generation?task_id={theirs}"), "other-key").await;
    assert_eq!(other["base_resp"]["status_code"], 0, "{other}");

    let done = after.wait_done(&mine).await;
    let took = created.elapsed();
    assert_eq!(done["status"], "Success", "{done}");
    // Restarted from scratch it would finish 4.5 s after the create at the earliest.
    assert!(took < Duration::from_millis(4200), "finished {took:?} after the create, not 3 s");
    let file_id = done["file_id"].as_str().unwrap();
    let file = after.retrieve(file_id).await;
    assert_eq!(file["base_resp"]["status_code"], 0, "{file}");
    let resp = after.http.get(file["file"]["download_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert!(resp.bytes().await.unwrap().len() > 1000, "the video is rendered again on demand");

    // New tasks never reuse a kept task's id.
    let new = after.create_ok(&t2v("a lighthouse in fog")).await;
    assert!(new != mine && new != theirs);
}

#[tokio::test]
async fn callback_pushes_still_ahead_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig { latency_ms: Some(2000), data_dir: Some(dir.path().to_path_buf()), ..fast_config() };
    let receiver = Receiver::spawn(Echo::Correct).await;
    let before = TestSandbox::spawn(config.clone()).await;
    let body = serde_json::json!({"model": "MiniMax-Hailuo-2.3", "prompt": "a kite", "callback_url": receiver.url});
    let id = before.create_ok(&body).await;
    // Stopped before its `processing` push (at 600 ms) was due.
    before.sandbox.shutdown().await;

    let _after = TestSandbox::spawn(config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.pushes().len() < 2 {
        assert!(Instant::now() < deadline, "pushes after the restart: {:?}", receiver.pushes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pushes = receiver.pushes();
    let statuses: Vec<&str> = pushes.iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["processing", "success"]);
    assert!(pushes.iter().all(|p| p["task_id"] == id.as_str()), "{pushes:?}");
}
