//! Client webhooks end to end: a receiver on an ephemeral port records what reelgate
//! sends; signatures are checked with code independent of reelgate's signer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, TestKey};

const WITHIN: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When it arrived, by the wall clock (comparable with the server's timestamps).
    pub at: std::time::SystemTime,
}

/// A webhook receiver answering with the statuses of `script` in turn (then 200).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receiver(script: Vec<u16>) -> Receiver {
    receiver_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), script).await
}

/// A receiver on `listener` answering with the statuses of `script` in turn (then 200).
pub async fn receiver_on(listener: tokio::net::TcpListener, script: Vec<u16>) -> Receiver {
    receiver_with_retry_after(listener, script, None).await
}

/// Like [`receiver_on`], adding `Retry-After: <retry_after>` to its 429 and 503 answers.
async fn receiver_with_retry_after(
    listener: tokio::net::TcpListener,
    script: Vec<u16>,
    retry_after: Option<String>,
) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let script = Arc::new(Mutex::new(script.into_iter()));
    let (g, s) = (got.clone(), script.clone());
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (g, s, retry_after) = (g.clone(), s.clone(), retry_after.clone());
            async move {
                g.lock().unwrap().push(Received { headers, body: body.to_vec(), at: std::time::SystemTime::now() });
                let status = s.lock().unwrap().next().unwrap_or(200);
                let mut response = axum::response::IntoResponse::into_response((
                    StatusCode::from_u16(status).unwrap(),
                    format!("answer {status}"),
                ));
                if status == 302 {
                    response.headers_mut().insert("location", "http://127.0.0.1:9/elsewhere".parse().unwrap());
                }
                if let Some(value) = retry_after.filter(|_| matches!(status, 429 | 503)) {
                    response.headers_mut().insert("retry-after", value.parse().unwrap());
                }
                response
            }
        }),
    );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Receiver { url: format!("http://{addr}/hook"), got }
}

impl Receiver {
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn fast_webhooks(c: &mut service::Config) {
    c.webhooks.retry_schedule_ms = vec![0, 100, 200, 300];
    c.webhooks.timeout_ms = 2000;
}

async fn submit(app: &TestApp, key: &TestKey, prompt: &str, url: &str, events: Option<&[&str]>) -> String {
    let mut body = json!({"model": "hailuo-2.3", "prompt": prompt, "webhookUrl": url});
    if let Some(events) = events {
        body["webhookEvents"] = json!(events);
    }
    app.submit(key, &body).await
}

async fn webhook_status(app: &TestApp, key: &TestKey, id: &str) -> Value {
    app.get_job(key, id).await.body["webhookStatus"].clone()
}

async fn history(app: &TestApp, key: &TestKey, id: &str) -> Value {
    let r =
        app.http.get(app.url(&format!("/v2/jobs/{id}/webhooks"))).header("X-API-Key", &key.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

#[tokio::test]
async fn a_completed_job_is_delivered_signed_both_ways() {
    let hook = receiver(vec![]).await;
    let app = TestApp::spawn_engine(|c, _| fast_webhooks(c)).await;
    let key = app.create_key(100).await;
    let id = submit(&app, &key, "a lighthouse", &hook.url, None).await;
    assert_eq!(webhook_status(&app, &key, &id).await, "pending");
    assert_eq!(app.wait_terminal(&key, &id, WITHIN).await["status"], "COMPLETED");
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "delivered" }).await;
    // The attempt's latency is recorded before the attempt is: the status implies it.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("reelgate_webhook_delivery_duration_seconds_count{outcome=\"delivered\"} 1\n"),
        "{metrics}"
    );
    let got = hook.received();
    assert_eq!(got.len(), 1, "only the completed event by default");
    let r = &got[0];
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["event"], "completed");
    assert_eq!(body["jobId"], id.as_str());
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["progress"], 100);
    assert_eq!(body["creditCost"], 5);
    assert!(body["result"]["videoUrl"].as_str().unwrap().contains(&id));
    assert!(body["completedAt"].is_string());
    assert_eq!(header(r, "x-webhook-event"), "completed");

    // Apiframe's scheme: HMAC-SHA256 keyed with the raw SHA-256 digest of the API key.
    let secret: [u8; 32] = Sha256::digest(key.key.as_bytes()).into();
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
    mac.update(&r.body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(header(r, "x-webhook-signature"), format!("sha256={hex}"));

    // Standard Webhooks, with the whsec_ secret the account reads from /v2/me.
    let me = app.me(&key.key).await.body;
    let whsec = me["apiKey"]["webhookSecret"].as_str().unwrap();
    let secret = base64::engine::general_purpose::STANDARD.decode(whsec.strip_prefix("whsec_").unwrap()).unwrap();
    let (msg_id, ts) = (header(r, "webhook-id"), header(r, "webhook-timestamp"));
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
    mac.update(format!("{msg_id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(header(r, "webhook-signature"), format!("v1,{expected}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);

    let h = history(&app, &key, &id).await;
    assert_eq!(h["webhookStatus"], "delivered");
    assert_eq!(h["events"][0]["id"], msg_id);
    assert_eq!(h["events"][0]["attempts"][0]["statusCode"], 200);
    assert_eq!(h["events"][0]["attempts"][0]["responseBody"], "answer 200");
    // Another account cannot read this job's deliveries.
    let other = app.create_key(1).await;
    let r =
        app.http.get(app.url(&format!("/v2/jobs/{id}/webhooks"))).header("X-API-Key", &other.key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn webhook_events_filter_what_is_sent() {
    let hook = receiver(vec![]).await;
    let app = TestApp::spawn_engine(|c, _| fast_webhooks(c)).await;
    let key = app.create_key(100).await;
    let with_progress = submit(&app, &key, "waves", &hook.url, Some(&["progress", "completed"])).await;
    let failing = submit(&app, &key, "banned [sandbox:fail-1026]", &hook.url, None).await;
    let failed_only = submit(&app, &key, "calm", &hook.url, Some(&["failed"])).await;
    for id in [&with_progress, &failing, &failed_only] {
        app.wait_terminal(&key, id, WITHIN).await;
    }
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &failing).await == "delivered" }).await;
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &with_progress).await == "delivered" })
        .await;
    let events_of = |id: &str| {
        hook.received()
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|b| b["jobId"] == id)
            .map(|b| (b["event"].as_str().unwrap().to_string(), b["progress"].as_i64()))
            .collect::<Vec<_>>()
    };
    let progress = events_of(&with_progress);
    assert!(progress.iter().filter(|(e, _)| e == "progress").count() >= 2, "{progress:?}");
    assert_eq!(progress.iter().filter(|(e, _)| e == "completed").count(), 1, "{progress:?}");
    let failed = events_of(&failing);
    assert_eq!(failed.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), vec!["failed"]);
    let body = hook
        .received()
        .into_iter()
        .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["jobId"] == failing.as_str())
        .unwrap();
    let body: Value = serde_json::from_slice(&body.body).unwrap();
    assert_eq!((body["status"].as_str(), body.as_object().unwrap().len()), (Some("FAILED"), 5));
    assert!(body["error"].as_str().unwrap().contains("1026"));
    assert!(events_of(&failed_only).is_empty(), "a completed job sends nothing to a failed-only subscriber");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_id_and_recorded() {
    let hook = receiver(vec![500, 503]).await;
    let app = TestApp::spawn_engine(|c, _| fast_webhooks(c)).await;
    let key = app.create_key(100).await;
    let id = submit(&app, &key, "retry me", &hook.url, None).await;
    app.wait_terminal(&key, &id, WITHIN).await;
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "delivered" }).await;
    let got = hook.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "webhook-id is stable across retries: {ids:?}");
    assert!(got.windows(2).all(|w| w[0].body == w[1].body), "every attempt sends the same bytes");
    let h = history(&app, &key, &id).await;
    let codes: Vec<i64> =
        h["events"][0]["attempts"].as_array().unwrap().iter().map(|a| a["statusCode"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 503, 200]);
    assert_eq!(h["events"][0]["attempts"][0]["error"], "HTTP 500 Internal Server Error");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_last_failure_marks_the_job() {
    let hook = receiver(vec![302, 302, 302, 302]).await;
    let app = TestApp::spawn_engine(|c, _| fast_webhooks(c)).await;
    let key = app.create_key(100).await;
    let id = submit(&app, &key, "moved", &hook.url, None).await;
    app.wait_terminal(&key, &id, WITHIN).await;
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "failed" }).await;
    assert_eq!(hook.received().len(), 4, "one request per scheduled attempt, none to the redirect target");
    let h = history(&app, &key, &id).await;
    assert_eq!(h["events"][0]["status"], "failed");
    assert!(h["events"][0]["attempts"].as_array().unwrap().iter().all(|a| a["statusCode"] == 302));
    // An operator can replay it: the receiver now answers 200.
    let (ok, _, err) = app.data().reelgate(&["webhooks", "replay", &id]);
    assert!(ok, "{err}");
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "delivered" }).await;
    assert_eq!(hook.received().len(), 5);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let hook = receiver(vec![]).await;
    let app = TestApp::spawn_engine(|c, _| {
        fast_webhooks(c);
        c.engine.allow_private_urls = false;
    })
    .await;
    let key = app.create_key(100).await;
    // By name: an IP literal would be refused at submission already (see below); a
    // name is only resolved, and its address refused, at delivery.
    let by_name = hook.url.replace("127.0.0.1", "localhost");
    let id = submit(&app, &key, "inside", &by_name, None).await;
    app.wait_terminal(&key, &id, WITHIN).await;
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "failed" }).await;
    assert!(hook.received().is_empty(), "nothing reached the loopback receiver");
    let h = history(&app, &key, &id).await;
    let error = h["events"][0]["attempts"][0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("loopback") && error.contains("not allowed"), "{error}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_hanging_receiver_times_out_without_delaying_a_healthy_one() {
    // Accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    let healthy = receiver(vec![]).await;
    let app = TestApp::spawn_engine(|c, _| {
        c.webhooks.retry_schedule_ms = vec![0, 60_000];
        c.webhooks.timeout_ms = 1500;
    })
    .await;
    let key = app.create_key(100).await;
    let stuck = submit(&app, &key, "into the void", &hang_url, None).await;
    let fine = submit(&app, &key, "into good hands", &healthy.url, None).await;
    app.wait_terminal(&key, &stuck, WITHIN).await;
    app.wait_terminal(&key, &fine, WITHIN).await;
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &fine).await == "delivered" }).await;
    // The hanging attempt ends at its timeout, recorded, and is rescheduled.
    crate::helpers::eventually(WITHIN, || async {
        history(&app, &key, &stuck).await["events"][0]["attempts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let h = history(&app, &key, &stuck).await;
    let attempt = &h["events"][0]["attempts"][0];
    assert!(attempt["error"].as_str().unwrap().contains("no answer within 1500 ms"), "{attempt}");
    assert!(attempt["durationMs"].as_i64().unwrap() >= 1400, "{attempt}");
    assert_eq!(h["events"][0]["status"], "pending", "retried later");
    assert_eq!(webhook_status(&app, &key, &stuck).await, "pending");
    app.stop().await.unwrap();
}

/// The time between a receiver's first two requests.
async fn gap_between_first_two(hook: &Receiver) -> Duration {
    crate::helpers::eventually(WITHIN, || async { hook.received().len() >= 2 }).await;
    let got = hook.received();
    got[1].at.duration_since(got[0].at).unwrap()
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured_on_429() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = receiver_with_retry_after(listener, vec![429], Some("2".into())).await;
    let app = TestApp::spawn_engine(|c, _| fast_webhooks(c)).await;
    let key = app.create_key(100).await;
    let id = submit(&app, &key, "slow down", &hook.url, None).await;
    app.wait_terminal(&key, &id, WITHIN).await;
    let gap = gap_between_first_two(&hook).await;
    // The schedule alone would retry after about 100 ms.
    assert!(gap >= Duration::from_millis(1900), "waited {gap:?} for Retry-After: 2");
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "delivered" }).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn retry_after_as_a_date_is_honoured_within_the_configured_bound() {
    // An hour from now, as an HTTP date; the server caps what it honours at 1.5 s.
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    let date = httpdate::fmt_http_date(in_an_hour);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = receiver_with_retry_after(listener, vec![503], Some(date)).await;
    let app = TestApp::spawn_engine(|c, _| {
        fast_webhooks(c);
        c.webhooks.max_retry_after_ms = 1500;
    })
    .await;
    let key = app.create_key(100).await;
    let id = submit(&app, &key, "come back tomorrow", &hook.url, None).await;
    app.wait_terminal(&key, &id, WITHIN).await;
    let gap = gap_between_first_two(&hook).await;
    assert!(gap >= Duration::from_millis(1400), "the date was honoured up to the bound: {gap:?}");
    crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, &id).await == "delivered" }).await;
    app.stop().await.unwrap();
}

/// Parses a timestamp of the API (`2026-01-02T03:04:05.678Z`).
fn api_time(value: &Value) -> std::time::SystemTime {
    let at = time::OffsetDateTime::parse(value.as_str().unwrap(), &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{value}: {e}"));
    std::time::UNIX_EPOCH + Duration::from_nanos(at.unix_timestamp_nanos() as u64)
}

#[tokio::test]
async fn a_backlog_for_a_dead_receiver_does_not_delay_a_healthy_one() {
    const DEAD_EVENTS: usize = 1000;
    // The dead receiver accepts connections and never answers.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = dead.accept().await {
            held.push(socket);
        }
    });
    let healthy = receiver(vec![]).await;
    let app = TestApp::spawn_engine(|c, _| {
        c.webhooks.retry_schedule_ms = vec![0, 5_000, 300_000];
        c.webhooks.timeout_ms = 2000;
        c.accounts.default_max_concurrent_jobs = 200;
        c.minimax.sandbox_latency_ms = 200;
        c.minimax.sandbox_create_rpm = 100_000;
    })
    .await;
    let key = app.create_key(10 * DEAD_EVENTS as i64).await;
    // Each of these fails at its first create call, raising one `failed` event for the dead receiver.
    let backlog: Vec<Vec<String>> = futures_util::future::join_all((0..8).map(|worker| {
        let (app, key, url) = (&app, &key, &dead_url);
        async move {
            let mut ids = Vec::new();
            for n in (worker..DEAD_EVENTS).step_by(8) {
                ids.push(submit(app, key, &format!("[sandbox:fail-1026] backlog {n}"), url, None).await);
            }
            ids
        }
    }))
    .await;
    let refunds = |text: String| {
        text.lines().find_map(|l| l.strip_prefix("reelgate_refunds_total ")).map_or(0, |v| v.parse::<usize>().unwrap())
    };
    crate::helpers::eventually(Duration::from_secs(120), || async { refunds(app.metrics().await) == DEAD_EVENTS })
        .await;
    // Every backlog event is still waiting: the dead receiver holds its few slots to the timeout.
    let last = history(&app, &key, backlog[7].last().unwrap()).await;
    assert_eq!(last["events"][0]["status"], "pending", "{last}");

    // One at a time: five events due together would exceed the healthy destination's
    // own limit (max_per_destination = 4) and the fifth would be put back for half a
    // second, which measures that limit rather than the dead receiver's backlog. Slower
    // job writes (PostgreSQL, a loaded machine) made that overlap common.
    for n in 0..5 {
        submit(&app, &key, &format!("[sandbox:fail-1026] healthy {n}"), &healthy.url, None).await;
        crate::helpers::eventually(WITHIN, || async { healthy.received().len() == n + 1 }).await;
    }
    for got in healthy.received() {
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        let job = app.get_job(&key, body["jobId"].as_str().unwrap()).await.body;
        let finished = api_time(&job["completedAt"]);
        let latency = got.at.duration_since(finished).unwrap_or_default();
        eprintln!("delivered {latency:?} after the job finished");
        eprintln!("delivered {latency:?} after the job finished");
        assert!(
            latency < Duration::from_secs(1),
            "delivered {latency:?} after the job finished, behind {DEAD_EVENTS} dead events"
        );
    }
    app.stop().await.unwrap();
}

/// IP literals are refused at submission, before any charge; names only at delivery.
#[tokio::test]
async fn every_private_address_class_is_refused_at_submission_or_delivery() {
    let destinations = [
        ("private 10/8", "http://10.0.0.1/hook"),
        ("private 172.16/12", "http://172.16.0.1/hook"),
        ("private 192.168/16", "http://192.168.0.1/hook"),
        ("cloud metadata", "http://169.254.169.254/latest/meta-data/"),
        ("link-local", "http://169.254.10.10/hook"),
        ("CGNAT", "http://100.64.0.1/hook"),
        ("multicast", "http://224.0.0.1/hook"),
        ("unspecified", "http://0.0.0.0/hook"),
        ("loopback v6", "http://[::1]/hook"),
        ("unique local v6", "http://[fd00::1]/hook"),
        ("link-local v6", "http://[fe80::1]/hook"),
        ("v4-mapped loopback", "http://[::ffff:127.0.0.1]/hook"),
        ("name resolving to loopback", "http://localhost:9/hook"),
    ];
    let app = TestApp::spawn_engine(|c, _| {
        fast_webhooks(c);
        c.engine.allow_private_urls = false;
    })
    .await;
    let key = app.create_key(1000).await;
    let mut jobs = Vec::new();
    for (class, url) in destinations {
        let body = json!({"model": "hailuo-2.3", "prompt": format!("[sandbox:fail-1026] {class}"), "webhookUrl": url});
        if url.contains("localhost") {
            jobs.push((class, app.submit(&key, &body).await));
            continue;
        }
        let r = app.generate(&key, &body).await;
        assert_eq!(r.status, 400, "{class}: {:?}", r.body);
        let message = r.body["details"]["webhookUrl"][0].as_str().unwrap_or_default();
        assert!(message.contains("address"), "{class}: {message}");
    }
    assert_eq!(jobs.len(), 1);
    assert_eq!(app.all_job_ids(&key).await.len(), 1, "the refused submissions made no job");
    for (class, id) in &jobs {
        crate::helpers::eventually(WITHIN, || async { webhook_status(&app, &key, id).await == "failed" }).await;
        let h = history(&app, &key, id).await;
        let attempts = h["events"][0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 4, "{class}: every scheduled attempt was made and refused");
        for attempt in attempts {
            let error = attempt["error"].as_str().unwrap_or_default();
            assert!(error.contains("not allowed"), "{class}: {attempt}");
            assert!(attempt["statusCode"].is_null(), "{class}: nothing answered: {attempt}");
        }
    }
    app.stop().await.unwrap();
}
