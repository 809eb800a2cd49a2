//! `GET /v2/models`: the public catalog, with our own `reelgate` field carrying each
//! model's full parameter schema and price table so clients can price a request first.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use domain::Catalog;
use serde_json::{json, Value};

use crate::api::error::{ApiError, Result};
use crate::api::extract::{query_param, Query};
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v2/models", get(list_models))
}

async fn list_models(
    State(state): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let modality = query_param(&params, "modality");
    let models = match modality {
        None | Some("video") => catalog_entries(&state.catalog),
        // Valid modalities that reelgate does not serve: an empty catalog, not an error.
        Some("image") | Some("music") => Vec::new(),
        Some(_) => return Err(ApiError::invalid("modality", "Expected one of image, video, music")),
    };
    Ok(Json(json!({"models": models})))
}

/// The catalog as `ModelCatalogEntry` objects.
pub fn catalog_entries(catalog: &Catalog) -> Vec<Value> {
    catalog
        .models()
        .iter()
        .map(|m| {
            json!({
                "id": m.id.as_str(),
                "label": m.label,
                "modality": "video",
                "description": m.description,
                "costMin": m.cost_min(),
                "costMax": m.cost_max(),
                "pricingMode": "flat",
                "provider": "minimax",
                "reelgate": {
                    "paramsKey": "hailuoParams",
                    "imageRequired": m.id.requires_image(),
                    "endImageSupported": m.id.accepts_end_image(),
                    "prices": m.price_table(),
                    "requestSchema": m.request_schema(),
                }
            })
        })
        .collect()
}
