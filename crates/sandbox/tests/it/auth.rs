//! Bearer keys: MiniMax's codes for missing and unknown keys, fault keys, task visibility.

use sandbox::SandboxConfig;
use serde_json::Value;

use crate::helpers::{fast_config, t2v, TestSandbox};

const LOGIN_FAIL: &str =
    "login fail: Please carry the API secret key in the 'Authorization' field of the request header";

#[tokio::test]
async fn missing_and_unknown_keys() {
    let sb = TestSandbox::spawn(SandboxConfig { keys: vec!["good".into()], ..fast_config() }).await;
    let url = format!("{}/v1/video_generation", sb.base);
    for auth in [None, Some("Bearer "), Some("Basic Z29vZA==")] {
        let mut req = sb.http.post(&url).json(&t2v("x"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["task_id"], "");
        assert_eq!(v["base_resp"]["status_code"], 1004);
        assert_eq!(v["base_resp"]["status_msg"], LOGIN_FAIL);
    }
    let v = sb.create_as("wrong", &t2v("x")).await;
    assert_eq!(
        (v["base_resp"]["status_code"].as_i64(), v["base_resp"]["status_msg"].as_str()),
        (Some(2049), Some("invalid api key"))
    );
    let v = sb.create_as("good", &t2v("x")).await;
    assert_eq!(v["base_resp"]["status_code"], 0);

    // Query and retrieve check the key too.
    let q = sb.get_json("/v1/query/video_generation?task_id=1", "wrong").await;
    assert_eq!(q["base_resp"]["status_code"], 2049);
    let resp = sb.http.get(format!("{}/v1/files/retrieve?file_id=1", sb.base)).send().await.unwrap();
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["base_resp"]["status_code"], 1004);
    assert!(r.get("file").is_none());
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn any_key_when_none_configured_and_fault_suffixes() {
    let sb = TestSandbox::fast().await;
    assert_eq!(sb.create_as("whatever", &t2v("x")).await["base_resp"]["status_code"], 0);
    let cases = [
        ("acct-insufficient-balance", 1008, "insufficient balance"),
        ("acct-invalid-key", 2049, "invalid api key"),
        ("acct-usage-limit", 2056, "usage limit exceeded"),
    ];
    for (key, code, msg) in cases {
        let v = sb.create_as(key, &t2v("x")).await;
        assert_eq!(v["task_id"], "");
        assert_eq!(v["base_resp"]["status_code"], code);
        assert_eq!(v["base_resp"]["status_msg"], msg);
    }
    // The suffix keys are accepted even when a key list is configured.
    let sb2 = TestSandbox::spawn(SandboxConfig { keys: vec!["good".into()], ..fast_config() }).await;
    assert_eq!(sb2.create_as("x-insufficient-balance", &t2v("x")).await["base_resp"]["status_code"], 1008);
    sb2.sandbox.shutdown().await;
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn tasks_and_files_are_private_to_their_key() {
    let sb = TestSandbox::fast().await;
    let (file_id, _) = sb.finished_file(&t2v("mine")).await;
    let id = sb.create_ok(&t2v("mine too")).await;
    let q = sb.get_json(&format!("/v1/query/video_generation?task_id={id}"), "someone-else").await;
    assert_eq!(q["base_resp"]["status_code"], 2013);
    assert_eq!(q["base_resp"]["status_msg"], "invalid params, task not found");
    assert!(q.get("status").is_none());
    let r = sb.get_json(&format!("/v1/files/retrieve?file_id={file_id}"), "someone-else").await;
    assert_eq!(r["base_resp"]["status_msg"], "invalid params, file not found");
    let q = sb.query("123456789012345678").await;
    assert_eq!(q["base_resp"]["status_code"], 2013);
    sb.sandbox.shutdown().await;
}
