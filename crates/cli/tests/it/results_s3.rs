//! Result videos in an S3-compatible bucket (moto_server, see `service::results::testkit`):
//! a job run by the engine on the sandbox is copied into the bucket and served either by
//! reelgate with Range support (`video_urls = "proxy"`) or as a presigned URL that
//! fetches the same bytes from the bucket itself (`video_urls = "presigned"`).

use std::time::Duration;

use reqwest::StatusCode;
use service::config::{ResultsBackend, VideoUrls};
use service::results::testkit::TestS3;

use crate::helpers::{video, TestApp, TestKey};

const WITHIN: Duration = Duration::from_secs(30);

/// Starts the engine storing results in a fresh bucket with `video_urls`.
async fn app_on(s3: &TestS3, bucket: &str, video_urls: VideoUrls) -> TestApp {
    let mut config = s3.config(bucket);
    config.video_urls = video_urls;
    TestApp::spawn_engine(move |c, _| {
        c.results.backend = ResultsBackend::S3;
        c.results.s3 = config;
    })
    .await
}

/// Runs one job to completion and returns its id and the job as the API shows it.
async fn completed_job(app: &TestApp, key: &TestKey) -> (String, serde_json::Value) {
    let id = app.submit(key, &video("hailuo-2.3", "a paper boat on a river")).await;
    let job = app.wait_terminal(key, &id, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    (id, job)
}

/// Checks that `url` serves `bytes` whole and in ranges, as a player needs.
async fn serves_with_ranges(app: &TestApp, url: &str, bytes: &[u8]) {
    let len = bytes.len();
    let full = app.http.get(url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "video/mp4");
    assert_eq!(full.headers()["content-length"], len.to_string().as_str());
    assert!(full.bytes().await.unwrap() == bytes, "the whole video");
    let part = app.http.get(url).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 100-199/{len}").as_str());
    assert_eq!(part.headers()["content-length"], "100");
    assert!(part.bytes().await.unwrap() == bytes[100..200]);
    let tail = app.http.get(url).header("Range", "bytes=-10").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert!(tail.bytes().await.unwrap() == bytes[len - 10..]);
    let outside = app.http.get(url).header("Range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn a_result_stored_in_s3_is_served_by_reelgate_with_ranges_and_reaped_from_the_bucket() {
    let test = "a_result_stored_in_s3_is_served_by_reelgate_with_ranges_and_reaped_from_the_bucket";
    let Some(s3) = TestS3::get(test).await else { return };
    let bucket = s3.create_bucket().await;
    let app = app_on(&s3, &bucket, VideoUrls::Proxy).await;
    let key = app.create_key(100).await;
    let (id, job) = completed_job(&app, &key).await;

    let url = job["result"]["videoUrl"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://{}/v2/results/{id}/", app.addr)), "proxy mode: reelgate's URL: {url}");
    let object = s3.object(&bucket, &format!("results/{id}.mp4")).await.expect("the video is in the bucket");
    assert_eq!(&object[4..8], b"ftyp", "an MP4 file");
    assert!(!app.config.results_dir().exists(), "nothing was written to the local results directory");
    serves_with_ranges(&app, url, &object).await;
    assert_eq!(s3.multipart_uploads(&bucket).await, 0, "no upload left unfinished");

    // The reaper deletes the object once the retention has passed.
    let s3_config = app.config.results.clone();
    let app = app
        .restart(|c, _| {
            crate::helpers::fast_engine(c);
            c.results = s3_config;
            c.engine.result_retention_days = 0;
        })
        .await;
    crate::helpers::eventually(WITHIN, || async { app.get_job(&key, &id).await.body["expired"] == true }).await;
    assert_eq!(s3.object_count(&bucket).await, 0, "the reaper deleted the object");
    let new_url = url.replacen(&url[..url.find("/v2/").unwrap()], &format!("http://{}", app.addr), 1);
    assert_eq!(app.http.get(&new_url).send().await.unwrap().status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn presigned_video_urls_fetch_the_same_bytes_straight_from_the_bucket() {
    let Some(s3) = TestS3::get("presigned_video_urls_fetch_the_same_bytes_straight_from_the_bucket").await else {
        return;
    };
    let bucket = s3.create_bucket().await;
    let app = app_on(&s3, &bucket, VideoUrls::Presigned).await;
    let key = app.create_key(100).await;
    let hook = crate::webhooks::receiver_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), vec![]).await;
    let body = serde_json::json!({"model": "hailuo-2.3", "prompt": "a paper boat", "webhookUrl": hook.url});
    let id = app.submit(&key, &body).await;
    let job = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");

    let presigned = job["result"]["videoUrl"].as_str().unwrap();
    assert!(presigned.starts_with(&format!("{}/{bucket}/results/{id}.mp4?", s3.endpoint)), "{presigned}");
    assert!(presigned.contains("X-Amz-Signature=") && presigned.contains("X-Amz-Expires=604800"), "{presigned}");
    let listed = app.list_jobs(&key, "").await;
    assert_eq!(
        listed.body["jobs"][0]["result"]["videoUrl"].as_str().unwrap().split('?').next(),
        presigned.split('?').next()
    );

    // The presigned URL reaches the bucket without reelgate and supports ranges there too.
    let direct = app.http.get(presigned).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    let bytes = direct.bytes().await.unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");
    let part = app.http.get(presigned).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert!(part.bytes().await.unwrap() == bytes[100..200]);

    // The completed webhook carries a presigned URL too, signed when it was sent.
    crate::helpers::eventually(WITHIN, || async { !hook.received().is_empty() }).await;
    let event: serde_json::Value = serde_json::from_slice(&hook.received()[0].body).unwrap();
    let hooked = event["result"]["videoUrl"].as_str().unwrap();
    assert!(hooked.starts_with(&format!("{}/{bucket}/results/{id}.mp4?", s3.endpoint)), "{event}");
    assert!(app.http.get(hooked).send().await.unwrap().bytes().await.unwrap() == bytes, "the webhook's URL works");

    // The stored URL stays reelgate's own (it never expires) and serves the same bytes.
    let stored = app.store.get_job(key.account_id, id.parse().unwrap()).await.unwrap().unwrap();
    let own = stored.result.as_ref().unwrap()["videoUrl"].as_str().unwrap().to_string();
    assert!(own.starts_with(&format!("http://{}/v2/results/{id}/", app.addr)), "{own}");
    serves_with_ranges(&app, &own, &bytes).await;
    app.stop().await.unwrap();
}
