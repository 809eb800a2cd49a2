//! Authentication: every route but GET /v2/models needs an active key, and key
//! changes made by the admin CLI reach a running server within 2 seconds.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{eventually, video, TestApp};

/// (method, spec template, concrete path) of every authenticated route.
fn authed_routes() -> Vec<(Method, &'static str, String)> {
    vec![
        (Method::POST, "/v2/videos/generate", "/v2/videos/generate".into()),
        (Method::GET, "/v2/jobs", "/v2/jobs".into()),
        (Method::GET, "/v2/jobs/{id}", format!("/v2/jobs/{}", uuid::Uuid::new_v4())),
        (Method::GET, "/v2/me", "/v2/me".into()),
    ]
}

#[tokio::test]
async fn missing_unknown_disabled_and_revoked_keys_are_refused_on_every_route() {
    let app = TestApp::spawn().await;
    let disabled = app.create_key(100).await;
    let revoked = app.create_key(100).await;
    app.store.set_api_key_status(disabled.key_id, domain::ApiKeyStatus::Disabled).await.unwrap();
    app.store.set_api_key_status(revoked.key_id, domain::ApiKeyStatus::Revoked).await.unwrap();
    let body = video("hailuo-2.3", "x");
    let unknown = domain::ApiKeySecret::generate().plaintext;
    for (method, template, path) in authed_routes() {
        let b = (method == Method::POST).then_some(&body);
        let cases: [(Option<&str>, u16, &str); 6] = [
            (None, 401, "API key is required"),
            (Some(""), 401, "API key is required"),
            (Some(&unknown), 401, "Invalid API key"),
            (Some("not-a-key"), 401, "Invalid API key"),
            (Some(&revoked.key), 401, "Invalid API key"),
            (Some(&disabled.key), 403, "API key is inactive"),
        ];
        for (key, status, message) in cases {
            let r = app.call(method.clone(), template, &path, key, b, &[]).await;
            assert_eq!(r.status, status, "{method} {path} with {key:?}");
            assert_eq!(r.body, json!({"error": message}), "{method} {path} with {key:?}");
        }
    }
    // Refused requests moved no credits.
    assert_eq!(app.balance_and_ledger(disabled.account_id).await, (100, 100));
    // The catalog is public.
    let r = app.call(Method::GET, "/v2/models", "/v2/models", None, None, &[]).await;
    assert_eq!(r.status, 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_api_key_headers_are_ambiguous_and_refused_on_every_route() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.create_key(100).await, app.create_key(100).await);
    let body = video("hailuo-2.3", "x");
    let expected = json!({"error": "Ambiguous credentials: send exactly one X-API-Key header"});
    for (method, template, path) in authed_routes() {
        let sent = (method == Method::POST).then_some(&body);
        // Two different keys, the same key twice, and a valid key beside a garbage one:
        // none is "the first one wins".
        for (first, second) in [(&a.key, &b.key), (&a.key, &a.key), (&a.key, &"afk_garbage".to_string())] {
            let headers = [("X-API-Key", first.as_str()), ("X-API-Key", second.as_str())];
            let r = app.call(method.clone(), template, &path, None, sent, &headers).await;
            assert_eq!(r.status, 400, "{method} {path}: {:?}", r.body);
            assert_eq!(r.body, expected, "{method} {path}");
        }
    }
    // Nothing was charged or queued.
    for key in [&a, &b] {
        assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
        assert!(app.all_job_ids(key).await.is_empty());
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cli_disable_enable_and_revoke_reach_the_running_server_within_two_seconds() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    assert_eq!(app.me(&key.key).await.status, 200);
    // The CLI opens the app's database (SQLite file or PostgreSQL schema) as a second process.
    let cli = |args: &[&str]| {
        let (ok, _, err) = app.data().reelgate(args);
        assert!(ok, "{args:?}: {err}");
    };

    cli(&["keys", "disable", &key.key_id.to_string()]);
    let took = eventually(Duration::from_secs(2), || async { app.me(&key.key).await.status == 403 }).await;
    eprintln!("disable took effect after {took:?}");

    cli(&["keys", "enable", &key.key_id.to_string()]);
    eventually(Duration::from_secs(2), || async { app.me(&key.key).await.status == 200 }).await;

    // Revoke by public prefix this time.
    let prefix = &key.key[..12];
    cli(&["keys", "revoke", prefix]);
    let took = eventually(Duration::from_secs(2), || async { app.me(&key.key).await.status == 401 }).await;
    eprintln!("revoke took effect after {took:?}");
    let r = app.generate(&key, &video("hailuo-2.3", "after revoke")).await;
    assert_eq!(r.status, 401);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));

    // Revoked is final.
    let (ok, _, _) = app.data().reelgate(&["keys", "enable", &key.key_id.to_string()]);
    assert!(!ok);
    app.stop().await.unwrap();
}
