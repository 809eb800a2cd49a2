//! The shared application state handed to every handler.

use std::sync::Arc;

use domain::Catalog;
use store::Store;

use crate::auth::KeyCache;
use crate::config::Config;

/// Cloneable handles to everything a request may need.
#[derive(Clone)]
pub struct AppState {
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// API key lookups.
    pub keys: Arc<KeyCache>,
    /// Models and prices.
    pub catalog: Arc<Catalog>,
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// The OpenAPI document, rendered once at startup.
    pub openapi: Arc<String>,
}
