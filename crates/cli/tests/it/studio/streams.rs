//! A stand-in for the job event stream routes, in front of the real server, so the
//! Studio's stream client (studio/api.js) is tested against the contract it was written
//! for, including what a short test against the real routes never meets: a token
//! refused as expired, then a new one.
//!
//! It serves `POST /v2/jobs/events/token`, `GET /v2/jobs/{id}/events` and
//! `GET /v2/jobs/events` as the contract says, from polling the real server, and forwards
//! every other request there unchanged. The first token it issues is refused (401) on
//! every stream, as an expired one is, so the client's "get a new token and reconnect"
//! path runs too. It records what it streamed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};

const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

#[derive(Clone)]
pub struct FakeStreams {
    upstream: String,
    /// False: the stream routes answer 404, as on a server without them.
    streams: bool,
    http: reqwest::Client,
    /// Tokens in the order issued, each with its key.
    tokens: Arc<Mutex<Vec<(String, String)>>>,
    /// What happened, in order: `401`, `job <id> <status>`, `list <id> <status>`, `reset`,
    /// `404 <route>`, and `poll <id>` for each forwarded GET /v2/jobs/{id}.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Job streams open now, and the most that were open at once.
    job_streams: Arc<(AtomicUsize, AtomicUsize)>,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FakeStreams {
    /// In front of the server at `upstream` (`http://host:port`).
    pub fn new(upstream: String) -> Self {
        Self {
            upstream,
            streams: true,
            http: reqwest::Client::new(),
            tokens: Arc::default(),
            log: Arc::default(),
            job_streams: Arc::default(),
        }
    }

    /// In front of the server at `upstream`, hiding its stream routes (404), as a server
    /// without streams answers.
    pub fn without_streams(upstream: String) -> Self {
        Self { streams: false, ..Self::new(upstream) }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/jobs/events/token", post(create_token))
            .route("/v2/jobs/events", get(all_jobs_events))
            .route("/v2/jobs/{id}/events", get(job_events))
            .fallback(forward)
            .with_state(self.clone())
    }

    /// The most job streams that were open at once.
    pub fn most_job_streams(&self) -> usize {
        self.job_streams.1.load(Ordering::SeqCst)
    }

    pub fn tokens_issued(&self) -> usize {
        self.tokens.lock().unwrap().len()
    }

    pub fn logged(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    /// The key a token stands for; `None` for the first token (treated as expired) and unknown ones.
    fn key_for(&self, token: Option<&str>) -> Option<String> {
        let tokens = self.tokens.lock().unwrap();
        let i = tokens.iter().position(|(t, _)| Some(t.as_str()) == token)?;
        (i > 0).then(|| tokens[i].1.clone())
    }

    async fn get_json(&self, key: &str, path: &str) -> Option<Value> {
        let r = self.http.get(format!("{}{path}", self.upstream)).header("X-API-Key", key).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }
}

fn unauthorized(fake: &FakeStreams) -> Response {
    fake.note("401".into());
    (StatusCode::UNAUTHORIZED, Json(json!({"error": "Invalid or expired stream token"}))).into_response()
}

fn no_such_route(fake: &FakeStreams, what: &str) -> Response {
    fake.note(format!("404 {what}"));
    (StatusCode::NOT_FOUND, Json(json!({"error": "No such route"}))).into_response()
}

async fn create_token(State(fake): State<FakeStreams>, headers: HeaderMap) -> Response {
    if !fake.streams {
        return no_such_route(&fake, "token");
    }
    let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "API key is required"}))).into_response();
    };
    if fake.get_json(&key, "/v2/me").await.is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "Invalid API key"}))).into_response();
    }
    let mut tokens = fake.tokens.lock().unwrap();
    let token = format!("tok{}", tokens.len());
    tokens.push((token.clone(), key));
    let expires = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let expires = expires.format(&time::format_description::well_known::Rfc3339).unwrap();
    (StatusCode::CREATED, Json(json!({"token": token, "expiresAt": expires}))).into_response()
}

/// One job: its current state first, then each change; closed after the terminal one.
/// A reconnect (Last-Event-ID) to a finished job is a 204, so EventSource stops.
async fn job_events(
    State(fake): State<FakeStreams>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if !fake.streams {
        return no_such_route(&fake, "job stream");
    }
    let Some(key) = fake.key_for(q.token.as_deref()) else { return unauthorized(&fake) };
    let path = format!("/v2/jobs/{id}");
    let fake_streams = fake.job_streams.clone();
    if headers.contains_key("last-event-id") {
        if let Some(job) = fake.get_json(&key, &path).await {
            if TERMINAL.contains(&job["status"].as_str().unwrap_or("")) {
                return StatusCode::NO_CONTENT.into_response();
            }
        }
    }
    let events =
        stream::unfold((fake, key, path, String::new(), 0u64, false), |(fake, key, path, last, n, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(job) = fake.get_json(&key, &path).await {
                    let text = job.to_string();
                    if text != last {
                        let status = job["status"].as_str().unwrap_or("").to_string();
                        fake.note(format!("job {} {status}", job["id"].as_str().unwrap_or("")));
                        let event = Event::default().event("job").id(format!("c{n}")).data(text.clone());
                        let finished = TERMINAL.contains(&status.as_str());
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (fake, key, path, text, n + 1, finished),
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    // Counted open until the stream ends or the client goes away (both drop it).
    let open = OpenStream::new(fake_streams);
    let events = futures_util::StreamExt::map(events, move |event| {
        let _ = &open;
        event
    });
    Sse::new(events).into_response()
}

/// One open job stream, counted while it lives.
struct OpenStream(Arc<(AtomicUsize, AtomicUsize)>);

impl OpenStream {
    fn new(counts: Arc<(AtomicUsize, AtomicUsize)>) -> Self {
        let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
        counts.1.fetch_max(now, Ordering::SeqCst);
        Self(counts)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every job of the key: a `reset` first (reload your list), then each changed job.
async fn all_jobs_events(State(fake): State<FakeStreams>, Query(q): Query<TokenQuery>) -> Response {
    if !fake.streams {
        return no_such_route(&fake, "list stream");
    }
    let Some(key) = fake.key_for(q.token.as_deref()) else { return unauthorized(&fake) };
    fake.note("reset".into());
    let reset = stream::once(async { Ok::<_, std::convert::Infallible>(Event::default().event("reset").data("{}")) });
    let changes = stream::unfold(
        (fake, key, std::collections::HashMap::<String, String>::new(), 0u64),
        |(fake, key, mut seen, n)| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let Some(page) = fake.get_json(&key, "/v2/jobs?limit=20").await else { continue };
                let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
                let changed: Vec<Value> = jobs
                    .into_iter()
                    .filter(|j| seen.get(j["id"].as_str().unwrap_or("")) != Some(&j.to_string()))
                    .collect();
                if changed.is_empty() {
                    continue;
                }
                let mut events = Vec::new();
                for job in changed {
                    let id = job["id"].as_str().unwrap_or("").to_string();
                    fake.note(format!("list {id} {}", job["status"].as_str().unwrap_or("")));
                    seen.insert(id, job.to_string());
                    events.push(Ok(Event::default().event("job").id(format!("l{n}")).data(job.to_string())));
                }
                return Some((stream::iter(events), (fake, key, seen, n + 1)));
            }
        },
    );
    let events = futures_util::StreamExt::chain(reset, futures_util::StreamExt::flatten(changes));
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Everything else goes to the real server as it came, and back.
async fn forward(State(fake): State<FakeStreams>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.expect("request body");
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = fake.http.request(parts.method.clone(), format!("{}{path}", fake.upstream)).body(bytes);
    for name in ["x-api-key", "content-type", "range", "if-none-match", "idempotency-key"] {
        if let Some(v) = parts.headers.get(name) {
            request = request.header(name, v);
        }
    }
    if parts.method == axum::http::Method::GET {
        if let Some(id) = parts.uri.path().strip_prefix("/v2/jobs/").filter(|rest| !rest.contains('/')) {
            fake.note(format!("poll {id}"));
        }
    }
    let answer = request.send().await.expect("upstream answers");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.expect("upstream body");
    response.body(Body::from(body)).expect("a response from upstream's parts")
}
