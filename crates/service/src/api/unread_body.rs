//! Early answers that reach clients still sending their body.
//!
//! Many answers are decided before the body is read: a 401 from the key, a 413 from
//! `Content-Length`, a 404 or 405 from the route. If the server then answers and closes
//! with body bytes still unread, the kernel resets the connection, and a client that is
//! still writing (Node's fetch, which Apiframe's SDK uses) sees a broken pipe instead of
//! our JSON. So this middleware keeps a handle on the request body; once the handler has
//! answered, it reads and throws away what the handler left, up to
//! `server.max_discard_bytes` within `server.body_deadline_ms`, and only then lets the
//! answer go. A body larger than that, or slower, is not read to its end: the answer
//! says `Connection: close`.
//!
//! A client that sent `Expect: 100-continue` and whose body nobody asked for is waiting
//! for our answer, not sending; it is left alone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::state::AppState;

/// Middleware: see the module documentation.
pub async fn discard_unread_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // Decided from the headers: the body timeout's wrapper hides the body's own hints.
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.unwrap_or(0) == 0 {
        // Nothing to send (a GET): no wrapper needed.
        return next.run(Request::from_parts(parts, body)).await;
    }
    let expects_continue = parts.headers.contains_key(header::EXPECT);
    let unread = Arc::new(Unread { body: Mutex::new(Some(body)), polled: Default::default() });
    let mut response = next.run(Request::from_parts(parts, Body::new(SharedBody(unread.clone())))).await;

    let Some(left) = unread.body.lock().unwrap_or_else(|e| e.into_inner()).take() else { return response };
    if expects_continue && !unread.polled.load(Ordering::Relaxed) {
        // hyper sends "100 Continue" only when the body is read; unread, the client
        // sends nothing and reads our answer.
        return response;
    }
    let server = &state.config.server;
    let (limit, deadline) = (server.max_discard_bytes, Duration::from_millis(server.body_deadline_ms));
    // A body declared longer than the limit is not read at all, however little is left;
    // nor is one that already ran out of time.
    let discarded = declared.is_none_or(|n| n <= limit)
        && response.status() != StatusCode::REQUEST_TIMEOUT
        && tokio::time::timeout(deadline, discard(left, limit)).await.unwrap_or(false);
    if !discarded {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end, throwing the bytes away; false if it is longer than `limit`
/// or fails (a timeout, a client gone).
async fn discard(mut body: Body, limit: u64) -> bool {
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > limit {
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// The request body, held where both the handler and the middleware can reach it.
struct Unread {
    body: Mutex<Option<Body>>,
    /// Whether anybody asked for the body (and so hyper sent "100 Continue").
    polled: AtomicBool,
}

/// What the handler gets instead of the body: reads go through to the shared one.
struct SharedBody(Arc<Unread>);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.polled.store(true, Ordering::Relaxed);
        let mut body = self.0.body.lock().unwrap_or_else(|e| e.into_inner());
        match body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.body.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
