//! `reelgate bench edge`: what hostile and slow clients cost the server.
//!
//! It starts `reelgate serve` as a child process (engine off, rate limits off, default
//! `[server]` settings) on a throwaway data directory, so the server's memory can be read from
//! `/proc` apart from the bench's own, then measures two things:
//!
//! - **Refusals**: many oversized-but-allowed generate bodies at once whose problems
//!   could be echoed without bound (500,000 `webhookEvents` items; tens of thousands of
//!   unknown keys): the server's peak RSS growth, the largest answer, and a normal
//!   client's latency meanwhile.
//! - **Slow connections**: slowloris clients (headers a byte at a time), idle ones
//!   (connected, silent) and slow bodies (a byte every two seconds): how many of each the
//!   server still holds as time passes, and a normal client's latency meanwhile.
//!
//! Linux only (it reads `/proc`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::engine::{ChildProcess, Usage};

/// Options of `bench edge`.
#[derive(clap::Args)]
pub struct EdgeArgs {
    /// Oversized generate requests sent at once, of each hostile kind.
    #[arg(long, default_value_t = 48)]
    pub hostile: usize,
    /// Slowloris connections: the request line, then a header byte a second.
    #[arg(long, default_value_t = 2000)]
    pub slowloris: usize,
    /// Idle connections: connected, never a byte.
    #[arg(long, default_value_t = 2000)]
    pub idle: usize,
    /// Slow-body connections: full headers, then a body byte every two seconds.
    #[arg(long, default_value_t = 500)]
    pub slow_body: usize,
    /// How long the slow connections are watched, in seconds.
    #[arg(long, default_value_t = 45)]
    pub seconds: u64,
}

/// Runs both measurements and prints the report.
pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().display().to_string();
    let key = create_key(&data_dir, 1000)?;
    let (mut server, addr) = ChildProcess::serve(
        &data_dir,
        &dir.path().join("serve.log"),
        &[
            ("REELGATE_ENGINE__ENABLED", "false"),
            // Every hostile request comes from one key: measure the refusals, not the 429s.
            ("REELGATE_RATE_LIMITS__GENERATE_PER_SEC", "0"),
            ("REELGATE_RATE_LIMITS__READ_PER_SEC", "0"),
        ],
    )
    .await?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("bench edge: reelgate serve (engine off, default [server] settings) on {addr}, {cpus} CPUs");

    let mut report = serde_json::Map::new();
    for (kind, body) in [("webhookEvents x500000", many_webhook_events()), ("unknown keys x80000", many_unknown_keys())]
    {
        let refusals = measure_refusals(addr, &key, &body, args.hostile, &server).await?;
        println!(
            "refusals, {} x {kind} ({} KiB each): status {:?}, largest answer {} B, server peak RSS {:.1} -> {:.1} MiB (+{:.1}), wall {:.2} s, /healthz worst {:.0} ms",
            args.hostile,
            body.len() / 1024,
            refusals.statuses,
            refusals.largest_answer,
            refusals.peak_before_mib,
            refusals.peak_after_mib,
            refusals.peak_after_mib - refusals.peak_before_mib,
            refusals.wall_secs,
            refusals.healthz_worst_ms,
        );
        report.insert(
            kind.to_string(),
            json!({"requests": args.hostile, "body_bytes": body.len(), "largest_answer_bytes": refusals.largest_answer,
                   "peak_rss_growth_mib": refusals.peak_after_mib - refusals.peak_before_mib,
                   "wall_secs": refusals.wall_secs, "healthz_worst_ms": refusals.healthz_worst_ms}),
        );
    }

    let held = measure_slow_connections(addr, &key, &args).await?;
    report.insert("slow_connections".into(), held);
    let status = server.stop().await?;
    ensure!(status.success(), "reelgate serve exited with {status}");
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// A key with `credits`, made with `reelgate keys create` before the server starts.
pub(super) fn create_key(data_dir: &str, credits: i64) -> anyhow::Result<String> {
    let exe = super::engine::reelgate_binary()?;
    let out = std::process::Command::new(exe)
        .args(["keys", "create", "--name", "bench", "--credits", &credits.to_string(), "--data-dir", data_dir])
        .env_remove("REELGATE_DATABASE_URL")
        .output()?;
    ensure!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout)?;
    Ok(stdout.lines().last().context("no key printed")?.to_string())
}

/// A generate body just under the 1 MiB limit with 500,000 invalid event names.
fn many_webhook_events() -> Vec<u8> {
    let mut body = br#"{"model":"hailuo-2.3","prompt":"p","webhookEvents":["#.to_vec();
    for i in 0..500_000 {
        body.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    body.extend_from_slice(b"]}");
    body
}

/// A generate body just under the 1 MiB limit with 80,000 unknown keys.
fn many_unknown_keys() -> Vec<u8> {
    let mut body = br#"{"model":"hailuo-2.3","prompt":"p""#.to_vec();
    for i in 0..80_000 {
        body.extend_from_slice(format!(",\"k{i:05}\":0").as_bytes());
    }
    body.extend_from_slice(b"}");
    body
}

struct Refusals {
    statuses: Vec<u16>,
    largest_answer: usize,
    peak_before_mib: f64,
    peak_after_mib: f64,
    wall_secs: f64,
    healthz_worst_ms: f64,
}

/// Sends `count` copies of `body` at once and watches the server meanwhile.
async fn measure_refusals(
    addr: SocketAddr,
    key: &str,
    body: &[u8],
    count: usize,
    server: &ChildProcess,
) -> anyhow::Result<Refusals> {
    let peak_before = Usage::of(server.pid())?.peak_mib();
    let request = Arc::new(
        [
            format!(
                "POST /v2/videos/generate HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat(),
    );
    let started = Instant::now();
    let senders: Vec<_> = (0..count)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(&request).await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                anyhow::Ok(answer)
            })
        })
        .collect();
    let mut healthz_worst = Duration::ZERO;
    while !senders.iter().all(|s| s.is_finished()) {
        healthz_worst = healthz_worst.max(healthz(addr).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let mut statuses = Vec::new();
    let mut largest_answer = 0;
    for sender in senders {
        let answer = sender.await??;
        let status = std::str::from_utf8(&answer[..answer.len().min(12)])
            .ok()
            .and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or(0);
        if !statuses.contains(&status) {
            statuses.push(status);
        }
        largest_answer = largest_answer.max(answer.len());
    }
    let peak_after = Usage::of(server.pid())?.peak_mib();
    Ok(Refusals {
        statuses,
        largest_answer,
        peak_before_mib: peak_before,
        peak_after_mib: peak_after,
        wall_secs,
        healthz_worst_ms: healthz_worst.as_secs_f64() * 1000.0,
    })
}

/// How long a fresh `GET /healthz` takes, start to end.
async fn healthz(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"), "/healthz answered {:?}", String::from_utf8_lossy(&answer));
    Ok(started.elapsed())
}

/// Opens the slow connections, then every 5 s counts those the server still holds and
/// times a normal request. Each connection's task ends when the server closes it.
async fn measure_slow_connections(addr: SocketAddr, key: &str, args: &EdgeArgs) -> anyhow::Result<serde_json::Value> {
    let kinds: [(&str, usize, Arc<AtomicUsize>); 3] = [
        ("slowloris", args.slowloris, Default::default()),
        ("idle", args.idle, Default::default()),
        ("slow_body", args.slow_body, Default::default()),
    ];
    let started = Instant::now();
    let mut opened = Vec::new();
    for (kind, count, open) in &kinds {
        let mut made = 0;
        for _ in 0..*count {
            let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await else {
                continue;
            };
            made += 1;
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(hold(stream, kind, key.to_string(), addr, open.clone()));
        }
        opened.push(json!({"kind": kind, "opened": made}));
    }
    println!(
        "slow connections opened in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        kinds.iter().map(|(k, _, o)| format!("{k} {}", o.load(Ordering::Relaxed))).collect::<Vec<_>>().join(", ")
    );
    let mut samples = Vec::new();
    let until = started + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let latency = healthz(addr).await.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
        let at = started.elapsed().as_secs_f64();
        let counts: Vec<usize> = kinds.iter().map(|(_, _, open)| open.load(Ordering::Relaxed)).collect();
        println!(
            "t={at:>5.1} s  held: slowloris {:>5}  idle {:>5}  slow body {:>5}  | normal GET /healthz {latency:.1} ms",
            counts[0], counts[1], counts[2]
        );
        samples.push(json!({"at_secs": at, "slowloris": counts[0], "idle": counts[1], "slow_body": counts[2], "healthz_ms": latency}));
    }
    Ok(json!({"opened": opened, "samples": samples}))
}

/// Plays one slow client until the server closes the connection, then counts it closed.
async fn hold(mut stream: TcpStream, kind: &str, key: String, addr: SocketAddr, open: Arc<AtomicUsize>) {
    let (mut reader, mut writer) = stream.split();
    let play = async {
        match kind {
            "slowloris" => {
                let _ = writer.write_all(format!("GET /v2/me HTTP/1.1\r\nHost: {addr}\r\n").as_bytes()).await;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if writer.write_all(b"X").await.is_err() {
                        break;
                    }
                }
            }
            "slow_body" => {
                let head = format!(
                    "POST /v2/videos/generate HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Length: 100000\r\n\r\n"
                );
                let _ = writer.write_all(head.as_bytes()).await;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if writer.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let closed = async {
        let mut sink = [0u8; 1024];
        loop {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = play => {}
        () = closed => {}
    }
    open.fetch_sub(1, Ordering::Relaxed);
}
