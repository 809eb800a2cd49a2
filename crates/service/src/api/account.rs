//! `GET /v2/me`: the calling key, its account (team) and balance.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::error::{ApiError, Result};
use crate::api::extract::Caller;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v2/me", get(get_me))
}

async fn get_me(State(state): State<AppState>, Caller(key): Caller) -> Result<Json<Value>> {
    let account = state
        .store
        .get_account(key.account_id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("key {} points at a missing account", key.id)))?;
    // reelgate has no separate users: the key stands for its holder, who owns the account.
    Ok(Json(json!({
        "user": {"id": key.id.to_string(), "email": key.email, "role": "OWNER"},
        "team": {
            "id": account.id.to_string(),
            "name": account.name,
            "credits": account.credits,
            "plan": account.plan,
            "customerId": null,
            "maxConcurrentJobs": account.max_concurrent_jobs,
        },
        // `webhookSecret` is ours: the key's webhook signing secret in the `whsec_` form
        // Standard Webhooks libraries take (see docs/WEBHOOKS.md).
        "apiKey": {
            "id": key.id.to_string(),
            "name": key.name,
            "prefix": key.prefix,
            "webhookSecret": crate::webhooks::sign::SigningSecret(key.digest.0).whsec(),
        },
    })))
}
