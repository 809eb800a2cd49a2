//! GET /v2/me, GET /v2/models, /healthz, request ids and unknown routes.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{video, TestApp};

#[tokio::test]
async fn me_shows_the_key_the_account_and_its_live_balance() {
    let app = TestApp::spawn().await;
    let key = app.create_key(42).await;
    let r = app.me(&key.key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["team"]["id"], key.account_id.to_string());
    assert_eq!(r.body["team"]["credits"], 42);
    assert_eq!(r.body["team"]["plan"], "self-hosted");
    assert_eq!(r.body["team"]["maxConcurrentJobs"], 10);
    assert_eq!(r.body["team"]["customerId"], Value::Null);
    assert_eq!(r.body["apiKey"]["id"], key.key_id.to_string());
    assert_eq!(r.body["apiKey"]["prefix"], &key.key[..12]);
    assert_eq!(r.body["user"]["role"], "OWNER");
    assert!(!r.body.to_string().contains(&key.key), "the secret must never be echoed");
    app.generate(&key, &video("hailuo-2.3", "x")).await;
    assert_eq!(app.me(&key.key).await.body["team"]["credits"], 37);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn models_lists_the_catalog_with_prices_and_filters_by_modality() {
    let app = TestApp::spawn().await;
    let get = |q: &'static str| app.call(Method::GET, "/v2/models", q, None, None, &[]);
    let r = get("/v2/models").await;
    assert_eq!(r.status, 200);
    let models = r.body["models"].as_array().unwrap();
    let ids: Vec<_> = models.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["hailuo-2.3", "hailuo-02", "hailuo-2.3-fast"]);
    let h02 = &models[1];
    assert_eq!((h02["costMin"].clone(), h02["costMax"].clone()), (json!(5), json!(10)));
    assert_eq!(h02["modality"], "video");
    assert_eq!(h02["pricingMode"], "flat");
    let prices: Vec<(String, i64)> = h02["reelgate"]["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["variant"].as_str().unwrap().to_string(), p["credits"].as_i64().unwrap()))
        .collect();
    assert_eq!(prices, [("768p-6s".to_string(), 5), ("768p-10s".to_string(), 8), ("1080p-6s".to_string(), 10)]);
    assert!(h02["reelgate"]["requestSchema"]["properties"]["hailuoParams"]["properties"]["end_image"].is_object());
    assert!(models[0]["reelgate"]["requestSchema"]["properties"]["hailuoParams"]["properties"]["end_image"].is_null());
    assert_eq!(models[2]["reelgate"]["imageRequired"], true);

    assert_eq!(get("/v2/models?modality=video").await.body["models"].as_array().unwrap().len(), 3);
    assert_eq!(get("/v2/models?modality=image").await.body, json!({"models": []}));
    assert_eq!(get("/v2/models?modality=music").await.body, json!({"models": []}));
    let bad = get("/v2/models?modality=text").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body["details"]["modality"].is_array());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_response_has_a_request_id_and_unknown_routes_use_the_error_shape() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), first, "ids are unique");
    // A client-supplied id is echoed for correlation.
    let r = app.http.get(app.url("/v2/models")).header("x-request-id", "trace-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-123");

    let r = app.http.get(app.url("/v2/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = app.http.delete(app.url("/v2/me")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_answers_ready_while_the_store_answers() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    app.stop().await.unwrap();
}
