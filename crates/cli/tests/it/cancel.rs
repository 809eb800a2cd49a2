//! POST /v2/jobs/{id}/cancel: a queued job is cancelled and refunded exactly once.

use reqwest::Method;

use crate::helpers::{video, ReferenceSpec, TestApp, TestKey};

async fn cancel(app: &TestApp, key: &TestKey, id: &str) -> crate::helpers::Reply {
    let path = format!("/v2/jobs/{id}/cancel");
    app.call(Method::POST, "/v2/jobs/{id}/cancel", &path, Some(&key.key), None, &[]).await
}

#[tokio::test]
async fn cancelling_a_queued_job_refunds_it_once() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    let r = app
        .generate(&key, &serde_json::json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"duration": 10}}))
        .await;
    let id = r.body["jobId"].as_str().unwrap().to_string();
    assert_eq!(app.balance_and_ledger(key.account_id).await, (90, 90));

    let r = cancel(&app, &key, &id).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    ReferenceSpec::get().check("GET", "/v2/jobs/{id}", 200, &r.body);
    assert_eq!(r.body["status"], "CANCELLED");
    assert_eq!(r.body["creditCost"], 0);
    assert!(r.body["completedAt"].is_string());
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));

    // Reads (cached or not) agree, and the listing filter finds it.
    let job = app.get_job(&key, &id).await;
    assert_eq!(job.body["status"], "CANCELLED");
    assert_eq!(job.body["creditCost"], 0);
    let listed = app.list_jobs(&key, "?status=CANCELLED").await;
    assert_eq!(listed.body["jobs"][0]["id"], id.as_str());

    // A second cancel is refused and moves nothing.
    let again = cancel(&app, &key, &id).await;
    assert_eq!(again.status, 409);
    assert!(again.body["error"].as_str().unwrap().contains("already CANCELLED"));
    let kinds: Vec<_> = app.store.ledger(key.account_id).await.unwrap().iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["grant", "charge", "refund"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn twenty_racing_cancels_make_one_refund() {
    let app = TestApp::spawn().await;
    let key = app.create_key(5).await;
    let id = app.generate(&key, &video("hailuo-02", "race")).await.body["jobId"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url, k) = (app.http.clone(), app.url(&format!("/v2/jobs/{id}/cancel")), key.key.clone());
        tasks.push(tokio::spawn(async move {
            http.post(url).header("X-API-Key", k).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 409).count(), 19, "{statuses:?}");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (5, 5));
    let refunds = app
        .store
        .ledger(key.account_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == store::LedgerKind::Refund)
        .count();
    assert_eq!(refunds, 1);
    // The refunded credits are spendable again.
    assert_eq!(app.generate(&key, &video("hailuo-02", "again")).await.status, 202);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_is_scoped_to_the_account_and_checks_its_input() {
    let app = TestApp::spawn().await;
    let alice = app.create_key(10).await;
    let bob = app.create_key(10).await;
    let id = app.generate(&alice, &video("hailuo-2.3", "mine")).await.body["jobId"].as_str().unwrap().to_string();
    let r = cancel(&app, &bob, &id).await;
    assert_eq!(r.status, 404);
    assert_eq!(app.get_job(&alice, &id).await.body["status"], "QUEUED");
    assert_eq!(app.balance_and_ledger(bob.account_id).await, (10, 10));
    assert_eq!(cancel(&app, &alice, "not-a-uuid").await.status, 400);
    assert_eq!(cancel(&app, &alice, &uuid::Uuid::new_v4().to_string()).await.status, 404);
    let r = app.call(Method::POST, "/v2/jobs/{id}/cancel", &format!("/v2/jobs/{id}/cancel"), None, None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, serde_json::json!({"error": "API key is required"}));
    app.stop().await.unwrap();
}
