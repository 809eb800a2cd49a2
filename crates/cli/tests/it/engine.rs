//! The job engine end to end: the real server with its built-in MiniMax sandbox (or a
//! standalone one), over real HTTP, checking job states, the ledger and the videos.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{video, TestApp, TestKey};

const WITHIN: Duration = Duration::from_secs(30);

async fn ledger_is_consistent(app: &TestApp, key: &TestKey) -> Vec<store::LedgerEntry> {
    let (balance, sum) = app.balance_and_ledger(key.account_id).await;
    assert_eq!(balance, sum, "the balance equals the ledger");
    app.store.ledger(key.account_id).await.unwrap()
}

fn count(entries: &[store::LedgerEntry], kind: store::LedgerKind, job: &str) -> usize {
    entries.iter().filter(|e| e.kind == kind && e.job_id.map(|j| j.to_string()).as_deref() == Some(job)).count()
}

#[tokio::test]
async fn a_text_to_video_job_completes_and_its_video_is_served_with_ranges() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let r = app.generate(&key, &video("hailuo-2.3", "a lighthouse at dusk")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["jobId"].as_str().unwrap().to_string();

    // Progress only rises while the job runs.
    let mut seen = Vec::new();
    let job = loop {
        let r = app.get_job(&key, &id).await;
        seen.push(r.body["progress"].as_i64().unwrap_or(0));
        if r.body["status"] == "COMPLETED" || r.body["status"] == "FAILED" {
            break r.body;
        }
        assert!(seen.len() < 3000, "job did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["progress"], 100);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {seen:?}");
    assert!(seen.iter().any(|p| *p > 0 && *p < 100), "intermediate progress was visible: {seen:?}");
    assert_eq!(job["creditCost"], 5);
    assert!(job["completedAt"].is_string());

    let url = job["result"]["videoUrl"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://{}/v2/results/{id}/", app.addr)), "{url}");
    let full = app.http.get(url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "video/mp4");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let len: usize = full.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = full.bytes().await.unwrap();
    assert_eq!(bytes.len(), len);
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");

    let part = app.http.get(url).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 100-199/{len}").as_str());
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(100..200));
    let tail = app.http.get(url).header("Range", "bytes=-10").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap(), bytes.slice(len - 10..));
    let outside = app.http.get(url).header("Range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers()["content-range"], format!("bytes */{len}").as_str());

    // The URL is a capability for this job only.
    let forged = url.replace(&id, &domain::JobId::new().to_string());
    assert_eq!(app.http.get(&forged).send().await.unwrap().status(), 404);
    let tampered = format!("{}0.mp4", url.trim_end_matches("0.mp4").trim_end_matches(".mp4"));
    if tampered != url {
        assert_eq!(app.http.get(&tampered).send().await.unwrap().status(), 404);
    }

    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Charge, &id), 1);
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &id), 0);
    let metrics = app.metrics().await;
    assert!(metrics.contains("reelgate_jobs_completed_total 1"), "{metrics}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn content_policy_failures_fail_the_job_with_one_refund() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    // 1026 answers the create call; 1027 ends the task after it ran.
    let mut ids = Vec::new();
    for prompt in ["a cat [sandbox:fail-1026]", "a dog [sandbox:fail-1027]"] {
        let r = app.generate(&key, &video("hailuo-02", prompt)).await;
        ids.push(r.body["jobId"].as_str().unwrap().to_string());
    }
    for (id, code) in ids.iter().zip(["1026", "1027"]) {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        assert_eq!(job["status"], "FAILED", "{job}");
        assert!(job["error"].as_str().unwrap().contains(code), "{job}");
        assert_eq!(job["creditCost"], 0);
        assert!(job["result"].is_null());
    }
    let ledger = ledger_is_consistent(&app, &key).await;
    for id in &ids {
        assert_eq!(count(&ledger, store::LedgerKind::Refund, id), 1, "refunded exactly once");
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await.0, 100);
    let metrics = app.metrics().await;
    assert!(metrics.contains("code=\"1026\""), "{metrics}");
    assert!(metrics.contains("reelgate_refunds_total 2"), "{metrics}");
    app.stop().await.unwrap();
}
