//! The bench's load generator: a minimal HTTP/1.1 client holding one keep-alive
//! connection with one request in flight.
//!
//! It exists because the load generator shares the CPUs with the server it measures. A
//! general-purpose client (reqwest, hyper) spends about as much CPU per request as the
//! server's cheapest routes do, so on a small machine it would cap the measured
//! throughput at its own speed and flatten the ratio between the real and the bare
//! routes. This one writes pre-formatted request bytes and parses only what the bench
//! needs: the status code and `Content-Length`.
//!
//! `--client hyper` swaps in hyper's own HTTP/1.1 client for comparison: a
//! general-purpose client costs more CPU per request, which slows the bare baseline more
//! than the real routes, so ratios measured with it come out higher.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Initial read buffer; it grows if a response does not fit.
const INITIAL_BUFFER: usize = 16 * 1024;
/// A response head longer than this means something is wrong with the server.
const MAX_HEAD: usize = 16 * 1024;

/// Which load generator drives the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// The minimal client of this module.
    Lean,
    /// hyper's HTTP/1.1 client.
    Hyper,
}

/// One keep-alive connection, of either kind.
pub enum Connection {
    /// The minimal client.
    Lean(LeanConnection),
    /// hyper's client.
    Hyper(HyperConnection),
}

impl Connection {
    /// Connects to `addr` with Nagle's algorithm off, so small requests go out at once.
    pub async fn open(addr: SocketAddr, kind: ClientKind) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        Ok(match kind {
            ClientKind::Lean => Self::Lean(LeanConnection { stream, buf: vec![0; INITIAL_BUFFER], start: 0, end: 0 }),
            ClientKind::Hyper => Self::Hyper(HyperConnection::handshake(stream).await?),
        })
    }

    /// Sends one complete request (head and body) and reads its whole response.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<Response<'_>> {
        match self {
            Self::Lean(c) => c.send(request).await,
            Self::Hyper(c) => c.send(request).await,
        }
    }
}

/// hyper's client on one connection. The bench's requests are pre-formatted bytes, so
/// each is turned back into a `Request` (as a caller building one from parts would).
pub struct HyperConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<axum::body::Bytes>>,
    body: axum::body::Bytes,
}

impl HyperConnection {
    async fn handshake(stream: TcpStream) -> anyhow::Result<Self> {
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake failed")?;
        // The connection task ends when the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender, body: axum::body::Bytes::new() })
    }

    async fn send(&mut self, raw: &[u8]) -> anyhow::Result<Response<'_>> {
        use http_body_util::BodyExt;
        let request = to_request(raw)?;
        let response = self.sender.send_request(request).await.context("request failed")?;
        let status = response.status().as_u16();
        self.body = response.into_body().collect().await.context("cannot read a response")?.to_bytes();
        Ok(Response { status, body: &self.body })
    }
}

/// Rebuilds a `Request` from the bench's pre-formatted bytes.
fn to_request(raw: &[u8]) -> anyhow::Result<hyper::Request<http_body_util::Full<axum::body::Bytes>>> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("request without a blank line")?;
    let head = std::str::from_utf8(&raw[..split]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
    let mut builder = hyper::Request::builder().method(method).uri(path);
    for line in lines {
        let (name, value) = line.split_once(':').context("malformed header line")?;
        // hyper frames the body itself.
        if !name.eq_ignore_ascii_case("content-length") {
            builder = builder.header(name, value.trim());
        }
    }
    let body = axum::body::Bytes::copy_from_slice(&raw[split + 4..]);
    builder.body(http_body_util::Full::new(body)).context("cannot build a request")
}

/// The minimal client's connection.
pub struct LeanConnection {
    stream: TcpStream,
    /// Bytes read from the socket; `buf[start..end]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A response, borrowing its body from the connection's buffer until the next request.
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The body, exactly `Content-Length` bytes.
    pub body: &'a [u8],
}

/// What the status line and headers say.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes up to and including the blank line.
    len: usize,
    status: u16,
    content_length: usize,
}

impl LeanConnection {
    /// Sends one complete request (head and body) and reads its whole response.
    async fn send(&mut self, request: &[u8]) -> anyhow::Result<Response<'_>> {
        self.stream.write_all(request).await.context("cannot send a request")?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf[self.start..self.end])? {
                break head;
            }
            let unread = self.end - self.start;
            if unread > MAX_HEAD {
                bail!("response head is longer than {MAX_HEAD} bytes");
            }
            self.fill(unread + 1).await?;
        };
        let total = head.len + head.content_length;
        while self.end - self.start < total {
            self.fill(total).await?;
        }
        let body = self.start + head.len..self.start + total;
        self.start += total;
        if self.start == self.end {
            // The usual case with one request in flight: the next read starts at the front.
            self.start = 0;
            self.end = 0;
        }
        Ok(Response { status: head.status, body: &self.buf[body] })
    }

    /// Reads whatever the socket has, first making room for `needed` unread bytes.
    async fn fill(&mut self, needed: usize) -> anyhow::Result<()> {
        if self.start + needed > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if needed > self.buf.len() {
                self.buf.resize(needed, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await.context("cannot read a response")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.end += n;
        Ok(())
    }
}

/// Parses the status line and headers once the blank line has arrived; `None` until then.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(blank) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..blank]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("unexpected status line {status_line:?}"))?;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed header line {line:?}");
        };
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.trim().parse::<usize>().with_context(|| format!("bad Content-Length {value:?}"))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Every route measured answers with a body of known length; framing anything
            // else is not worth the code here.
            bail!("status {status}: Transfer-Encoding {:?} is not supported by the bench client", value.trim());
        }
    }
    let content_length = content_length.with_context(|| format!("status {status}: response has no Content-Length"))?;
    Ok(Some(Head { len: blank + 4, status, content_length }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_once_complete() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        assert_eq!(parse_head(&raw[..40]).unwrap(), None);
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head, Head { len: raw.len() - 7, status: 202, content_length: 12 });
    }

    #[test]
    fn unframed_or_garbled_responses_are_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").is_err());
    }
}
