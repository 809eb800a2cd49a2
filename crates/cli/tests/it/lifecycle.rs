//! The real binary: admin commands and graceful shutdown on SIGTERM.
//!
//! Each test's processes share one [`TestData`]: the data directory and, when the suite
//! runs on PostgreSQL, a schema of its own, passed to every child through the environment.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestData;

fn reelgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reelgate")).args(args).output().expect("run reelgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(label)).unwrap().split_whitespace().next().unwrap()
}

#[test]
fn admin_cli_creates_keys_grants_and_shows_credits() {
    let data = TestData::new();
    let reelgate = |args: &[&str]| data.reelgate(args);
    let (ok, out, err) = reelgate(&["keys", "create", "--name", "Acme", "--credits", "50"]);
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap();
    assert!(key.starts_with("afk_") && key.len() >= 36 && key[4..].chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    let account = field_after(&out, "account: ").to_string();
    let key_id = field_after(&out, "key id:  ").to_string();

    // The database holds the digest, never the key: on SQLite, search the files' bytes;
    // on PostgreSQL, every row of the schema (its files are the server's, not ours).
    match data.db() {
        Some(db) => assert!(!db.any_row_contains(key), "plaintext key found in the database"),
        None => {
            let db = std::fs::read(data.dir().join("reelgate.db")).unwrap();
            let wal = std::fs::read(data.dir().join("reelgate.db-wal")).unwrap_or_default();
            for bytes in [&db, &wal] {
                assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "plaintext key found on disk");
            }
        }
    }
    // The search itself works: the key's public prefix is stored.
    if let Some(db) = data.db() {
        assert!(db.any_row_contains(&key[..12]), "the key's prefix is in the database");
    }

    let (ok, out, err) = reelgate(&["keys", "create", "--name", "Second", "--account", &account]);
    assert!(ok, "{err}");
    assert_eq!(field_after(&out, "account: "), account);
    let (ok, _, _) = reelgate(&["keys", "create", "--name", "Nope", "--account", &uuid::Uuid::new_v4().to_string()]);
    assert!(!ok, "attaching to a missing account must fail");

    let (ok, out, _) = reelgate(&["keys", "list"]);
    assert!(ok);
    assert!(out.contains(&key_id) && out.contains(&key[..12]) && !out.contains(key));
    assert_eq!(out.lines().count(), 3, "header and two keys: {out}");

    let (ok, out, err) = reelgate(&["credits", "grant", "--account", &account, "--amount", "25"]);
    assert!(ok, "{err}");
    assert!(out.contains("75 credits"), "{out}");
    let (ok, _, _) = reelgate(&["credits", "grant", "--account", &account, "--amount", "-5"]);
    assert!(!ok);
    let (ok, out, _) = reelgate(&["credits", "show", "--account", &account]);
    assert!(ok);
    assert!(out.contains("credits: 75") && out.contains("sum 75"), "{out}");
}

/// A `reelgate serve` child process, killed when dropped: a test that fails half-way
/// must not leave its server running, holding a port and (on PostgreSQL) a schema's
/// connections, after the test is gone.
pub(crate) struct Server(pub(crate) std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        // Both fail harmlessly once the test has stopped it itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Server {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A new account with `credits` and its key, made with `reelgate keys create`.
pub(crate) fn create_key(data: &TestData, name: &str, credits: i64) -> String {
    let (ok, out, err) = data.reelgate(&["keys", "create", "--name", name, "--credits", &credits.to_string()]);
    assert!(ok, "{err}");
    out.lines().last().expect("the key is printed on the last line").to_string()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_loses_no_acknowledged_job() {
    let data = TestData::new();
    let key = create_key(&data, "load", 100000);
    let port = free_port();
    let mut server = Server(
        data.command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            // The log is checked below for an info line, whatever REELGATE_TEST_LOG says.
            .env("REELGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 16 clients submit as fast as they can; SIGTERM lands in the middle.
    let clients = submit_until_the_server_goes(&http, &base, &key, Stop::Graceful);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let kill = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait().unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut log).unwrap();
        (status, log)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}; log:\n{}", status.0, status.1);
    assert!(status.1.contains("listening on http://127.0.0.1:"), "{}", status.1);
    let acked: Vec<String> = acknowledged(clients).await.into_iter().map(|(id, _)| id).collect();
    assert!(acked.len() > 10, "load should have been acknowledged before the signal ({})", acked.len());

    // Reopen the database: every acknowledged job is there and paid for exactly once.
    let store = service::open_store(&data.config()).await.unwrap();
    let keys = store.list_api_keys(None).await.unwrap();
    let account = keys[0].account_id;
    for id in &acked {
        let job = store.get_job(account, id.parse().unwrap()).await.unwrap();
        assert!(job.is_some(), "acknowledged job {id} was lost");
    }
    assert_every_job_charged_once(&*store, account, acked.len(), 100_000, 5).await;
    store.close().await;
}

/// The account's ledger after a stop: at least `acknowledged` charges (a request can be
/// written and then lose its answer to the stop, never the reverse), none twice, and a
/// balance equal to the ledger and to `granted` minus the charges of `cost` each.
async fn assert_every_job_charged_once(
    store: &dyn store::Store,
    account: domain::AccountId,
    acknowledged: usize,
    granted: i64,
    cost: i64,
) {
    let acct = store.get_account(account).await.unwrap().unwrap();
    let ledger = store.ledger(account).await.unwrap();
    let mut charged: Vec<_> =
        ledger.iter().filter(|e| e.kind == store::LedgerKind::Charge).filter_map(|e| e.job_id).collect();
    let charges = charged.len();
    assert!(charges >= acknowledged, "{charges} charges for {acknowledged} acknowledged jobs");
    charged.sort();
    charged.dedup();
    assert_eq!(charged.len(), charges, "no job is charged twice");
    assert_eq!(acct.credits, ledger.iter().map(|e| e.amount).sum::<i64>());
    assert_eq!(acct.credits, granted - cost * charges as i64);
}

/// How the server goes away under [`submit_until_the_server_goes`].
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGTERM: every request the server took is answered in full.
    Graceful,
    /// SIGKILL: an answer may be cut off mid-body, and then it was never acknowledged.
    Kill,
}

/// A job the server acknowledged, with the Idempotency-Key and body it was sent with
/// (if it had a key).
type Acked = (String, Option<(String, Value)>);

/// 16 clients submitting as fast as they can until the server stops answering. Under
/// [`Stop::Kill`] every third request carries an Idempotency-Key.
fn submit_until_the_server_goes(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    stop: Stop,
) -> Vec<tokio::task::JoinHandle<Vec<Acked>>> {
    (0..16)
        .map(|c| {
            let (http, base, key) = (http.clone(), base.to_owned(), key.to_owned());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let body = json!({"model": "hailuo-2.3", "prompt": format!("client {c} clip {i}")});
                    let idempotency_key = (stop == Stop::Kill && i % 3 == 0).then(|| format!("c{c}-i{i}"));
                    let mut request =
                        http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&body);
                    if let Some(k) = &idempotency_key {
                        request = request.header("Idempotency-Key", k);
                    }
                    match request.send().await {
                        Ok(r) if r.status() == 202 => {
                            let id = match (r.json::<Value>().await, stop) {
                                (Ok(b), _) => b["jobId"].as_str().unwrap().to_string(),
                                (Err(_), Stop::Kill) => break, // cut off by the kill: not acknowledged
                                (Err(e), Stop::Graceful) => panic!("an answer was cut off by SIGTERM: {e}"),
                            };
                            acked.push((id, idempotency_key.map(|k| (k, body))));
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server stopped accepting, or is gone
                    }
                }
                acked
            })
        })
        .collect()
}

/// Every client's acknowledged jobs.
async fn acknowledged(clients: Vec<tokio::task::JoinHandle<Vec<Acked>>>) -> Vec<Acked> {
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    acked
}

/// A submission is answered only after the commit that holds it, so a kill -9 in the
/// middle of a stream of submissions must lose nothing that was acknowledged. The
/// engine is off, so the jobs stay as they were submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_acknowledged_submission_is_there_and_charged_once() {
    let data = TestData::new();
    let key = create_key(&data, "load", 100000);
    let port = free_port();
    let mut server = serve_plain(&data, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // 16 clients submit as fast as they can (a third with an Idempotency-Key); the kill
    // lands in the middle of the stream.
    let clients = submit_until_the_server_goes(&http, &base, &key, Stop::Kill);
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let acked = acknowledged(clients).await;
    assert!(acked.len() > 50, "load should have been acknowledged before the kill ({})", acked.len());
    // The restarted server has every acknowledged job, once.
    let _server = serve_plain(&data, port).await;
    for (id, keyed) in &acked {
        let r = http.get(format!("{base}/v2/jobs/{id}")).header("X-API-Key", &key).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged job {id} was lost");
        if let Some((idempotency_key, body)) = keyed {
            // The key still replays its job after the restart.
            let again = http
                .post(format!("{base}/v2/videos/generate"))
                .header("X-API-Key", &key)
                .header("Idempotency-Key", idempotency_key)
                .json(body)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 202);
            assert_eq!(again.json::<Value>().await.unwrap()["jobId"].as_str(), Some(id.as_str()));
        }
    }
    let store = service::open_store(&data.config()).await.unwrap();
    let account = store.list_api_keys(None).await.unwrap()[0].account_id;
    assert_every_job_charged_once(&*store, account, acked.len(), 100_000, 5).await;
    store.close().await;
}

/// Two servers on one SQLite data directory would both lower balances; the second
/// refuses to start and says why, and the first goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_data_directory_refuses_to_start() {
    let data = TestData::new();
    if data.database_url().is_some() {
        eprintln!("SKIP: on PostgreSQL several servers share the database by design (see multinode)");
        return;
    }
    let key = create_key(&data, "one", 100);
    let port = free_port();
    let _first = serve_plain(&data, port).await;
    let second = data
        .command()
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("REELGATE_ENGINE__ENABLED", "false")
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second server on the same data directory must not start");
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(log.contains("another process is serving"), "{log}");
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v2/videos/generate"))
        .header("X-API-Key", &key)
        .json(&json!({"model": "hailuo-2.3", "prompt": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// `reelgate serve` on `port` with the built-in defaults and the engine off.
async fn serve_plain(data: &TestData, port: u16) -> Server {
    spawn_serve(data, port, &[], &[("REELGATE_ENGINE__ENABLED", "false")]).await
}

#[test]
fn config_check_accepts_the_defaults_and_refuses_bad_files() {
    let (ok, out, err) = reelgate(&["config", "check"]);
    assert!(ok, "{err}");
    assert!(out.contains("configuration is valid"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    for text in ["listen = 5", "no_such_setting = true", "[auth]\nkey_cache_ttl_ms = 5000"] {
        std::fs::write(&bad, text).unwrap();
        let (ok, _, err) = reelgate(&["config", "check", "--config", bad.to_str().unwrap()]);
        assert!(!ok, "{text:?} should be refused");
        assert!(err.contains("invalid configuration"), "{text:?}: {err}");
    }
    // serve refuses to start on a bad configuration, before binding anything.
    let (ok, _, err) = reelgate(&["serve", "--config", bad.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("key_cache_ttl_ms"), "{err}");
}

/// Starts `reelgate serve` on `data` with `config` and waits until it answers.
async fn serve(data: &TestData, config: &std::path::Path, port: u16) -> Server {
    spawn_serve(data, port, &["--config", config.to_str().unwrap()], &[("REELGATE_ENGINE__ALLOW_PRIVATE_URLS", "true")])
        .await
}

/// Starts `reelgate serve` on `data` at `port`, with more arguments and environment,
/// and waits until it answers.
pub(crate) async fn spawn_serve(data: &TestData, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = data.command();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        // The log goes to the test's output (shown when it fails) if REELGATE_TEST_LOG asks.
        .stderr(if std::env::var_os("REELGATE_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
    let server = Server(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

/// Polls `GET /v2/jobs/{id}` on the server at `base` until `done` holds for the job,
/// and returns it; fails once `deadline` passes, naming `what` was awaited.
pub(crate) async fn wait_for_job(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let job: Value = http
            .get(format!("{base}/v2/jobs/{id}"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id}: {what} not reached in time; last seen {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_restart_every_job_ends_charged_once_and_refunded_at_most_once() {
    // The sandbox runs in this test process, so MiniMax's side survives the server's death.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_config = sandbox::SandboxConfig { rpm: 10_000, latency_ms: Some(2500), ..Default::default() };
    let sim = sandbox::Sandbox::start(sim_config, listener).await.unwrap();
    let data = TestData::new();
    let d = data.dir().to_str().unwrap().to_string();
    let config = data.dir().join("reelgate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {d:?}\n\
             [engine]\nfirst_poll_delay_ms = 200\npoll_interval_ms = 200\nretry_base_ms = 100\nretry_max_ms = 500\n\
             submit_timeout_ms = 3000\nquery_timeout_ms = 3000\ndownload_timeout_ms = 10000\n\
             [[minimax.accounts]]\nname = \"main\"\napi_key = \"k-main\"\nbase_url = {:?}\ncreate_rpm = 5000\n\
             query_rpm = 60000\n",
            sim.base_url()
        ),
    )
    .unwrap();
    let (ok, out, err) = data.reelgate(&[
        "keys",
        "create",
        "--name",
        "crash",
        "--credits",
        "1000",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap().to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&data, &config, port).await;
    let http = reqwest::Client::new();
    let prompts = [
        "harbour",
        "meadow",
        "city [sandbox:fail-1026]",
        "storm [sandbox:task-fail-1027]",
        "bridge [sandbox:transient-1000]",
        "valley [sandbox:truncated-download]",
    ];
    // Opened before the load so that the kill below is not delayed by connecting.
    let store = service::open_store(&data.config()).await.unwrap();
    let first_submission = Instant::now();
    let mut ids = Vec::new();
    for i in 0..30 {
        let body = json!({"model": "hailuo-2.3", "prompt": format!("{} {i}", prompts[i % prompts.len()])});
        let r =
            http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string());
    }
    eprintln!("30 submissions took {:?}", first_submission.elapsed());
    // Let jobs spread over the stages (the account runs 10 at a time), then kill -9. The
    // time counts from the first submission, not the last: submissions take longer on
    // PostgreSQL, and counting from the last let the first jobs finish upstream and be
    // caught mid-download, whose lease (download timeout + 33 s) outlasted the wait below.
    // Killing 1.3 s before the sandbox's 2.5 s latency is up catches none there.
    tokio::time::sleep_until((first_submission + Duration::from_millis(1200)).into()).await;
    let mut stages = std::collections::BTreeMap::new();
    {
        server.kill().unwrap();
        server.wait().unwrap();
        for id in &ids {
            let job = store.engine_job(id.parse().unwrap()).await.unwrap().unwrap();
            *stages.entry(format!("{:?}", job.stage)).or_insert(0) += 1;
        }
        store.close().await;
    }
    eprintln!("stages at the kill: {stages:?}");
    assert!(stages.len() >= 3, "the kill should catch jobs in several stages: {stages:?}");

    let mut server = serve(&data, &config, port).await;
    // Long enough for any lease the kill interrupted to run out: a job caught mid-create
    // waits for its submit lease (93 s with these timeouts, as image fetches get at least
    // 30 s each), one caught mid-download 43 s, mid-poll 13 s. Usually all are done in seconds.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut statuses = std::collections::BTreeMap::new();
    for id in &ids {
        let what = format!("a terminal status after the restart (stages at kill: {stages:?})");
        let job = wait_for_job(&http, &base, &key, id, deadline, &what, |job| {
            matches!(job["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"))
        })
        .await;
        *statuses.entry(job["status"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let store = service::open_store(&data.config()).await.unwrap();
    let account = store.list_api_keys(None).await.unwrap()[0].account_id;
    let ledger = store.ledger(account).await.unwrap();
    for id in &ids {
        let job = store.engine_job(id.parse().unwrap()).await.unwrap().unwrap();
        let of = |kind| ledger.iter().filter(|e| e.kind == kind && e.job_id == Some(job.record.id)).count();
        assert_eq!(of(store::LedgerKind::Charge), 1, "job {id} charged once");
        let refunds = of(store::LedgerKind::Refund);
        let failed = job.record.status == domain::JobStatus::Failed;
        assert_eq!(refunds, failed as usize, "job {id} ({:?}) refunded iff it failed", job.record.status);
    }
    let balance = store.get_account(account).await.unwrap().unwrap().credits;
    assert_eq!(balance, ledger.iter().map(|e| e.amount).sum::<i64>(), "the balance equals the ledger");
    assert!(statuses.get("COMPLETED").copied().unwrap_or(0) >= 20, "{statuses:?}");
    store.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_raised_before_a_kill_9_are_delivered_after_the_restart() {
    // The receiver's port is closed at first: every event waits in the outbox, retrying.
    let port = free_port();
    let data = TestData::new();
    let d = data.dir().to_str().unwrap().to_string();
    let config = data.dir().join("reelgate.toml");
    // Attempts every 300 ms for 30 s, so no event runs out of attempts while the jobs
    // finish (slower under load, and on PostgreSQL). An attempt in flight at the kill keeps
    // its event leased for timeout_ms + 15 s: a 2 s timeout keeps that inside the wait below.
    let schedule: Vec<u64> = std::iter::once(0).chain(std::iter::repeat_n(300, 99)).collect();
    std::fs::write(
        &config,
        format!(
            "data_dir = {d:?}\n[engine]\nfirst_poll_delay_ms = 100\npoll_interval_ms = 100\n\
             [minimax]\nsandbox_latency_ms = 300\nsandbox_create_rpm = 1000\n\
             [webhooks]\nretry_schedule_ms = {schedule:?}\ntimeout_ms = 2000\n"
        ),
    )
    .unwrap();
    let (ok, out, err) =
        data.reelgate(&["keys", "create", "--name", "hooks", "--credits", "100", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap().to_string();
    let server_port = free_port();
    let base = format!("http://127.0.0.1:{server_port}");
    let mut server = serve(&data, &config, server_port).await;
    let http = reqwest::Client::new();
    let hook_url = format!("http://127.0.0.1:{port}/hook");
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({"model": "hailuo-2.3", "prompt": format!("crash hook {i}"), "webhookUrl": hook_url});
        let r =
            http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&body).send().await.unwrap();
        ids.push(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string());
    }
    // Wait until every job is COMPLETED (its event is in the outbox), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let job = wait_for_job(&http, &base, &key, id, deadline, "COMPLETED", |job| job["status"] == "COMPLETED").await;
        assert_eq!(job["webhookStatus"], "pending");
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let hook = crate::webhooks::receiver_on(listener, vec![]).await;
    let mut server = serve(&data, &config, server_port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let what = "its webhook delivered after the restart";
        wait_for_job(&http, &base, &key, id, deadline, what, |job| job["webhookStatus"] == "delivered").await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let delivered: std::collections::HashSet<String> = hook
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["jobId"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        assert!(delivered.contains(id), "the completed event of {id} arrived");
    }
}

/// With no MiniMax account the engine runs on the built-in sandbox, inside the server: a
/// `kill -9` takes MiniMax's side down with it. The sandbox keeps its tasks in the data
/// directory, so after the restart the tasks in flight at the kill are still there, on their
/// original time line, and every job completes instead of failing with "task not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_built_in_sandbox_still_knows_its_tasks_and_every_job_completes() {
    const JOBS: usize = 8;
    let data = TestData::new();
    let d = data.dir().to_str().unwrap().to_string();
    let config = data.dir().join("reelgate.toml");
    // 6 s tasks: every job is created upstream well before the first finishes, so the kill
    // catches them all in flight and none mid-create (whose lease would outlast the test).
    std::fs::write(
        &config,
        format!(
            "data_dir = {d:?}\n\
             [engine]\nfirst_poll_delay_ms = 200\npoll_interval_ms = 200\nretry_base_ms = 100\nretry_max_ms = 500\n\
             submit_timeout_ms = 3000\nquery_timeout_ms = 3000\ndownload_timeout_ms = 10000\n\
             [minimax]\nsandbox_latency_ms = 6000\nsandbox_create_rpm = 1000\n"
        ),
    )
    .unwrap();
    let (ok, out, err) =
        data.reelgate(&["keys", "create", "--name", "crash", "--credits", "100", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap().to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&data, &config, port).await;
    let http = reqwest::Client::new();
    let store = service::open_store(&data.config()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let body = json!({"model": "hailuo-2.3", "prompt": format!("sandbox crash {i}")});
        let r =
            http.post(format!("{base}/v2/videos/generate")).header("X-API-Key", &key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string());
    }
    // Every job PROCESSING upstream (a sandbox task id recorded), then the kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut running = 0;
        for id in &ids {
            let job = store.engine_job(id.parse().unwrap()).await.unwrap().unwrap();
            running += usize::from(job.stage == domain::Stage::Running && job.upstream_task_id.is_some());
        }
        if running == JOBS {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} of {JOBS} jobs reached the sandbox in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    store.close().await;

    let mut server = serve(&data, &config, port).await;
    // A job caught mid-poll waits for its poll lease (query timeout + 10 s) to run out.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let job = wait_for_job(&http, &base, &key, id, deadline, "a terminal status after the restart", |job| {
            matches!(job["status"].as_str(), Some("COMPLETED" | "FAILED"))
        })
        .await;
        assert_eq!(job["status"], "COMPLETED", "a task in flight at the kill is not lost: {job}");
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let store = service::open_store(&data.config()).await.unwrap();
    let account = store.list_api_keys(None).await.unwrap()[0].account_id;
    assert_every_job_charged_once(&*store, account, JOBS, 100, 5).await;
    let refunds = store.ledger(account).await.unwrap().iter().filter(|e| e.kind == store::LedgerKind::Refund).count();
    assert_eq!(refunds, 0, "no job failed, so none was refunded");
    store.close().await;
}
