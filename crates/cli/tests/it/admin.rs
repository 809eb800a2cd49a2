//! The admin API (`/admin/v1`) against a real server, on whichever backend the run uses:
//! admin-token auth (none, unknown, revoked and a customer's key all 401), accounts,
//! keys, idempotent credit adjustments, the ledger, an audit row for every write, the
//! job explorer with its timeline, usage figures checked against a scripted set of jobs
//! (and the CSV parsed back), the MiniMax accounts' view after a rate-limit answer and a
//! hold, `admin.listen`, and the `reelgate admin tokens` commands.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use store::{AuditContext, LedgerKind};

use crate::helpers::{eventually, video, TestApp};

const JOB_WITHIN: Duration = Duration::from_secs(40);

/// An operator's HTTP client on one app.
struct Admin<'a> {
    app: &'a TestApp,
    token: String,
    base: String,
}

struct Answer {
    status: StatusCode,
    body: Value,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl<'a> Admin<'a> {
    /// A new admin token made the way `reelgate admin tokens create` makes one.
    async fn new(app: &'a TestApp) -> Self {
        let made = service::admin::create_token(app.store.as_ref(), "ops", AuditContext::cli(Some("test")))
            .await
            .expect("token");
        Self { app, token: made.secret, base: app.url("") }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.app.http.request(method, format!("{}/admin/v1{path}", self.base)).bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(headers.contains_key("x-request-id"));
        Answer { status, body, text, headers }
    }

    async fn get(&self, path: &str) -> Value {
        let a = self.send(Method::GET, path, None, &[]).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.body
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    /// Every audit row, newest first, paging to the end.
    async fn audit(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut path = "/audit?limit=2".to_string();
        loop {
            let page = self.get(&path).await;
            rows.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["nextCursor"].as_str() {
                Some(c) => path = format!("/audit?limit=2&cursor={c}"),
                None => return rows,
            }
        }
    }
}

#[tokio::test]
async fn the_admin_api_refuses_missing_unknown_revoked_and_customer_credentials() {
    let app = TestApp::spawn().await;
    let customer = app.create_key(10).await;
    let admin = Admin::new(&app).await;
    let revoked = Admin::new(&app).await;
    service::admin::revoke_token(app.store.as_ref(), &revoked.token[..12], AuditContext::cli(None)).await.unwrap();
    let unknown = domain::ApiKeySecret::generate_admin_token().plaintext;
    let job = uuid::Uuid::new_v4();
    let account = customer.account_id;
    let routes: Vec<(Method, String)> = vec![
        (Method::GET, "/session".into()),
        (Method::GET, "/overview".into()),
        (Method::GET, "/accounts".into()),
        (Method::POST, "/accounts".into()),
        (Method::GET, format!("/accounts/{account}")),
        (Method::PATCH, format!("/accounts/{account}")),
        (Method::POST, format!("/accounts/{account}/keys")),
        (Method::POST, format!("/accounts/{account}/credits")),
        (Method::GET, format!("/accounts/{account}/ledger")),
        (Method::GET, "/keys".into()),
        (Method::POST, format!("/keys/{}/disable", customer.key_id)),
        (Method::GET, "/jobs".into()),
        (Method::GET, format!("/jobs/{job}")),
        (Method::POST, format!("/jobs/{job}/cancel")),
        (Method::POST, format!("/jobs/{job}/webhooks/replay")),
        (Method::GET, "/usage".into()),
        (Method::GET, "/upstreams".into()),
        (Method::POST, "/upstreams/sandbox/bench".into()),
        (Method::GET, "/audit".into()),
    ];
    let bearer = |t: &str| format!("Bearer {t}");
    for (method, path) in &routes {
        let url = app.url(&format!("/admin/v1{path}"));
        let attempts: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("no credentials", vec![]),
            ("an unknown token", vec![("authorization", bearer(&unknown))]),
            ("a revoked token", vec![("authorization", bearer(&revoked.token))]),
            ("a customer key as bearer", vec![("authorization", bearer(&customer.key))]),
            ("a customer key", vec![("x-api-key", customer.key.clone())]),
            ("garbage", vec![("authorization", "Bearer x".into())]),
        ];
        for (what, headers) in attempts {
            let mut req = app.http.request(method.clone(), &url).json(&json!({"amount": 5, "name": "x"}));
            for (name, value) in &headers {
                req = req.header(*name, value);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {what}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body, json!({"error": "Invalid or missing admin token"}), "{method} {path} with {what}");
        }
    }
    // Nothing was written by the refused requests, and the good token gets in.
    assert_eq!(app.balance_and_ledger(account).await, (10, 10));
    assert!(!app.store.get_account(account).await.unwrap().unwrap().disabled);
    let session = admin.get("/session").await;
    assert_eq!(session["token"]["name"], "ops");
    // The document is public and names every route above.
    let doc: Value = app.http.get(app.url("/admin/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for template in ["/accounts/{id}/credits", "/jobs/{id}/webhooks/replay", "/upstreams/{name}/bench", "/usage"] {
        assert!(paths.contains_key(template), "{template} documented");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn accounts_keys_and_credits_are_managed_with_an_audit_row_for_every_write() {
    let app = TestApp::spawn().await;
    let admin = Admin::new(&app).await;
    let writes_before = admin.audit().await.len();

    // An account, found by search, read, and changed.
    let made = admin
        .post(
            "/accounts",
            &json!({"name": "Acme Video", "email": "ops@acme.test", "credits": 100, "maxConcurrentJobs": 3}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = made.body["id"].as_str().unwrap().to_owned();
    assert_eq!(made.body["credits"], 100);
    let bad = admin.post("/accounts", &json!({"name": "  ", "credits": -1})).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let found = admin.get("/accounts?search=acme").await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], id.as_str());
    assert!(admin.get("/accounts?search=nobody").await["data"].as_array().unwrap().is_empty());
    let patched =
        admin.send(Method::PATCH, &format!("/accounts/{id}"), Some(&json!({"plan": "pro", "email": null})), &[]).await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!((patched.body["plan"].as_str(), patched.body["email"].is_null()), (Some("pro"), true));

    // A key: the secret once, and it works on the public API.
    let key = admin.post(&format!("/accounts/{id}/keys"), &json!({"name": "render farm"})).await;
    assert_eq!(key.status, 201, "{}", key.text);
    assert_eq!(key.headers["cache-control"], "no-store");
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let key_id = key.body["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.me(&secret).await.status, 200);
    let detail = admin.get(&format!("/accounts/{id}")).await;
    assert_eq!(detail["keys"][0]["id"], key_id.as_str());
    assert!(!detail.to_string().contains(&secret), "the secret is never shown again");
    assert_eq!(detail["usageThisMonth"]["submitted"], 0);

    // Disabling the account switches its keys off (403) and back on.
    let off = admin.send(Method::PATCH, &format!("/accounts/{id}"), Some(&json!({"disabled": true})), &[]).await;
    assert_eq!(off.status, 200);
    eventually(Duration::from_secs(2), || async { app.me(&secret).await.status == 403 }).await;
    admin.send(Method::PATCH, &format!("/accounts/{id}"), Some(&json!({"disabled": false})), &[]).await;
    eventually(Duration::from_secs(2), || async { app.me(&secret).await.status == 200 }).await;
    let disabled = admin.post(&format!("/keys/{key_id}/disable"), &json!({})).await;
    assert_eq!((disabled.status, disabled.body["status"].as_str()), (StatusCode::OK, Some("disabled")));
    admin.post(&format!("/keys/{key_id}/enable"), &json!({})).await;
    let listed = admin.get(&format!("/keys?account={id}")).await;
    assert_eq!(listed["data"][0]["status"], "active");
    // Keys page too, oldest first, each once.
    let second = admin.post(&format!("/accounts/{id}/keys"), &json!({"name": "backup"})).await;
    let mut paged = Vec::new();
    let mut path = format!("/keys?account={id}&limit=1");
    loop {
        let page = admin.get(&path).await;
        paged.extend(page["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        let Some(c) = page["nextCursor"].as_str() else { break };
        path = format!("/keys?account={id}&limit=1&cursor={c}");
    }
    assert_eq!(paged, [key_id.clone(), second.body["key"]["id"].as_str().unwrap().to_owned()]);

    // A grant retried with the same Idempotency-Key grants once.
    let grant = json!({"amount": 50, "note": "invoice 7"});
    let path = format!("/accounts/{id}/credits");
    let first = admin.send(Method::POST, &path, Some(&grant), &[("Idempotency-Key", "inv-7")]).await;
    let again = admin.send(Method::POST, &path, Some(&grant), &[("Idempotency-Key", "inv-7")]).await;
    assert_eq!((first.status, again.status), (StatusCode::OK, StatusCode::OK), "{} {}", first.text, again.text);
    assert_eq!((first.body["replayed"].as_bool(), again.body["replayed"].as_bool()), (Some(false), Some(true)));
    assert_eq!(first.body["entry"]["id"], again.body["entry"]["id"]);
    assert_eq!(again.body["account"]["credits"], 150);
    let other = admin.send(Method::POST, &path, Some(&json!({"amount": 60})), &[("Idempotency-Key", "inv-7")]).await;
    assert_eq!(other.status, 409, "{}", other.text);
    // A deduction below zero is refused and moves nothing; one within the balance works.
    let too_much = admin.post(&path, &json!({"amount": -151})).await;
    assert_eq!(too_much.status, 409, "{}", too_much.text);
    assert_eq!(too_much.body["creditsAvailable"], 150);
    let zero = admin.post(&path, &json!({"amount": 0})).await;
    assert_eq!(zero.status, 400);
    let deducted = admin.post(&path, &json!({"amount": -40, "note": "refund to card"})).await;
    assert_eq!(deducted.body["entry"]["kind"], "deduct");
    assert_eq!(deducted.body["account"]["credits"], 110);
    let account: domain::AccountId = id.parse().unwrap();
    assert_eq!(app.balance_and_ledger(account).await, (110, 110));
    let kinds: Vec<LedgerKind> = app.store.ledger(account).await.unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [LedgerKind::Grant, LedgerKind::Grant, LedgerKind::Deduct]);

    // The ledger pages newest first, each row once.
    let mut seen = Vec::new();
    let mut page = admin.get(&format!("/accounts/{id}/ledger?limit=1")).await;
    loop {
        seen.extend(page["data"].as_array().unwrap().iter().map(|e| e["amount"].as_i64().unwrap()));
        let Some(c) = page["nextCursor"].as_str() else { break };
        page = admin.get(&format!("/accounts/{id}/ledger?limit=1&cursor={c}")).await;
    }
    assert_eq!(seen, [-40, 50, 100]);

    // One audit row per change, none for refused or replayed writes, each with its token
    // and request id.
    let audit = admin.audit().await;
    let actions: Vec<&str> =
        audit[..audit.len() - writes_before].iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "credits.adjust",
            "credits.adjust",
            "key.create",
            "key.enable",
            "key.disable",
            "account.update",
            "account.update",
            "key.create",
            "account.update",
            "account.create",
        ]
    );
    let session = admin.get("/session").await;
    for row in &audit[..actions.len()] {
        assert_eq!(row["tokenId"], session["token"]["id"], "{row}");
        assert!(row["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{row}");
    }
    assert_eq!(audit[0]["before"]["credits"], 150);
    assert_eq!(audit[0]["after"]["credits"], 110);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn usage_matches_a_scripted_set_of_jobs_and_the_csv_reads_back_the_same() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let admin = Admin::new(&app).await;
    let (a, b) = (app.create_key(10_000).await, app.create_key(10_000).await);
    // Held, so B's second job is still QUEUED when it is cancelled.
    let held = admin.post("/upstreams/sandbox/bench", &json!({"minutes": 5, "reason": "scripted"})).await;
    assert_eq!(held.status, 200, "{}", held.text);
    assert_eq!(held.body["inRotation"], false);
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(app.submit(&a, &video("hailuo-2.3", &format!("a{i}"))).await);
    }
    jobs.push(app.submit(&a, &video("hailuo-2.3", "refused [sandbox:fail-1026]")).await);
    jobs.push(app.submit(&b, &video("hailuo-02", "b0")).await);
    let cancelled = app.submit(&b, &video("hailuo-02", "b1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .call(Method::POST, "/v2/jobs/{id}/cancel", &format!("/v2/jobs/{cancelled}/cancel"), Some(&b.key), None, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let released = admin.post("/upstreams/sandbox/unbench", &json!({})).await;
    assert_eq!(released.body["inRotation"], true);
    let key_of = |i: usize| if i < 4 { &a } else { &b };
    for (i, id) in jobs.iter().enumerate() {
        app.wait_terminal(key_of(i), id, JOB_WITHIN).await;
    }

    // What the ledger says each account was charged and refunded.
    let mut expected: BTreeMap<String, [i64; 6]> = BTreeMap::new();
    for (key, submitted, completed, failed, cancelled) in [(&a, 4, 3, 1, 0), (&b, 2, 1, 0, 1)] {
        let ledger = app.store.ledger(key.account_id).await.unwrap();
        let charged = -ledger.iter().filter(|e| e.kind == LedgerKind::Charge).map(|e| e.amount).sum::<i64>();
        let refunded = ledger.iter().filter(|e| e.kind == LedgerKind::Refund).map(|e| e.amount).sum::<i64>();
        assert!(charged > 0 && refunded > 0);
        expected.insert(key.account_id.to_string(), [submitted, completed, failed, cancelled, charged, refunded]);
    }
    let figures = |rows: &[Value]| {
        let mut by_group: BTreeMap<String, [i64; 6]> = BTreeMap::new();
        for r in rows {
            let sums = by_group.entry(r["group"].as_str().unwrap().to_owned()).or_default();
            for (i, f) in ["submitted", "completed", "failed", "cancelled", "creditsCharged", "creditsRefunded"]
                .iter()
                .enumerate()
            {
                sums[i] += r[*f].as_i64().unwrap();
            }
            assert_eq!(
                r["netCredits"].as_i64().unwrap(),
                r["creditsCharged"].as_i64().unwrap() - r["creditsRefunded"].as_i64().unwrap()
            );
        }
        by_group
    };
    let by_account = admin.get("/usage?group_by=account&bucket=hour").await;
    let rows = by_account["data"].as_array().unwrap();
    assert_eq!(figures(rows), expected);
    let by_model = admin.get("/usage?group_by=model&bucket=day").await;
    let models = figures(by_model["data"].as_array().unwrap());
    assert_eq!(models["hailuo-2.3"][..4], [4, 3, 1, 0]);
    assert_eq!(models["hailuo-02"][..4], [2, 1, 0, 1]);
    let by_key = admin.get(&format!("/usage?group_by=key&account={}", b.account_id)).await;
    assert_eq!(figures(by_key["data"].as_array().unwrap()).keys().collect::<Vec<_>>(), [&b.key_id.to_string()]);
    let empty = admin.get("/usage?from=2020-01-01&to=2020-01-02").await;
    assert!(empty["data"].as_array().unwrap().is_empty());
    let wrong = admin.send(Method::GET, "/usage?group_by=planet", None, &[]).await;
    assert_eq!(wrong.status, 400);

    // The same report as CSV parses back to the same figures.
    let csv_answer =
        admin.send(Method::GET, "/usage?group_by=account&bucket=hour", None, &[("Accept", "text/csv")]).await;
    assert!(csv_answer.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(csv_answer.text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[..3], ["group", "bucket_start", "submitted"]);
    let from_csv: Vec<Value> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let n = |i: usize| r[i].parse::<i64>().unwrap();
            json!({"group": &r[0], "bucketStart": &r[1], "submitted": n(2), "completed": n(3), "failed": n(4),
                   "cancelled": n(5), "creditsCharged": n(6), "creditsRefunded": n(7), "netCredits": n(8)})
        })
        .collect();
    assert_eq!(&from_csv, rows);

    // The account view sums this month.
    let detail = admin.get(&format!("/accounts/{}", a.account_id)).await;
    assert_eq!(detail["usageThisMonth"]["submitted"], 4);
    assert_eq!(
        detail["usageThisMonth"]["netCredits"],
        expected[&a.account_id.to_string()][4] - expected[&a.account_id.to_string()][5]
    );
    // Both holds are in the audit log.
    let audit = admin.audit().await;
    let holds: Vec<&str> =
        audit.iter().filter_map(|r| r["action"].as_str()).filter(|a| a.starts_with("upstream.")).collect();
    assert_eq!(holds, ["upstream.release", "upstream.hold"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_job_explorer_finds_a_job_and_shows_its_timeline() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let admin = Admin::new(&app).await;
    let (a, b) = (app.create_key(1000).await, app.create_key(1000).await);
    let id = app.submit(&a, &video("hailuo-2.3", "a harbour at dawn")).await;
    let other = app.submit(&b, &video("hailuo-02", "other")).await;
    app.wait_terminal(&a, &id, JOB_WITHIN).await;
    app.wait_terminal(&b, &other, JOB_WITHIN).await;

    let listed = admin.get(&format!("/jobs?account={}", a.account_id)).await;
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);
    assert_eq!(listed["data"][0]["accountId"], a.account_id.to_string());
    let all = admin.get("/jobs?limit=1").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1);
    let second = admin.get(&format!("/jobs?limit=1&cursor={}", all["nextCursor"].as_str().unwrap())).await;
    assert_ne!(all["data"][0]["id"], second["data"][0]["id"]);
    assert_eq!(admin.get("/jobs?status=completed&model=hailuo-02").await["data"][0]["id"], other.as_str());
    assert!(admin.get("/jobs?to=2020-01-01").await["data"].as_array().unwrap().is_empty());

    let job = admin.get(&format!("/jobs/{id}")).await;
    assert_eq!(job["status"], "COMPLETED");
    assert_eq!(job["stage"], "completed");
    assert_eq!(job["upstream"]["account"], "sandbox");
    assert!(job["upstream"]["taskId"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(job["attempts"], 1);
    let stages: Vec<&str> = job["timeline"].as_array().unwrap().iter().map(|c| c["to"].as_str().unwrap()).collect();
    assert_eq!(stages, ["queued", "submitting", "running", "downloading", "completed"]);
    let times: Vec<&str> = job["timeline"].as_array().unwrap().iter().map(|c| c["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A finished job cannot be cancelled; one without a webhook has nothing to replay.
    assert_eq!(admin.post(&format!("/jobs/{id}/cancel"), &json!({})).await.status, 409);
    assert_eq!(admin.post(&format!("/jobs/{id}/webhooks/replay"), &json!({})).await.status, 409);
    assert_eq!(admin.send(Method::GET, &format!("/jobs/{}", uuid::Uuid::new_v4()), None, &[]).await.status, 404);
    let overview = admin.get("/overview").await;
    assert!(overview["jobsByStatus"]["COMPLETED"].as_i64().unwrap() >= 2);
    let per_minute = overview["perMinute"].as_array().unwrap();
    assert_eq!(per_minute.len(), 60);
    assert!(per_minute.iter().map(|m| m["completed"].as_i64().unwrap()).sum::<i64>() >= 2);
    assert!(overview["creditsChargedToday"].as_i64().unwrap() > 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_from_the_explorer_refunds_a_queued_job_once() {
    let app = TestApp::spawn().await;
    let admin = Admin::new(&app).await;
    let key = app.create_key(1000).await;
    let id = app.submit(&key, &video("hailuo-2.3", "never runs")).await;
    let (charged, _) = app.balance_and_ledger(key.account_id).await;
    let cancelled = admin.post(&format!("/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    assert_eq!(cancelled.body["status"], "CANCELLED");
    assert_eq!(admin.post(&format!("/jobs/{id}/cancel"), &json!({})).await.status, 409);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (1000, 1000));
    assert!(charged < 1000);
    let job = admin.get(&format!("/jobs/{id}")).await;
    let stages: Vec<&str> = job["timeline"].as_array().unwrap().iter().map(|c| c["to"].as_str().unwrap()).collect();
    assert_eq!(stages, ["queued", "cancelled"]);
    let audit = admin.audit().await;
    assert_eq!(audit[0]["action"], "job.cancel");
    assert_eq!(audit[0]["after"]["status"], "CANCELLED");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_upstream_view_shows_a_rate_limit_answer_and_a_hold() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let admin = Admin::new(&app).await;
    let key = app.create_key(1000).await;
    let id = app.submit(&key, &video("hailuo-2.3", "busy [sandbox:transient-1002]")).await;
    app.wait_terminal(&key, &id, JOB_WITHIN).await;
    let view = admin.get("/upstreams").await;
    let sandbox = &view["data"][0];
    assert_eq!(sandbox["name"], "sandbox");
    assert_eq!(sandbox["errorsLastHour"]["1002"], 1, "{sandbox}");
    assert_eq!(sandbox["inRotation"], true);
    assert!(sandbox["createsInWindow"].as_u64().unwrap() >= 2, "the refused create and the retry: {sandbox}");
    assert_eq!(
        sandbox["createsLeft"].as_u64().unwrap(),
        sandbox["createRpm"].as_u64().unwrap() - sandbox["createsInWindow"].as_u64().unwrap()
    );

    // Held by hand: no job is taken until it is released.
    let held = admin.post("/upstreams/sandbox/bench", &json!({"minutes": 10, "reason": "maintenance"})).await;
    assert_eq!(
        (held.body["inRotation"].as_bool(), held.body["outOfRotationReason"].as_str()),
        (Some(false), Some("maintenance"))
    );
    let waiting = app.submit(&key, &video("hailuo-2.3", "waits")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get_job(&key, &waiting).await.body["status"], "QUEUED");
    let overview = admin.get("/overview").await;
    assert_eq!(overview["queueDepth"], 1);
    assert!(overview["oldestQueuedAgeSeconds"].as_f64().unwrap() >= 1.0);
    assert_eq!(admin.post("/upstreams/nowhere/bench", &json!({})).await.status, 404);
    admin.post("/upstreams/sandbox/unbench", &json!({})).await;
    let done = app.wait_terminal(&key, &waiting, JOB_WITHIN).await;
    assert_eq!(done["status"], "COMPLETED");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_listen_serves_the_admin_api_on_its_own_address_only() {
    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = TestApp::spawn_with(|c| c.admin.listen = Some(admin_addr)).await;
    let mut admin = Admin::new(&app).await;
    // Not on the public address.
    let public = admin.send(Method::GET, "/session", None, &[]).await;
    assert_eq!(public.status, 404, "{}", public.text);
    // On its own.
    admin.base = format!("http://{admin_addr}");
    eventually(Duration::from_secs(5), || async {
        app.http.get(format!("http://{admin_addr}/healthz")).send().await.is_ok()
    })
    .await;
    assert_eq!(admin.get("/session").await["token"]["name"], "ops");
    let v2 = app.http.get(format!("http://{admin_addr}/v2/models")).send().await.unwrap();
    assert_eq!(v2.status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_tokens_are_made_listed_and_revoked_from_the_command_line() {
    let app = TestApp::spawn().await;
    let (ok, out, err) = app.data().reelgate(&["admin", "tokens", "create", "--name", "billing"]);
    assert!(ok, "{err}");
    let token = out.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("rga_") && token.len() == 44, "{out}");
    let resp = app.http.get(app.url("/admin/v1/session")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (ok, listed, _) = app.data().reelgate(&["admin", "tokens", "list"]);
    assert!(ok && listed.contains("billing") && listed.contains(&token[..12]) && !listed.contains(&token), "{listed}");
    let (ok, _, err) = app.data().reelgate(&["admin", "tokens", "revoke", &token[..12]]);
    assert!(ok, "{err}");
    let resp = app.http.get(app.url("/admin/v1/session")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // The command line's changes are audited too, as `cli:<user>`.
    let audit = app.store.audit_log(None, 10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["token.revoke", "token.create"]);
    assert!(audit.iter().all(|r| r.actor.starts_with("cli") && r.token_id.is_none()));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_webhook_replayed_from_the_admin_api_is_delivered_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = crate::webhooks::receiver_on(listener, vec![]).await;
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let admin = Admin::new(&app).await;
    let key = app.create_key(100).await;
    let body = json!({"model": "hailuo-2.3", "prompt": "a bell", "webhookUrl": hook.url});
    let id = app.submit(&key, &body).await;
    app.wait_terminal(&key, &id, JOB_WITHIN).await;
    eventually(JOB_WITHIN, || async { hook.received().len() == 1 }).await;
    let replayed = admin.post(&format!("/jobs/{id}/webhooks/replay"), &json!({})).await;
    assert_eq!(replayed.status, 200, "{}", replayed.text);
    assert_eq!(replayed.body, json!({"replayed": 1}));
    eventually(JOB_WITHIN, || async { hook.received().len() == 2 }).await;
    let received = hook.received();
    assert_eq!(received[0].headers["webhook-id"], received[1].headers["webhook-id"], "the same event again");
    let job = admin.get(&format!("/jobs/{id}")).await;
    assert_eq!(job["webhooks"][0]["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(admin.audit().await[0]["action"], "job.webhooks.replay");
    app.stop().await.unwrap();
}
