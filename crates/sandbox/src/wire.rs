//! MiniMax's response envelopes and `base_resp` codes, as the sandbox writes them.
//!
//! These types are the sandbox's own reading of `reference/minimax.md` (§1.6, §3, §4, §5) and
//! deliberately share nothing with the engine's client: a bug in one must not hide in the other.
//! Business errors always travel as HTTP 200 with a non-zero `base_resp.status_code`.

use serde::Serialize;

/// `base_resp`: MiniMax's status envelope, present in every JSON answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BaseResp {
    pub status_code: i64,
    pub status_msg: String,
}

impl BaseResp {
    pub fn ok() -> Self {
        BaseResp { status_code: 0, status_msg: "success".into() }
    }

    pub fn new(status_code: i64, status_msg: impl Into<String>) -> Self {
        BaseResp { status_code, status_msg: status_msg.into() }
    }

    /// The documented message for a code (EN-ERR table, plus the observed login-fail text).
    pub fn code(status_code: i64) -> Self {
        BaseResp::new(status_code, code_message(status_code).unwrap_or("unknown error"))
    }

    /// 2013 with MiniMax's "invalid params, " prefix.
    pub fn invalid(detail: impl std::fmt::Display) -> Self {
        BaseResp::new(INVALID_PARAMS, format!("invalid params, {detail}"))
    }
}

pub const UNKNOWN_ERROR: i64 = 1000;
pub const RATE_LIMIT: i64 = 1002;
pub const AUTH_FAILED: i64 = 1004;
pub const INSUFFICIENT_BALANCE: i64 = 1008;
pub const OUTPUT_SENSITIVE: i64 = 1027;
pub const INVALID_PARAMS: i64 = 2013;
pub const INVALID_API_KEY: i64 = 2049;
pub const USAGE_LIMIT: i64 = 2056;

/// The real 1004 text for a request without a key (minimax.md §5, observed live).
pub const LOGIN_FAIL_MSG: &str =
    "login fail: Please carry the API secret key in the 'Authorization' field of the request header";

/// Codes the sandbox can produce on request (markers, fault config), with their documented messages.
pub fn code_message(code: i64) -> Option<&'static str> {
    Some(match code {
        0 => "success",
        1000 => "unknown error",
        1001 => "request timeout",
        1002 => "rate limit",
        1004 => LOGIN_FAIL_MSG,
        1008 => "insufficient balance",
        1013 => "internal service error",
        1024 => "internal error",
        1026 => "input new_sensitive",
        1027 => "output new_sensitive",
        1033 => "system error",
        1039 => "token limit",
        1041 => "conn limit",
        1042 => "invisible character ratio limit",
        2013 => "invalid params",
        2045 => "rate growth limit",
        2049 => "invalid api key",
        2056 => "usage limit exceeded",
        _ => return None,
    })
}

/// Answer of `POST /v1/video_generation`; `task_id` is `""` on a refusal.
#[derive(Debug, Serialize)]
pub struct CreateResponse {
    pub task_id: String,
    pub base_resp: BaseResp,
}

/// Answer of `GET /v1/query/video_generation`. Before `Success`: `file_id` `""` and zero sizes.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
    pub task_id: String,
    pub status: &'static str,
    pub file_id: String,
    pub video_width: u32,
    pub video_height: u32,
    pub base_resp: BaseResp,
}

/// Answer of a query that could not be served: no status at all, only the envelope.
#[derive(Debug, Serialize)]
pub struct QueryError {
    pub task_id: String,
    pub base_resp: BaseResp,
}

/// A status push to a `callback_url`: the query shape without sizes, status in lower case.
#[derive(Debug, Serialize)]
pub struct CallbackPush {
    pub task_id: String,
    pub status: &'static str,
    pub file_id: String,
    pub base_resp: BaseResp,
}

/// Answer of `GET /v1/files/retrieve`; `file` is absent on an error.
#[derive(Debug, Serialize)]
pub struct RetrieveResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileObject>,
    pub base_resp: BaseResp,
}

/// MiniMax's file object. `file_id` is a JSON number here, unlike in the query answer.
#[derive(Debug, Serialize)]
pub struct FileObject {
    pub file_id: u64,
    /// Always 0, as in every real sample: clients must not rely on it.
    pub bytes: u64,
    pub created_at: u64,
    pub filename: &'static str,
    pub purpose: &'static str,
    pub download_url: String,
    pub backup_download_url: String,
}
