//! The HTTP client side of `reelgate generate` and `reelgate jobs`: talks to any Apiframe
//! v2 server (ours or Apiframe's) over its public API, and nothing else.
//!
//! It owns the connection options shared by those commands ([`ClientArgs`]), the
//! requests themselves (uploads, generates, job reads), waiting for a job with a progress
//! display, downloading the result, and the mapping of every outcome to an exit code:
//! 0 completed, 1 the job failed, 2 usage or HTTP errors. It must not open the database
//! or use any of the server's code: it works against a remote server exactly as a
//! customer's program would.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// How often a read is tried while the network or the server (5xx other than 503)
/// fails: 7.5 s of backoff in all, enough to ride out a server restart.
const READ_ATTEMPTS: u32 = 5;
/// How many 429 answers to a generate are waited out before giving up.
const GENERATE_429_RETRIES: u32 = 5;
/// The longest `Retry-After` we honour; a server asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where the server is and who we are: shared by `generate` and `jobs`.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// Base URL of the Apiframe v2 server.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080", env = "APIFRAME_BASE_URL")]
    pub base_url: String,
    /// API key sent as X-API-Key.
    #[arg(long, global = true, env = "APIFRAME_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// How often a waiting command reads the job, in milliseconds (tests shorten it).
    #[arg(long, global = true, default_value_t = 1000, hide = true)]
    pub poll_interval_ms: u64,
}

/// Why a command stopped short of a result; every variant exits with 2.
#[derive(Debug)]
pub enum ClientError {
    /// The command line or a local file was not usable.
    Usage(String),
    /// The server answered with an error status; `message` is its `error` field.
    Api { status: StatusCode, message: String, details: Option<Value> },
    /// The server could not be reached, or its answer could not be read.
    Http(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Usage(m) => write!(f, "{m}"),
            ClientError::Http(m) => write!(f, "{m}"),
            ClientError::Api { status, message, details } => {
                write!(f, "{message} (HTTP {})", status.as_u16())?;
                // 400 lists every problem per JSON path; 402 says what was missing.
                if let Some(Value::Object(fields)) = details {
                    for (path, messages) in fields {
                        let list = match messages {
                            Value::Array(items) => {
                                items.iter().map(|m| m.as_str().unwrap_or("invalid")).collect::<Vec<_>>().join("; ")
                            }
                            other => other.to_string(),
                        };
                        write!(f, "\n  {path}: {list}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display stops at the outermost layer ("error sending request");
        // the cause (connection refused, timeout) is what a user can act on.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Http(text)
    }
}

/// Prints the error to stderr and gives exit code 2.
pub fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// A connection to one Apiframe v2 server with one key; clones share the connection pool.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
    poll_interval: Duration,
}

impl ApiClient {
    /// Checks the arguments and builds the client; a missing key is a usage error.
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let key = args
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ClientError::Usage("no API key: pass --api-key or set APIFRAME_API_KEY".into()))?;
        let base = args.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!("--base-url must be an http(s) URL, not {base:?}")));
        }
        // No overall timeout: uploads and downloads of large files take as long as they
        // take. A stalled connection is still caught by the read timeout.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("reelgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base, key, poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)) })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).header("X-API-Key", &self.key)
    }

    /// Uploads a local file to `POST /v2/uploads` and returns the URL the server hosts it at.
    pub async fn upload(&self, path: &Path) -> Result<String, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let len = file.metadata().await.map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?.len();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upload".into());
        // Streamed from disk in chunks: a 25 MB image is never held in memory whole. The
        // part's content type is left generic because the API sniffs the magic bytes and
        // ignores what the client declares.
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = reqwest::multipart::Part::stream_with_length(body, len).file_name(name);
        let form = reqwest::multipart::Form::new().part("file", part);
        let upload = match self.send(self.request(Method::POST, "/v2/uploads").multipart(form)).await {
            Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => {
                return Err(ClientError::Usage(format!(
                    "{} accepts no uploads (POST /v2/uploads: 404); pass the image as an http(s) or data: URL",
                    self.base
                )))
            }
            other => other?,
        };
        upload["url"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Http(format!("the upload answer has no url: {upload}")))
    }

    /// Submits a generate request and returns the new job's id.
    pub async fn generate(&self, body: &Value, idempotency_key: Option<&str>) -> Result<String, ClientError> {
        let mut req = self.request(Method::POST, "/v2/videos/generate").json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        // Sent again only after a 429: the rate limit answers before the body is read, so
        // nothing was charged. Any other failure is final, since retrying a generate that
        // may have been accepted could charge twice.
        let mut refusals = 0;
        let accepted = loop {
            let attempt = req.try_clone().expect("a JSON body can be cloned");
            let resp = attempt.send().await?;
            if resp.status() == StatusCode::TOO_MANY_REQUESTS && refusals < GENERATE_429_RETRIES {
                refusals += 1;
                tokio::time::sleep(retry_after(resp.headers()).unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
            break read_body(resp).await?;
        };
        accepted["jobId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Http(format!("the generate answer has no jobId: {accepted}")))
    }

    /// `GET /v2/jobs/{id}`.
    pub async fn get_job(&self, id: &str) -> Result<Value, ClientError> {
        self.read(&format!("/v2/jobs/{id}"), &[]).await
    }

    /// One page of `GET /v2/jobs`.
    pub async fn list_jobs(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.read("/v2/jobs", query).await
    }

    /// A GET that is safe to repeat: retried on network errors and 5xx a few times, and
    /// after `Retry-After` on 429 and 503, however often the server asks.
    async fn read(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let mut failures = 0;
        loop {
            let req = self.request(Method::GET, path).query(query);
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(retry_after(resp.headers()).unwrap_or(self.poll_interval)).await;
                        continue;
                    }
                    if status.is_server_error() && failures + 1 < READ_ATTEMPTS {
                        failures += 1;
                        tokio::time::sleep(backoff(failures)).await;
                        continue;
                    }
                    return read_body(resp).await;
                }
                Err(_) if failures + 1 < READ_ATTEMPTS => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a request that must not be repeated blindly and reads its JSON answer.
    async fn send(&self, req: RequestBuilder) -> Result<Value, ClientError> {
        read_body(req.send().await?).await
    }

    /// Reads the job until it is COMPLETED, FAILED or CANCELLED, showing its progress
    /// on stderr, and returns its last state.
    pub async fn wait(&self, id: &str) -> Result<Value, ClientError> {
        let mut progress = Progress::new(id);
        loop {
            let job = self.get_job(id).await?;
            let status = job["status"].as_str().unwrap_or("UNKNOWN");
            let percent = job["progress"].as_u64().unwrap_or(0).min(100);
            progress.update(status, percent);
            if matches!(status, "COMPLETED" | "FAILED" | "CANCELLED") {
                progress.finish();
                return Ok(job);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Downloads `url` to `out` through a temporary file beside it, renamed into place
    /// once whole, so `out` never exists half-written.
    pub async fn download(&self, url: &str, out: &Path) -> Result<(), ClientError> {
        // Result URLs carry their own token (reelgate) or are public CDN links (Apiframe);
        // the API key is not sent to what may be another host.
        let mut resp = self.http.get(url).send().await?;
        if !resp.status().is_success() {
            return Err(ClientError::Http(format!("downloading {url}: HTTP {}", resp.status().as_u16())));
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |e: std::io::Error| ClientError::Usage(format!("cannot write {}: {e}", out.display()));
        let mut builder = tempfile::Builder::new();
        builder.prefix(".reelgate-").suffix(".part");
        // A temporary file is private (0600) by default; the video is an ordinary file,
        // readable as the user's umask allows, like any other download.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let temp = builder.tempfile_in(&dir).map_err(io)?;
        let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(io)?);
        while let Some(chunk) = resp.chunk().await? {
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        temp.persist(out).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// The JSON body of a success, or the API's error as a [`ClientError`].
async fn read_body(resp: reqwest::Response) -> Result<Value, ClientError> {
    let status = resp.status();
    let text = resp.text().await?;
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return body.ok_or_else(|| ClientError::Http(format!("HTTP {}: the answer is not JSON", status.as_u16())));
    }
    let message = body
        .as_ref()
        .and_then(|b| b["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let details = body.and_then(|mut b| match b.get("details") {
        Some(_) => Some(b["details"].take()),
        // 402 carries its numbers at the top level.
        None if status == StatusCode::PAYMENT_REQUIRED => {
            let mut extra = b.as_object_mut().map(std::mem::take).unwrap_or_default();
            extra.remove("error");
            Some(Value::Object(extra.into_iter().map(|(k, v)| (k, Value::Array(vec![v.to_string().into()]))).collect()))
        }
        None => None,
    });
    Err(ClientError::Api { status, message, details })
}

/// `Retry-After` in seconds (the form our server and Apiframe's send), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.min(6)))
}

/// What the waiting user sees: an indicatif bar on a terminal, else one plain line per
/// change of status or percent (for logs and CI, where a redrawn bar is noise).
struct Progress {
    id: String,
    start: Instant,
    bar: Option<ProgressBar>,
    last: Option<(String, u64)>,
}

impl Progress {
    fn new(id: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg:10} [{bar:40}] {pos:>3}% {elapsed}")
                    .expect("the template is a constant and valid")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_some() {
            eprintln!("job {id}");
        }
        Self { id: id.to_string(), start: Instant::now(), bar, last: None }
    }

    fn update(&mut self, status: &str, percent: u64) {
        let now = (status.to_string(), percent);
        if self.last.as_ref() == Some(&now) {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_message(status.to_string());
                bar.set_position(percent);
            }
            None => {
                eprintln!("job {} {status} {percent}% {}s", self.id, self.start.elapsed().as_secs());
            }
        }
        self.last = Some(now);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// What the commands that wait do at the end: download a completed job to `out` (or
/// `<jobId>.mp4`) and print the path; print a failed job's error.
pub async fn wait_and_download(client: &ApiClient, id: &str, out: Option<PathBuf>) -> ExitCode {
    let job = match client.wait(id).await {
        Ok(job) => job,
        Err(e) => return fail(e),
    };
    match job["status"].as_str() {
        Some("COMPLETED") => {
            let Some(url) = job["result"]["videoUrl"].as_str() else {
                return fail(ClientError::Http(format!("job {id} is COMPLETED but has no result.videoUrl")));
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{id}.mp4")));
            if let Err(e) = client.download(url, &out).await {
                return fail(e);
            }
            println!("{}", out.display());
            ExitCode::SUCCESS
        }
        status => {
            let status = status.unwrap_or("UNKNOWN");
            let error = job["error"].as_str().unwrap_or("no error given");
            eprintln!("job {id} {status}: {error}");
            ExitCode::from(1)
        }
    }
}

/// Prints JSON on stdout, indented for people; scripts read it as well.
pub fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("a JSON value always serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn validation_details_are_listed_per_path() {
        let e = ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            message: "Invalid request".into(),
            details: Some(serde_json::json!({"hailuoParams.duration": ["Expected 6 or 10"]})),
        };
        assert_eq!(e.to_string(), "Invalid request (HTTP 400)\n  hailuoParams.duration: Expected 6 or 10");
    }
}
