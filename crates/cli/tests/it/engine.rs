//! The job engine end to end: the real server with its built-in MiniMax sandbox (or a
//! standalone one), over real HTTP, checking job states, the ledger and the videos.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{video, TestApp, TestKey};

const WITHIN: Duration = Duration::from_secs(30);

async fn ledger_is_consistent(app: &TestApp, key: &TestKey) -> Vec<store::LedgerEntry> {
    let (balance, sum) = app.balance_and_ledger(key.account_id).await;
    assert_eq!(balance, sum, "the balance equals the ledger");
    app.store.ledger(key.account_id).await.unwrap()
}

fn count(entries: &[store::LedgerEntry], kind: store::LedgerKind, job: &str) -> usize {
    entries.iter().filter(|e| e.kind == kind && e.job_id.map(|j| j.to_string()).as_deref() == Some(job)).count()
}

#[tokio::test]
async fn a_text_to_video_job_completes_and_its_video_is_served_with_ranges() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "a lighthouse at dusk")).await;

    // Progress only rises while the job runs.
    let mut seen = Vec::new();
    let job = loop {
        let r = app.get_job(&key, &id).await;
        seen.push(r.body["progress"].as_i64().unwrap_or(0));
        if r.body["status"] == "COMPLETED" || r.body["status"] == "FAILED" {
            break r.body;
        }
        assert!(seen.len() < 3000, "job did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["progress"], 100);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {seen:?}");
    assert!(seen.iter().any(|p| *p > 0 && *p < 100), "intermediate progress was visible: {seen:?}");
    assert_eq!(job["creditCost"], 5);
    assert!(job["completedAt"].is_string());

    let url = job["result"]["videoUrl"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://{}/v2/results/{id}/", app.addr)), "{url}");
    let full = app.http.get(url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "video/mp4");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let len: usize = full.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = full.bytes().await.unwrap();
    assert_eq!(bytes.len(), len);
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");

    let part = app.http.get(url).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 100-199/{len}").as_str());
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(100..200));
    let tail = app.http.get(url).header("Range", "bytes=-10").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap(), bytes.slice(len - 10..));
    let outside = app.http.get(url).header("Range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers()["content-range"], format!("bytes */{len}").as_str());

    // The URL is a capability for this job only.
    let forged = url.replace(&id, &domain::JobId::new().to_string());
    assert_eq!(app.http.get(&forged).send().await.unwrap().status(), 404);
    let tampered = format!("{}0.mp4", url.trim_end_matches("0.mp4").trim_end_matches(".mp4"));
    if tampered != url {
        assert_eq!(app.http.get(&tampered).send().await.unwrap().status(), 404);
    }

    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Charge, &id), 1);
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &id), 0);
    let metrics = app.metrics().await;
    assert!(metrics.contains("reelgate_jobs_completed_total 1"), "{metrics}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn content_policy_failures_fail_the_job_with_one_refund() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    // 1026 answers the create call; 1027 ends the task after it ran.
    let mut ids = Vec::new();
    for prompt in ["a cat [sandbox:fail-1026]", "a dog [sandbox:fail-1027]"] {
        ids.push(app.submit(&key, &video("hailuo-02", prompt)).await);
    }
    for (id, code) in ids.iter().zip(["1026", "1027"]) {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        assert_eq!(job["status"], "FAILED", "{job}");
        assert!(job["error"].as_str().unwrap().contains(code), "{job}");
        assert_eq!(job["creditCost"], 0);
        assert!(job["result"].is_null());
    }
    let ledger = ledger_is_consistent(&app, &key).await;
    for id in &ids {
        assert_eq!(count(&ledger, store::LedgerKind::Refund, id), 1, "refunded exactly once");
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await.0, 100);
    let metrics = app.metrics().await;
    assert!(metrics.contains("code=\"1026\""), "{metrics}");
    assert!(metrics.contains("reelgate_refunds_total 2"), "{metrics}");
    app.stop().await.unwrap();
}

/// Whether the file is a sequence of MP4 boxes that ends exactly at its last byte: a
/// truncated copy would not.
fn mp4_boxes_cover(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let size = if size == 1 && at + 16 <= bytes.len() {
            u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        if size < 8 {
            return false;
        }
        at += size;
    }
    at == bytes.len()
}

async fn engine_job(app: &TestApp, id: &str) -> store::EngineJob {
    app.store.engine_job(id.parse().unwrap()).await.unwrap().unwrap()
}

#[tokio::test]
async fn transient_upstream_errors_are_retried_until_the_job_completes() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cases = [
        ("[sandbox:transient-1000x2]", 3),
        ("[sandbox:transient-1013]", 2),
        ("[sandbox:http-502]", 2),
        ("[sandbox:malformed-json]", 1),
        ("[sandbox:query-error-1001x2]", 1),
    ];
    let mut ids = Vec::new();
    for (marker, _) in cases {
        ids.push(app.submit(&key, &video("hailuo-2.3", &format!("waves {marker}"))).await);
    }
    for (id, (marker, attempts)) in ids.iter().zip(cases) {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        assert_eq!(job["status"], "COMPLETED", "{marker}: {job}");
        assert_eq!(engine_job(&app, id).await.attempts, attempts, "{marker}: create calls made");
    }
    let ledger = ledger_is_consistent(&app, &key).await;
    assert!(ledger.iter().all(|e| e.kind != store::LedgerKind::Refund));
    let metrics = app.metrics().await;
    for code in ["1000", "1013", "502", "1001"] {
        assert!(metrics.contains(&format!("code=\"{code}\"")), "{code} counted: {metrics}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rate_limited_job_waits_and_completes_and_invalid_params_fail_it() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let limited = app.submit(&key, &video("hailuo-2.3", "tide [sandbox:transient-1002]")).await;
    let invalid = app.submit(&key, &video("hailuo-2.3", "tide [sandbox:fail-2013]")).await;
    // After a 1002 the job is back in the queue, not failed and not charged again.
    crate::helpers::eventually(WITHIN, || async { engine_job(&app, &limited).await.attempts == 1 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.get_job(&key, &limited).await.body["status"], "QUEUED");
    let job = app.wait_terminal(&key, &limited, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(engine_job(&app, &limited).await.attempts, 2);
    let job = app.wait_terminal(&key, &invalid, WITHIN).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert!(job["error"].as_str().unwrap().contains("2013"), "{job}");
    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Charge, &limited), 1);
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &limited), 0);
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &invalid), 1);
    assert!(app.metrics().await.contains("code=\"1002\""));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_that_keeps_failing_transiently_fails_with_one_refund() {
    let app = TestApp::spawn_engine(|c, _| c.engine.max_submit_attempts = 3).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "rain [sandbox:transient-1000x9]")).await;
    let job = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert!(job["error"].as_str().unwrap().contains("temporary"), "{job}");
    assert_eq!(engine_job(&app, &id).await.attempts, 3);
    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &id), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn expired_links_and_interrupted_downloads_are_fetched_again() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let mut ids = Vec::new();
    for marker in ["[sandbox:expired-link]", "[sandbox:truncated-download]", "[sandbox:retrieve-error-1000]"] {
        ids.push(app.submit(&key, &video("hailuo-2.3", &format!("forest {marker}"))).await);
    }
    for id in &ids {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
        let bytes =
            app.http.get(job["result"]["videoUrl"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
        assert!(mp4_boxes_cover(&bytes), "the stored copy is a whole MP4 ({} bytes): {job}", bytes.len());
    }
    // The expired links and the failed retrieve each cost one attempt; the truncated
    // download is caught (the copy above is whole) and the backup link saves that attempt.
    let metrics = app.metrics().await;
    assert!(metrics.contains("reelgate_download_failures_total 2"), "{metrics}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_past_its_deadline_fails_with_a_refund() {
    let app = TestApp::spawn_engine(|c, _| c.engine.job_deadline_ms = 1500).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "forever [sandbox:stuck]")).await;
    let job = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert!(job["error"].as_str().unwrap().contains("not ready within"), "{job}");
    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &id), 1);
    app.stop().await.unwrap();
}

/// A MiniMax sandbox of its own, outliving server restarts.
async fn standalone_sandbox(rpm: u32, latency_ms: u64) -> sandbox::Sandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = sandbox::SandboxConfig { rpm, latency_ms: Some(latency_ms), ..sandbox::SandboxConfig::default() };
    sandbox::Sandbox::start(config, listener).await.unwrap()
}

fn account(name: &str, key: &str, sandbox: &sandbox::Sandbox, create_rpm: u32) -> service::config::MiniMaxAccount {
    service::config::MiniMaxAccount {
        name: name.into(),
        api_key: key.into(),
        base_url: sandbox.base_url(),
        create_rpm,
        max_in_flight: 100,
        query_rpm: 60_000,
    }
}

#[tokio::test]
async fn an_account_with_a_problem_leaves_rotation_and_the_job_runs_on_another() {
    let sim = standalone_sandbox(1000, 500).await;
    let app = TestApp::spawn_engine(|c, _| {
        c.minimax.accounts = vec![
            account("broke", "k-insufficient-balance", &sim, 1000),
            account("wrong-region", "k-invalid-key", &sim, 1000),
            account("good", "k-good", &sim, 60),
        ];
    })
    .await;
    let key = app.create_key(100).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.submit(&key, &video("hailuo-2.3", &format!("boats {i}"))).await);
    }
    for id in &ids {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
        assert_eq!(engine_job(&app, id).await.upstream_account.as_deref(), Some("good"));
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("reelgate_upstream_accounts_benched_total{upstream=\"broke\"}"), "{metrics}");
    assert!(metrics.contains("reelgate_upstream_accounts_benched_total{upstream=\"wrong-region\"}"), "{metrics}");
    assert!(metrics.contains("code=\"1008\""), "{metrics}");
    assert!(metrics.contains("code=\"2049\""), "{metrics}");
    // Out of rotation means no further create calls: only the calls already in flight
    // when the first 1008 came back reached the broken account.
    let broke = &sim.stats().keys["k-insufficient-balance"];
    assert!(broke.creates_total <= 4, "{broke:?}");
    app.stop().await.unwrap();
    sim.shutdown().await;
}

/// How many of `ids` have left the queue.
async fn started(app: &TestApp, key: &TestKey, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        if app.get_job(key, id).await.body["status"] != "QUEUED" {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn creates_are_spread_within_the_budget_and_waiting_jobs_stay_queued() {
    // 12 creates a minute, which the sandbox also enforces (it would answer 1002): the
    // engine may send 2 at once, then one every 5 seconds.
    let sim = standalone_sandbox(12, 300).await;
    let app = TestApp::spawn_engine(|c, _| c.minimax.accounts = vec![account("tight", "k-tight", &sim, 12)]).await;
    let key = app.create_key(100).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit(&key, &video("hailuo-2.3", &format!("kites {i}"))).await);
    }
    for id in &ids[..2] {
        assert_eq!(app.wait_terminal(&key, id, WITHIN).await["status"], "COMPLETED");
    }
    assert!(started(&app, &key, &ids).await <= 3, "no more than the burst and one refill so soon");
    // Five seconds later exactly one more has gone.
    crate::helpers::eventually(Duration::from_secs(8), || async { started(&app, &key, &ids).await >= 3 }).await;
    assert!(started(&app, &key, &ids).await <= 4);
    let stats = sim.stats();
    assert_eq!(stats.creates_rate_limited, 0, "{stats:?}");
    assert!(stats.max_creates_in_window <= 12, "{stats:?}");
    // A job waiting for budget has not reached MiniMax: it can still be cancelled.
    let r = app
        .call(
            reqwest::Method::POST,
            "/v2/jobs/{id}/cancel",
            &format!("/v2/jobs/{}/cancel", ids[5]),
            Some(&key.key),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn one_accounts_burst_does_not_delay_another_accounts_job_by_more_than_a_round() {
    // Fill the queue with the engine off: 500 jobs of one account, then 1 of another.
    let app = TestApp::spawn().await;
    let big = app.create_key(10_000).await;
    let small = app.create_key(100).await;
    for i in 0..500 {
        let r = app.generate(&big, &video("hailuo-2.3", &format!("burst {i}"))).await;
        assert_eq!(r.status, 202);
    }
    let single = app.submit(&small, &video("hailuo-2.3", "the only one")).await;
    // Now run the engine with a budget of 12 creates a minute, of which 2 may go at once:
    // the first round takes one job per account.
    let sim = standalone_sandbox(12, 300).await;
    let app = app
        .restart(|c, _| {
            crate::helpers::fast_engine(c);
            c.minimax.accounts = vec![account("tight", "k", &sim, 12)];
        })
        .await;
    let job = app.wait_terminal(&small, &single, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    // Count the big account's started jobs at once, a few list requests: the bucket refills
    // one create every 5 s, and reading the 500 jobs one by one took that long on
    // PostgreSQL (no job cache there), letting a second round start meanwhile.
    let mut started_big = 0;
    for status in ["PROCESSING", "COMPLETED", "FAILED"] {
        let r = app.list_jobs(&big, &format!("?scope=team&limit=100&status={status}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        started_big += r.body["jobs"].as_array().unwrap().len();
    }
    assert_eq!(started_big, 1, "the other account got exactly one job in the same round");
    app.stop().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_and_polls_racing_finish_the_job_once() {
    let app = TestApp::spawn_engine(|c, addr| {
        c.engine.public_base_url = Some(format!("http://{addr}"));
        c.engine.poll_interval_ms = 20;
        c.engine.first_poll_delay_ms = 20;
    })
    .await;
    let key = app.create_key(1000).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(app.submit(&key, &video("hailuo-2.3", &format!("race {i}"))).await);
    }
    let failing = app.submit(&key, &video("hailuo-2.3", "race lost [sandbox:task-fail-1027]")).await;
    for id in &ids {
        assert_eq!(app.wait_terminal(&key, id, WITHIN).await["status"], "COMPLETED");
    }
    assert_eq!(app.wait_terminal(&key, &failing, WITHIN).await["status"], "FAILED");
    let metrics = app.metrics().await;
    // The counter is listed at zero from the start: callbacks arrived if it rose.
    let callbacks =
        metrics.lines().find_map(|l| l.strip_prefix("reelgate_callbacks_total ")).map(|v| v.parse::<u64>().unwrap());
    assert!(callbacks > Some(0), "callbacks arrived: {metrics}");
    assert!(metrics.contains("reelgate_jobs_completed_total 10"), "{metrics}");
    assert!(metrics.contains("reelgate_refunds_total 1"), "{metrics}");
    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(count(&ledger, store::LedgerKind::Refund, &failing), 1);
    app.stop().await.unwrap();
}

/// A PNG of the given size with a gradient, encoded in memory.
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Serves `files` (path -> bytes) over HTTP on an ephemeral loopback port.
pub(crate) async fn image_host(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let mut router = axum::Router::new();
    for (path, bytes) in files {
        router = router.route(path, axum::routing::get(move || async move { bytes.clone() }));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Width and height from the first `tkhd` box of an MP4 (16.16 fixed point).
fn mp4_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let at = bytes.windows(4).position(|w| w == b"tkhd")? + 4;
    let field = |o: usize| u32::from_be_bytes(bytes[at + o..at + o + 4].try_into().unwrap()) >> 16;
    Some((field(76), field(80)))
}

#[tokio::test]
async fn image_to_video_fetches_checks_and_forwards_the_images() {
    use base64::Engine as _;
    let host = image_host(vec![
        ("/wide.png", png(640, 360)),
        ("/four-three.png", png(640, 480)),
        ("/tiny.png", png(200, 200)),
        ("/banner.png", png(1600, 400)),
        ("/text.png", b"this is not an image at all".to_vec()),
    ])
    .await;
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(1000).await;
    let inline = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png(480, 640)));
    let cases = [
        (
            json!({"model": "hailuo-2.3-fast", "prompt": "pan", "hailuoParams": {"image": format!("{host}/wide.png")}}),
            Ok((1366, 768)),
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "tilt", "hailuoParams": {"image": format!("{host}/four-three.png")}}),
            Ok((1024, 768)),
        ),
        (
            json!({"model": "hailuo-02", "prompt": "morph", "hailuoParams": {"image": inline, "end_image": format!("{host}/wide.png")}}),
            Ok((768, 1024)),
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("{host}/tiny.png")}}),
            Err("short side"),
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("{host}/banner.png")}}),
            Err("aspect ratio"),
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("{host}/text.png")}}),
            Err("JPEG, PNG or WebP"),
        ),
        (
            json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": format!("{host}/missing.png")}}),
            Err("HTTP 404"),
        ),
    ];
    let mut ids = Vec::new();
    for (body, _) in &cases {
        ids.push(app.submit(&key, body).await);
    }
    for (id, (body, expected)) in ids.iter().zip(&cases) {
        let job = app.wait_terminal(&key, id, WITHIN).await;
        match expected {
            Ok(size) => {
                assert_eq!(job["status"], "COMPLETED", "{body}: {job}");
                let url = job["result"]["videoUrl"].as_str().unwrap();
                let bytes = app.http.get(url).send().await.unwrap().bytes().await.unwrap();
                assert_eq!(mp4_size(&bytes), Some(*size), "{body}: output keeps the image's aspect ratio");
            }
            Err(reason) => {
                assert_eq!(job["status"], "FAILED", "{body}: {job}");
                assert!(job["error"].as_str().unwrap().contains(reason), "{body}: {job}");
                assert_eq!(engine_job(&app, id).await.attempts, 0, "no create call was spent on a bad image");
            }
        }
    }
    let ledger = ledger_is_consistent(&app, &key).await;
    assert_eq!(ledger.iter().filter(|e| e.kind == store::LedgerKind::Refund).count(), 4);
    app.stop().await.unwrap();
}

/// The real MiniMax, only when `MINIMAX_API_KEY` is set (it costs money and needs the
/// network); otherwise the test says it skipped. `MINIMAX_BASE_URL` picks the region
/// (default international).
#[tokio::test]
async fn the_real_minimax_runs_a_job_end_to_end() {
    let Ok(api_key) = std::env::var("MINIMAX_API_KEY") else {
        eprintln!("SKIP the_real_minimax_runs_a_job_end_to_end: MINIMAX_API_KEY is not set");
        return;
    };
    let base_url = std::env::var("MINIMAX_BASE_URL").unwrap_or_else(|_| "https://api.minimax.io".into());
    let app = TestApp::spawn_engine(move |c, _| {
        c.engine.first_poll_delay_ms = 30_000;
        c.engine.poll_interval_ms = 10_000;
        c.minimax.accounts = vec![service::config::MiniMaxAccount {
            name: "real".into(),
            api_key: api_key.into(),
            base_url,
            create_rpm: 5,
            max_in_flight: 5,
            query_rpm: 60,
        }];
    })
    .await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-02", "A paper boat drifting on a calm pond, morning light")).await;
    let job = app.wait_terminal(&key, &id, Duration::from_secs(20 * 60)).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let bytes = app.http.get(job["result"]["videoUrl"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert!(mp4_boxes_cover(&bytes), "a whole MP4 from MiniMax");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn results_past_their_retention_are_deleted_and_the_job_shows_expired() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "a short-lived clip")).await;
    let job = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["expired"], false);
    let url = job["result"]["videoUrl"].as_str().unwrap().to_string();
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 200);
    // With a retention of zero days the reaper, which runs at startup, takes it.
    let app = app
        .restart(|c, _| {
            crate::helpers::fast_engine(c);
            c.engine.result_retention_days = 0;
        })
        .await;
    crate::helpers::eventually(WITHIN, || async { app.get_job(&key, &id).await.body["expired"] == true }).await;
    let new_url = url.replacen(&url[..url.find("/v2/").unwrap()], &format!("http://{}", app.addr), 1);
    assert_eq!(app.http.get(&new_url).send().await.unwrap().status(), 404);
    let job = app.get_job(&key, &id).await.body;
    assert_eq!(job["status"], "COMPLETED", "the job itself stays completed: {job}");
    app.stop().await.unwrap();
}
