//! `reelgate bench engine`: pushes a batch of jobs through the job engine against the
//! MiniMax sandbox and measures the engine, not the HTTP front door.
//!
//! It owns the whole run: a throwaway data directory with customer accounts, the sandbox
//! started as `reelgate sim` and the server as `reelgate serve` (both child processes of
//! this binary), the jobs submitted over HTTP, the watch until every job is terminal, and
//! the report (a table and one JSON line). The server's MiniMax account points at the
//! sandbox with the same create budget the sandbox enforces, so a create refused with
//! 1002 means the engine overspent its budget.
//!
//! Unlike the HTTP bench, the server and the sandbox are separate processes so that each
//! one's peak memory (`VmHWM`) and CPU time can be read from `/proc` on its own, without
//! the bench's own work in them. That makes this mode Linux-only.
//!
//! With `--webhooks`, every job also asks for its `completed` event at a receiver inside
//! the bench process, and the report adds the delivery latency from the job's
//! `completedAt` to the event's arrival (p50/p99/max).
//!
//! Every job has the same prompt: the sandbox renders a video once per distinct request,
//! and rendering 10,000 different videos would measure the renderer instead of the engine.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use super::client::{ClientKind, Connection};
use super::webhook_receiver::{Latencies, WebhookReceiver};

/// Options of `bench engine`.
#[derive(clap::Args)]
pub struct EngineArgs {
    /// Jobs to submit.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Create calls per minute: the sandbox's limit and the MiniMax account's `create_rpm`.
    #[arg(long, default_value_t = 6000)]
    pub rpm: u32,
    /// Time from create to Success in the sandbox, in ms; the engine's first poll waits as long.
    #[arg(long, default_value_t = 2000)]
    pub latency_ms: u64,
    /// Customer accounts (one key each) the jobs are spread over, so claims must be fair.
    #[arg(long, default_value_t = 4)]
    pub accounts: usize,
    /// Connections submitting the jobs at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Give up waiting for the jobs after this many seconds [default: from the budget and latency].
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Ask for a webhook on every job, received by the bench, and report the delivery latency.
    #[arg(long)]
    pub webhooks: bool,
}

/// The sandbox's only accepted key, which the server's MiniMax account uses.
const SANDBOX_KEY: &str = "bench-engine-key";
/// Credits per customer account: enough for any run.
const CREDITS: i64 = 1_000_000_000_000;
/// How often the watch samples the counters and memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long a child process may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The engine counts its create budget over 61 s (one more than MiniMax, see
/// `BUDGET_WINDOW_MS` in the engine), so dispatching N jobs takes this long per budget's worth.
const ENGINE_WINDOW: Duration = Duration::from_secs(61);
/// How long to wait for the last webhooks once every job is terminal.
const WEBHOOK_GRACE: Duration = Duration::from_secs(60);
/// Linux's `USER_HZ`: `/proc/PID/stat` counts CPU time in these ticks. It is 100 on every
/// architecture Linux supports today; reading it would need `sysconf` and unsafe code.
const TICKS_PER_SECOND: f64 = 100.0;

/// Runs the engine benchmark and prints its report; fails if a job did not complete or
/// the budget was overspent.
pub async fn run(args: EngineArgs) -> anyhow::Result<()> {
    ensure!(cfg!(target_os = "linux"), "bench engine reads /proc and runs on Linux only");
    ensure!(args.jobs > 0, "--jobs must be at least 1");
    ensure!(args.rpm > 0, "--rpm must be at least 1");
    ensure!(args.accounts > 0, "--accounts must be at least 1");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    // The server it starts reads REELGATE_* from the environment: with a database URL
    // there, the bench's keys and 10,000 jobs would land in that database.
    ensure!(
        std::env::var_os("REELGATE_DATABASE_URL").is_none(),
        "bench engine runs on SQLite in a temporary data directory; unset REELGATE_DATABASE_URL"
    );
    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or_else(|| default_timeout_secs(&args)));
    let load_before = load_average();

    let data_dir = tempfile::Builder::new()
        .prefix("reelgate-bench-engine-")
        .tempdir()
        .context("cannot create a data directory")?;
    let paths = Paths::new(data_dir.path())?;
    let sim_addr = free_loopback_port()?;
    let api_addr = free_loopback_port()?;
    let receiver = if args.webhooks { Some(WebhookReceiver::start().await?) } else { None };
    let server_config = server_config(&args, &paths, api_addr, sim_addr);
    std::fs::write(&paths.config, &server_config).context("cannot write the server's config file")?;

    let mut config = service::Config::load(Some(&paths.config)).context("the generated config does not load")?;
    config.data_dir = paths.root.clone();
    let keys =
        crate::accounts::create_keys(&config, args.accounts, u32::try_from(args.jobs).unwrap_or(u32::MAX), CREDITS)
            .await
            .context("cannot create the bench API keys")?;
    let keys: Vec<String> = keys.into_iter().map(|k| k.secret).collect();

    let outcome = async {
        let mut sim = ChildProcess::spawn("sim", &sim_args(&args, &paths, sim_addr), &paths.sim_log)?;
        sim.wait_ready(sim_addr, "/sandbox/stats").await?;
        let mut serve = ChildProcess::spawn("serve", &serve_args(&paths, api_addr), &paths.serve_log)?;
        serve.wait_ready(api_addr, "/healthz").await?;
        eprintln!(
            "bench engine: sandbox (pid {}) on {sim_addr}, server (pid {}) on {api_addr}, data in {}",
            sim.pid(),
            serve.pid(),
            paths.root.display()
        );
        let measured =
            drive(&args, &keys, &paths, (api_addr, sim_addr), (&mut serve, &mut sim), receiver.as_ref(), timeout).await;
        // Stop both whatever happened; a measurement error is reported first.
        let serve_exit = serve.stop().await;
        let sim_exit = sim.stop().await;
        let mut measured = measured?;
        measured.exits = vec![("serve", serve_exit?), ("sim", sim_exit?)];
        anyhow::Ok(measured)
    }
    .await;
    let load_after = load_average();

    let measured = match outcome {
        Ok(m) => m,
        Err(e) => {
            let kept = data_dir.keep();
            eprintln!("bench engine: failed; data, config and logs kept in {}", kept.display());
            return Err(e);
        }
    };
    let failures = report(&args, &measured, load_before, load_after);
    if failures.is_empty() {
        data_dir.close().context("cannot remove the bench data directory")?;
        Ok(())
    } else {
        let kept = data_dir.keep();
        eprintln!("bench engine: data, config and logs kept in {}", kept.display());
        bail!("{}", failures.join("; "))
    }
}

/// Enough time for every budget window the jobs need, plenty of polls and a margin.
fn default_timeout_secs(args: &EngineArgs) -> u64 {
    let windows = args.jobs.div_ceil(args.rpm as usize) as u64;
    windows * ENGINE_WINDOW.as_secs() + 20 * args.latency_ms / 1000 + 120
}

// ---------------------------------------------------------------------------------
// Setup: files, configuration, child processes.

/// Where everything of one run lives, inside the temporary data directory.
struct Paths {
    /// The server's data directory (reelgate.db, results/).
    root: PathBuf,
    /// The sandbox's data directory (render cache).
    sandbox: PathBuf,
    config: PathBuf,
    serve_log: PathBuf,
    sim_log: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let sandbox = root.join("sandbox");
        std::fs::create_dir_all(&sandbox).context("cannot create the sandbox's directory")?;
        Ok(Self {
            root: root.to_path_buf(),
            sandbox,
            config: root.join("bench-engine.toml"),
            serve_log: root.join("serve.log"),
            sim_log: root.join("sim.log"),
        })
    }
}

/// A loopback address with a port that was free a moment ago. The child binds it a
/// little later; another process taking it in between makes the child fail to start,
/// which the bench reports.
pub(super) fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}

/// The server's configuration: one MiniMax account on the sandbox with the run's create
/// budget, and no other limit in the way (in-flight cap, query budget).
fn server_config(args: &EngineArgs, paths: &Paths, api: SocketAddr, sim: SocketAddr) -> String {
    // The sandbox finishes a task exactly `latency_ms` after the create call arrived, and
    // the engine counts its first poll from the create's answer, so the first poll finds
    // the task done. The interval only matters for stragglers.
    let first_poll = args.latency_ms;
    let interval = (args.latency_ms / 4).max(100);
    // Every job is polled about once and retrieved once; a query budget of 10,000 a
    // second keeps the engine's query pacer out of the way of any create budget tested.
    let query_rpm = 600_000;
    format!(
        "# Written by `reelgate bench engine`.\n\
         listen = \"{api}\"\n\
         data_dir = {data_dir:?}\n\
         \n\
         [engine]\n\
         first_poll_delay_ms = {first_poll}\n\
         poll_interval_ms = {interval}\n\
         # The bench's webhook receiver is on loopback.\n\
         allow_private_urls = {webhooks}\n\
         \n\
         # The bench submits as fast as it can from few keys.\n\
         [rate_limits]\n\
         generate_per_sec = 0\n\
         read_per_sec = 0\n\
         \n\
         [[minimax.accounts]]\n\
         name = \"sandbox\"\n\
         api_key = \"{SANDBOX_KEY}\"\n\
         base_url = \"http://{sim}\"\n\
         create_rpm = {rpm}\n\
         max_in_flight = {max_in_flight}\n\
         query_rpm = {query_rpm}\n",
        data_dir = paths.root.display().to_string(),
        rpm = args.rpm,
        max_in_flight = u32::try_from(args.jobs).unwrap_or(u32::MAX),
        webhooks = args.webhooks,
    )
}

fn sim_args(args: &EngineArgs, paths: &Paths, sim: SocketAddr) -> Vec<String> {
    vec![
        "sim".into(),
        "--listen".into(),
        sim.to_string(),
        "--data-dir".into(),
        paths.sandbox.display().to_string(),
        "--key".into(),
        SANDBOX_KEY.into(),
        "--rpm".into(),
        args.rpm.to_string(),
        "--latency-ms".into(),
        args.latency_ms.to_string(),
    ]
}

fn serve_args(paths: &Paths, api: SocketAddr) -> Vec<String> {
    vec![
        "serve".into(),
        "--listen".into(),
        api.to_string(),
        "--data-dir".into(),
        paths.root.display().to_string(),
        "--config".into(),
        paths.config.display().to_string(),
    ]
}

/// The `reelgate` binary the child processes run: `$REELGATE_BIN`, else the one built
/// beside this bench (`cargo build --release -p reelgate -p reelgate-bench`).
pub(crate) fn reelgate_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("REELGATE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let bench = std::env::current_exe().context("cannot find this binary")?;
    let beside = bench.with_file_name(format!("reelgate{}", std::env::consts::EXE_SUFFIX));
    if !beside.is_file() {
        bail!(
            "no reelgate binary at {}: build it beside this bench (cargo build --release -p reelgate -p reelgate-bench) or set REELGATE_BIN",
            beside.display()
        );
    }
    Ok(beside)
}

/// A child process running the `reelgate` binary, logging to a file. Dropping it kills the
/// process, so a failed bench leaves nothing running.
pub(super) struct ChildProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `reelgate serve` on `data_dir` at a free loopback port, logging to `log`,
    /// with `env` added to its environment, and waits until it answers `/healthz`.
    pub(super) async fn serve(data_dir: &str, log: &Path, env: &[(&str, &str)]) -> anyhow::Result<(Self, SocketAddr)> {
        let addr = free_loopback_port()?;
        let args: Vec<String> =
            ["serve", "--listen", &addr.to_string(), "--data-dir", data_dir].iter().map(|s| s.to_string()).collect();
        let mut server = Self::spawn_with_env("serve", &args, log, env)?;
        server.wait_ready(addr, "/healthz").await?;
        Ok((server, addr))
    }

    fn spawn(name: &'static str, args: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, args, log, &[])
    }

    /// [`ChildProcess::spawn`] with more environment variables.
    pub(super) fn spawn_with_env(
        name: &'static str,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let exe = reelgate_binary()?;
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start reelgate {name}"))?;
        Ok(Self { name, child, log: log.to_path_buf() })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of the log, if the process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("reelgate {} exited ({status}); the end of its log:\n{}", self.name, self.log_tail(20));
        }
        Ok(())
    }

    /// Waits until `GET path` answers 200.
    pub(super) async fn wait_ready(&mut self, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        let mut http = Http::new(addr);
        loop {
            self.check_running()?;
            if let Ok((200, _)) = http.get(path, None).await {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("reelgate {} did not answer GET {path} on {addr} within {READY_TIMEOUT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak and current memory and CPU time so far, from `/proc`.
    fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid())
    }

    /// Asks for a graceful stop (SIGTERM), then kills the process if it does not exit.
    pub(super) async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // std can only send SIGKILL; `kill` sends SIGTERM without unsafe code.
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        if !sent.is_ok_and(|s| s.success()) {
            self.child.kill()?;
        }
        let until = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                eprintln!("bench engine: reelgate {} did not stop within {STOP_TIMEOUT:?}; killing it", self.name);
                self.child.kill()?;
                return Ok(self.child.wait()?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's memory and CPU figures.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Usage {
    /// `VmHWM`: the largest resident set so far, in KiB.
    pub(super) peak_rss_kib: u64,
    /// `VmRSS`: the resident set now, in KiB.
    pub(super) rss_kib: u64,
    /// User plus system CPU time, in seconds.
    pub(super) cpu_secs: f64,
}

impl Usage {
    pub(super) fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let kib = |field: &str| -> anyhow::Result<u64> {
            let line = status.lines().find_map(|l| l.strip_prefix(field)).with_context(|| format!("no {field}"))?;
            line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("bad {field} {line:?}"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // The command name (field 2) is in parentheses and may hold spaces: count fields
        // after its closing parenthesis, where field 3 (state) comes first.
        let after_name = stat.rfind(')').map(|i| &stat[i + 1..]).context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |field: usize| -> anyhow::Result<u64> {
            fields.get(field - 3).context("short /proc/PID/stat")?.parse().context("bad CPU time in /proc/PID/stat")
        };
        // Fields 14 and 15: utime and stime.
        let cpu_ticks = ticks(14)? + ticks(15)?;
        Ok(Self {
            peak_rss_kib: kib("VmHWM:")?,
            rss_kib: kib("VmRSS:")?,
            cpu_secs: cpu_ticks as f64 / TICKS_PER_SECOND,
        })
    }

    pub(super) fn peak_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// The 1-minute load average, if `/proc/loadavg` can be read.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------
// A small HTTP helper for the watch: one keep-alive connection, reopened after an error.

struct Http {
    addr: SocketAddr,
    host: String,
    conn: Option<Connection>,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, host: addr.to_string(), conn: None }
    }

    /// `GET path`, with an API key if given: the status and the body.
    async fn get(&mut self, path: &str, key: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
        let key_header = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{key_header}\r\n", self.host);
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => Connection::open(self.addr, ClientKind::Lean).await?,
        };
        let response = conn.send(request.as_bytes()).await?;
        let answer = (response.status, response.body.to_vec());
        self.conn = Some(conn);
        Ok(answer)
    }

    /// `GET path` that must answer 200 with JSON.
    async fn get_json(&mut self, path: &str, key: Option<&str>) -> anyhow::Result<Value> {
        let (status, body) = self.get(path, key).await.with_context(|| format!("GET {path} on {}", self.addr))?;
        ensure!(status == 200, "GET {path} answered {status}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).with_context(|| format!("GET {path} answered bad JSON"))
    }
}

// ---------------------------------------------------------------------------------
// The run: submit, watch, collect.

/// One look at the counters during the run.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Seconds since the first job was submitted.
    at: f64,
    /// Create calls the sandbox has seen.
    creates: u64,
    queued: u64,
    active: u64,
    completed: u64,
    failed: u64,
    server_rss_kib: u64,
}

/// Figures from the engine's `/metrics`.
#[derive(Debug, Default)]
struct EngineCounters {
    queued: u64,
    active: u64,
    completed: u64,
    failed: u64,
    upstream_errors: u64,
    download_failures: u64,
}

impl EngineCounters {
    /// Sums each counter over its label sets.
    fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            let name = name.split('{').next().unwrap_or(name);
            match name {
                "reelgate_jobs_queued" => c.queued += value,
                "reelgate_jobs_active" => c.active += value,
                "reelgate_jobs_completed_total" => c.completed += value,
                "reelgate_jobs_failed_total" => c.failed += value,
                "reelgate_upstream_errors_total" => c.upstream_errors += value,
                "reelgate_download_failures_total" => c.download_failures += value,
                _ => {}
            }
        }
        c
    }
}

/// Terminal and non-terminal job counts of one customer account, read through the API.
#[derive(Clone, Debug, Default)]
struct AccountCounts {
    completed: u64,
    failed: u64,
    /// Jobs still QUEUED or PROCESSING (only counted when the run timed out).
    unfinished: u64,
}

/// Everything the report needs.
struct Measured {
    submit_secs: f64,
    /// Seconds from the first submission until every job was terminal (or the timeout).
    wall_secs: f64,
    timed_out: bool,
    samples: Vec<Sample>,
    sandbox: Value,
    engine: EngineCounters,
    accounts: Vec<AccountCounts>,
    usage: Vec<(&'static str, Usage)>,
    results_bytes: u64,
    exits: Vec<(&'static str, ExitStatus)>,
    /// With `--webhooks`: the delivery latencies.
    webhooks: Option<Latencies>,
}

async fn drive(
    args: &EngineArgs,
    keys: &[String],
    paths: &Paths,
    (api, sim): (SocketAddr, SocketAddr),
    (serve, sandbox): (&mut ChildProcess, &mut ChildProcess),
    receiver: Option<&WebhookReceiver>,
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let webhook_url = receiver.map(|r| r.url.as_str());
    submit(api, keys, args.jobs, args.concurrency, webhook_url).await.context("cannot submit the jobs")?;
    let submit_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bench engine: {} jobs submitted in {submit_secs:.2} s over {} accounts; waiting for them",
        args.jobs,
        keys.len()
    );

    let mut server_http = Http::new(api);
    let mut sim_http = Http::new(sim);
    let mut samples = Vec::new();
    let mut last_progress = Instant::now();
    let (timed_out, engine) = loop {
        serve.check_running()?;
        sandbox.check_running()?;
        let (status, body) = server_http.get("/metrics", None).await.context("GET /metrics")?;
        ensure!(status == 200, "GET /metrics answered {status}");
        let engine = EngineCounters::parse(&String::from_utf8_lossy(&body));
        let stats = sim_http.get_json("/sandbox/stats", None).await?;
        let sample = Sample {
            at: started.elapsed().as_secs_f64(),
            creates: stats["creates_total"].as_u64().unwrap_or(0),
            queued: engine.queued,
            active: engine.active,
            completed: engine.completed,
            failed: engine.failed,
            server_rss_kib: serve.usage().map(|u| u.rss_kib).unwrap_or(0),
        };
        samples.push(sample);
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "bench engine: {:>6.1} s: {} creates, {} queued, {} active, {} completed, {} failed, server RSS {:.0} MiB",
                sample.at,
                sample.creates,
                sample.queued,
                sample.active,
                sample.completed,
                sample.failed,
                sample.server_rss_kib as f64 / 1024.0
            );
        }
        if sample.queued == 0 && sample.active == 0 {
            break (false, engine);
        }
        if started.elapsed() > timeout {
            eprintln!("bench engine: timed out after {timeout:?} with jobs still queued or active");
            break (true, engine);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    let wall_secs = samples.last().map_or(0.0, |s| s.at);
    let webhooks = match receiver {
        Some(receiver) => {
            let waiting = Instant::now();
            while receiver.received() < engine.completed as usize && waiting.elapsed() < WEBHOOK_GRACE {
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Some(receiver.latencies())
        }
        None => None,
    };

    // Figures of the processes first, before anything else adds to them.
    let usage = vec![("serve", serve.usage()?), ("sim", sandbox.usage()?), ("bench", Usage::of(std::process::id())?)];
    let sandbox_stats = sim_http.get_json("/sandbox/stats", None).await?;
    let mut accounts = Vec::with_capacity(keys.len());
    for key in keys {
        let mut counts = AccountCounts {
            completed: count_jobs(&mut server_http, key, "COMPLETED").await?,
            failed: count_jobs(&mut server_http, key, "FAILED").await?,
            unfinished: 0,
        };
        if timed_out {
            counts.unfinished = count_jobs(&mut server_http, key, "QUEUED").await?
                + count_jobs(&mut server_http, key, "PROCESSING").await?;
        }
        accounts.push(counts);
    }
    Ok(Measured {
        submit_secs,
        wall_secs,
        timed_out,
        samples,
        sandbox: sandbox_stats,
        engine,
        accounts,
        usage,
        results_bytes: dir_bytes(&paths.root.join("results")),
        exits: Vec::new(),
        webhooks,
    })
}

/// Submits `jobs` identical jobs, job `j` on account `j % keys.len()`, from
/// `concurrency` connections, each sending its next request once the last is answered.
async fn submit(
    addr: SocketAddr,
    keys: &[String],
    jobs: usize,
    concurrency: usize,
    webhook_url: Option<&str>,
) -> anyhow::Result<()> {
    let host = addr.to_string();
    let requests: Vec<Vec<u8>> = keys.iter().map(|key| generate_request(&host, key, webhook_url)).collect();
    let requests = std::sync::Arc::new(requests);
    let mut tasks = Vec::with_capacity(concurrency);
    for client in 0..concurrency.min(jobs) {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr, ClientKind::Lean).await?;
            for job in (client..jobs).step_by(concurrency) {
                let response = conn.send(&requests[job % requests.len()]).await?;
                ensure!(
                    response.status == 202,
                    "generate answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(response.body)
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a submitting task panicked")??;
    }
    Ok(())
}

/// The one request every job is created with (per account key).
fn generate_request(host: &str, key: &str, webhook_url: Option<&str>) -> Vec<u8> {
    let mut body = json!({
        "model": "hailuo-2.3",
        "prompt": "bench engine clip",
        "hailuoParams": {"duration": 6, "resolution": "768p"},
    });
    if let Some(url) = webhook_url {
        body["webhookUrl"] = json!(url);
        body["webhookEvents"] = json!(["completed", "failed"]);
    }
    let body = body.to_string();
    format!(
        "POST /v2/videos/generate HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Jobs of the key's account in `status`, by walking the job listing 100 at a time.
async fn count_jobs(http: &mut Http, key: &str, status: &str) -> anyhow::Result<u64> {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v2/jobs?scope=team&status={status}&limit=100");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let page = http.get_json(&path, Some(key)).await?;
        count += page["jobs"].as_array().map_or(0, |jobs| jobs.len() as u64);
        match page["nextCursor"].as_str() {
            Some(next) if page["hasMore"].as_bool() == Some(true) => cursor = Some(next.to_owned()),
            _ => return Ok(count),
        }
    }
}

/// Total size of the files directly in `dir` (0 if it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

// ---------------------------------------------------------------------------------
// Report.

/// What the samples say about the dispatch rate.
#[derive(Debug, Default, PartialEq)]
struct Dispatch {
    /// Seconds from the first sample with a create to the first with the final count.
    span_secs: f64,
    /// Creates per second over that span.
    mean_per_sec: f64,
    /// Most creates seen in about one second (between samples at least 1 s apart).
    peak_per_sec: f64,
    /// Most creates seen between samples at most 60 s apart.
    max_per_minute: u64,
}

impl Dispatch {
    fn from_samples(samples: &[Sample]) -> Self {
        let Some(last) = samples.last() else { return Self::default() };
        let Some(first) = samples.iter().find(|s| s.creates > 0) else { return Self::default() };
        let done = samples.iter().find(|s| s.creates == last.creates).unwrap_or(last);
        // The first sample with a create may be up to one interval after the create
        // itself; counting from the sample before keeps short runs from dividing by zero.
        let before = samples.iter().rev().find(|s| s.at < first.at).map_or(0.0, |s| s.at);
        let span_secs = done.at - before;
        let mean_per_sec = if span_secs > 0.0 { last.creates as f64 / span_secs } else { 0.0 };
        let mut peak_per_sec: f64 = 0.0;
        let mut max_per_minute = 0;
        for (i, s) in samples.iter().enumerate() {
            if let Some(p) = samples[..i].iter().rev().find(|p| s.at - p.at >= 1.0) {
                peak_per_sec = peak_per_sec.max((s.creates - p.creates) as f64 / (s.at - p.at));
            }
            if let Some(p) = samples[..=i].iter().find(|p| s.at - p.at <= 60.0) {
                max_per_minute = max_per_minute.max(s.creates - p.creates);
            }
        }
        // Creates before the first sample (time 0, nothing created) count too.
        if samples.first().is_some_and(|s| s.at <= 60.0) {
            max_per_minute =
                max_per_minute.max(samples.iter().filter(|s| s.at <= 60.0).map(|s| s.creates).max().unwrap_or(0));
        }
        Self { span_secs, mean_per_sec, peak_per_sec, max_per_minute }
    }
}

/// Prints the table and the JSON line; returns what makes the run a failure.
fn report(args: &EngineArgs, m: &Measured, load_before: Option<f64>, load_after: Option<f64>) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let completed: u64 = m.accounts.iter().map(|a| a.completed).sum();
    let failed: u64 = m.accounts.iter().map(|a| a.failed).sum();
    let unfinished: u64 = m.accounts.iter().map(|a| a.unfinished).sum();
    let stat = |name: &str| m.sandbox[name].as_u64().unwrap_or(0);
    let creates = stat("creates_total");
    let rate_limited = stat("creates_rate_limited");
    let max_in_window = stat("max_creates_in_window");
    let dispatch = Dispatch::from_samples(&m.samples);
    let jobs_per_sec = if m.wall_secs > 0.0 { completed as f64 / m.wall_secs } else { 0.0 };
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let server_rss_growth = server_rss_trend(&m.samples);

    println!();
    println!(
        "reelgate bench engine: {} jobs over {} accounts, create budget {} RPM, sandbox latency {} ms, {cpus} CPUs, load {} before / {} after",
        args.jobs,
        args.accounts,
        args.rpm,
        args.latency_ms,
        load(load_before),
        load(load_after)
    );
    println!();
    println!(
        "{:>8} {:>10} {:>7} {:>11} {:>9} {:>9} {:>8}",
        "jobs", "completed", "failed", "unfinished", "submit s", "wall s", "jobs/s"
    );
    println!(
        "{:>8} {:>10} {:>7} {:>11} {:>9.2} {:>9.1} {:>8.1}",
        args.jobs, completed, failed, unfinished, m.submit_secs, m.wall_secs, jobs_per_sec
    );
    println!();
    println!(
        "{:>8} {:>13} {:>13} {:>11} {:>11} {:>9} {:>10}",
        "creates", "rate-limited", "max in 60 s", "budget/min", "dispatch s", "mean/s", "peak/s"
    );
    println!(
        "{:>8} {:>13} {:>13} {:>11} {:>11.1} {:>9.1} {:>10.1}",
        creates,
        rate_limited,
        max_in_window,
        args.rpm,
        dispatch.span_secs,
        dispatch.mean_per_sec,
        dispatch.peak_per_sec
    );
    println!(
        "sandbox: {} queries, {} retrieves, {} downloads, {} renders; engine: {} upstream errors, {} download failures; results on disk {:.1} MiB",
        stat("queries_total"),
        stat("retrieves_total"),
        stat("downloads_total"),
        stat("renders"),
        m.engine.upstream_errors,
        m.engine.download_failures,
        m.results_bytes as f64 / (1024.0 * 1024.0)
    );
    println!();
    println!("{:<8} {:>14} {:>14} {:>8} {:>14}", "process", "peak RSS MiB", "RSS end MiB", "CPU s", "CPU % of wall");
    for (name, u) in &m.usage {
        let share = if m.wall_secs > 0.0 { 100.0 * u.cpu_secs / m.wall_secs } else { 0.0 };
        println!("{name:<8} {:>14.1} {:>14.1} {:>8.2} {:>14.0}", u.peak_mib(), u.rss_mib(), u.cpu_secs, share);
    }
    if let Some((early, late)) = server_rss_growth {
        println!("server RSS during the run: {early:.1} MiB a tenth of the way in, {late:.1} MiB at the end");
    }
    if let Some(w) = &m.webhooks {
        println!(
            "webhooks: {} of {completed} completed events received ({} deliveries); completion to delivery p50 {} ms, p99 {} ms, max {} ms",
            w.received, w.deliveries, w.p50_ms, w.p99_ms, w.max_ms
        );
    }
    println!(
        "per account (completed/failed): {}",
        m.accounts.iter().map(|a| format!("{}/{}", a.completed, a.failed)).collect::<Vec<_>>().join(", ")
    );

    let mut failures = Vec::new();
    if m.timed_out {
        failures.push(format!("timed out with {unfinished} jobs unfinished"));
    }
    if completed != args.jobs as u64 {
        failures.push(format!("{completed} of {} jobs completed ({failed} failed)", args.jobs));
    }
    if rate_limited > 0 {
        failures.push(format!("{rate_limited} creates were refused with 1002: the engine overspent its budget"));
    }
    if max_in_window > u64::from(args.rpm) {
        failures.push(format!("{max_in_window} creates in one 60 s window, over the budget of {}", args.rpm));
    }
    if let Some(w) = m.webhooks.filter(|w| w.received as u64 != completed) {
        failures.push(format!("{} of {completed} completed events reached the webhook receiver", w.received));
    }
    for (name, status) in &m.exits {
        if !status.success() {
            failures.push(format!("reelgate {name} exited with {status}"));
        }
    }
    if !failures.is_empty() {
        let banner = format!("!!! THE RUN FAILED: {} !!!", failures.join("; "));
        println!();
        println!("{banner}");
        eprintln!("{banner}");
    }

    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let processes: Vec<Value> = m
        .usage
        .iter()
        .map(|(name, u)| {
            json!({
                "process": name,
                "peak_rss_mib": round(u.peak_mib(), 1),
                "rss_end_mib": round(u.rss_mib(), 1),
                "cpu_s": round(u.cpu_secs, 2),
            })
        })
        .collect();
    println!();
    println!(
        "{}",
        json!({
            "bench": "reelgate-engine",
            "jobs": args.jobs,
            "accounts": args.accounts,
            "rpm": args.rpm,
            "latency_ms": args.latency_ms,
            "cpus": cpus,
            "load_before": load_before,
            "load_after": load_after,
            "submit_s": round(m.submit_secs, 2),
            "wall_s": round(m.wall_secs, 2),
            "jobs_per_s": round(jobs_per_sec, 1),
            "completed": completed,
            "failed": failed,
            "unfinished": unfinished,
            "timed_out": m.timed_out,
            "dispatch": {
                "creates": creates,
                "rate_limited": rate_limited,
                "max_creates_in_window": max_in_window,
                "max_creates_in_60s_sampled": dispatch.max_per_minute,
                "span_s": round(dispatch.span_secs, 2),
                "mean_per_s": round(dispatch.mean_per_sec, 1),
                "peak_per_s": round(dispatch.peak_per_sec, 1),
            },
            "sandbox": {
                "queries": stat("queries_total"),
                "retrieves": stat("retrieves_total"),
                "downloads": stat("downloads_total"),
                "renders": stat("renders"),
            },
            "engine": {
                "upstream_errors": m.engine.upstream_errors,
                "download_failures": m.engine.download_failures,
            },
            "results_mib": round(m.results_bytes as f64 / (1024.0 * 1024.0), 1),
            "webhooks": m.webhooks.map(|w| json!({
                "received": w.received,
                "deliveries": w.deliveries,
                "p50_ms": w.p50_ms,
                "p99_ms": w.p99_ms,
                "max_ms": w.max_ms,
            })),
            "processes": processes,
            "failures": failures,
        })
    );
    failures
}

/// The server's RSS a tenth of the way through the run and at its end, in MiB, to show
/// whether memory keeps growing with the number of jobs handled.
fn server_rss_trend(samples: &[Sample]) -> Option<(f64, f64)> {
    let last = samples.last()?;
    let early = samples.iter().find(|s| s.at >= last.at / 10.0)?;
    Some((early.server_rss_kib as f64 / 1024.0, last.server_rss_kib as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, creates: u64) -> Sample {
        Sample { at, creates, ..Sample::default() }
    }

    #[test]
    fn dispatch_rates_come_from_the_samples() {
        // 0.5 s apart: 100 creates a second for 2 s, then nothing.
        let samples: Vec<Sample> =
            [0, 0, 50, 100, 150, 200, 200, 200].iter().enumerate().map(|(i, &c)| sample(i as f64 * 0.5, c)).collect();
        let d = Dispatch::from_samples(&samples);
        assert_eq!(d.span_secs, 2.0);
        assert_eq!(d.mean_per_sec, 100.0);
        assert_eq!(d.peak_per_sec, 100.0);
        assert_eq!(d.max_per_minute, 200);
    }

    #[test]
    fn the_busiest_minute_is_found_across_windows() {
        // 20 creates at once, then 20 more 61 s later: never more than 20 in 60 s.
        let samples = vec![sample(0.0, 0), sample(0.5, 20), sample(30.0, 20), sample(61.5, 40), sample(70.0, 40)];
        let d = Dispatch::from_samples(&samples);
        assert_eq!(d.max_per_minute, 20);
        assert_eq!(d.span_secs, 61.5);
    }

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# TYPE reelgate_jobs_failed_total counter\n\
                    reelgate_jobs_failed_total{reason=\"deadline\"} 2\n\
                    reelgate_jobs_failed_total{reason=\"download\"} 3\n\
                    reelgate_jobs_completed_total 7\n\
                    reelgate_jobs_queued 4\nreelgate_jobs_active 1\n";
        let c = EngineCounters::parse(text);
        assert_eq!((c.failed, c.completed, c.queued, c.active), (5, 7, 4, 1));
    }
}
