//! The `reelgate` binary: parses the command line and hands off to one module per
//! command. Admin commands (`keys`, `credits`, `migrate`) open the same database as a
//! running server and are safe to use while it runs.

#![forbid(unsafe_code)]

mod admin;
mod client;
mod generate;
mod jobs;
mod serve;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Operator tools: admin tokens for the admin API and console.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
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
    /// Run the MiniMax sandbox alone: a local stand-in for the paid API.
    Sim(sim::SimArgs),
    /// Make a video on an Apiframe v2 server (this one or another) and download it.
    Generate(Box<generate::GenerateArgs>),
    /// Read jobs on an Apiframe v2 server: get, list, wait.
    Jobs(jobs::JobsArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that turns off mimalloc's eager commit of its arenas.
const ALLOCATOR_LIGHT: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// Runs this same command again in this process (`exec`, so the pid, the arguments and the
/// open files stay) with mimalloc told to commit its arenas as it uses them, unless the
/// variable is set already.
///
/// Why: on Linux mimalloc commits its arenas eagerly by default, and what passed through
/// it stays resident: `bench uploads` measured an idle server at 27 MiB and ten 20 MB
/// uploads adding 71 MiB; without eager commit, 21 MiB and 19 MiB (docs/BENCHMARKS.md).
/// mimalloc reads the option from the environment before `main` and reserves its first
/// arena then, so setting it from here (`mi_option_set`) changed nothing; a fresh start
/// is the only way in. If `exec` fails, the server runs with the default.
#[cfg(unix)]
fn restart_with_light_allocator() {
    use std::os::unix::process::CommandExt as _;
    let (name, value) = ALLOCATOR_LIGHT;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe).arg0(arg0).args(args).env(name, value).exec();
    eprintln!("could not restart with {name}={value} ({error}); mimalloc keeps its defaults");
}

/// Exit codes: server and admin commands exit 1 on any error (anyhow's way); the client
/// commands `generate` and `jobs` use 0 completed, 1 the job failed, 2 usage or HTTP
/// errors, as they document.
fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    #[cfg(unix)]
    if matches!(cli.command, Command::Serve(_) | Command::Sim(_)) {
        restart_with_light_allocator();
    }
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
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Serve(args) => done(serve::run(args).await),
            Command::Admin(cmd) => done(admin::admin(cmd).await),
            Command::Keys(cmd) => done(admin::keys(cmd).await),
            Command::Credits(cmd) => done(admin::credits(cmd).await),
            Command::Webhooks(cmd) => done(admin::webhooks(cmd).await),
            Command::Migrate(args) => done(admin::migrate(args).await),
            Command::Config(cmd) => done(admin::config(cmd)),
            Command::Sim(args) => done(sim::run(args).await),
            Command::Generate(args) => Ok(generate::run(*args).await),
            Command::Jobs(args) => Ok(jobs::run(args).await),
        }
    })
}
