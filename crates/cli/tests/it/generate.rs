//! POST /v2/videos/generate: validation, pricing, charging, idempotency, concurrency.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{video, TestApp};

const IMG: &str = "https://images.example.com/first.png";

#[tokio::test]
async fn each_validation_refusal_names_its_path_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let key = app.create_key(1000).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"prompt": "x"}), "model"),
        (json!({"model": "veo-3", "prompt": "x"}), "model"),
        (json!({"model": "hailuo-2.3"}), "prompt"),
        (json!({"model": "hailuo-2.3", "prompt": ""}), "prompt"),
        (json!({"model": "hailuo-2.3", "prompt": "x".repeat(2001)}), "prompt"),
        (json!({"model": "hailuo-2.3", "prompt": 5}), "prompt"),
        (json!({"model": "hailuo-2.3", "prompt": "x", "seed": 7}), "seed"),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"aspect_ratio": "16:9"}}),
            "hailuoParams.aspect_ratio",
        ),
        (json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"duration": 5}}), "hailuoParams.duration"),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"resolution": "4k"}}),
            "hailuoParams.resolution",
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"resolution": "1080p", "duration": 10}}),
            "hailuoParams.duration",
        ),
        (
            json!({"model": "hailuo-02", "prompt": "x", "hailuoParams": {"resolution": "1080p", "duration": 10}}),
            "hailuoParams.duration",
        ),
        (json!({"model": "hailuo-2.3-fast", "prompt": "x"}), "hailuoParams.image"),
        (json!({"model": "hailuo-2.3-fast", "prompt": "x", "hailuoParams": {"duration": 6}}), "hailuoParams.image"),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": IMG, "end_image": IMG}}),
            "hailuoParams.end_image",
        ),
        (json!({"model": "hailuo-02", "prompt": "x", "hailuoParams": {"end_image": IMG}}), "hailuoParams.end_image"),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "file:///etc/passwd"}}),
            "hailuoParams.image",
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "data:image/gif;base64,R0lGOD=="}}),
            "hailuoParams.image",
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"prompt_optimizer": 1}}),
            "hailuoParams.prompt_optimizer",
        ),
        (json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": "mailto:a@b.c"}), "webhookUrl"),
        (json!({"model": "hailuo-2.3", "prompt": "x", "webhookEvents": []}), "webhookEvents"),
        (json!({"model": "hailuo-2.3", "prompt": "x", "webhookEvents": ["done"]}), "webhookEvents.0"),
    ];
    for (body, path) in cases {
        let r = app.generate(&key, &body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert!(r.body["error"].is_string(), "{:?}", r.body);
        let messages = r.body["details"][path].as_array();
        assert!(messages.is_some_and(|m| !m.is_empty()), "{body} should name {path}: {:?}", r.body);
    }
    // One body with several problems lists each of them.
    let r = app.generate(&key, &json!({"model": "nope", "prompt": "", "extra": 1})).await;
    let details = r.body["details"].as_object().unwrap();
    for path in ["model", "prompt", "extra"] {
        assert!(details.contains_key(path), "{path} missing in {details:?}");
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await, (1000, 1000));
    assert!(app.all_job_ids(&key).await.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_400_in_the_validation_shape() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    for raw in ["not json", "{\"model\":", "[]", "\"text\"", "null", "42", "", "   "] {
        let resp = app
            .http
            .post(app.url("/v2/videos/generate"))
            .header("X-API-Key", &key.key)
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{raw:?}");
        let body: Value = resp.json().await.unwrap();
        crate::helpers::ReferenceSpec::get().check("POST", "/v2/videos/generate", 400, &body);
        assert!(body["details"]["body"].as_array().is_some_and(|m| !m.is_empty()), "{raw:?}: {body}");
    }
    // A JSON body sent without a JSON content type is still judged by its bytes.
    let resp = app
        .http
        .post(app.url("/v2/videos/generate"))
        .header("X-API-Key", &key.key)
        .body(video("hailuo-2.3", "plain").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_and_change_nothing() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    let big = json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("data:image/png;base64,{}", "A".repeat(1 << 20))}});
    let r = app.generate(&key, &big).await;
    assert_eq!(r.status, 413);
    assert!(r.body["error"].as_str().unwrap().contains("too large"));
    // Without a Content-Length (chunked), the limit still holds.
    let (status, body) = send_chunked(&app, &key.key, big.to_string().as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());
    // Just under the limit is fine.
    let fits = json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("data:image/png;base64,{}", "A".repeat(1_000_000))}});
    assert_eq!(app.generate(&key, &fits).await.status, 202);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (95, 95));
    app.stop().await.unwrap();
}

/// Sends a chunked POST over a raw connection (no Content-Length) and reads the reply.
async fn send_chunked(app: &TestApp, key: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        // The server may answer 413 and close before taking everything; that is the point.
        if conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || conn.write_all(chunk).await.is_err()
            || conn.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body_start = text.find("\r\n\r\n").expect("end of headers") + 4;
    (status, serde_json::from_str(&text[body_start..]).unwrap_or(Value::Null))
}

#[tokio::test]
async fn accepted_jobs_are_queued_charged_at_catalog_price_and_readable() {
    let app = TestApp::spawn().await;
    let key = app.create_key(1000).await;
    let cases = [
        (json!({"model": "hailuo-2.3", "prompt": "a"}), 5),
        (json!({"model": "hailuo-2.3", "prompt": "a", "hailuoParams": {"duration": 10}}), 10),
        (json!({"model": "hailuo-2.3", "prompt": "a", "hailuoParams": {"resolution": "1080p"}}), 10),
        (json!({"model": "hailuo-2.3", "prompt": "a", "hailuoParams": {"resolution": "1080p", "duration": 6}}), 10),
        (json!({"model": "hailuo-02", "prompt": "a"}), 5),
        (
            json!({"model": "hailuo-02", "prompt": "a", "hailuoParams": {"duration": 10, "image": IMG, "end_image": IMG}}),
            8,
        ),
        (json!({"model": "hailuo-02", "prompt": "a", "hailuoParams": {"resolution": "1080p"}}), 10),
        (json!({"model": "hailuo-2.3-fast", "prompt": "a", "hailuoParams": {"image": IMG}}), 5),
        (
            json!({"model": "hailuo-2.3-fast", "prompt": "a", "hailuoParams": {"image": "data:image/png;base64,iVBORw0KGgo=", "duration": 10}}),
            10,
        ),
        (
            json!({"model": "hailuo-2.3-fast", "prompt": "a", "hailuoParams": {"image": IMG, "resolution": "1080p", "prompt_optimizer": true}}),
            10,
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "a", "webhookUrl": "https://hooks.example.com/r", "webhookEvents": ["completed"]}),
            5,
        ),
    ];
    let mut spent = 0;
    for (body, cost) in cases {
        let r = app.generate(&key, &body).await;
        assert_eq!(r.status, 202, "{body}: {:?}", r.body);
        assert_eq!(r.body["status"], "QUEUED");
        let id = r.body["jobId"].as_str().unwrap().to_string();
        spent += cost;
        let job = app.get_job(&key, &id).await;
        assert_eq!(job.status, 200);
        assert_eq!(job.body["id"], id.as_str());
        assert_eq!(job.body["status"], "QUEUED");
        assert_eq!(job.body["model"], body["model"]);
        assert_eq!(job.body["creditCost"], cost, "{body}");
        assert_eq!(job.body["progress"], 0);
        assert_eq!(job.body["result"], Value::Null);
        assert_eq!(job.body["error"], Value::Null);
        assert_eq!(job.body["completedAt"], Value::Null);
        assert_eq!(job.body["expired"], false);
        assert_eq!(job.body["input"], body);
        let expected_webhook = if body.get("webhookUrl").is_some() { json!("pending") } else { Value::Null };
        assert_eq!(job.body["webhookStatus"], expected_webhook);
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await, (1000 - spent, 1000 - spent));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_catalog_file_changes_prices() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.toml");
    std::fs::write(&file, "[prices.\"hailuo-2.3-fast\"]\n\"768p-6s\" = 3\n").unwrap();
    let app = TestApp::spawn_with(|c| c.catalog_file = Some(file.clone())).await;
    let key = app.create_key(10).await;
    let r =
        app.generate(&key, &json!({"model": "hailuo-2.3-fast", "prompt": "a", "hailuoParams": {"image": IMG}})).await;
    let job = app.get_job(&key, r.body["jobId"].as_str().unwrap()).await;
    assert_eq!(job.body["creditCost"], 3);
    let models = app.call(Method::GET, "/v2/models", "/v2/models", None, None, &[]).await;
    let fast = models.body["models"].as_array().unwrap().iter().find(|m| m["id"] == "hailuo-2.3-fast").unwrap().clone();
    assert_eq!(fast["costMin"], 3);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn insufficient_credits_is_402_with_the_numbers_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let key = app.create_key(7).await;
    let r = app.generate(&key, &json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"duration": 10}})).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body, json!({"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 7}));
    assert_eq!(app.balance_and_ledger(key.account_id).await, (7, 7));
    assert_eq!(app.store.ledger(key.account_id).await.unwrap().len(), 1, "only the initial grant");
    assert!(app.all_job_ids(&key).await.is_empty());
    // A zero balance reports zero.
    let broke = app.create_key(0).await;
    let r = app.generate(&broke, &video("hailuo-02", "x")).await;
    assert_eq!(r.body["creditsAvailable"], 0);
    assert_eq!(r.body["creditsRequired"], 5);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_hundred_concurrent_generates_never_overdraw() {
    let app = TestApp::spawn().await;
    let key = app.create_key(57 * 5).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = app.http.clone();
        let url = app.url("/v2/videos/generate");
        let k = key.key.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("X-API-Key", k)
                .json(&video("hailuo-2.3", &format!("clip {i}")))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }));
    }
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            202 => assert!(accepted.insert(body["jobId"].as_str().unwrap().to_string())),
            402 => {
                assert_eq!(body["error"], "Insufficient credits");
                assert!(body["creditsAvailable"].as_i64().unwrap() < 5);
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 57);
    assert_eq!(refused, 143);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (0, 0));
    let listed: HashSet<String> = app.all_job_ids(&key).await.into_iter().collect();
    assert_eq!(listed, accepted);
    let charges = app.store.ledger(key.account_id).await.unwrap().into_iter().filter(|e| e.amount == -5).count();
    assert_eq!(charges, 57);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn idempotency_key_replays_the_original_job_and_refuses_a_different_body() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    let body = json!({"model": "hailuo-2.3", "prompt": "same", "hailuoParams": {"duration": 6, "resolution": "768p"}});
    let first = app.generate_idem(&key, &body, "order-1").await;
    assert_eq!(first.status, 202);
    // Same content, keys in another order: still the same request.
    let reordered: Value = serde_json::from_str(
        r#"{"hailuoParams":{"resolution":"768p","duration":6},"prompt":"same","model":"hailuo-2.3"}"#,
    )
    .unwrap();
    let again = app.generate_idem(&key, &reordered, "order-1").await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["jobId"], first.body["jobId"]);
    assert_eq!(again.body["status"], "QUEUED");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (95, 95));

    let different = app.generate_idem(&key, &video("hailuo-2.3", "other"), "order-1").await;
    assert_eq!(different.status, 409);
    assert!(different.body["error"].as_str().unwrap().contains("Idempotency-Key"));
    assert_eq!(app.balance_and_ledger(key.account_id).await, (95, 95));

    // Keys are scoped to the account: another account may use the same key.
    let other = app.create_key(100).await;
    let theirs = app.generate_idem(&other, &body, "order-1").await;
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.body["jobId"], first.body["jobId"]);
    // A second key of the same account shares the account's keys.
    let sibling = app.create_key_on(Some(key.account_id), 0).await;
    let via_sibling = app.generate_idem(&sibling, &body, "order-1").await;
    assert_eq!(via_sibling.body["jobId"], first.body["jobId"]);

    // Malformed keys are refused before anything happens.
    let long = "k".repeat(256);
    let r = app.generate_idem(&key, &body, &long).await;
    assert_eq!(r.status, 400);
    assert!(r.body["details"]["Idempotency-Key"].is_array());
    let r = app.generate_idem(&key, &body, "").await;
    assert_eq!(r.status, 400);
    assert_eq!(app.generate_idem(&key, &video("hailuo-2.3", "max"), &"k".repeat(255)).await.status, 202);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (90, 90));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn twenty_racing_identical_requests_make_one_job_and_one_charge() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    let body = video("hailuo-02", "race");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = app.http.clone();
        let url = app.url("/v2/videos/generate");
        let (k, b) = (key.key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("X-API-Key", k)
                .header("Idempotency-Key", "race-1")
                .json(&b)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.insert(body["jobId"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.all_job_ids(&key).await.len(), 1);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (95, 95));
    app.stop().await.unwrap();
}

/// Client URLs are parsed at submission the way the image fetch and the webhook
/// delivery will read them: what could never be used, or names a private address
/// literally, is a 400 naming the field, before any charge.
#[tokio::test]
async fn unusable_or_private_urls_are_refused_before_any_charge() {
    let app = TestApp::spawn_with(|c| c.engine.allow_private_urls = false).await;
    let key = app.create_key(1000).await;
    let refused = [
        "http://[::1",
        "http://[fe80::1%25lo]/x.png",
        "https://user:secret@images.example.com/x.png",
        "http://127.0.0.1:9/x.png",
        "http://[::1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/x.png",
        "http://[fe80::1]/x.png",
        "http://0x7f.1/x.png",
    ];
    for url in refused {
        let cases = [
            ("webhookUrl", json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": url})),
            ("hailuoParams.image", json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": url}})),
            (
                "hailuoParams.end_image",
                json!({"model": "hailuo-02", "prompt": "x", "hailuoParams": {"image": IMG, "end_image": url}}),
            ),
        ];
        for (path, body) in cases {
            let r = app.generate(&key, &body).await;
            assert_eq!(r.status, 400, "{url} at {path}: {:?}", r.body);
            let messages = r.body["details"][path].as_array();
            assert!(messages.is_some_and(|m| !m.is_empty()), "{url} should be refused at {path}: {:?}", r.body);
        }
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await, (1000, 1000));
    assert!(app.all_job_ids(&key).await.is_empty());
    app.stop().await.unwrap();

    // An operator who allows private URLs gets them accepted; broken URLs stay refused.
    let app = TestApp::spawn_with(|c| c.engine.allow_private_urls = true).await;
    let key = app.create_key(1000).await;
    app.submit(&key, &json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": "http://127.0.0.1:9/hook"})).await;
    let r = app.generate(&key, &json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": "http://[::1"})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    app.stop().await.unwrap();
}
