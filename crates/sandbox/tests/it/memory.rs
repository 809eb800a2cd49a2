//! 10,000 tasks created quickly must not balloon memory: per-task state is a few dozen bytes.

use sandbox::SandboxConfig;

use crate::helpers::{fast_config, rss_kib, t2v, TestSandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_stay_small() {
    let sb = TestSandbox::spawn(SandboxConfig { rpm: 0, ..fast_config() }).await;
    // Warm up the connection pool and allocator before measuring.
    sb.create_ok(&t2v("warm up")).await;
    let before = rss_kib();
    let n = 10_000;
    let mut joins = Vec::new();
    for worker in 0..8 {
        let http = sb.http.clone();
        let base = sb.base.clone();
        joins.push(tokio::spawn(async move {
            for i in (worker..n).step_by(8) {
                // Half the jobs share a prompt, half are distinct, as a load test would mix them.
                let prompt =
                    if i % 2 == 0 { "a shared prompt".to_owned() } else { format!("distinct prompt number {i}") };
                let resp = http
                    .post(format!("{base}/v1/video_generation"))
                    .bearer_auth("load")
                    .json(&t2v(&prompt))
                    .send()
                    .await
                    .unwrap();
                let v: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(v["base_resp"]["status_code"], 0);
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let after = rss_kib();
    assert_eq!(sb.sandbox.task_count(), n + 1);
    let grown = after.saturating_sub(before);
    println!("RSS before {before} KiB, after {after} KiB, grown {grown} KiB for {n} tasks");
    // Generous on purpose: other tests of this binary run in the same process at the same time
    // (one sends 20 MB images). Alone this test grows by about 4 MB; the tight per-task bound is
    // the unit test `tasks::tests::hundred_thousand_tasks_fit`.
    assert!(grown < 256 * 1024, "RSS grew by {grown} KiB");
    sb.sandbox.shutdown().await;
}
