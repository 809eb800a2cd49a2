//! The reelgate application library: configuration, the HTTP API and the glue that
//! starts and stops it.
//!
//! [`run`] is the one entry point: the `serve` command, the bench and the integration
//! tests all start the real application through it.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod openapi;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use store::Store;
use store_sqlite::SqliteStore;
use tokio::net::TcpListener;

pub use config::Config;

use crate::auth::KeyCache;
use crate::state::{AppState, Handles};

/// Why the application could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Creates the data directory if needed and opens the configured store, applying migrations.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, RunError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| RunError::DataDir { path: config.data_dir.display().to_string(), source })?;
    Ok(Arc::new(SqliteStore::open(&config.database_path())?))
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish, flushes the store and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let catalog = config.catalog()?;
    let store = open_store(&config)?;
    let keys = KeyCache::new(store.clone(), Duration::from_millis(config.auth.key_cache_ttl_ms));
    let openapi = openapi::document(&catalog).to_string();
    let state = AppState::new(Handles { store: store.clone(), keys, catalog, config, openapi });

    let housekeeping = tokio::spawn(purge_idempotency_keys(store.clone(), state.config.limits.clone()));

    let addr = listener.local_addr()?;
    tracing::info!(listen.addr = %addr, data_dir = %state.config.data_dir.display(), "reelgate listening on http://{addr}");
    let served = axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await;
    housekeeping.abort();
    // Every acknowledged write is already committed; closing drains anything still queued.
    store.close().await;
    tracing::info!("reelgate stopped");
    served.map_err(RunError::Serve)
}

/// How often expired idempotency keys are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes idempotency keys older than the replay window, now and then every
/// [`PURGE_INTERVAL`], so the table holds about one window of keys. Expired keys are
/// already ignored on lookup; this only reclaims space.
async fn purge_idempotency_keys(store: Arc<dyn Store>, limits: config::Limits) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tick.tick().await;
        match store.purge_idempotency_keys(limits.idempotency_window_start_ms(now_ms())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(idempotency.purged = n, "forgot expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired idempotency keys"),
        }
    }
}

/// Wall-clock time as unix milliseconds, the unit every stored timestamp uses.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
