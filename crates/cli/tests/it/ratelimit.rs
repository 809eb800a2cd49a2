//! Per-key request rates: over the rate a key gets 429 with `Retry-After` before
//! anything is charged or written, and other keys are served as before.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{video, TestApp};

#[tokio::test]
async fn over_the_generate_rate_a_key_gets_429_charges_nothing_and_other_keys_are_served() {
    // One generate a second with a burst of two; reads are not limited here.
    let app = TestApp::spawn_with(|c| {
        c.rate_limits.generate_per_sec = 1;
        c.rate_limits.generate_burst = 2;
        c.rate_limits.read_per_sec = 0;
    })
    .await;
    let key = app.create_key(100).await;
    let other = app.create_key(100).await;
    let body = video("hailuo-2.3", "x");

    // A new job, then its replay (a replay is a generate too), then refusals: fresh
    // requests and replays alike, far faster than one a second.
    let started = std::time::Instant::now();
    let first = app.generate_idem(&key, &body, "same").await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let replay = app.generate_idem(&key, &body, "same").await;
    assert_eq!(replay.status, 202, "{:?}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let mut refused = 0;
    for i in 0..6 {
        let r = if i % 2 == 0 { app.generate(&key, &body).await } else { app.generate_idem(&key, &body, "same").await };
        if r.status == 202 {
            // Only if this machine took over a second for the requests before.
            continue;
        }
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert_eq!(r.body, json!({"error": "Too many requests: retry after 1 s"}));
        assert_eq!(r.headers["retry-after"], "1", "whole seconds, rounded up");
        refused += 1;
    }
    assert!(refused >= 4, "{refused} of 6 refused");
    // Decided before the body is read: a body that would be refused (not JSON) gets 429.
    let r = app
        .http
        .post(app.url("/v2/videos/generate"))
        .header("X-API-Key", &key.key)
        .body("not json")
        .send()
        .await
        .unwrap();
    // (The next token comes a second after the burst.)
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(r.status(), 429);
    }
    // The refused requests wrote nothing: one job, one charge.
    let jobs = app.all_job_ids(&key).await;
    let ledger = app.store.ledger(key.account_id).await.unwrap();
    let (balance, sum) = app.balance_and_ledger(key.account_id).await;
    assert_eq!(balance, sum);
    assert_eq!(balance, 100 - 5 * (jobs.len() as i64), "one charge per job");
    assert_eq!(ledger.len(), 1 + jobs.len(), "the grant and one charge per job: {ledger:?}");
    assert!(jobs.len() <= 4, "{} jobs", jobs.len());

    // Another key has its own bucket.
    assert_eq!(app.generate(&other, &body).await.status, 202);
    assert_eq!(app.generate(&other, &body).await.status, 202);

    // Waiting exactly Retry-After, as Apiframe's SDK does, finds a token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = app.generate_idem(&key, &body, "same").await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn over_the_read_rate_a_key_gets_429_on_reads_while_its_generates_and_other_keys_pass() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limits.read_per_sec = 1;
        c.rate_limits.read_burst = 3;
    })
    .await;
    let key = app.create_key(100).await;
    let other = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "x")).await;
    let job_path = format!("/v2/jobs/{id}");
    let reads: [(&str, &str); 3] = [("/v2/me", "/v2/me"), ("/v2/jobs/{id}", &job_path), ("/v2/jobs", "/v2/jobs")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        for (template, path) in reads {
            let r = app.call(Method::GET, template, path, Some(&key.key), None, &[]).await;
            if r.status == 429 {
                assert!(r.body["error"].as_str().unwrap().starts_with("Too many requests"), "{:?}", r.body);
                let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
            }
            statuses.push(r.status.as_u16());
        }
    }
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 4, "{statuses:?}");
    assert!(statuses[..3].iter().all(|s| *s == 200), "the burst passes: {statuses:?}");
    // Generates draw from their own bucket; other keys from theirs.
    assert_eq!(app.generate(&key, &video("hailuo-2.3", "y")).await.status, 202);
    assert_eq!(app.me(&other.key).await.status, 200);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (90, 90));
    app.stop().await.unwrap();
}
