//! `reelgate-bench`: the load generator and its reports, a tool of ours apart from the
//! product binary. Without a mode it runs the HTTP bench ([`http`]): the real API against
//! a bare axum baseline in one process. The modes start `reelgate` child processes (the
//! binary built beside this one, or `$REELGATE_BIN`) and measure them from outside:
//! [`engine`], [`edge`], [`uploads`], [`events`].
//!
//! Build both, then run, for example:
//!
//! ```sh
//! cargo build --release -p reelgate -p reelgate-bench
//! target/release/reelgate-bench --seconds 10
//! ```

mod accounts;
mod client;
mod database;
mod edge;
mod engine;
mod events;
mod http;
mod load;
mod uploads;
mod webhook_receiver;

use std::process::ExitCode;

use clap::Parser;

// The product's allocator (crates/cli/src/main.rs): the HTTP bench runs the server in this
// process, and its figures must be the ones a real server shows.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure reelgate on this machine.
#[derive(Parser)]
#[command(name = "reelgate-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Without a mode: the HTTP bench (the real API against a bare axum baseline).
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    http: http::HttpArgs,
}

/// What `reelgate-bench` can measure besides the HTTP bench.
#[derive(clap::Subcommand)]
pub enum BenchMode {
    /// Run jobs through the engine against the MiniMax sandbox.
    ///
    /// Starts `reelgate sim` and `reelgate serve` as child processes on a temporary data
    /// directory, submits the jobs over HTTP and waits until every one is terminal, then
    /// reports the dispatch rate against the create budget and each process's peak RSS
    /// and CPU time (Linux only).
    Engine(engine::EngineArgs),
    /// Hostile and slow clients against a `reelgate serve` child process.
    ///
    /// Oversized generate bodies whose problems could be echoed without bound, then
    /// thousands of slowloris, idle and slow-body connections: the server's peak RSS, its
    /// largest answer, how many slow connections it still holds as time passes and a
    /// normal client's latency meanwhile (Linux only).
    Edge(edge::EdgeArgs),
    /// Concurrent uploads of a 20 MB image against a `reelgate serve` child process: the
    /// server's peak RSS growth (streamed uploads are not held whole) (Linux only).
    Uploads(uploads::UploadsArgs),
    /// Thousands of open job event streams against a `reelgate serve` child process: the
    /// server's RSS per stream, and how soon a change reaches every stream of its job
    /// while jobs change at a steady rate (Linux only).
    Events(events::EventsArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REELGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.mode {
            Some(BenchMode::Engine(args)) => engine::run(args).await,
            Some(BenchMode::Edge(args)) => edge::run(args).await,
            Some(BenchMode::Uploads(args)) => uploads::run(args).await,
            Some(BenchMode::Events(args)) => events::run(args).await,
            None => http::run(cli.http).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
