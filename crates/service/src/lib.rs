//! The reelgate application library: configuration, the HTTP API and the glue that
//! starts and stops it.
//!
//! [`run`] is the one entry point: the `serve` command, the bench and the integration
//! tests all start the real application through it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod background;
pub mod config;
pub mod egress;
pub mod engine;
pub mod events;
pub mod guard;
pub mod links;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod readiness;
pub mod results;
pub mod server;
pub mod signing;
pub mod state;
pub mod webhooks;

/// The secret types of [`Config`]'s fields, for callers that build or read one.
pub use secrecy;

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
    /// The result store or the signing secret could not be set up.
    #[error("cannot prepare {what}: {source}")]
    Setup {
        /// What.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The shared signing secret could not be read or stored.
    #[error("cannot set up the signing secret: {0}")]
    Secret(#[from] signing::SecretError),
    /// The built-in sandbox could not start.
    #[error("cannot start the MiniMax sandbox: {0}")]
    Sandbox(String),
    /// Another node on the same PostgreSQL database already runs the built-in sandbox.
    #[error(
        "another reelgate node with no MiniMax account already runs the built-in MiniMax sandbox on this \
         database. A node's built-in sandbox knows only the tasks it created, so nodes sharing a database \
         need one MiniMax they all reach: run `reelgate sim --listen ADDR --data-dir DIR` once and name it \
         as the MiniMax account in every node's config ([[minimax.accounts]] name = \"sim\", \
         api_key = \"any\", base_url = \"http://ADDR\"), or set engine.enabled = false on this node"
    )]
    BuiltinSandboxTaken,
}

/// Opens the configured store, applying migrations: PostgreSQL when `database_url` is
/// set, else SQLite in the data directory (created if needed).
///
/// For tools beside a running server (the admin CLI, tests): on SQLite every write goes
/// through SQLite's own write lock, so such a store may write (submissions included)
/// while a server runs.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, RunError> {
    Ok(open_backend(config, false).await?.0)
}

/// The store, and for PostgreSQL its wake-ups from other nodes. `serving`: for the
/// process that serves the API, which on SQLite takes the data directory's lock file (one
/// server per directory) and runs the checkpoint thread.
async fn open_backend(
    config: &Config,
    serving: bool,
) -> Result<(Arc<dyn Store>, Option<store_postgres::Wakeups>), RunError> {
    match &config.database_url {
        Some(url) => {
            let store = store_postgres::PgStore::connect(url.as_str()).await?;
            let wakeups = store.subscribe_wakeups();
            Ok((Arc::new(store), Some(wakeups)))
        }
        None => {
            create_data_dir(config)?;
            let path = config.database_path();
            let store = if serving { SqliteStore::open_serving(&path)? } else { SqliteStore::open(&path)? };
            Ok((Arc::new(store), None))
        }
    }
}

fn create_data_dir(config: &Config) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| RunError::DataDir { path: config.data_dir.display().to_string(), source })
}

/// Applies pending migrations to the configured database without serving; returns the
/// names applied now.
pub async fn migrate(config: &Config) -> Result<Vec<String>, RunError> {
    match &config.database_url {
        Some(url) => Ok(store_postgres::PgStore::migrate(url.as_str()).await?),
        None => {
            create_data_dir(config)?;
            Ok(SqliteStore::migrate(&config.database_path())?)
        }
    }
}

/// Passes work announced by other nodes (through PostgreSQL) to this node's loops, so a
/// job submitted on one node is dispatched by whichever node is idle without waiting for
/// a polling tick.
fn forward_wakeups(
    wakeups: store_postgres::Wakeups,
    engine: Option<Arc<engine::Engine>>,
    webhook_wake: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wakeups.jobs().notified() => {
                    if let Some(engine) = &engine {
                        engine.notify();
                    }
                }
                _ = wakeups.webhooks().notified() => webhook_wake.notify_one(),
            }
        }
    })
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (for at most `server.shutdown_grace_ms`), flushes the store
/// and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let catalog = config.catalog()?;
    // Even on PostgreSQL the data directory holds the sandbox's tasks and renders and, with
    // the file system backend, the result videos.
    create_data_dir(&config)?;
    // Held (and taken again after a lost database session) until the sandbox has stopped.
    let release_sandbox_lock = tokio_util::sync::CancellationToken::new();
    let sandbox_lock = claim_builtin_sandbox(&config).await?.map(|lock| {
        let url = config.database_url.as_ref().map(|u| u.as_str().to_owned()).unwrap_or_default();
        tokio::spawn(keep_builtin_sandbox_lock(url, lock, release_sandbox_lock.clone()))
    });
    let (store, wakeups) = open_backend(&config, true).await?;
    let signer = signing::Signer::shared(store.as_ref(), &config.data_dir).await?;
    // Ends the event streams when shutdown begins, so they do not hold it up.
    let stop_streams = tokio_util::sync::CancellationToken::new();
    let (events, events_task) = events::JobEvents::start(store.clone(), stop_streams.clone());
    let shutdown = {
        let stop_streams = stop_streams.clone();
        async move {
            shutdown.await;
            stop_streams.cancel();
        }
    };
    let keys = KeyCache::new(store.clone(), Duration::from_millis(config.auth.key_cache_ttl_ms));
    let openapi = openapi::document(&catalog).to_string();
    let addr = listener.local_addr()?;
    // Built here, not in the engine, so a node with the engine off serves result and
    // upload URLs and takes uploads just the same.
    let results = open_results(&config)?;
    let links = links::Links::new(public_base_url(&config, addr), signer.clone());
    let metrics = Arc::new(metrics::Metrics::default());
    let webhook_wake = Arc::new(tokio::sync::Notify::new());
    let webhook_wake_for_peers = webhook_wake.clone();
    let readiness = readiness::Readiness::default();
    let stop_monitor = tokio_util::sync::CancellationToken::new();
    let monitor = readiness.monitor(store.clone(), stop_monitor.clone());
    let (engine, sandbox) = if config.engine.enabled {
        let (engine, sandbox) = start_engine(EngineInputs {
            config: &config,
            store: store.clone(),
            results: results.clone(),
            links: links.clone(),
            metrics: metrics.clone(),
            webhook_wake: webhook_wake.clone(),
            readiness: readiness.clone(),
        })
        .await?;
        (Some(engine), sandbox)
    } else {
        (None, None)
    };
    // Webhooks go out wherever the engine runs: the engine raises the events.
    let deliverer = (config.engine.enabled && config.webhooks.enabled).then(|| {
        let allow_private = config.engine.allow_private_urls;
        webhooks::deliver::Deliverer::new(
            store.clone(),
            config.webhooks.clone(),
            metrics.clone(),
            webhook_wake,
            allow_private,
            config.egress.proxy_url.clone(),
            readiness.clone(),
            Some(results.clone()),
        )
        .start()
    });
    let forwarding = wakeups.map(|w| {
        forward_wakeups(
            w,
            engine.as_ref().map(|e| e.engine.clone()),
            webhook_wake_for_peers.clone(),
            stop_monitor.clone(),
        )
    });
    let state = AppState::new(Handles {
        store: store.clone(),
        keys,
        rate_limits: ratelimit::RateLimits::new(&config.rate_limits),
        catalog,
        config,
        openapi,
        engine: engine.as_ref().map(|e| e.engine.clone()),
        metrics,
        readiness,
        signer,
        links,
        results,
        events,
    });

    let housekeeping = tokio::spawn(purge_idempotency_keys(store.clone(), state.config.limits.clone()));

    tracing::info!(listen.addr = %addr, data_dir = %state.config.data_dir.display(), "reelgate listening on http://{addr}");
    let server_settings = state.config.server.clone();
    // The admin API on an address of its own, when configured; it stops with the rest.
    let admin_server = match state.config.admin.listen {
        Some(admin_addr) => {
            let admin_listener = TcpListener::bind(admin_addr).await?;
            tracing::info!(listen.addr = %admin_listener.local_addr()?, "admin API and console listening");
            let (router, settings) = (api::admin_router(state.clone()), server_settings.clone());
            let stopped = stop_streams.clone().cancelled_owned();
            Some(tokio::spawn(async move { server::serve(admin_listener, router, &settings, stopped).await }))
        }
        None => None,
    };
    let served = server::serve(listener, api::router(state), &server_settings, shutdown).await;
    if let Some(admin_server) = admin_server {
        stop_streams.cancel();
        if let Ok(Err(e)) = admin_server.await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    }
    housekeeping.abort();
    stop_streams.cancel();
    let _ = events_task.await;
    stop_monitor.cancel();
    let _ = monitor.await;
    if let Some(forwarding) = forwarding {
        let _ = forwarding.await;
    }
    if let Some(engine) = engine {
        engine.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(deliverer) = deliverer {
        deliverer.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    release_sandbox_lock.cancel();
    if let Some(keeper) = sandbox_lock {
        let _ = keeper.await;
    }
    // Every acknowledged write is already committed; closing drains anything still queued.
    store.close().await;
    tracing::info!("reelgate stopped");
    served.map_err(RunError::Serve)
}

/// The lock a node running the built-in sandbox holds on a PostgreSQL database.
const BUILTIN_SANDBOX_LOCK: &str = "builtin-sandbox";

/// On PostgreSQL, makes sure this node is the only one running the built-in sandbox (the
/// engine on, no MiniMax account) on the database, and holds a lock that says so while it runs.
///
/// Why: each node's built-in sandbox lives in that node, on loopback, and knows only the tasks
/// it created, while any node may poll any job, so two such nodes would fail each other's jobs
/// with "task not found". One node with the built-in sandbox (and any number with the engine
/// off) is fine; SQLite needs no check, as one server owns its data directory. The lock is a
/// PostgreSQL session lock, which a killed node's session gives back at once; a restart waits a
/// few seconds for that before refusing.
async fn claim_builtin_sandbox(config: &Config) -> Result<Option<store_postgres::SessionLock>, RunError> {
    let Some(url) = &config.database_url else { return Ok(None) };
    if !config.engine.enabled || !config.minimax.accounts.is_empty() {
        return Ok(None);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(lock) = store_postgres::SessionLock::try_take(url.as_str(), BUILTIN_SANDBOX_LOCK).await? {
            return Ok(Some(lock));
        }
        if std::time::Instant::now() >= deadline {
            return Err(RunError::BuiltinSandboxTaken);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Holds the built-in sandbox's lock until `release`, taking it again whenever its database
/// session ends (PostgreSQL restarted, the network dropped the connection): a lost session
/// gives the lock up, and a node starting meanwhile must still be refused. If another node took
/// it in between, two sandboxes now run; nothing here can undo that, so it is logged loudly.
async fn keep_builtin_sandbox_lock(
    url: String,
    mut lock: store_postgres::SessionLock,
    release: tokio_util::sync::CancellationToken,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = release.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if lock.is_held() {
            continue;
        }
        match store_postgres::SessionLock::try_take(&url, BUILTIN_SANDBOX_LOCK).await {
            Ok(Some(again)) => {
                tracing::info!("took the built-in sandbox's lock again after its database session ended");
                lock = again;
                warned = false;
            }
            Ok(None) if !warned => {
                tracing::error!(
                    "another node started the built-in MiniMax sandbox on this database while this node's \
                     lock session was down: the two will fail each other's jobs; stop one of them"
                );
                warned = true;
            }
            // The database is still unreachable, or the warning was given: try again later.
            _ => {}
        }
    }
}

/// What the job engine is built from.
struct EngineInputs<'a> {
    config: &'a Config,
    store: Arc<dyn Store>,
    results: Arc<dyn results::ResultStore>,
    links: links::Links,
    metrics: Arc<metrics::Metrics>,
    webhook_wake: Arc<tokio::sync::Notify>,
    readiness: readiness::Readiness,
}

/// Builds and starts the job engine, with the built-in sandbox when no MiniMax account
/// is configured.
async fn start_engine(inputs: EngineInputs<'_>) -> Result<(engine::EngineHandle, Option<sandbox::Sandbox>), RunError> {
    let EngineInputs { config, store, results, links, metrics, webhook_wake, readiness } = inputs;
    let e = &config.engine;
    let submit_timeout = Duration::from_millis(e.submit_timeout_ms);
    let query_timeout = Duration::from_millis(e.query_timeout_ms);
    let mut sandbox = None;
    let upstreams = if config.minimax.accounts.is_empty() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sandbox_config = sandbox::SandboxConfig {
            rpm: config.minimax.sandbox_create_rpm,
            latency_ms: Some(config.minimax.sandbox_latency_ms),
            data_dir: Some(config.data_dir.join("sandbox")),
            ..sandbox::SandboxConfig::default()
        };
        let started =
            sandbox::Sandbox::start(sandbox_config, listener).await.map_err(|e| RunError::Sandbox(e.to_string()))?;
        tracing::warn!(
            sandbox.url = %started.base_url(),
            "no MiniMax account configured: jobs run on the built-in MiniMax sandbox (rendered test videos, not real generations)"
        );
        let budget = store::UpstreamBudget {
            name: "sandbox".into(),
            create_rpm: config.minimax.sandbox_create_rpm,
            max_in_flight: 10_000,
            claimable_now: 0,
        };
        // The sandbox runs in this process on loopback: never through a proxy.
        let client = engine::minimax::MiniMaxClient::new(
            &started.base_url(),
            "sandbox-key".into(),
            submit_timeout,
            query_timeout,
            None,
        );
        let upstream = engine::Upstream::new(budget, client, 60_000);
        sandbox = Some(started);
        vec![upstream]
    } else {
        config
            .minimax
            .accounts
            .iter()
            .map(|a| {
                let budget = store::UpstreamBudget {
                    name: a.name.clone(),
                    create_rpm: a.create_rpm,
                    max_in_flight: a.max_in_flight,
                    claimable_now: 0,
                };
                let client = engine::minimax::MiniMaxClient::new(
                    &a.base_url,
                    a.api_key.clone(),
                    submit_timeout,
                    query_timeout,
                    config.egress.proxy_url.as_deref(),
                );
                tracing::info!(upstream = %a.name, base_url = %a.base_url, create_rpm = a.create_rpm, "MiniMax account in rotation");
                engine::Upstream::new(budget, client, a.query_rpm)
            })
            .collect()
    };
    let engine = engine::Engine::new(engine::EngineParts {
        store,
        config: e.clone(),
        upstreams,
        results,
        links,
        callbacks: e.public_base_url.is_some(),
        metrics,
        webhook_wake,
        allow_private_urls: e.allow_private_urls,
        proxy_url: config.egress.proxy_url.clone(),
        readiness,
        upload_reap_interval: Duration::from_millis(config.uploads.reap_interval_ms),
    });
    Ok((engine.start(), sandbox))
}

/// The base of the URLs this server hands out: `engine.public_base_url`, else the
/// listen address.
fn public_base_url(config: &Config, addr: std::net::SocketAddr) -> String {
    match &config.engine.public_base_url {
        Some(url) => url.clone(),
        None => {
            // An unspecified bind address is no address to hand out; loopback works locally.
            let host = if addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            format!("http://{host}")
        }
    }
}

/// Opens the result store `results.backend` names.
fn open_results(config: &Config) -> Result<Arc<dyn results::ResultStore>, RunError> {
    Ok(match config.results.backend {
        config::ResultsBackend::Fs => Arc::new(
            results::fs::FsResults::open(&config.results_dir())
                .map_err(|source| RunError::Setup { what: "the results directory", source })?,
        ),
        config::ResultsBackend::S3 => {
            let s3 = &config.results.s3;
            let store = results::s3::S3Results::new(s3, config.egress.proxy_url.as_deref())
                .map_err(|source| RunError::Setup { what: "the S3 result store", source })?;
            tracing::info!(
                s3.bucket = s3.bucket.as_deref().unwrap_or(""),
                s3.endpoint = s3.endpoint.as_deref().unwrap_or("AWS"),
                s3.prefix = %s3.prefix,
                s3.video_urls = ?s3.video_urls,
                "result videos are stored in S3"
            );
            Arc::new(store)
        }
    })
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
