//! Job events as server-sent events, our extension (Apiframe's clients poll):
//! `GET /v2/jobs/{id}/events`, `GET /v2/jobs/events` and `POST /v2/jobs/events/token`.
//!
//! Every event is `event: job` with the job as `GET /v2/jobs/{id}` shows it in `data`.
//! - **One job** (`/v2/jobs/{id}/events`): its current state first, then each change a
//!   client can see; the stream ends after the terminal event. The event id is the job's
//!   [`JobVersion`]: a client resuming with `Last-Event-ID` is sent the job again only if
//!   it changed, and a reconnect after the terminal event is answered 204, which tells
//!   `EventSource` to stop.
//! - **Every job of the key** (`/v2/jobs/events`, `scope=team` for the whole account):
//!   first `event: ready`, then the jobs as they change. The event id is a cursor, the
//!   latest change time sent; resuming from it sends again every job changed since
//!   (from [`RESUME_LOOKBACK_MS`] earlier, which absorbs clocks of nodes a little apart and
//!   writes committed out of time order): duplicates are possible, losses are not. When
//!   more than [`RESUME_LIMIT`] jobs changed, `event: reset` tells the client to list
//!   again. A client that wants no gap opens the stream first, then lists.
//!
//! Browsers' `EventSource` cannot send headers, so both streams also take `?token=` from
//! `POST /v2/jobs/events/token`: bound to the key, valid for `events.token_ttl_ms` (ten
//! minutes by default), good only
//! for reading events. API keys then never appear in URLs or access logs. A token is
//! checked when a stream opens; a stream open when its token (or key) expires goes on.
//!
//! Changes reach streams through [`crate::events`] within milliseconds of their commit,
//! from any node. As announcements can be lost (a node crashing between its commit and
//! its announcement), each stream also re-reads every `events.recheck_ms`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::{AccountId, ApiKeyId, JobId};
use futures_util::stream::{self, Stream};
use store::JobRecord;

use tokio::sync::broadcast;

use crate::api::error::{ApiError, Result};
use crate::api::extract::{query_param, Caller, Path, Query};
use crate::api::jobs::{job_not_found, parse_job_id, view};
use crate::events::{AccountEvent, AccountSubscription, JobSubscription, JobVersion, SharedJob};
use crate::ratelimit::RateClass;
use crate::signing::Purpose;
use crate::state::AppState;

/// How far before a resumed account stream's cursor its jobs are sent again.
pub const RESUME_LOOKBACK_MS: i64 = 10_000;
/// Jobs sent again at most when an account stream resumes.
pub const RESUME_LIMIT: u32 = 1000;
/// Comment lines keep idle streams (and the proxies between) from closing them.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Jobs an account stream remembers having sent, to skip repeats.
const REMEMBERED: usize = 4096;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/jobs/events/token", post(create_token))
        .route("/v2/jobs/events", get(account_events))
        .route("/v2/jobs/{id}/events", get(job_events))
}

/// Who reads a stream: from `X-API-Key`, or from `?token=`.
struct Reader {
    account_id: AccountId,
    api_key_id: ApiKeyId,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> std::result::Result<Self, ApiError> {
        let params: Vec<(String, String)> =
            axum::extract::Query::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
        let Some(token) = query_param(&params, "token") else {
            let Caller(key) = Caller::from_request_parts(parts, state).await?;
            return Ok(Reader { account_id: key.account_id, api_key_id: key.id });
        };
        let reader = check_token(state, token, crate::now_ms()).ok_or(ApiError::InvalidToken)?;
        state
            .rate_limits
            .check(RateClass::Read, reader.api_key_id)
            .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
        Ok(reader)
    }
}

/// `<key id>.<account id>.<expiry ms>.<mac>`: everything needed to serve a stream, signed.
fn make_token(state: &AppState, key: ApiKeyId, account: AccountId, expires_at_ms: i64) -> String {
    let claims = format!("{key}.{account}.{expires_at_ms}");
    let mac = state.signer.token(Purpose::Events, &claims);
    format!("{claims}.{mac}")
}

fn check_token(state: &AppState, token: &str, now_ms: i64) -> Option<Reader> {
    let (claims, mac) = token.rsplit_once('.')?;
    if !state.signer.verify(Purpose::Events, claims, mac) {
        return None;
    }
    let mut parts = claims.split('.');
    let api_key_id = parts.next()?.parse().ok()?;
    let account_id = parts.next()?.parse().ok()?;
    let expires_at_ms: i64 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && now_ms < expires_at_ms).then_some(Reader { account_id, api_key_id })
}

async fn create_token(State(state): State<AppState>, Caller(key): Caller) -> Response {
    let ttl_ms = i64::try_from(state.config.events.token_ttl_ms).unwrap_or(i64::MAX);
    let expires_at_ms = crate::now_ms().saturating_add(ttl_ms);
    let token = make_token(&state, key.id, key.account_id, expires_at_ms);
    let body = serde_json::json!({"token": token, "expiresAt": crate::api::dto::timestamp(expires_at_ms)});
    (StatusCode::CREATED, Json(body)).into_response()
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<Event, std::convert::Infallible>> + Send>>;

fn sse(stream: EventStream) -> Response {
    let mut response = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Asks nginx-like proxies not to buffer the stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn recheck(state: &AppState) -> Duration {
    Duration::from_millis(state.config.events.recheck_ms)
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

async fn job_events(
    State(state): State<AppState>,
    reader: Reader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    let events = state.events.clone();
    // Subscribed before the read: a change in between is not missed.
    let subscription = events.watch_job(id);
    let job = state.store.get_job(reader.account_id, id).await?.ok_or_else(job_not_found)?;
    let resumed_at = last_event_id(&headers).and_then(JobVersion::parse);
    let unchanged = resumed_at.is_some_and(|v| v.shows_the_same(&JobVersion::of(&job)));
    if unchanged && job.status.is_terminal() {
        // The client saw the end; 204 stops EventSource from reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let first = (!unchanged).then(|| SharedJob::new(job.clone()));
    let stream = JobStream {
        state,
        subscription,
        account_id: reader.account_id,
        job_id: id,
        sent: (unchanged).then(|| JobVersion::of(&job)),
        first,
        done: false,
    };
    Ok(sse(Box::pin(stream::unfold(stream, JobStream::next))))
}

struct JobStream {
    state: AppState,
    subscription: JobSubscription,
    account_id: AccountId,
    job_id: JobId,
    /// The version sent last.
    sent: Option<JobVersion>,
    /// Sent before waiting for changes.
    first: Option<Arc<SharedJob>>,
    /// The terminal event was sent.
    done: bool,
}

type Step<S> = Option<(std::result::Result<Event, std::convert::Infallible>, S)>;

impl JobStream {
    async fn next(mut self) -> Step<Self> {
        if self.done {
            return None;
        }
        if let Some(job) = self.first.take() {
            return Some(self.emit(&job).await);
        }
        let stop = self.state.events.stopping().clone();
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => return None,
                changed = self.subscription.versions.changed() => {
                    changed.ok()?;
                    self.subscription.versions.borrow_and_update().clone()
                }
                _ = tokio::time::sleep(recheck(&self.state)) => {
                    self.state.store.get_job(self.account_id, self.job_id).await.ok().flatten().map(SharedJob::new)
                }
            };
            if let Some(job) = job {
                if !self.sent.is_some_and(|s| s.shows_the_same(&JobVersion::of(&job.record))) {
                    return Some(self.emit(&job).await);
                }
            }
        }
    }

    async fn emit(mut self, job: &SharedJob) -> (std::result::Result<Event, std::convert::Infallible>, Self) {
        let version = JobVersion::of(&job.record);
        let event = job_event(&self.state, job).await.id(version.to_string());
        self.sent = Some(version);
        self.done = job.record.status.is_terminal();
        (Ok(event), self)
    }
}

/// `event: job` with the job as `GET /v2/jobs/{id}` shows it, rendered once per version
/// however many streams send it.
async fn job_event(state: &AppState, job: &SharedJob) -> Event {
    let data = job
        .rendered(|| async {
            let view = view(state, &job.record, true).await;
            serde_json::to_string(&view).unwrap_or_else(|_| "{}".into())
        })
        .await;
    Event::default().event("job").data(&*data)
}

async fn account_events(
    State(state): State<AppState>,
    reader: Reader,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response> {
    let api_key_id = match query_param(&params, "scope").unwrap_or("user") {
        "user" => Some(reader.api_key_id),
        "team" => None,
        _ => return Err(ApiError::invalid("scope", "Expected 'user' or 'team'")),
    };
    let subscription = state.events.watch_account(reader.account_id);
    let resumed_at = last_event_id(&headers)
        .map(|raw| raw.split('-').next().unwrap_or(raw).parse::<i64>())
        .transpose()
        .map_err(|_| ApiError::BadRequest("Invalid Last-Event-ID: expected an id this stream sent".into()))?;
    let mut stream = AccountStream {
        state,
        subscription,
        account_id: reader.account_id,
        api_key_id,
        cursor: resumed_at.unwrap_or_else(crate::now_ms),
        backlog: VecDeque::new(),
        sent: HashMap::new(),
        ready: resumed_at.is_none(),
        reset: false,
    };
    if resumed_at.is_some() {
        stream.catch_up().await?;
    }
    Ok(sse(Box::pin(stream::unfold(stream, AccountStream::next))))
}

struct AccountStream {
    state: AppState,
    subscription: AccountSubscription,
    account_id: AccountId,
    /// Only this key's jobs (`scope=user`), or the account's.
    api_key_id: Option<ApiKeyId>,
    /// The latest change time sent: the event id, from which a resumed stream catches up.
    cursor: i64,
    /// Jobs to send before waiting for changes.
    backlog: VecDeque<JobRecord>,
    /// What each job recently sent looked like.
    sent: HashMap<JobId, JobVersion>,
    /// `event: ready` is still to be sent.
    ready: bool,
    /// `event: reset` is to be sent (a catch-up found more than it can send).
    reset: bool,
}

impl AccountStream {
    async fn next(mut self) -> Step<Self> {
        if std::mem::take(&mut self.ready) {
            let event = Event::default().event("ready").id(self.cursor.to_string()).data("{}");
            return Some((Ok(event), self));
        }
        let stop = self.state.events.stopping().clone();
        loop {
            if std::mem::take(&mut self.reset) {
                let event = Event::default().event("reset").id(self.cursor.to_string()).data("{}");
                return Some((Ok(event), self));
            }
            while let Some(job) = self.backlog.pop_front() {
                if self.is_news(&job) {
                    return Some(self.emit(&SharedJob::new(Arc::new(job))).await);
                }
            }
            let caught_up = tokio::select! {
                _ = stop.cancelled() => return None,
                heard = self.subscription.changes.recv() => match heard {
                    Ok(AccountEvent::Changed(job)) => {
                        if self.is_news(&job.record) {
                            return Some(self.emit(&job).await);
                        }
                        Ok(())
                    }
                    Ok(AccountEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(recheck(&self.state)) => self.catch_up().await,
            };
            if let Err(e) = caught_up {
                // Tried again at the next change or recheck.
                tracing::debug!(error = ?e, "an event stream could not re-read its jobs");
            }
        }
    }

    /// Whether the job belongs on this stream and looks different from what was sent.
    fn is_news(&self, job: &JobRecord) -> bool {
        self.api_key_id.is_none_or(|k| k == job.api_key_id)
            && !self.sent.get(&job.id).is_some_and(|s| s.shows_the_same(&JobVersion::of(job)))
    }

    /// Queues every job changed since a little before the cursor.
    async fn catch_up(&mut self) -> Result<()> {
        let since = self.cursor.saturating_sub(RESUME_LOOKBACK_MS);
        let jobs = self.state.store.jobs_changed_since(self.account_id, self.api_key_id, since, RESUME_LIMIT).await?;
        self.reset = jobs.len() >= RESUME_LIMIT as usize;
        self.backlog = jobs.into();
        Ok(())
    }

    async fn emit(mut self, job: &SharedJob) -> (std::result::Result<Event, std::convert::Infallible>, Self) {
        if self.sent.len() >= REMEMBERED {
            self.sent.clear();
        }
        self.sent.insert(job.record.id, JobVersion::of(&job.record));
        self.cursor = self.cursor.max(job.record.updated_at_ms);
        let event = job_event(&self.state, job).await.id(self.cursor.to_string());
        (Ok(event), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_version_survives_its_event_id() {
        let raw = "1733200000123-0badcafe";
        let parsed = JobVersion::parse(raw).unwrap();
        assert_eq!(parsed.to_string(), raw);
        assert_eq!(parsed.updated_at_ms(), 1_733_200_000_123);
        assert!(JobVersion::parse("1733200000123").is_none());
        assert!(JobVersion::parse("x-0badcafe").is_none());
    }
}
