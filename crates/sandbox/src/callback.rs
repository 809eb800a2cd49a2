//! `callback_url` (minimax.md §2): the challenge handshake done inside the create call, and the
//! status pushes that follow.
//!
//! Pushes are driven by one timer task over a heap of due pushes, not a task or timer per job.
//! A task's pushes are chained: its terminal push is queued only once its `processing` push has
//! been delivered (or has failed), so a receiver always sees them in order. Pushes are not retried:
//! MiniMax documents no retry policy, and an engine must keep polling anyway.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// How long the receiver has to echo the challenge.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends `{"challenge": …}` and checks that the same value comes back within 3 s.
pub async fn handshake(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let challenge = random_challenge();
    let resp = http
        .post(url)
        .json(&serde_json::json!({ "challenge": challenge }))
        .timeout(HANDSHAKE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.without_url().to_string())?;
    if body.get("challenge").and_then(|c| c.as_str()) == Some(challenge.as_str()) {
        Ok(())
    } else {
        Err("challenge not echoed".into())
    }
}

/// A value shaped like MiniMax's sample, e.g. `1a3cs1j-601a-118y-ch52-o48911eabc3u`.
fn random_challenge() -> String {
    let hex = crate::images::hex(&rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Which push of a task is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Processing,
    Terminal,
}

/// The queue of due pushes, ordered by due time (sandbox ms).
#[derive(Default)]
pub struct Pusher {
    heap: Mutex<BinaryHeap<Reverse<(u64, u64, Stage)>>>,
    /// Wakes the delivery loop (`pushes::run`) when an earlier push is queued.
    pub(crate) wake: Notify,
}

impl Pusher {
    /// Queues the push of `stage` for a task at `due_ms`.
    pub fn schedule(&self, due_ms: u64, task_id: u64, stage: Stage) {
        let mut heap = self.heap.lock().expect("push heap lock poisoned only by a panic inside it");
        let earliest = heap.peek().is_none_or(|Reverse((d, _, _))| due_ms < *d);
        heap.push(Reverse((due_ms, task_id, stage)));
        drop(heap);
        if earliest {
            self.wake.notify_one();
        }
    }

    pub(crate) fn pop_due(&self, now_ms: u64) -> Result<(u64, Stage), Option<u64>> {
        let mut heap = self.heap.lock().expect("push heap lock poisoned only by a panic inside it");
        match heap.peek() {
            Some(Reverse((due, _, _))) if *due <= now_ms => {
                let Reverse((_, id, stage)) = heap.pop().expect("peeked just above");
                Ok((id, stage))
            }
            Some(Reverse((due, _, _))) => Err(Some(*due)),
            None => Err(None),
        }
    }
}
