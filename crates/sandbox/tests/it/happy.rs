//! The full path a client walks: create, poll through the statuses, retrieve, download.

use sandbox::SandboxConfig;
use serde_json::json;

use crate::helpers::{data_url, fast_config, png, t2v, TestSandbox};

#[tokio::test]
async fn text_to_video_end_to_end() {
    // 1 s: long enough that 10 ms polls see the 100 ms of Preparing even on a busy machine.
    let sb = TestSandbox::spawn(SandboxConfig { latency_ms: Some(1000), ..fast_config() }).await;
    let id = sb.create_ok(&t2v("a red fox running through snow")).await;

    // Walk the statuses: they only move forward, and sizes stay zero until Success.
    let order = ["Preparing", "Queueing", "Processing", "Success"];
    let mut seen: Vec<String> = Vec::new();
    let done = loop {
        let v = sb.query(&id).await;
        assert_eq!(v["task_id"], id.as_str());
        assert_eq!(v["base_resp"]["status_code"], 0);
        let status = v["status"].as_str().unwrap().to_owned();
        let rank = order.iter().position(|s| *s == status).expect("known status");
        if let Some(last) = seen.last() {
            assert!(rank >= order.iter().position(|s| s == last).unwrap(), "went back: {seen:?} then {status}");
        }
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "Success" {
            break v;
        }
        assert_eq!(v["file_id"], "");
        assert_eq!(v["video_width"], 0);
        assert_eq!(v["video_height"], 0);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(seen, order, "every status seen in order");
    assert_eq!(done["video_width"], 1366);
    assert_eq!(done["video_height"], 768);
    let file_id = done["file_id"].as_str().expect("file_id is a string in query");
    assert!(!file_id.is_empty());

    let file = sb.retrieve(file_id).await;
    assert_eq!(file["base_resp"]["status_code"], 0);
    let f = &file["file"];
    assert!(f["file_id"].is_u64(), "file_id is a number in retrieve: {f}");
    assert_eq!(f["file_id"].as_u64().unwrap().to_string(), file_id);
    assert_eq!(f["filename"], "output.mp4");
    assert_eq!(f["purpose"], "video_generation");
    assert!(f["created_at"].as_u64().unwrap() > 1_600_000_000);

    let url = f["download_url"].as_str().unwrap();
    assert!(url.contains("Expires=") && url.contains("Signature="), "{url}");
    let resp = sb.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    let len: u64 = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let video = resp.bytes().await.unwrap();
    assert_eq!(video.len() as u64, len);
    assert!(video.len() > 100);
    assert_eq!(&video[4..8], b"ftyp", "an MP4 starts with its ftyp box");

    // Range requests.
    let part = sb.http.get(url).header("range", "bytes=4-11").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 4-11/{len}").as_str());
    assert_eq!(part.headers()["content-length"], "8");
    assert_eq!(&part.bytes().await.unwrap()[..], &video[4..12]);
    let tail = sb.http.get(url).header("range", "bytes=-5").send().await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(&tail.bytes().await.unwrap()[..], &video[video.len() - 5..]);
    let beyond = sb.http.get(url).header("range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], format!("bytes */{len}").as_str());

    // The backup URL serves the same bytes.
    let backup = f["backup_download_url"].as_str().unwrap();
    assert_ne!(backup, url);
    assert_eq!(sb.http.get(backup).send().await.unwrap().bytes().await.unwrap(), video);

    // A tampered signature is refused like an object store would.
    let bad = url.replace("Expires=", "Expires=1");
    let resp = sb.http.get(bad).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("<Code>SignatureDoesNotMatch</Code>"));

    let stats = sb.sandbox.stats();
    assert_eq!(stats.tasks_created, 1);
    assert_eq!(stats.renders, 1);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn image_to_video_keeps_the_image_aspect() {
    let sb = TestSandbox::fast().await;
    let image = data_url("image/png", &png(600, 800));
    let body = json!({"model": "MiniMax-Hailuo-2.3-Fast", "first_frame_image": image, "prompt": "she turns"});
    let id = sb.create_ok(&body).await;
    let done = sb.wait_done(&id).await;
    assert_eq!(done["status"], "Success");
    assert_eq!((done["video_width"].as_u64(), done["video_height"].as_u64()), (Some(768), Some(1024)));

    // No prompt needed for I2V; 512P exists for Hailuo-02 image modes only.
    let body = json!({"model": "MiniMax-Hailuo-02", "first_frame_image": image, "resolution": "512P", "duration": 10});
    sb.create_ok(&body).await;
    // First and last frame: the output follows the first frame.
    let wide = data_url("image/png", &png(640, 360));
    let body = json!({"model": "MiniMax-Hailuo-02", "first_frame_image": wide, "last_frame_image": image});
    let id = sb.create_ok(&body).await;
    let done = sb.wait_done(&id).await;
    assert_eq!(done["video_height"], 768);
    assert!(done["video_width"].as_u64().unwrap() > 1300);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn identical_jobs_render_once() {
    let sb = TestSandbox::fast().await;
    let mut files = Vec::new();
    for _ in 0..5 {
        files.push(sb.create_ok(&t2v("the same prompt")).await);
    }
    let mut urls = Vec::new();
    for id in &files {
        let done = sb.wait_done(id).await;
        let f = sb.retrieve(done["file_id"].as_str().unwrap()).await;
        urls.push(f["file"]["download_url"].as_str().unwrap().to_owned());
    }
    let downloads = urls.iter().map(|u| {
        let http = sb.http.clone();
        let u = u.clone();
        async move { http.get(u).send().await.unwrap().bytes().await.unwrap() }
    });
    let bodies: Vec<_> = futures_join_all(downloads).await;
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(sb.sandbox.stats().renders, 1);
    sb.sandbox.shutdown().await;
}

/// Runs futures concurrently on the test runtime.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
