//! The HTTP server's connections: how many may be open, how long a client may take to
//! send a request or sit silent, and how long shutdown waits for them.
//!
//! hyper reads each connection with the limits of `[server]`: a header-read timeout
//! (which hyper starts whenever a connection waits for a request, so it also ends idle
//! keep-alive connections), a cap on header count and size. tower-http's body timeout
//! ends a request whose body stops arriving. [`IdleTimeout`] ends a connection on which
//! nothing moves either way, which also catches a client that stops reading its answer.
//!
//! Past `max_connections`, the accept loop stops accepting: new connections wait in the
//! kernel's listen backlog while the open ones are served, instead of the process running
//! out of file descriptors (which would also starve the database and outbound calls).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::RequestBodyTimeout;

use crate::config::ServerConfig;

/// File descriptors kept free for everything but client connections: the database,
/// result files, the sandbox and outbound calls.
const RESERVED_FDS: u64 = 256;

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish their requests for up to `shutdown_grace_ms`, and drops the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max_connections = effective_max_connections(settings.max_connections);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
        .max_headers(settings.max_headers)
        .max_header_size(settings.max_header_bytes);
    let service =
        TowerToHyperService::new(RequestBodyTimeout::new(app, Duration::from_millis(settings.body_read_timeout_ms)));
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    tracing::debug!(max_connections, "accepting connections");

    let connections = TaskTracker::new();
    // Asks every connection to finish its current request and close.
    let draining = CancellationToken::new();
    // Drops the connections still open when the grace period is over.
    let dropping = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    pause_after_accept_error(&e).await;
                    continue;
                }
            },
        };
        // Small JSON answers should leave at once, not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(IdleTimeout::new(stream, idle)), service.clone());
        let (draining, dropping) = (draining.clone(), dropping.clone());
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = draining.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = connection => {}
                () = dropping.cancelled() => {}
            }
        });
    }
    drop(listener);
    draining.cancel();
    connections.close();
    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            grace_ms = settings.shutdown_grace_ms,
            "shutdown grace period over: closing the connections still open"
        );
        dropping.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// The connection cap: the setting, lowered to what the process's file limit allows
/// after [`RESERVED_FDS`], so a flood of connections cannot take the descriptors the
/// database and outbound calls need.
fn effective_max_connections(configured: usize) -> usize {
    let allowed = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _hard)) => usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX),
        Err(_) => usize::MAX,
    };
    if allowed < configured {
        tracing::warn!(
            server.max_connections = configured,
            used = allowed,
            "the process's open-file limit is low: fewer connections allowed than configured (raise it with `ulimit -n` or LimitNOFILE)"
        );
    }
    configured.min(allowed).max(1)
}

/// After a failed accept: a connection that died in the backlog is nothing; running out
/// of descriptors or memory gets a short pause so the loop does not spin, and a log line.
async fn pause_after_accept_error(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; pausing briefly");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A stream that fails with `TimedOut` once nothing has been read or written for
/// `limit`. Activity only stamps a time; the timer is re-armed when it fires early, so a
/// busy connection pays no timer update per read or write.
///
/// Hand-written because the timeouts hyper and tower-http offer each watch one thing
/// (headers, a body's frames); none ends a connection whose client stopped reading.
struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        let now = Instant::now();
        Self { inner, limit, last_activity: now, timer: Box::pin(tokio::time::sleep_until(now + limit)) }
    }

    /// Called when the inner stream is not ready: an error once the limit has passed
    /// since the last activity, else `Pending` with the timer armed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last_activity + self.limit;
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if self.last_activity + self.limit <= Instant::now() => {
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long"))
                }
                // Activity since the timer was armed: arm it again from that time.
                Poll::Ready(()) => continue,
            }
        }
    }

    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if moved(&n) {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        // End of stream counts as activity too: hyper then closes the connection itself.
        let moved = matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() >= before;
        self.track(cx, polled, |_| moved)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.track(cx, polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, polled, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, polled, |_| false)
    }
}
