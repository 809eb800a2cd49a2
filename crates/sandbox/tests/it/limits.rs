//! The per-key create RPM window, the optional query limit, and the stats that prove them.

use sandbox::SandboxConfig;
use serde_json::Value;

use crate::helpers::{fast_config, t2v, TestSandbox};

#[tokio::test]
async fn fourth_create_in_a_minute_is_rate_limited() {
    let sb = TestSandbox::spawn(SandboxConfig { rpm: 3, latency_ms: Some(200), ..SandboxConfig::default() }).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(sb.create_ok(&t2v(&format!("job {i}"))).await);
    }
    let v = sb.create(&t2v("job 3")).await;
    assert_eq!(v["task_id"], "");
    assert_eq!(v["base_resp"]["status_code"], 1002);
    assert_eq!(v["base_resp"]["status_msg"], "rate limit");
    // Another key has its own window.
    assert_eq!(sb.create_as("other", &t2v("job")).await["base_resp"]["status_code"], 0);

    // Queries and retrieves do not count against the create window.
    for _ in 0..10 {
        assert_eq!(sb.query(&ids[0]).await["base_resp"]["status_code"], 0);
    }
    let v = sb.create(&t2v("job 4")).await;
    assert_eq!(v["base_resp"]["status_code"], 1002);

    let stats = sb.sandbox.stats();
    let k = stats.key(&sb.key);
    assert_eq!((k.creates_total, k.creates_rate_limited, k.max_creates_in_window, k.tasks_created), (5, 2, 3, 3));
    assert_eq!(k.queries_total, 10);
    assert_eq!(stats.max_creates_in_window, 3);
    assert_eq!(stats.creates_total, 6);

    // The same numbers over HTTP.
    let json: Value = sb.http.get(format!("{}/sandbox/stats", sb.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(json["max_creates_in_window"], 3);
    assert_eq!(json["keys"][&sb.key]["creates_rate_limited"], 2);
    assert_eq!(json["keys"]["other"]["tasks_created"], 1);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn optional_query_limit() {
    let sb = TestSandbox::spawn(SandboxConfig { query_rpm: Some(2), ..fast_config() }).await;
    let id = sb.create_ok(&t2v("x")).await;
    assert_eq!(sb.query(&id).await["base_resp"]["status_code"], 0);
    assert_eq!(sb.retrieve("1").await["base_resp"]["status_code"], 2013);
    let v = sb.query(&id).await;
    assert_eq!(v["base_resp"]["status_code"], 1002);
    assert_eq!(sb.sandbox.stats().key(&sb.key).queries_rate_limited, 1);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn rate_limited_attempts_do_not_use_up_scripted_faults() {
    let sb = TestSandbox::spawn(SandboxConfig { rpm: 1, latency_ms: Some(200), ..SandboxConfig::default() }).await;
    let prompt = t2v("[sandbox:transient-1000]");
    assert_eq!(sb.create(&prompt).await["base_resp"]["status_code"], 1000);
    // The window is full: these 1002s do not count as attempts of the prompt.
    assert_eq!(sb.create(&t2v("[sandbox:transient-1013]")).await["base_resp"]["status_code"], 1002);
    assert_eq!(sb.create_as("second", &t2v("[sandbox:transient-1013]")).await["base_resp"]["status_code"], 1013);
    sb.sandbox.shutdown().await;
}
