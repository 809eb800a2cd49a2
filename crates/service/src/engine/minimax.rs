//! The MiniMax Hailuo adapter: the three calls of MiniMax's V1 video API and the
//! classification of everything they can answer.
//!
//! MiniMax reports business errors as HTTP 200 with a non-zero `base_resp.status_code`;
//! a proxy in front of it can still answer with real HTTP errors. Both layers end up in
//! one [`UpstreamError`] whose variant tells the engine what to do. This module never
//! retries: retry policy belongs to the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// One configured MiniMax account's client.
pub struct MiniMaxClient {
    http: reqwest::Client,
    base_url: String,
    api_key: SecretString,
    submit_timeout: Duration,
    query_timeout: Duration,
    /// Where each call's latency goes; set by the engine (`record_calls_in`).
    metrics: Option<Arc<Metrics>>,
}

/// What a create call asks for, in MiniMax's vocabulary.
#[derive(Clone, Debug, Serialize)]
pub struct CreateTask {
    /// `MiniMax-Hailuo-2.3`, `MiniMax-Hailuo-02` or `MiniMax-Hailuo-2.3-Fast`.
    pub model: &'static str,
    /// The prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// MiniMax rewrites the prompt unless this is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_optimizer: Option<bool>,
    /// 6 or 10 seconds.
    pub duration: u32,
    /// `768P` or `1080P`.
    pub resolution: &'static str,
    /// The first frame, as a data URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_frame_image: Option<String>,
    /// The last frame (Hailuo-02 only), as a data URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_frame_image: Option<String>,
    /// Where MiniMax pushes status changes, after its challenge handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A task's state as the query call (or a callback) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// `Preparing`.
    Preparing,
    /// `Queueing`.
    Queueing,
    /// `Processing`.
    Processing,
    /// `Success`, with the file to retrieve.
    Success {
        /// MiniMax's file id.
        file_id: String,
    },
    /// `Fail`, with the reason from `base_resp`.
    Fail(UpstreamError),
}

/// A result file's download links.
#[derive(Clone, Debug)]
pub struct FileLinks {
    /// The primary signed URL.
    pub download_url: String,
    /// A second signed URL on another region, when given.
    pub backup_download_url: Option<String>,
}

/// Everything that can go wrong upstream, by what the engine should do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Over a rate limit (1002 RPM, 1039 TPM, 2045 growth, HTTP 429): wait and keep the job.
    #[error("MiniMax rate limit ({code}): {message}")]
    RateLimited {
        /// base_resp code (or HTTP status).
        code: i64,
        /// Message.
        message: String,
    },
    /// Worth retrying (1000, 1001, 1013, 1024, 1033, HTTP 5xx, network errors before sending).
    #[error("MiniMax transient error ({code:?}): {message}")]
    Transient {
        /// base_resp code or HTTP status, if there was one.
        code: Option<i64>,
        /// Message.
        message: String,
    },
    /// The account cannot be used (1004, 2049, 1008, 2056, ...): take it out of rotation.
    #[error("MiniMax account problem ({code}): {message}")]
    Account {
        /// base_resp code.
        code: i64,
        /// Message.
        message: String,
    },
    /// The request itself is refused for good (1026, 1027, 2013, ...): fail the job.
    #[error("MiniMax refused the request ({code}): {message}")]
    Rejected {
        /// base_resp code.
        code: i64,
        /// Message.
        message: String,
    },
    /// A create call may or may not have reached MiniMax (timeout after sending, an
    /// unreadable answer): the task might exist even though we have no id for it.
    #[error("MiniMax create outcome unknown: {message}")]
    Ambiguous {
        /// What happened.
        message: String,
    },
}

impl UpstreamError {
    /// The code for metrics: base_resp code, HTTP status, or "network".
    pub fn code_label(&self) -> String {
        match self {
            Self::RateLimited { code, .. } | Self::Account { code, .. } | Self::Rejected { code, .. } => {
                code.to_string()
            }
            Self::Transient { code: Some(code), .. } => code.to_string(),
            Self::Transient { code: None, .. } => "network".into(),
            Self::Ambiguous { .. } => "unknown_outcome".into(),
        }
    }

    /// The error's kind, a label of few values for latency histograms.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient { .. } => "transient",
            Self::Account { .. } => "account",
            Self::Rejected { .. } => "rejected",
            Self::Ambiguous { .. } => "ambiguous",
        }
    }

    /// The reason a client sees when this error fails its job.
    pub fn client_message(&self) -> String {
        match self {
            Self::Rejected { code: 1026, .. } => {
                "The prompt or input image was flagged by MiniMax's content policy (1026).".into()
            }
            Self::Rejected { code: 1027, .. } => {
                "The generated video was flagged by MiniMax's content policy (1027).".into()
            }
            Self::Rejected { code, message } => format!("MiniMax refused the request ({code}): {message}"),
            Self::Transient { .. } | Self::Ambiguous { .. } => {
                "MiniMax kept failing with temporary errors; the job was given up.".into()
            }
            Self::RateLimited { .. } => "MiniMax kept refusing the job for rate limits; the job was given up.".into(),
            Self::Account { .. } => "No MiniMax account could take the job.".into(),
        }
    }
}

/// Sorts a non-zero `base_resp.status_code` into what to do about it.
pub fn classify(code: i64, message: &str) -> UpstreamError {
    let message = message.to_string();
    match code {
        1002 | 1039 | 2045 => UpstreamError::RateLimited { code, message },
        1000 | 1001 | 1013 | 1024 | 1033 => UpstreamError::Transient { code: Some(code), message },
        // Bad key, wrong region, balance, plan quota, real-name check, model not in plan.
        1004 | 2049 | 1008 | 2056 | 1028 | 1030 | 1041 | 2038 | 2061 => UpstreamError::Account { code, message },
        // Content policy, invalid parameters, invisible characters.
        1026 | 1027 | 2013 | 1042 => UpstreamError::Rejected { code, message },
        // Unknown codes are retried a bounded number of times, then the job fails.
        _ => UpstreamError::Transient { code: Some(code), message },
    }
}

#[derive(Deserialize)]
struct BaseResp {
    status_code: i64,
    #[serde(default)]
    status_msg: String,
}

#[derive(Deserialize)]
struct CreateResponse {
    #[serde(default)]
    task_id: Option<String>,
    base_resp: Option<BaseResp>,
}

/// The query response; callbacks push the same shape.
#[derive(Deserialize)]
pub struct TaskReport {
    /// MiniMax's task id.
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default, deserialize_with = "string_or_number")]
    file_id: Option<String>,
    base_resp: Option<BaseResp>,
}

impl TaskReport {
    /// The state reported, accepting the query API's `Success`/`Fail` and the callbacks'
    /// lower-case `success`/`failed`. `None` for a status this adapter does not know.
    pub fn state(&self) -> Option<TaskState> {
        let failure = || match &self.base_resp {
            Some(b) if b.status_code != 0 => classify(b.status_code, &b.status_msg),
            _ => UpstreamError::Rejected { code: 0, message: "MiniMax reported the task as failed".into() },
        };
        Some(match self.status.to_ascii_lowercase().as_str() {
            "preparing" => TaskState::Preparing,
            "queueing" => TaskState::Queueing,
            "processing" => TaskState::Processing,
            "success" => match self.file_id.as_deref().filter(|f| !f.is_empty()) {
                Some(file_id) => TaskState::Success { file_id: file_id.to_string() },
                None => return None,
            },
            "fail" | "failed" => TaskState::Fail(failure()),
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct RetrieveResponse {
    file: Option<FileObject>,
    base_resp: Option<BaseResp>,
}

#[derive(Deserialize)]
struct FileObject {
    #[serde(default)]
    download_url: Option<String>,
    #[serde(default)]
    backup_download_url: Option<String>,
}

/// MiniMax sends `file_id` as a string in queries and as a number elsewhere.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    }))
}

/// A response that is not a JSON body at all (or an HTTP error from a proxy).
fn http_problem(status: reqwest::StatusCode) -> Option<UpstreamError> {
    if status.is_success() {
        None
    } else if status.as_u16() == 429 {
        Some(UpstreamError::RateLimited { code: 429, message: "HTTP 429".into() })
    } else {
        Some(UpstreamError::Transient { code: Some(i64::from(status.as_u16())), message: format!("HTTP {status}") })
    }
}

fn base_resp_problem(b: &Option<BaseResp>) -> Option<UpstreamError> {
    match b {
        Some(b) if b.status_code != 0 => Some(classify(b.status_code, &b.status_msg)),
        _ => None,
    }
}

/// Reads the body of a successful create call: the task id, or what went wrong.
/// Kept apart from the HTTP call so the property tests can feed it anything.
fn parse_create(body: &[u8]) -> Result<String, UpstreamError> {
    let body: CreateResponse = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Ambiguous { message: format!("unreadable create response: {e}") })?;
    if let Some(problem) = base_resp_problem(&body.base_resp) {
        return Err(problem);
    }
    match body.task_id.filter(|t| !t.is_empty()) {
        Some(id) => Ok(id),
        None => Err(UpstreamError::Ambiguous { message: "create response without a task_id".into() }),
    }
}

/// Reads the body of a successful query call.
fn parse_query(body: &[u8]) -> Result<TaskState, UpstreamError> {
    let report: TaskReport = unreadable_is_transient(body, QUERY_PATH)?;
    if let Some(state) = report.state() {
        return Ok(state);
    }
    if let Some(problem) = base_resp_problem(&report.base_resp) {
        return Err(problem);
    }
    Err(UpstreamError::Transient { code: None, message: format!("unknown task status {:?}", report.status) })
}

/// Reads the body of a successful retrieve call.
fn parse_retrieve(body: &[u8]) -> Result<FileLinks, UpstreamError> {
    let body: RetrieveResponse = unreadable_is_transient(body, RETRIEVE_PATH)?;
    if let Some(problem) = base_resp_problem(&body.base_resp) {
        return Err(problem);
    }
    let file = body
        .file
        .ok_or_else(|| UpstreamError::Transient { code: None, message: "retrieve response without a file".into() })?;
    match file.download_url.filter(|u| !u.is_empty()) {
        Some(download_url) => {
            Ok(FileLinks { download_url, backup_download_url: file.backup_download_url.filter(|u| !u.is_empty()) })
        }
        None => {
            Err(UpstreamError::Transient { code: None, message: "retrieve response without a download_url".into() })
        }
    }
}

/// Queries change nothing upstream, so an answer we cannot read is simply asked again.
fn unreadable_is_transient<T: serde::de::DeserializeOwned>(body: &[u8], path: &str) -> Result<T, UpstreamError> {
    serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transient { code: None, message: format!("unreadable {path} response: {e}") })
}

const QUERY_PATH: &str = "/v1/query/video_generation";
const RETRIEVE_PATH: &str = "/v1/files/retrieve";

impl MiniMaxClient {
    /// A client for one account; `proxy` is `egress.proxy_url` (result downloads from
    /// MiniMax's links go through this client too).
    pub fn new(
        base_url: &str,
        api_key: SecretString,
        submit_timeout: Duration,
        query_timeout: Duration,
        proxy: Option<&str>,
    ) -> Self {
        let http = crate::egress::client_builder(proxy)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("reelgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with these settings always builds");
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            submit_timeout,
            query_timeout,
            metrics: None,
        }
    }

    /// Records the latency of every call from now on in `metrics`.
    pub(super) fn record_calls_in(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Records one call's latency by call and outcome (`ok` or the error's kind).
    fn record<T>(&self, call: &str, started: Instant, result: &Result<T, UpstreamError>) {
        if let Some(metrics) = &self.metrics {
            let outcome = result.as_ref().map_or_else(UpstreamError::kind_label, |_| "ok");
            metrics.observe(
                "upstream_request_duration_seconds",
                &[("call", call), ("outcome", outcome)],
                started.elapsed(),
            );
        }
    }

    /// `POST /v1/video_generation`; the task id on success.
    pub async fn create(&self, task: &CreateTask) -> Result<String, UpstreamError> {
        let started = Instant::now();
        let result = self.create_call(task).await;
        self.record("create", started, &result);
        result
    }

    async fn create_call(&self, task: &CreateTask) -> Result<String, UpstreamError> {
        let sent = self
            .http
            .post(format!("{}/v1/video_generation", self.base_url))
            .bearer_auth(self.api_key.expose_secret())
            .timeout(self.submit_timeout)
            .json(task)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // Refused before anything was sent: safe to retry.
            Err(e) if e.is_connect() => {
                return Err(UpstreamError::Transient { code: None, message: format!("connect failed: {e}") })
            }
            Err(e) => return Err(UpstreamError::Ambiguous { message: format!("create call failed: {e}") }),
        };
        if let Some(problem) = http_problem(response.status()) {
            // A gateway timeout means the request may have reached MiniMax.
            if response.status().as_u16() == 504 {
                return Err(UpstreamError::Ambiguous { message: "HTTP 504 from a proxy".into() });
            }
            return Err(problem);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Ambiguous { message: format!("unreadable create response: {e}") })?;
        parse_create(&body)
    }

    /// `GET /v1/query/video_generation`.
    pub async fn query(&self, task_id: &str) -> Result<TaskState, UpstreamError> {
        let started = Instant::now();
        let result = self.get_body(QUERY_PATH, &[("task_id", task_id)]).await.and_then(|body| parse_query(&body));
        self.record("query", started, &result);
        result
    }

    /// `GET /v1/files/retrieve`: fresh download links for a file.
    pub async fn retrieve(&self, file_id: &str) -> Result<FileLinks, UpstreamError> {
        let started = Instant::now();
        let result = self.get_body(RETRIEVE_PATH, &[("file_id", file_id)]).await.and_then(|body| parse_retrieve(&body));
        self.record("retrieve", started, &result);
        result
    }

    async fn get_body(&self, path: &str, query: &[(&str, &str)]) -> Result<bytes::Bytes, UpstreamError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(self.api_key.expose_secret())
            .timeout(self.query_timeout)
            .query(query)
            .send()
            .await
            .map_err(|e| UpstreamError::Transient { code: None, message: format!("{path} failed: {e}") })?;
        if let Some(problem) = http_problem(response.status()) {
            return Err(problem);
        }
        response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Transient { code: None, message: format!("unreadable {path} response: {e}") })
    }

    /// Plain download client, shared by result downloads (links point at MiniMax's CDN).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        for code in [1002, 1039, 2045] {
            assert!(matches!(classify(code, ""), UpstreamError::RateLimited { .. }), "{code}");
        }
        for code in [1000, 1001, 1013, 1024, 1033] {
            assert!(matches!(classify(code, ""), UpstreamError::Transient { .. }), "{code}");
        }
        for code in [1004, 2049, 1008, 2056] {
            assert!(matches!(classify(code, ""), UpstreamError::Account { .. }), "{code}");
        }
        for code in [1026, 1027, 2013] {
            assert!(matches!(classify(code, ""), UpstreamError::Rejected { .. }), "{code}");
        }
    }

    #[test]
    fn reports_parse_both_spellings_and_both_file_id_types() {
        let parse = |s: &str| serde_json::from_str::<TaskReport>(s).unwrap().state();
        assert_eq!(
            parse(
                r#"{"task_id":"1","status":"Success","file_id":"99","base_resp":{"status_code":0,"status_msg":"success"}}"#
            ),
            Some(TaskState::Success { file_id: "99".into() })
        );
        assert_eq!(
            parse(r#"{"task_id":"1","status":"success","file_id":99}"#),
            Some(TaskState::Success { file_id: "99".into() })
        );
        assert_eq!(parse(r#"{"status":"Preparing","file_id":"","video_width":0}"#), Some(TaskState::Preparing));
        assert_eq!(parse(r#"{"status":"processing"}"#), Some(TaskState::Processing));
        let failed =
            parse(r#"{"status":"failed","base_resp":{"status_code":1027,"status_msg":"output new_sensitive"}}"#);
        assert!(matches!(failed, Some(TaskState::Fail(UpstreamError::Rejected { code: 1027, .. }))));
        // Success without a file id is not something to act on.
        assert_eq!(parse(r#"{"status":"Success","file_id":""}"#), None);
    }

    /// Property tests: whatever MiniMax (or a proxy in front of it) answers, the parsers
    /// classify it without panicking.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// Bodies shaped like MiniMax's, with every field's type and value varied.
        fn minimax_like() -> impl Strategy<Value = Vec<u8>> {
            let scalar = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                "\\PC{0,12}".prop_map(Value::String),
                prop_oneof![Just("Success"), Just("success"), Just("Fail"), Just("failed"), Just("Processing")]
                    .prop_map(|s| json!(s)),
            ];
            let base_resp = proptest::option::of((scalar.clone(), scalar.clone()))
                .prop_map(|b| b.map(|(code, msg)| json!({"status_code": code, "status_msg": msg})));
            let file = proptest::option::of((scalar.clone(), scalar.clone()))
                .prop_map(|f| f.map(|(u, b)| json!({"download_url": u, "backup_download_url": b})));
            (scalar.clone(), scalar.clone(), scalar, base_resp, file).prop_map(
                |(task_id, status, file_id, base, file)| {
                    let mut body = json!({"task_id": task_id, "status": status, "file_id": file_id});
                    if let Some(b) = base {
                        body["base_resp"] = b;
                    }
                    if let Some(f) = file {
                        body["file"] = f;
                    }
                    body.to_string().into_bytes()
                },
            )
        }

        fn any_body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                minimax_like(),
                proptest::collection::vec(any::<u8>(), 0..64),
                "\\PC{0,64}".prop_map(String::into_bytes)
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn every_answer_is_classified(body in any_body()) {
                if let Ok(id) = parse_create(&body) {
                    prop_assert!(!id.is_empty());
                }
                if let Ok(TaskState::Success { file_id }) = parse_query(&body) {
                    prop_assert!(!file_id.is_empty());
                }
                if let Ok(links) = parse_retrieve(&body) {
                    prop_assert!(!links.download_url.is_empty());
                }
            }
        }
    }
}
