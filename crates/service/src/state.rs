//! The shared application state handed to every handler.

use std::ops::Deref;
use std::sync::Arc;

use domain::Catalog;
use store::Store;

use crate::auth::KeyCache;
use crate::config::Config;
use crate::engine::Engine;
use crate::events::JobEvents;
use crate::links::Links;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::readiness::Readiness;
use crate::results::ResultStore;
use crate::signing::Signer;

/// Cheap to clone: axum clones the state for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

/// Everything a request may need.
pub struct Handles {
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// API key lookups.
    pub keys: KeyCache,
    /// Per-key request rates.
    pub rate_limits: RateLimits,
    /// Models and prices.
    pub catalog: Catalog,
    /// The loaded configuration.
    pub config: Config,
    /// The OpenAPI document, rendered once at startup.
    pub openapi: String,
    /// The job engine, when it runs in this process.
    pub engine: Option<Arc<Engine>>,
    /// Engine counters (also present, empty, without an engine).
    pub metrics: Arc<Metrics>,
    /// Whether the store answers (`/readyz`, and new jobs are refused while it does not).
    pub readiness: Readiness,
    /// Makes and checks capability tokens (result and upload URLs, event tokens).
    pub signer: Signer,
    /// Result, upload and callback URLs (with the same signer), built whether or not the
    /// engine runs here.
    pub links: Links,
    /// Result videos and uploads, opened whether or not the engine runs here, so any node
    /// serves `videoUrl`s and takes uploads.
    pub results: Arc<dyn ResultStore>,
    /// Job changes for the event streams.
    pub events: JobEvents,
}

impl AppState {
    /// Wraps the handles.
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}
