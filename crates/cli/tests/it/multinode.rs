//! Several `reelgate serve` processes on one PostgreSQL database and one S3 bucket,
//! with the MiniMax sandbox behind them: 2,000 jobs sent round-robin across three nodes,
//! one node killed with SIGKILL half way, and afterwards the guarantees of the
//! single-node build checked across the survivors: every job terminal, every balance
//! equal to its ledger, no refund twice, every job's final webhook delivered, and no
//! more creates in any minute than the one MiniMax account's budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use service::results::testkit::TestS3;

use crate::helpers::data::{postgres_base_url, TestDb};
use crate::lifecycle::wait_for_job;

/// Jobs sent in all.
const JOBS: usize = 2000;
/// Nodes started.
const NODES: usize = 3;
/// Customer accounts the jobs are spread over.
const ACCOUNTS: usize = 4;
/// The MiniMax account's create budget, per minute, shared by every node. Below the
/// number of jobs, so the budget decides the pace for a while and can be overspent.
const CREATE_RPM: u32 = 1500;

/// A running node.
struct Node {
    base: String,
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn reelgate(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reelgate"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .expect("run reelgate");
    assert!(out.status.success(), "reelgate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn start_node(config: &std::path::Path, data_dir: &std::path::Path, log: &std::path::Path) -> Node {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let child = Command::new(env!("CARGO_BIN_EXE_reelgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config", config.to_str().unwrap()])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .env("REELGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/readyz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "node did not become ready: {}", std::fs::read_to_string(log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node { base, child: Some(child) }
}

/// A webhook receiver keeping the first final event of each job.
async fn receiver() -> (String, Arc<Mutex<HashMap<String, String>>>, Arc<Mutex<usize>>) {
    let finals: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let deliveries: Arc<Mutex<usize>> = Arc::default();
    let (f, d) = (finals.clone(), deliveries.clone());
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (f, d) = (f.clone(), d.clone());
            async move {
                *d.lock().unwrap() += 1;
                let event: Value = serde_json::from_slice(&body).unwrap();
                let job = event["jobId"].as_str().unwrap().to_string();
                f.lock().unwrap().entry(job).or_insert_with(|| event["event"].as_str().unwrap().to_string());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, finals, deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_database_one_bucket_and_one_budget_through_a_node_crash() {
    let test = "three_nodes_share_one_database_one_bucket_and_one_budget_through_a_node_crash";
    let Some(db) = TestDb::fresh_on_postgres(test) else { return };
    let database_url = db.url().to_owned();
    let Some(s3) = TestS3::get(test).await else { return };
    let bucket = s3.create_bucket().await;
    let s3_config = s3.config(&bucket);
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_config = sandbox::SandboxConfig {
        rpm: CREATE_RPM,
        latency_ms: Some(2000),
        keys: vec!["k-shared".into()],
        ..Default::default()
    };
    let sim = sandbox::Sandbox::start(sim_config, sim_listener).await.unwrap();
    let (hook_url, finals, deliveries) = receiver().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reelgate.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = {database_url:?}\n\
             [accounts]\ndefault_max_concurrent_jobs = 1000\n\
             [rate_limits]\ngenerate_per_sec = 0\nread_per_sec = 0\n\
             [engine]\nfirst_poll_delay_ms = 2000\npoll_interval_ms = 500\nretry_base_ms = 200\nretry_max_ms = 2000\n\
             submit_timeout_ms = 5000\nquery_timeout_ms = 5000\nallow_private_urls = true\n\
             [webhooks]\ntimeout_ms = 5000\nretry_schedule_ms = [0, 1000, 2000, 5000, 10000, 30000]\n\
             [[minimax.accounts]]\nname = \"shared\"\napi_key = \"k-shared\"\nbase_url = {:?}\n\
             create_rpm = {CREATE_RPM}\nmax_in_flight = 5000\nquery_rpm = 600000\n\
             [results]\nbackend = \"s3\"\n\
             [results.s3]\nbucket = {bucket:?}\nendpoint = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n\
             path_style = true\n",
            sim.base_url(),
            s3_config.endpoint.as_deref().unwrap(),
            s3_config.access_key_id.as_deref().unwrap(),
            service::secrecy::ExposeSecret::expose_secret(s3_config.secret_access_key.as_ref().unwrap()),
        ),
    )
    .unwrap();
    let keys: Vec<String> = (0..ACCOUNTS)
        .map(|a| {
            let out = reelgate(&config, &["keys", "create", "--name", &format!("tenant {a}"), "--credits", "100000"]);
            out.lines().last().unwrap().to_string()
        })
        .collect();

    let started = Instant::now();
    let progress = |what: &str| eprintln!("multinode: {:>6.1} s: {what}", started.elapsed().as_secs_f64());
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let data = dir.path().join(format!("node{n}"));
        nodes.push(start_node(&config, &data, &dir.path().join(format!("node{n}.log"))).await);
    }
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let dead: Arc<Mutex<HashSet<usize>>> = Arc::default();

    // Submit round-robin from 16 clients; a client whose node is gone sends the same
    // request, with the same Idempotency-Key, to the next node.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let submitted: Arc<Mutex<Vec<(usize, String, bool)>>> = Arc::default();
    let submit_all = {
        let (http, bases, keys, hook_url, submitted, dead) =
            (http.clone(), bases.clone(), keys.clone(), hook_url.clone(), submitted.clone(), dead.clone());
        async move {
            futures_util::future::join_all((0..16).map(|client| {
                let (http, bases, keys, hook_url, submitted, dead) =
                    (&http, &bases, &keys, &hook_url, &submitted, &dead);
                async move {
                    for job in (client..JOBS).step_by(16) {
                        let account = job % ACCOUNTS;
                        // One job in ten fails upstream and must be refunded exactly once.
                        let refused = job % 10 == 3;
                        let prompt = if refused {
                            format!("refused clip {job} [sandbox:fail-1026]")
                        } else {
                            "multi-node clip".to_string()
                        };
                        let body = json!({"model": "hailuo-2.3", "prompt": prompt, "webhookUrl": hook_url});
                        let idem = format!("job-{job}");
                        let mut node = job % NODES;
                        let id = loop {
                            if dead.lock().unwrap().contains(&node) {
                                node = (node + 1) % NODES;
                                continue;
                            }
                            let sent = http
                                .post(format!("{}/v2/videos/generate", bases[node]))
                                .header("X-API-Key", &keys[account])
                                .header("Idempotency-Key", &idem)
                                .json(&body)
                                .send()
                                .await;
                            match sent {
                                Ok(r) if r.status() == 202 => {
                                    break r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string()
                                }
                                Ok(r) if r.status() == 503 => tokio::time::sleep(Duration::from_millis(100)).await,
                                Ok(r) => panic!("generate on node {node}: {} {}", r.status(), r.text().await.unwrap()),
                                // The node died under this request: the next node answers it.
                                Err(_) => node = (node + 1) % NODES,
                            }
                        };
                        submitted.lock().unwrap().push((account, id, refused));
                    }
                }
            }))
            .await;
        }
    };
    let submitting = tokio::spawn(submit_all);

    // Kill one node with SIGKILL once about half the jobs are in and work is in flight.
    let deadline = Instant::now() + Duration::from_secs(120);
    while submitted.lock().unwrap().len() < JOBS / 2 {
        assert!(Instant::now() < deadline, "submissions stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dead.lock().unwrap().insert(1);
    nodes[1].kill();
    progress("node 1 killed with SIGKILL");
    submitting.await.unwrap();
    progress("every job submitted");
    let jobs = submitted.lock().unwrap().clone();
    assert_eq!(jobs.len(), JOBS);
    assert_eq!(jobs.iter().map(|(_, id, _)| id).collect::<HashSet<_>>().len(), JOBS, "one job per request");

    // Every job reaches a terminal status, whichever node claimed it.
    let survivors = [bases[0].clone(), bases[2].clone()];
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (n, (account, id, refused)) in jobs.iter().enumerate() {
        let base = &survivors[n % survivors.len()];
        let job = wait_for_job(&http, base, &keys[*account], id, deadline, "a terminal status", |job| {
            matches!(job["status"].as_str(), Some("COMPLETED" | "FAILED"))
        })
        .await;
        let status = job["status"].as_str().unwrap().to_string();
        assert_eq!(status == "FAILED", *refused, "only the refused jobs fail: {job}");
        if status == "COMPLETED" {
            assert!(job["result"]["videoUrl"].is_string(), "{job}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(statuses.get("FAILED").copied().unwrap_or(0), JOBS / 10, "only the refused jobs failed: {statuses:?}");
    progress("every job terminal");

    // A completed job's video is served by any node, with Range, from the one bucket.
    let (account, id, _) = jobs.iter().find(|(_, _, refused)| !refused).unwrap();
    for base in &survivors {
        let job = wait_for_job(&http, base, &keys[*account], id, deadline, "its status", |_| true).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
        let own = job["result"]["videoUrl"].as_str().unwrap().rsplit_once("/v2/").unwrap().1.to_string();
        let r = http.get(format!("{base}/v2/{own}")).header("Range", "bytes=4-7").send().await.unwrap();
        assert_eq!(r.status(), 206, "{base}");
        assert_eq!(&r.bytes().await.unwrap()[..], b"ftyp");
    }

    // Every job's final webhook arrives (at least once).
    let deadline = Instant::now() + Duration::from_secs(120);
    while finals.lock().unwrap().len() < JOBS {
        assert!(Instant::now() < deadline, "{} of {JOBS} final webhooks arrived", finals.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(*deliveries.lock().unwrap() >= JOBS);
    progress("every final webhook received");

    // The ledger, through the store the nodes share.
    let mut c = service::Config::defaults();
    c.data_dir = dir.path().join("checker");
    c.database_url = Some(service::config::DatabaseUrl::from(database_url.clone()));
    let store = service::open_store(&c).await.unwrap();
    let mut accounts: HashMap<usize, Vec<&String>> = HashMap::new();
    for (account, id, _) in &jobs {
        accounts.entry(*account).or_default().push(id);
    }
    let all_keys = store.list_api_keys(None).await.unwrap();
    for (account, ids) in accounts {
        let digest = domain::KeyDigest::of(&keys[account]);
        let account_id = all_keys.iter().find(|k| k.digest == digest).unwrap().account_id;
        let ledger = store.ledger(account_id).await.unwrap();
        let balance = store.get_account(account_id).await.unwrap().unwrap().credits;
        assert_eq!(balance, ledger.iter().map(|e| e.amount).sum::<i64>(), "account {account}: balance = ledger");
        for id in ids {
            let job = store.engine_job(id.parse().unwrap()).await.unwrap().unwrap();
            let of = |kind| ledger.iter().filter(|e| e.kind == kind && e.job_id == Some(job.record.id)).count();
            assert_eq!(of(store::LedgerKind::Charge), 1, "job {id} charged once");
            let failed = job.record.status == domain::JobStatus::Failed;
            assert_eq!(of(store::LedgerKind::Refund), failed as usize, "job {id} refunded iff it failed");
            assert_eq!(job.record.webhook_status, Some(domain::WebhookStatus::Delivered), "job {id}");
        }
    }
    store.close().await;
    progress("ledgers checked");

    // MiniMax's side: never more creates in a minute than the one budget.
    let stats: Value =
        http.get(format!("{}/sandbox/stats", sim.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["creates_rate_limited"], 0, "no create refused for the budget: {stats}");
    assert!(stats["max_creates_in_window"].as_u64().unwrap() <= u64::from(CREATE_RPM), "{stats}");
    assert!(stats["creates_total"].as_u64().unwrap() >= JOBS as u64, "{stats}");
    drop(nodes);
    sim.shutdown().await;
    db.drop_schema().await;
}

/// A TCP proxy in front of PostgreSQL that can be cut: while cut, it drops every open
/// connection and refuses new ones, as a network partition or a database restart would.
struct Partition {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Partition {
    async fn in_front_of(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watching.borrow() {
                    continue; // dropped: refused
                }
                let mut watching = watching.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watching.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[tokio::test]
async fn a_node_that_loses_its_database_refuses_jobs_and_recovers_by_itself() {
    let test = "a_node_that_loses_its_database_refuses_jobs_and_recovers_by_itself";
    let Some(db) = TestDb::fresh_on_postgres(test) else { return };
    let database_url = db.url().to_owned();
    // The same database, reached through the proxy.
    let base = postgres_base_url();
    let host_port = base.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string();
    let partition = Partition::in_front_of(&host_port).await;
    let proxied = database_url.replacen(&host_port, &partition.addr.to_string(), 1);
    let app = crate::helpers::TestApp::spawn_with(|c| {
        c.database_url = Some(service::config::DatabaseUrl::from(proxied.clone()));
    })
    .await;
    let key = app.create_key(100).await;
    let body = json!({"model": "hailuo-2.3", "prompt": "before the partition"});
    app.submit(&key, &body).await;
    let ready = |app: &crate::helpers::TestApp| {
        let request = app.http.get(app.url("/readyz"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&app).await, 200);

    partition.set_cut(true);
    crate::helpers::eventually(Duration::from_secs(15), || async { ready(&app).await == 503 }).await;
    let refused = app.generate(&key, &json!({"model": "hailuo-2.3", "prompt": "during the partition"})).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.body["error"].is_string(), "the API's error shape: {:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"), "clients are told when to come back");

    partition.set_cut(false);
    crate::helpers::eventually(Duration::from_secs(15), || async { ready(&app).await == 200 }).await;
    app.submit(&key, &json!({"model": "hailuo-2.3", "prompt": "after the partition"})).await;
    let (balance, ledger) = app.balance_and_ledger(key.account_id).await;
    assert_eq!((balance, ledger), (90, 90), "two jobs charged; the refused one moved nothing");
    app.stop().await.unwrap();
    db.drop_schema().await;
}

#[tokio::test]
async fn revoking_a_key_on_one_node_reaches_every_node_within_two_seconds() {
    let test = "revoking_a_key_on_one_node_reaches_every_node_within_two_seconds";
    let Some(db) = TestDb::fresh_on_postgres(test) else { return };
    let database_url = db.url().to_owned();
    let url = service::config::DatabaseUrl::from(database_url.clone());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        nodes.push(crate::helpers::TestApp::spawn_with(move |c| c.database_url = Some(url)).await);
    }
    let key = nodes[0].create_key(100).await;
    for node in &nodes {
        assert_eq!(node.me(&key.key).await.status, 200, "every node knows the key");
    }
    // An operator revokes it from anywhere (the CLI on the shared database).
    let out = Command::new(env!("CARGO_BIN_EXE_reelgate"))
        .args(["keys", "revoke", &key.key_id.to_string()])
        .env("REELGATE_DATABASE_URL", &database_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for node in &nodes {
        let took =
            crate::helpers::eventually(Duration::from_secs(2), || async { node.me(&key.key).await.status == 401 })
                .await;
        eprintln!("revocation reached {} after {took:?}", node.addr);
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
    db.drop_schema().await;
}

/// Three nodes on one database, none with a MiniMax account: each would start a built-in
/// sandbox that knows only its own tasks, and nodes poll each other's jobs. Exactly one node
/// starts with the built-in sandbox; the other two refuse, saying to run `reelgate sim` and
/// name it as the account, and exit non-zero. A node with the engine off may join it, and
/// every job, whichever node took it in, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_the_built_in_sandbox_start_one_and_the_others_refuse_clearly() {
    let test = "three_nodes_with_the_built_in_sandbox_start_one_and_the_others_refuse_clearly";
    let Some(db) = TestDb::fresh_on_postgres(test) else { return };
    let database_url = db.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reelgate.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = {database_url:?}\n\
             [engine]\nfirst_poll_delay_ms = 200\npoll_interval_ms = 200\nretry_base_ms = 100\nretry_max_ms = 1000\n\
             [minimax]\nsandbox_latency_ms = 1000\nsandbox_create_rpm = 1000\n"
        ),
    )
    .unwrap();
    let key = reelgate(&config, &["keys", "create", "--name", "tenant", "--credits", "1000"])
        .lines()
        .last()
        .unwrap()
        .to_string();

    // All three at once: whichever way the race goes, one wins.
    let ports: Vec<u16> =
        (0..NODES).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let mut children: Vec<Option<Child>> = (0..NODES)
        .map(|n| {
            let child = Command::new(env!("CARGO_BIN_EXE_reelgate"))
                .args(["serve", "--listen", &format!("127.0.0.1:{}", ports[n]), "--config", config.to_str().unwrap()])
                .args(["--data-dir", dir.path().join(format!("node{n}")).to_str().unwrap()])
                .env("REELGATE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("node{n}.log"))).unwrap())
                .spawn()
                .unwrap();
            Some(child)
        })
        .collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // The two that lose wait 5 s (a killed holder's session may take a moment to end), then exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = Vec::new();
    while refused.len() < NODES - 1 {
        let alive: Vec<usize> = (0..NODES).filter(|n| !refused.contains(n)).collect();
        assert!(Instant::now() < deadline, "nodes {alive:?} are all still up: more than one runs a built-in sandbox");
        for n in alive {
            if let Some(status) = children[n].as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join(format!("node{n}.log"))).unwrap();
                assert!(!status.success(), "node {n} exited successfully: {log}");
                assert!(
                    log.contains("reelgate sim --listen") && log.contains("[[minimax.accounts]]"),
                    "node {n} says how to run several nodes: {log}"
                );
                refused.push(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let winner = (0..NODES).find(|n| !refused.contains(n)).unwrap();
    let engine_base = format!("http://127.0.0.1:{}", ports[winner]);
    let ready_by = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{engine_base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        let log = std::fs::read_to_string(dir.path().join(format!("node{winner}.log"))).unwrap();
        assert!(Instant::now() < ready_by, "the node with the built-in sandbox did not start: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A node with the engine off shares the database with it: it takes jobs in, the engine
    // node runs them.
    let api_dir = dir.path().join("api-node");
    let api_log = dir.path().join("api-node.log");
    let api_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut api_node = Node {
        base: format!("http://127.0.0.1:{api_port}"),
        child: Some(
            Command::new(env!("CARGO_BIN_EXE_reelgate"))
                .args(["serve", "--listen", &format!("127.0.0.1:{api_port}"), "--config", config.to_str().unwrap()])
                .args(["--data-dir", api_dir.to_str().unwrap()])
                .env("REELGATE_ENGINE__ENABLED", "false")
                .env("REELGATE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&api_log).unwrap())
                .spawn()
                .unwrap(),
        ),
    };
    let ready_by = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{}/readyz", api_node.base)).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(
            Instant::now() < ready_by,
            "the API node did not start: {}",
            std::fs::read_to_string(&api_log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ids = Vec::new();
    for i in 0..20 {
        let base = if i % 2 == 0 { &engine_base } else { &api_node.base };
        let r = http
            .post(format!("{base}/v2/videos/generate"))
            .header("X-API-Key", &key)
            .json(&json!({"model": "hailuo-2.3", "prompt": format!("one sandbox, clip {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, id) in ids.iter().enumerate() {
        let base = if i % 2 == 0 { &api_node.base } else { &engine_base };
        let job = wait_for_job(&http, base, &key, id, deadline, "a terminal status", |job| {
            matches!(job["status"].as_str(), Some("COMPLETED" | "FAILED"))
        })
        .await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
    }
    api_node.kill();
    for child in children.iter_mut().filter_map(Option::take) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    db.drop_schema().await;
}

/// The built-in sandbox's lock lives in a database session; a node whose session is cut (a
/// PostgreSQL restart, a dropped connection) loses it, takes it again once the database
/// answers, and so a node started afterwards is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_database_takes_the_built_in_sandbox_lock_again() {
    let test = "a_node_that_loses_its_database_takes_the_built_in_sandbox_lock_again";
    let Some(db) = TestDb::fresh_on_postgres(test) else { return };
    let base = postgres_base_url();
    let host_port = base.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string();
    let partition = Partition::in_front_of(&host_port).await;
    let proxied = db.url().replacen(&host_port, &partition.addr.to_string(), 1);
    let app = crate::helpers::TestApp::spawn_engine(|c, _| {
        c.database_url = Some(service::config::DatabaseUrl::from(proxied.clone()));
    })
    .await;
    let ready = |app: &crate::helpers::TestApp| {
        let request = app.http.get(app.url("/readyz"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    partition.set_cut(true);
    crate::helpers::eventually(Duration::from_secs(15), || async { ready(&app).await == 503 }).await;
    partition.set_cut(false);
    crate::helpers::eventually(Duration::from_secs(15), || async { ready(&app).await == 200 }).await;
    // The keeper looks once a second.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("second.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut second = Node {
        base: format!("http://127.0.0.1:{port}"),
        child: Some(
            Command::new(env!("CARGO_BIN_EXE_reelgate"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .env("REELGATE_DATABASE_URL", db.url())
                .env("REELGATE_DATA_DIR", dir.path())
                .env("REELGATE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second node with the built-in sandbox started on {}: {}",
            second.base,
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success() && text.contains("reelgate sim --listen"), "{status:?}: {text}");
    second.child = None;
    app.stop().await.unwrap();
    db.drop_schema().await;
}
