//! The `reelgate` binary: parses the command line and hands off to one module per
//! command. Admin commands (`keys`, `credits`, `migrate`) open the same database as a
//! running server and are safe to use while it runs.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod serve;
mod sim;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A self-hosted server speaking Apiframe's v2 video API for MiniMax Hailuo models.
#[derive(Parser)]
#[command(name = "reelgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the data lives: shared by every command that opens the database.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory (holds reelgate.db); overrides the config file.
    #[arg(long, env = "REELGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML) layered over the built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl DataArgs {
    /// Loads the configuration with the command-line overrides applied.
    pub fn load(&self) -> anyhow::Result<service::Config> {
        let mut config = service::Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve(serve::ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Manage account credits.
    #[command(subcommand)]
    Credits(admin::CreditsCommand),
    /// Client webhooks.
    #[command(subcommand)]
    Webhooks(admin::WebhooksCommand),
    /// Apply pending database migrations and exit.
    Migrate(DataArgs),
    /// Load and validate the configuration, then print the effective settings.
    #[command(subcommand)]
    Config(admin::ConfigCommand),
    /// Measure the API against a bare axum baseline on this machine.
    Bench(bench::BenchArgs),
    /// Run the MiniMax sandbox alone: a local stand-in for the paid API.
    Sim(sim::SimArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REELGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Keys(cmd) => admin::keys(cmd).await,
            Command::Credits(cmd) => admin::credits(cmd).await,
            Command::Webhooks(cmd) => admin::webhooks(cmd).await,
            Command::Migrate(args) => admin::migrate(args).await,
            Command::Config(cmd) => admin::config(cmd),
            Command::Bench(args) => bench::run(args).await,
            Command::Sim(args) => sim::run(args).await,
        }
    })
}
