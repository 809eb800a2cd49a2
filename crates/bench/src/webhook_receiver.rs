//! The webhook receiver of `reelgate bench engine --webhooks`: an HTTP server on a
//! loopback port, inside the bench process, that notes when each job's `completed`
//! event arrived, so the report can give the latency from job completion (the event's
//! `completedAt`, set by the server) to delivery.
//!
//! It answers 200 at once and keeps one arrival per job: a redelivered event (at least
//! once) does not count twice, and the first arrival is what a client would act on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;

/// Arrivals by job id: (completedAt in unix ms, arrival in unix ms).
type Arrivals = Arc<Mutex<HashMap<String, (i64, i64)>>>;

/// A running receiver.
pub struct WebhookReceiver {
    /// Where the server should send its events.
    pub url: String,
    arrivals: Arrivals,
    deliveries: Arc<Mutex<u64>>,
}

/// Delivery latencies of the run, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latencies {
    /// Distinct jobs whose `completed` event arrived.
    pub received: usize,
    /// Requests received in all, redeliveries included.
    pub deliveries: u64,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl WebhookReceiver {
    /// Starts the receiver on a free loopback port; it runs until the bench exits.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind the receiver")?;
        let addr: SocketAddr = listener.local_addr()?;
        let arrivals: Arrivals = Arc::default();
        let deliveries: Arc<Mutex<u64>> = Arc::default();
        let (a, d) = (arrivals.clone(), deliveries.clone());
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let arrived_ms = unix_ms(SystemTime::now());
                let (a, d) = (a.clone(), d.clone());
                async move {
                    *d.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    if let Some((job, completed_ms)) = completed_event(&body) {
                        a.lock().unwrap_or_else(|p| p.into_inner()).entry(job).or_insert((completed_ms, arrived_ms));
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("bench engine: the webhook receiver stopped: {e}");
            }
        });
        Ok(Self { url: format!("http://{addr}/hook"), arrivals, deliveries })
    }

    /// Distinct jobs whose `completed` event has arrived.
    pub fn received(&self) -> usize {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The latencies of everything received so far.
    pub fn latencies(&self) -> Latencies {
        let mut ms: Vec<i64> = self
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(completed, arrived)| (arrived - completed).max(0))
            .collect();
        ms.sort_unstable();
        let at = |q: f64| ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
        Latencies {
            received: ms.len(),
            deliveries: *self.deliveries.lock().unwrap_or_else(|p| p.into_inner()),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(0),
        }
    }
}

/// The job id and `completedAt` of a `completed` event body.
fn completed_event(body: &[u8]) -> Option<(String, i64)> {
    let event: Value = serde_json::from_slice(body).ok()?;
    if event["event"] != "completed" {
        return None;
    }
    let completed =
        time::OffsetDateTime::parse(event["completedAt"].as_str()?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    Some((event["jobId"].as_str()?.to_owned(), (completed.unix_timestamp_nanos() / 1_000_000) as i64))
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_completed_events_are_read() {
        let completed = br#"{"event":"completed","jobId":"j1","completedAt":"2026-01-02T03:04:05.678Z"}"#;
        assert_eq!(completed_event(completed), Some(("j1".to_owned(), 1_767_323_045_678)));
        assert_eq!(completed_event(br#"{"event":"failed","jobId":"j1"}"#), None);
        assert_eq!(completed_event(b"not json"), None);
    }
}
