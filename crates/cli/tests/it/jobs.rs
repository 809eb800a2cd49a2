//! GET /v2/jobs/{id} and GET /v2/jobs: ownership, filters, validation and paging.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::helpers::{video, TestApp, TestKey};

async fn submit(app: &TestApp, key: &TestKey, body: &Value) -> String {
    let r = app.generate(key, body).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body["jobId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn jobs_of_other_accounts_are_404_and_bad_ids_400() {
    let app = TestApp::spawn().await;
    let alice = app.create_key(100).await;
    let bob = app.create_key(100).await;
    let job = submit(&app, &alice, &video("hailuo-2.3", "alice's")).await;
    assert_eq!(app.get_job(&alice, &job).await.status, 200);

    let r = app.get_job(&bob, &job).await;
    assert_eq!(r.status, 404);
    assert!(r.body["error"].is_string());
    let missing = app.get_job(&bob, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!((missing.status, &missing.body), (r.status, &r.body), "foreign and missing look the same");

    for bad in ["123", "not-a-uuid", &job.replace('-', ""), &format!("{job}x")] {
        let r = app.get_job(&alice, bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body["error"].as_str().unwrap().contains("UUID"));
    }
    // Bob's listing never shows Alice's job, even when he searches for it.
    let r = app.list_jobs(&bob, &format!("?scope=team&search={job}")).await;
    assert_eq!(r.body["jobs"], json!([]));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn list_filters_scopes_and_validates_its_query() {
    let app = TestApp::spawn().await;
    let key = app.create_key(1000).await;
    let sibling = app.create_key_on(Some(key.account_id), 0).await;
    let a = submit(&app, &key, &video("hailuo-2.3", "a")).await;
    let b = submit(&app, &key, &video("hailuo-02", "b")).await;
    let c = submit(&app, &sibling, &video("hailuo-02", "c")).await;

    let ids = |r: &Value| -> Vec<String> {
        r["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
    };
    // Default scope: the calling key's jobs, newest first.
    let r = app.list_jobs(&key, "").await;
    assert_eq!(ids(&r.body), vec![b.clone(), a.clone()]);
    assert_eq!(r.body["hasMore"], false);
    assert_eq!(r.body["nextCursor"], Value::Null);
    assert!(r.body.get("models").is_none());
    // Team scope: the whole account.
    let r = app.list_jobs(&key, "?scope=team").await;
    assert_eq!(ids(&r.body), vec![c.clone(), b.clone(), a.clone()]);
    let r = app.list_jobs(&key, "?scope=team&model=hailuo-02").await;
    assert_eq!(ids(&r.body), vec![c.clone(), b.clone()]);
    let r = app.list_jobs(&key, "?status=QUEUED&scope=team").await;
    assert_eq!(ids(&r.body).len(), 3);
    let r = app.list_jobs(&key, "?status=COMPLETED").await;
    assert!(ids(&r.body).is_empty());
    let r = app.list_jobs(&key, &format!("?search={a}")).await;
    assert_eq!(ids(&r.body), vec![a.clone()]);
    let r = app.list_jobs(&key, "?include_models=true&scope=team").await;
    assert_eq!(r.body["models"], json!(["hailuo-02", "hailuo-2.3"]));
    let r = app.list_jobs(&key, "?limit=1").await;
    assert_eq!(ids(&r.body), vec![b.clone()]);
    assert_eq!(r.body["hasMore"], true);
    let next = r.body["nextCursor"].as_str().unwrap().to_string();
    let r = app.list_jobs(&key, &format!("?limit=1&cursor={next}")).await;
    assert_eq!(ids(&r.body), vec![a.clone()]);
    assert_eq!(r.body["hasMore"], false);

    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?status=queued", "status"),
        ("?status=DONE", "status"),
        ("?cursor=garbage", "cursor"),
        ("?search=123", "search"),
        ("?scope=everyone", "scope"),
        ("?include_models=yes", "include_models"),
    ] {
        let r = app.list_jobs(&key, query).await;
        assert_eq!(r.status, 400, "{query}");
        assert!(r.body["details"][param].is_array(), "{query}: {:?}", r.body);
    }
    let r = app.list_jobs(&key, "?limit=100").await;
    assert_eq!(r.status, 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn paging_visits_every_job_exactly_once_while_new_jobs_arrive() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100_000).await;
    let mut existing = HashSet::new();
    for i in 0..60 {
        existing.insert(submit(&app, &key, &video("hailuo-2.3", &format!("old {i}"))).await);
    }
    // A writer keeps adding jobs while the reader pages.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, url, k, stop) = (app.http.clone(), app.url("/v2/videos/generate"), key.key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.post(&url).header("X-API-Key", &k).json(&video("hailuo-2.3", "new")).send().await.unwrap();
                assert_eq!(r.status(), 202);
                n += 1;
            }
            n
        })
    };
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=7&cursor={c}"),
            None => "?limit=7".into(),
        };
        let r = app.list_jobs(&key, &q).await;
        assert_eq!(r.status, 200);
        let jobs = r.body["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 7);
        for j in jobs {
            *seen.entry(j["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        pages += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let added = writer.await.unwrap();
    assert!(added > 0, "the writer should have added jobs during paging");
    assert!(pages >= 9);
    assert!(seen.values().all(|&n| n == 1), "a job was visited twice");
    for id in &existing {
        assert_eq!(seen.get(id), Some(&1), "job {id} was skipped");
    }
    app.stop().await.unwrap();
}
