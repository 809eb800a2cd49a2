//! The webhook worker: delivers outbox events with bounded concurrency, a limit per
//! destination, and retries on the configured schedule.
//!
//! Events are claimed from the outbox with a lease (their due time moves past the
//! attempt's timeout), so an attempt cut short by a crash is made again after a
//! restart: delivery is at least once, and receivers deduplicate on `webhook-id`.
//!
//! A slow or dead receiver costs at most `max_per_destination` connections: events for
//! a destination already at its limit are put back instead of waiting in a task, so
//! they never hold a worker slot or block other destinations' events. They are put back
//! for about as long as that destination's recent attempts took, since no slot frees up
//! sooner: a receiver that hangs until the timeout does not make the worker re-claim
//! its backlog four times a second.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use store::{AttemptOutcome, Store, WebhookAttempt, WebhookDelivery};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sign::{sign, SigningSecret};
use crate::background::Background;
use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::ResultStore;

/// Events claimed per round.
const CLAIM_BATCH: usize = 256;
/// The shortest time a destination's excess events are pushed back.
const DEFER: Duration = Duration::from_millis(250);
/// The longest sleep when nothing wakes the worker.
const TICK: Duration = Duration::from_millis(500);
/// Bytes of the receiver's answer kept with the attempt.
const KEPT_RESPONSE_BYTES: usize = 1024;

/// One receiver (scheme, host and port) as the worker sees it.
struct Destination {
    /// Attempts in flight to it.
    permits: Arc<Semaphore>,
    /// How long its latest attempt took, in milliseconds.
    last_attempt_ms: AtomicU64,
}

/// The worker.
pub struct Deliverer {
    store: Arc<dyn Store>,
    config: WebhookConfig,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
    busy: Mutex<HashSet<String>>,
    allow_private: bool,
    readiness: Readiness,
    /// The result store, to presign `videoUrl` at send time when results are handed
    /// out that way (the stored payload holds reelgate's own, non-expiring URL).
    results: Option<Arc<dyn ResultStore>>,
}

impl Deliverer {
    /// A worker; `wake` is notified whenever an event may have been raised. `proxy_url`
    /// is `egress.proxy_url`.
    // Each argument is a separate handle of the process; a struct to carry them would
    // be built in exactly one place.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        allow_private: bool,
        proxy_url: Option<String>,
        readiness: Readiness,
        results: Option<Arc<dyn ResultStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            http: crate::guard::guarded_client(
                Duration::from_millis(config.timeout_ms),
                allow_private,
                0,
                proxy_url.as_deref(),
            ),
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            store,
            config,
            metrics,
            wake,
            destinations: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            allow_private,
            readiness,
            results,
        })
    }

    /// Starts the loop. Shutting the returned handle down stops claiming and waits for
    /// attempts in flight; unfinished ones are made again after a restart (their lease
    /// expires).
    pub fn start(self: &Arc<Self>) -> Background {
        let background = Background::new("webhook attempts");
        background.tasks.spawn(self.clone().run(background.stop.clone(), background.tasks.clone()));
        background
    }

    fn lease_ms(&self) -> i64 {
        // Past the attempt's own timeout, with room to record it.
        self.config.timeout_ms as i64 + 15_000
    }

    async fn run(self: Arc<Self>, stop: CancellationToken, tasks: TaskTracker) {
        loop {
            let full = match self.round(&tasks).await {
                Ok(full) => full,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook round failed; retrying shortly");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Claims due events and starts an attempt for each that has room; returns whether
    /// the claim was full (more may be due).
    async fn round(self: &Arc<Self>, tasks: &TaskTracker) -> store::Result<bool> {
        let free = self.slots.available_permits().min(CLAIM_BATCH);
        if free == 0 || !self.readiness.is_ready() {
            return Ok(false);
        }
        let claimed = self.store.claim_webhooks(free, self.lease_ms()).await?;
        let full = claimed.len() == free;
        // Events put back, grouped by when they are due again.
        let mut deferred: HashMap<i64, Vec<String>> = HashMap::new();
        for delivery in claimed {
            if !self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(delivery.event_id.clone()) {
                continue;
            }
            let destination = self.destination(&delivery.url);
            let (Ok(dest_permit), Ok(slot)) =
                (destination.permits.clone().try_acquire_owned(), self.slots.clone().try_acquire_owned())
            else {
                self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&delivery.event_id);
                deferred.entry(self.put_back_until(&destination)).or_default().push(delivery.event_id);
                continue;
            };
            let worker = self.clone();
            tasks.spawn(async move {
                let id = delivery.event_id.clone();
                let started = Instant::now();
                worker.attempt(delivery).await;
                destination.last_attempt_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                worker.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                drop((dest_permit, slot));
                worker.wake.notify_one();
            });
        }
        for (until_ms, events) in deferred {
            self.store.defer_webhooks(events, until_ms).await?;
        }
        Ok(full)
    }

    fn destination(&self, url: &str) -> Arc<Destination> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(destination_of(url))
            .or_insert_with(|| {
                Arc::new(Destination {
                    permits: Arc::new(Semaphore::new(self.config.max_per_destination)),
                    last_attempt_ms: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// When an event for a destination at its limit is due again: after about as long as
    /// its attempts take (between [`DEFER`] and the attempt timeout), spread a little so a
    /// backlog does not come back all at once.
    fn put_back_until(&self, destination: &Destination) -> i64 {
        let typical = destination
            .last_attempt_ms
            .load(Ordering::Relaxed)
            .clamp(DEFER.as_millis() as u64, self.config.timeout_ms.max(DEFER.as_millis() as u64));
        let spread = (typical as f64 * rand::random_range(1.0..1.5)) as i64;
        // Rounded to the DEFER step so one round's put-backs share a few writes.
        let step = DEFER.as_millis() as i64;
        (crate::now_ms() + spread) / step * step + step
    }

    /// The body to send: the stored payload, except that a `completed` event gets a
    /// `videoUrl` presigned now when results are handed out that way, so even the last
    /// retry, hours later, carries a URL with its full validity.
    async fn payload_of(&self, d: &WebhookDelivery) -> String {
        let Some(results) = self.results.as_ref().filter(|_| d.event == domain::WebhookEvent::Completed) else {
            return d.payload.clone();
        };
        let Ok(mut body) = serde_json::from_str::<serde_json::Value>(&d.payload) else { return d.payload.clone() };
        match crate::results::presigned_video_url(results.as_ref(), d.job_id, &body["result"]).await {
            Some(fresh) => {
                body["result"] = fresh;
                body.to_string()
            }
            None => d.payload.clone(),
        }
    }

    /// One attempt: send, record, schedule the next or settle.
    async fn attempt(&self, d: WebhookDelivery) {
        let payload = self.payload_of(&d).await;
        let started = Instant::now();
        let attempted_at_ms = crate::now_ms();
        let headers =
            sign(&SigningSecret(d.secret), d.event.as_str(), &d.event_id, attempted_at_ms / 1000, payload.as_bytes());
        let mut request = self
            .http
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, concat!("reelgate-webhooks/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
        // IP-literal hosts never reach the guard's resolver: check them here.
        let refused = match reqwest::Url::parse(&d.url) {
            Ok(url) => crate::guard::check_url(&url, self.allow_private).err().map(|e| e.to_string()),
            Err(_) => Some("not a valid URL".to_string()),
        };
        let sent = match refused {
            Some(why) => Err(why),
            None => request.body(payload).send().await.map_err(|e| {
                crate::guard::refusal_in(&e).unwrap_or_else(|| {
                    if e.is_timeout() {
                        format!("no answer within {} ms", self.config.timeout_ms)
                    } else {
                        format!("request failed: {e}")
                    }
                })
            }),
        };
        let (status_code, retry_after, response_body, error) = match sent {
            Ok(response) => {
                let status = response.status();
                let retry_after = retry_after_ms(&response);
                let body = first_bytes(response).await;
                let error = (!status.is_success()).then(|| format!("HTTP {status}"));
                (Some(status.as_u16()), retry_after, Some(body), error)
            }
            Err(why) => (None, None, None, Some(why)),
        };
        let delivered = error.is_none();
        let made = d.attempts as usize + 1;
        let outcome = if delivered {
            AttemptOutcome::Delivered
        } else if let Some(delay) = self.config.retry_schedule_ms.get(made) {
            let jittered = (*delay as f64 * rand::random_range(0.8..1.2)) as i64;
            let honoured = retry_after
                .filter(|_| matches!(status_code, Some(429 | 503)))
                .map(|ms| ms.min(self.config.max_retry_after_ms as i64));
            AttemptOutcome::RetryAt(crate::now_ms() + jittered.max(honoured.unwrap_or(0)))
        } else {
            AttemptOutcome::GaveUp
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "retry",
            AttemptOutcome::GaveUp => "gave_up",
        };
        self.metrics.inc("webhook_attempts_total", &[("outcome", label)]);
        self.metrics.observe("webhook_delivery_duration_seconds", &[("outcome", label)], started.elapsed());
        tracing::info!(
            job.id = %d.job_id, webhook.id = %d.event_id, webhook.event = d.event.as_str(), attempt = made,
            status = status_code.unwrap_or(0), error = error.as_deref().unwrap_or(""), outcome = label,
            "webhook attempt"
        );
        let attempt = WebhookAttempt {
            event_id: d.event_id.clone(),
            attempted_at_ms,
            status_code,
            duration_ms: started.elapsed().as_millis() as i64,
            error,
            response_body,
            outcome,
        };
        if let Err(e) = self.store.record_webhook_attempt(attempt).await {
            tracing::error!(webhook.id = %d.event_id, error = %e, "could not record a webhook attempt; its lease will retry it");
        }
    }
}

/// Scheme, host and port: what the per-destination limit counts by.
fn destination_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => url.to_string(),
    }
}

/// How long `Retry-After` asks to wait, in either of its forms: delay seconds or an
/// HTTP date (a date in the past means now).
fn retry_after_ms(response: &reqwest::Response) -> Option<i64> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return (seconds >= 0).then(|| seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Some(wait.as_millis().min(i64::MAX as u128) as i64)
}

/// The first KiB of the answer, without reading the rest.
async fn first_bytes(response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        kept.extend_from_slice(&chunk[..chunk.len().min(KEPT_RESPONSE_BYTES - kept.len())]);
        if kept.len() >= KEPT_RESPONSE_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
