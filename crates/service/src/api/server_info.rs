//! `GET /v2/server` (our addition): what this server is, for clients that adapt to it;
//! the Studio shows its sandbox banner from it. Public: it says nothing about accounts.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Config;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v2/server", get(get_server))
}

async fn get_server(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "reelgate",
        "version": env!("CARGO_PKG_VERSION"),
        "sandbox": runs_on_sandbox(&state.config),
    }))
}

/// Jobs here are rendered by the built-in MiniMax sandbox: the engine runs and no
/// MiniMax account is configured. A node without an engine renders nothing itself,
/// so it does not call itself a sandbox.
fn runs_on_sandbox(config: &Config) -> bool {
    config.engine.enabled && config.minimax.accounts.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_is_the_engine_without_minimax_accounts() {
        let mut config = Config::defaults();
        config.engine.enabled = true;
        config.minimax.accounts.clear();
        assert!(runs_on_sandbox(&config));
        config.engine.enabled = false;
        assert!(!runs_on_sandbox(&config));
    }
}
