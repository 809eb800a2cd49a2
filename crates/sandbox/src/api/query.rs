//! `GET /v1/query/video_generation?task_id=`: the task's status, computed from the clock.
//!
//! Before `Success` the answer carries `file_id: ""` and zero sizes, as real polls do; on `Fail`
//! the reason is in `base_resp`. A task id that is unknown, or belongs to another key, answers
//! 2013 "invalid params, task not found" (MiniMax documents no answer for it; minimax.md §10).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::api::{authenticate, ok_json, Shared};
use crate::tasks::{Counter, Status};
use crate::wire::{self, BaseResp, QueryError, QueryResponse};

pub async fn query_video(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let task_param = params.get("task_id").cloned().unwrap_or_default();
    let refuse = |base_resp| ok_json(&QueryError { task_id: task_param.clone(), base_resp });
    let key = match authenticate(&shared, &headers) {
        Ok(key) => key,
        Err(base_resp) => return refuse(base_resp),
    };
    let now = shared.clock.now_ms();
    if !shared.limiter.admit_query(&key, now, false) {
        return refuse(BaseResp::code(wire::RATE_LIMIT));
    }
    if task_param.is_empty() {
        return refuse(BaseResp::invalid("task_id is required"));
    }
    let owner = shared.owner(&key);
    let found = task_param.parse::<u64>().ok().and_then(|id| {
        shared.tasks.with_task(id, Some(Counter::Queries), |task, seen| {
            (task.owner == owner).then(|| {
                let faults = task.faults.as_deref();
                let scripted_error =
                    faults.and_then(|f| f.query_error).filter(|&(_, n)| u32::from(seen) < n).map(|(code, _)| code);
                let malformed = faults.is_some_and(|f| u32::from(seen) < f.malformed_json);
                let status = task.status_at(now);
                let (w, h) = (task.spec.width, task.spec.height);
                (scripted_error, malformed, status, task.file_id, w, h)
            })
        })
    });
    let Some(Some((scripted_error, malformed, status, file_id, width, height))) = found else {
        return refuse(BaseResp::invalid("task not found"));
    };
    if let Some(code) = scripted_error {
        return refuse(BaseResp::code(code));
    }
    let (file_id, video_width, video_height, base_resp) = match status {
        Status::Success => (file_id.to_string(), width, height, BaseResp::ok()),
        Status::Fail(code) => (String::new(), 0, 0, BaseResp::code(code)),
        _ => (String::new(), 0, 0, BaseResp::ok()),
    };
    let body = QueryResponse {
        task_id: task_param.clone(),
        status: status.query_name(),
        file_id,
        video_width,
        video_height,
        base_resp,
    };
    if malformed || shared.chance(shared.config.faults.malformed_json) {
        return truncated_json(&body);
    }
    ok_json(&body)
}

/// The first half of the JSON body, as a cut-off upstream response would arrive.
fn truncated_json(body: &impl serde::Serialize) -> Response {
    let mut text = serde_json::to_string(body).expect("plain structs always serialize");
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}
