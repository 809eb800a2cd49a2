//! `reelgate sim`: runs the MiniMax sandbox on its own, as a local stand-in for the paid API.
//! Point any MiniMax client (or a `reelgate serve` account's `base_url`) at the address it logs.
//! The flags map one to one onto `sandbox::SandboxConfig`; the crate doc lists the prompt markers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

/// Options of `sim`.
#[derive(clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Directory for the tasks (kept across restarts), the render cache and input images
    /// (default: a temporary directory, and tasks are forgotten when the sandbox stops).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long tasks kept in --data-dir are remembered, in seconds (older ones are deleted at start).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    task_retention_secs: u64,
    /// Accepted API key; repeat for several. None: any non-empty key is accepted.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Creates allowed per key in any 60 s window (0 = unlimited); more answer 1002.
    #[arg(long, default_value_t = 20)]
    rpm: u32,
    /// Queries and retrieves allowed per key in any 60 s window (default: unlimited).
    #[arg(long)]
    query_rpm: Option<u32>,
    /// Time from create to Success, in ms [default: 10000].
    #[arg(long, env = "REELGATE_SANDBOX_LATENCY_MS")]
    latency_ms: Option<u64>,
    /// Spread of each task's latency, as a fraction (0.2 = ±20%).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    latency_jitter: f64,
    /// Lifetime of download links, in seconds.
    #[arg(long, default_value_t = 3600)]
    link_ttl_secs: u64,
    /// Base of the download URLs handed out, when clients reach the sandbox through another address.
    #[arg(long)]
    public_base_url: Option<String>,
    /// Renders at once (0 = number of CPUs).
    #[arg(long, default_value_t = 0)]
    render_concurrency: usize,
    /// Seed for random faults and ids, to replay a run.
    #[arg(long)]
    seed: Option<u64>,
    /// Fraction of creates refused with --create-error-code.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    create_error: f64,
    /// base_resp code of random create errors (default 1000 "unknown error").
    #[arg(long)]
    create_error_code: Option<i64>,
    /// Fraction of creates answered by an HTTP 502 HTML page.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    http_502: f64,
    /// Fraction of tasks ending Fail with 1027.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    task_fail: f64,
    /// Fraction of queries answered with truncated JSON.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    malformed_json: f64,
    /// Fraction of retrieves handing out already expired links.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    expired_link: f64,
    /// Fraction of downloads cut half way.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    truncated_download: f64,
}

fn fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

impl SimArgs {
    fn config(self) -> sandbox::SandboxConfig {
        sandbox::SandboxConfig {
            keys: self.keys,
            rpm: self.rpm,
            query_rpm: self.query_rpm,
            latency_ms: self.latency_ms,
            latency_jitter: self.latency_jitter,
            link_ttl_secs: self.link_ttl_secs,
            data_dir: self.data_dir,
            task_retention_secs: self.task_retention_secs,
            public_base_url: self.public_base_url,
            render_concurrency: self.render_concurrency,
            faults: sandbox::FaultConfig {
                seed: self.seed,
                create_error: self.create_error,
                create_error_code: self.create_error_code,
                http_502: self.http_502,
                task_fail: self.task_fail,
                malformed_json: self.malformed_json,
                expired_link: self.expired_link,
                truncated_download: self.truncated_download,
            },
            ..sandbox::SandboxConfig::default()
        }
    }
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    let config = args.config();
    let latency_ms = config.effective_latency_ms();
    let rpm = config.rpm;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let sim = sandbox::Sandbox::start(config, listener).await?;
    tracing::info!(
        sandbox.url = %sim.base_url(),
        latency_ms,
        rpm,
        "MiniMax sandbox listening: a simulated API that renders test videos, not real generations"
    );
    crate::serve::shutdown_signal().await;
    let stats = sim.stats();
    sim.shutdown().await;
    tracing::info!(
        tasks = stats.tasks_created,
        creates = stats.creates_total,
        rate_limited = stats.creates_rate_limited,
        renders = stats.renders,
        "MiniMax sandbox stopped"
    );
    Ok(())
}
