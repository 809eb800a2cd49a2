//! `reelgate bench events`: what open job event streams cost the server, and how soon a
//! change reaches them.
//!
//! It starts `reelgate serve` as a child process (SQLite, engine off, so jobs stay
//! QUEUED until the bench changes them), submits `--jobs` jobs, opens `--streams` streams
//! (`GET /v2/jobs/{id}/events`, spread evenly over the jobs) and waits until each has its
//! first event. It reads the server's RSS before and after. Then it cancels the jobs at
//! `--changes-per-sec` (a cancellation is a committed change every stream of the job
//! must show) and, for each stream, takes the time from sending the job's cancel request
//! to the stream receiving the CANCELLED event: an upper bound on "from the commit",
//! since it includes the cancel's own handling.
//!
//! Linux only (it reads `/proc`). The server and this process each hold one descriptor
//! per stream, so `ulimit -n` must exceed `--streams` plus a few hundred.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::engine::{ChildProcess, Usage};

/// Options of `bench events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// Streams held open at once.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Jobs the streams watch (each job is watched by streams / jobs streams).
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Job changes per second while the streams are open.
    #[arg(long, default_value_t = 1000)]
    pub changes_per_sec: u32,
}

/// How long the whole stream-opening and change phases may take before the bench fails.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

/// Runs the measurement and prints the report.
pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    ensure!(args.jobs > 0 && args.streams >= args.jobs, "--streams must be at least --jobs, and --jobs positive");
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().join("data").display().to_string();
    std::fs::create_dir_all(&data_dir)?;
    let key = super::edge::create_key(&data_dir, i64::try_from(args.jobs).unwrap_or(i64::MAX) * 100)?;
    let max_connections = (args.streams + 1000).to_string();
    let (mut server, addr) = ChildProcess::serve(
        &data_dir,
        &dir.path().join("serve.log"),
        &[
            ("REELGATE_ENGINE__ENABLED", "false"),
            ("REELGATE_RATE_LIMITS__GENERATE_PER_SEC", "0"),
            ("REELGATE_RATE_LIMITS__READ_PER_SEC", "0"),
            ("REELGATE_SERVER__MAX_CONNECTIONS", &max_connections),
        ],
    )
    .await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let base = format!("http://{addr}");

    let started = Instant::now();
    let jobs = submit_jobs(&http, &base, &key, args.jobs).await?;
    eprintln!("bench events: {} jobs submitted in {:.1} s", jobs.len(), started.elapsed().as_secs_f64());

    let idle = Usage::of(server.pid())?;
    let started = Instant::now();
    let streams = open_streams(addr, &key, &jobs, args.streams).await?;
    let opened_secs = started.elapsed().as_secs_f64();
    // Give the server a moment to settle its buffers before reading its RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holding = Usage::of(server.pid())?;
    let per_stream_kib = (holding.rss_kib.saturating_sub(idle.rss_kib)) as f64 / args.streams as f64;
    eprintln!(
        "bench events: {} streams open in {opened_secs:.1} s; server RSS {:.1} -> {:.1} MiB ({per_stream_kib:.1} KiB per stream)",
        args.streams,
        idle.rss_kib as f64 / 1024.0,
        holding.rss_kib as f64 / 1024.0
    );

    let (sent_at, change_secs) = cancel_jobs(&http, &base, &key, &jobs, args.changes_per_sec).await?;
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut latencies_ms = Vec::with_capacity(args.streams);
    for (n, stream) in streams.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let arrived = tokio::time::timeout(left, stream).await.context("a stream never showed its change")???;
        let job = n % jobs.len();
        latencies_ms.push(arrived.saturating_duration_since(sent_at[job]).as_secs_f64() * 1000.0);
    }
    let after = Usage::of(server.pid())?;
    let status = server.stop().await?;
    ensure!(status.success(), "reelgate serve exited with {status}");

    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies_ms[((latencies_ms.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let rate = args.jobs as f64 / change_secs;
    let growth_mib = (holding.rss_kib.saturating_sub(idle.rss_kib)) as f64 / 1024.0;
    println!(
        "bench events: {} streams on {} jobs cost the server {growth_mib:.1} MiB of RSS ({:.1} -> {:.1} MiB; peak {:.1} MiB)",
        args.streams,
        args.jobs,
        idle.rss_kib as f64 / 1024.0,
        holding.rss_kib as f64 / 1024.0,
        after.peak_mib()
    );
    println!(
        "bench events: {} changes at {rate:.0}/s reached every stream: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the cancel was sent",
        args.jobs,
        pct(0.50),
        pct(0.99),
        latencies_ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "{}",
        serde_json::json!({
            "streams": args.streams, "jobs": args.jobs, "changes_per_sec": rate,
            "rss_idle_mib": idle.rss_kib as f64 / 1024.0, "rss_streams_mib": holding.rss_kib as f64 / 1024.0,
            "rss_growth_mib": growth_mib, "peak_rss_mib": after.peak_mib(),
            "latency_p50_ms": pct(0.50), "latency_p99_ms": pct(0.99),
            "latency_max_ms": latencies_ms.last().copied().unwrap_or(0.0),
        })
    );
    Ok(())
}

async fn submit_jobs(http: &reqwest::Client, base: &str, key: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let (http, url, key, gate) =
            (http.clone(), format!("{base}/v2/videos/generate"), key.to_string(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let body = serde_json::json!({"model": "hailuo-2.3", "prompt": format!("bench events job {n}")});
            let reply: serde_json::Value =
                http.post(url).header("X-API-Key", key).json(&body).send().await?.error_for_status()?.json().await?;
            reply["jobId"].as_str().map(str::to_string).context("no jobId in the answer")
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.push(task.await??);
    }
    Ok(ids)
}

type Arrival = tokio::task::JoinHandle<anyhow::Result<Instant>>;

/// Opens `count` streams over `jobs`, waiting until each has shown the job QUEUED; each
/// returned task ends when its stream shows the job CANCELLED, with the time it did.
async fn open_streams(addr: SocketAddr, key: &str, jobs: &[String], count: usize) -> anyhow::Result<Vec<Arrival>> {
    // Connections opened at once: the listen backlog holds a few hundred.
    let opening = Arc::new(Semaphore::new(256));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        let request = format!(
            "GET /v2/jobs/{}/events HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n",
            jobs[n % jobs.len()]
        );
        let (opening, ready) = (opening.clone(), ready_tx.clone());
        streams.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await?;
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut seen = Vec::with_capacity(2048);
            read_until(&mut stream, &mut seen, b"\"status\":\"QUEUED\"").await?;
            drop(permit);
            let _ = ready.send(());
            seen.clear();
            read_until(&mut stream, &mut seen, b"\"status\":\"CANCELLED\"").await?;
            Ok(Instant::now())
        }));
    }
    drop(ready_tx);
    let deadline = Instant::now() + PHASE_LIMIT;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ready_rx.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => bail!("a stream failed before showing its job: {:?}", first_failure(&mut streams).await),
            Err(_) => bail!("the streams did not all open within {PHASE_LIMIT:?}"),
        }
    }
    Ok(streams)
}

async fn first_failure(streams: &mut [Arrival]) -> Option<String> {
    for stream in streams.iter_mut() {
        if stream.is_finished() {
            return Some(match stream.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => continue,
                Err(e) => e.to_string(),
            });
        }
    }
    None
}

/// Reads from `stream` into `seen` until `needle` appears in it.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        if seen.windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "the stream ended before showing {}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&chunk[..n]);
    }
}

/// Cancels every job, `per_sec` a second in order; returns when each cancel was sent, and
/// how long sending them all took.
async fn cancel_jobs(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    jobs: &[String],
    per_sec: u32,
) -> anyhow::Result<(Vec<Instant>, f64)> {
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let spacing = Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1)));
    let mut tasks = Vec::with_capacity(jobs.len());
    for (n, job) in jobs.iter().enumerate() {
        let at = start + spacing * u32::try_from(n).unwrap_or(u32::MAX);
        let (http, url, key) = (http.clone(), format!("{base}/v2/jobs/{job}/cancel"), key.to_string());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let sent = Instant::now();
            let status = http.post(url).header("X-API-Key", key).send().await?.status();
            ensure!(status.is_success(), "cancel answered {status}");
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut sent = Vec::with_capacity(jobs.len());
    for task in tasks {
        sent.push(task.await??);
    }
    let first = sent.iter().min().copied().unwrap_or_else(Instant::now);
    let last = sent.iter().max().copied().unwrap_or(first);
    Ok((sent, (last - first).as_secs_f64().max(0.001)))
}
