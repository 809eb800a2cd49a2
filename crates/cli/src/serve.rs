//! `reelgate serve`: binds the listener and runs the application until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::DataArgs;

/// Options of `serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    data: DataArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.data.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    service::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM (shared by `serve` and `sim`).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
}
