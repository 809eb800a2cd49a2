//! Result videos as objects in an S3-compatible bucket (`results.backend = "s3"`), under
//! `<prefix><job id>.mp4`, uploads under `<prefix>uploads/<upload id>` and jobs' copies
//! of them under `<prefix>inputs/<job id>/<field>`, through the `object_store` crate.
//!
//! Writes are multipart uploads in [`PART_SIZE`] parts, at most [`PARTS_IN_FLIGHT`] of
//! them uploading at once, so a download holds a few parts in memory, never the whole
//! video. S3 shows an object only once its upload is completed, so a half-copied video is
//! never visible; an upload that is dropped or fails is aborted, which frees its parts.
//! Reads are one HEAD (the size and ETag) and then one ranged GET streamed to the client.
//!
//! This module owns the bucket's objects and presigning their URLs; it decides nothing
//! about HTTP answers or which URL a client is shown.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::JobId;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, UploadPart,
};
use secrecy::ExposeSecret;
use tokio::task::JoinSet;

use super::{Object, ResultBody, ResultStore, ResultStream, ResultWriter, StoredResult};
use crate::config::{check_prefix, is_loopback, S3Config, VideoUrls};

/// Size of each uploaded part but the last. S3 needs at least 5 MiB (except for the
/// last part) and allows 10,000 parts: 8 MiB parts take objects up to 78 GiB.
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once per result. Two keep the link busy while the next part
/// fills, and bound a writer's memory to about three parts.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Longest a metadata request or one part upload may take. object_store's default of
/// 30 s would fail an 8 MiB part on a link slower than about 2 Mbit/s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a connection to the bucket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The S3 result store.
#[derive(Debug)]
pub struct S3Results {
    /// Uploads, HEADs, deletes and signing, each bounded by [`REQUEST_TIMEOUT`].
    store: AmazonS3,
    /// Streaming GETs. These have no overall timeout: a video player reads a response
    /// at its own pace and may pause for minutes, and the response ends when it
    /// disconnects. A stall of the bucket mid-body is retried by object_store.
    reads: AmazonS3,
    prefix: String,
    /// How long presigned URLs stay valid, when clients are given those.
    presign: Option<Duration>,
}

impl S3Results {
    /// A store for the bucket `config` describes. Makes no request: a bucket that is
    /// missing or refuses the credentials shows up on the first result. `proxy` is
    /// `egress.proxy_url`.
    pub fn new(config: &S3Config, proxy: Option<&str>) -> std::io::Result<Self> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        check_prefix(&config.prefix).map_err(|why| invalid(format!("results.s3.prefix: {why}")))?;
        let bucket = config.bucket.as_deref().filter(|b| !b.is_empty()).ok_or_else(|| invalid("no bucket".into()))?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style);
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let mut allow_http = false;
        if let Some(endpoint) = &config.endpoint {
            let mut url = url::Url::parse(endpoint).map_err(|e| invalid(format!("results.s3.endpoint: {e}")))?;
            allow_http = url.scheme() == "http";
            if allow_http && !is_loopback(&url) {
                return Err(invalid("results.s3.endpoint: http is allowed for loopback hosts only".into()));
            }
            if !config.path_style {
                // object_store expects a virtual-hosted endpoint to name the bucket
                // already; the setting names the service, as other S3 tools' do.
                let host = url.host_str().ok_or_else(|| invalid("results.s3.endpoint has no host".into()))?;
                let host = format!("{bucket}.{host}");
                url.set_host(Some(&host)).map_err(|e| invalid(format!("results.s3.endpoint: {e}")))?;
            }
            builder = builder.with_endpoint(url.as_str().trim_end_matches('/'));
        }
        let options = ClientOptions::new().with_allow_http(allow_http).with_connect_timeout(CONNECT_TIMEOUT);
        let options = match proxy {
            Some(url) => options.with_proxy_url(url),
            // object_store's client follows the proxy variables unless it is given a
            // proxy, and has no switch for "none"; a proxy every host is excluded from
            // makes it connect directly, like every other client of ours (see `egress`).
            // `*` covers names only: addresses are excluded by the two whole networks.
            None => options.with_proxy_url("http://127.0.0.1:9").with_proxy_excludes("*,0.0.0.0/0,::/0"),
        };
        let build = |options: ClientOptions| builder.clone().with_client_options(options).build();
        let store = build(options.clone().with_timeout(REQUEST_TIMEOUT)).map_err(std::io::Error::other)?;
        let reads = build(options.with_timeout_disabled()).map_err(std::io::Error::other)?;
        let presign = (config.video_urls == VideoUrls::Presigned)
            .then(|| Duration::from_secs(config.presigned_url_ttl_secs.min(crate::config::MAX_PRESIGNED_URL_TTL_SECS)));
        Ok(Self { store, reads, prefix: config.prefix.clone(), presign })
    }

    /// The object key of `job`'s result.
    pub fn key(&self, job: JobId) -> Path {
        self.object_key(Object::Result(job))
    }

    /// The object key of `object`.
    pub fn object_key(&self, object: Object) -> Path {
        let name = match object {
            Object::Result(job) => format!("{}{job}.mp4", self.prefix),
            Object::Upload(id) => format!("{}uploads/{id}", self.prefix),
            Object::JobInput(job, field) => format!("{}inputs/{job}/{field}", self.prefix),
        };
        Path::parse(name).expect("the prefix was checked in new() and an id is hex digits and dashes")
    }
}

fn io_error(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => std::io::Error::new(std::io::ErrorKind::NotFound, e),
        e => std::io::Error::other(e),
    }
}

#[async_trait]
impl ResultStore for S3Results {
    async fn begin_object(&self, object: Object) -> std::io::Result<Box<dyn ResultWriter>> {
        let key = self.object_key(object);
        let upload = self.store.put_multipart(&key).await.map_err(io_error)?;
        Ok(Box::new(S3Writer { upload: Some(upload), part: Vec::new(), uploading: JoinSet::new(), written: 0, key }))
    }

    async fn open_object(&self, object: Object) -> std::io::Result<Option<StoredResult>> {
        let key = self.object_key(object);
        match self.store.head(&key).await {
            Ok(meta) => {
                let body = S3Body { store: self.reads.clone(), key, e_tag: meta.e_tag };
                Ok(Some(StoredResult::new(meta.size, Box::new(body))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn copy_object(&self, from: Object, to: Object) -> std::io::Result<bool> {
        match self.store.copy(&self.object_key(from), &self.object_key(to)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn delete_object(&self, object: Object) -> std::io::Result<()> {
        // S3 answers a delete of a missing key with success; other servers may say 404.
        match self.store.delete(&self.object_key(object)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn presigned_url(&self, job: JobId) -> std::io::Result<Option<String>> {
        let Some(valid_for) = self.presign else { return Ok(None) };
        // Signing is local computation with the configured keys: no request is made.
        let url = self.store.signed_url(reqwest::Method::GET, &self.key(job), valid_for).await.map_err(io_error)?;
        Ok(Some(url.into()))
    }
}

/// A multipart upload in progress.
struct S3Writer {
    /// `None` once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    /// The part being filled.
    part: Vec<u8>,
    /// Parts being uploaded.
    uploading: JoinSet<object_store::Result<()>>,
    written: u64,
    key: Path,
}

impl S3Writer {
    /// Starts uploading the filled part, after waiting for a free upload slot.
    async fn send_part(&mut self) -> std::io::Result<()> {
        while self.uploading.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let part = std::mem::take(&mut self.part);
        let upload = self.upload.as_mut().ok_or_else(|| std::io::Error::other("the upload has ended"))?;
        // Part numbers are assigned here, in call order, so uploading them concurrently
        // still assembles the object in order.
        let future: UploadPart = upload.put_part(PutPayload::from(Bytes::from(part)));
        self.uploading.spawn(future);
        Ok(())
    }

    async fn join_one(&mut self) -> std::io::Result<()> {
        match self.uploading.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(io_error(e)),
            Some(Err(join)) => Err(std::io::Error::other(join)),
        }
    }

    async fn complete(&mut self) -> std::io::Result<()> {
        // An empty result sends no part; object_store completes it with an empty one.
        if !self.part.is_empty() {
            self.send_part().await?;
        }
        while !self.uploading.is_empty() {
            self.join_one().await?;
        }
        let upload = self.upload.as_mut().ok_or_else(|| std::io::Error::other("the upload has ended"))?;
        upload.complete().await.map_err(io_error)?;
        self.upload = None;
        Ok(())
    }
}

#[async_trait]
impl ResultWriter for S3Writer {
    async fn write(&mut self, mut chunk: &[u8]) -> std::io::Result<()> {
        while !chunk.is_empty() {
            if self.part.capacity() == 0 {
                // One allocation per part, made when the part's first byte arrives, so
                // a writer holds no idle buffer before its first write or after a part
                // it has handed to the upload.
                self.part.reserve_exact(PART_SIZE);
            }
            let take = chunk.len().min(PART_SIZE - self.part.len());
            self.part.extend_from_slice(&chunk[..take]);
            self.written += take as u64;
            chunk = &chunk[take..];
            if self.part.len() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> std::io::Result<u64> {
        // On failure `self` drops here, which aborts the upload.
        self.complete().await?;
        tracing::debug!(s3.key = %self.key, bytes = self.written, "result uploaded");
        Ok(self.written)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else { return };
        // Parts still uploading are cancelled (dropping a JoinSet aborts its tasks);
        // the abort then deletes the parts that arrived. Without it they would stay
        // in the bucket, invisible but billed, until a lifecycle rule removed them.
        self.uploading.abort_all();
        let key = self.key.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(s3.key = %key, error = %e, "could not abort an unfinished result upload");
                    }
                });
            }
            Err(_) => tracing::warn!(s3.key = %key, "unfinished result upload left to the bucket's lifecycle rules"),
        }
    }
}

/// An object opened for one ranged read.
struct S3Body {
    store: AmazonS3,
    key: Path,
    /// The version that was measured; a GET of another version fails instead of
    /// serving bytes that do not match the announced length.
    e_tag: Option<String>,
}

#[async_trait]
impl ResultBody for S3Body {
    async fn read(self: Box<Self>, range: Range<u64>) -> std::io::Result<ResultStream> {
        let options = GetOptions { range: Some(GetRange::Bounded(range)), if_match: self.e_tag, ..Default::default() };
        let result = self.store.get_opts(&self.key, options).await.map_err(io_error)?;
        Ok(result.into_stream().map_err(io_error).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testkit::TestS3;

    /// Reads `range` of `job`'s result whole.
    async fn read(results: &S3Results, job: JobId, range: Range<u64>) -> Vec<u8> {
        let stored = results.open(job).await.unwrap().expect("the result exists");
        let chunks: Vec<Bytes> = stored.read(range).await.unwrap().try_collect().await.unwrap();
        chunks.concat()
    }

    /// Deterministic, non-repeating-looking bytes, so a misplaced part shows.
    fn data(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn a_multipart_result_round_trips_and_ranges_read_from_anywhere() {
        let Some(s3) = TestS3::get("a_multipart_result_round_trips_and_ranges_read_from_anywhere").await else {
            return;
        };
        let results = S3Results::new(&s3.config(&s3.create_bucket().await), None).unwrap();
        let job = JobId::new();
        let bytes = data(20 << 20); // three parts: 8 + 8 + 4 MiB
        let mut writer = results.begin(job).await.unwrap();
        // In uneven chunks, as a download delivers them.
        for chunk in bytes.chunks(1_000_003) {
            writer.write(chunk).await.unwrap();
        }
        assert!(results.open(job).await.unwrap().is_none(), "nothing is visible before finish");
        assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);

        let stored = results.open(job).await.unwrap().unwrap();
        assert_eq!(stored.len, bytes.len() as u64);
        assert!(read(&results, job, 0..bytes.len() as u64).await == bytes, "byte-identical round trip");
        let len = bytes.len() as u64;
        let part = PART_SIZE as u64;
        for range in [0..1, 100..200, part - 10..part + 10, len - 10..len, 2 * part..len] {
            let (s, e) = (range.start as usize, range.end as usize);
            assert!(read(&results, job, range.clone()).await == bytes[s..e], "range {range:?}");
        }
        let stored = results.open(job).await.unwrap().unwrap();
        assert!(stored.read(0..len + 1).await.is_err(), "a range past the end is refused");
        let stored = results.open(job).await.unwrap().unwrap();
        assert_eq!(stored.read(5..5).await.unwrap().count().await, 0, "an empty range reads nothing");
    }

    #[tokio::test]
    async fn a_dropped_writer_leaves_nothing() {
        let Some(s3) = TestS3::get("a_dropped_writer_leaves_nothing").await else { return };
        let bucket = s3.create_bucket().await;
        let results = S3Results::new(&s3.config(&bucket), None).unwrap();
        let job = JobId::new();
        let mut writer = results.begin(job).await.unwrap();
        // More than a part, so one has been uploaded when the writer goes away.
        writer.write(&data(PART_SIZE + 1000)).await.unwrap();
        assert_eq!(s3.multipart_uploads(&bucket).await, 1, "the upload is under way");
        drop(writer);
        assert!(results.open(job).await.unwrap().is_none());
        // The abort runs in the background; wait for it to remove the upload.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s3.multipart_uploads(&bucket).await > 0 {
            assert!(std::time::Instant::now() < deadline, "the upload was not aborted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(s3.object_count(&bucket).await, 0, "no object, no parts");

        // A later copy of the same job is unaffected.
        let mut writer = results.begin(job).await.unwrap();
        writer.write(b"complete").await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 8);
        assert_eq!(read(&results, job, 0..8).await, b"complete");
    }

    #[tokio::test]
    async fn delete_removes_the_object_and_tolerates_a_missing_one() {
        let Some(s3) = TestS3::get("delete_removes_the_object_and_tolerates_a_missing_one").await else { return };
        let bucket = s3.create_bucket().await;
        let results = S3Results::new(&s3.config(&bucket), None).unwrap();
        let job = JobId::new();
        let mut writer = results.begin(job).await.unwrap();
        writer.write(b"video").await.unwrap();
        writer.finish().await.unwrap();
        let opened = results.open(job).await.unwrap().unwrap();
        results.delete(job).await.unwrap();
        assert!(results.open(job).await.unwrap().is_none());
        let err = opened.read(0..5).await.err().expect("a read after the delete fails");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        results.delete(job).await.unwrap();
        results.delete(JobId::new()).await.unwrap();
        assert_eq!(s3.object_count(&bucket).await, 0);
    }

    #[tokio::test]
    async fn objects_are_named_by_prefix_and_presigned_urls_fetch_them() {
        let Some(s3) = TestS3::get("objects_are_named_by_prefix_and_presigned_urls_fetch_them").await else {
            return;
        };
        let bucket = s3.create_bucket().await;
        let mut config = s3.config(&bucket);
        config.prefix = "videos/2026/".into();
        let proxy = S3Results::new(&config, None).unwrap();
        config.video_urls = VideoUrls::Presigned;
        config.presigned_url_ttl_secs = 600;
        let presigned = S3Results::new(&config, None).unwrap();

        let job = JobId::new();
        let mut writer = presigned.begin(job).await.unwrap();
        writer.write(b"the video bytes").await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(presigned.key(job).as_ref(), format!("videos/2026/{job}.mp4"));
        assert_eq!(proxy.presigned_url(job).await.unwrap(), None, "proxy mode hands out no bucket URLs");

        let url = presigned.presigned_url(job).await.unwrap().expect("a presigned URL");
        assert!(url.starts_with(&format!("{}/{bucket}/videos/2026/{job}.mp4?", s3.endpoint)), "{url}");
        assert!(url.contains("X-Amz-Expires=600") && url.contains("X-Amz-Signature="), "{url}");
        let fetched = reqwest::get(&url).await.unwrap();
        assert_eq!(fetched.status(), 200);
        assert_eq!(fetched.bytes().await.unwrap(), &b"the video bytes"[..]);
    }

    #[test]
    fn prefixes_must_make_canonical_keys() {
        for good in ["", "results/", "a/b/", "clip-"] {
            assert!(check_prefix(good).is_ok(), "{good:?}");
        }
        for bad in ["/results/", "a//b/", "../x/", "./", "a\nb/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_virtual_hosted_endpoint_is_given_the_bucket_name() {
        let mut config = crate::Config::defaults().results.s3;
        config.bucket = Some("clips".into());
        config.endpoint = Some("https://s3.example.com".into());
        config.access_key_id = Some("id".into());
        config.secret_access_key = Some("secret".into());
        // Building succeeds for both styles; object_store would refuse http here.
        S3Results::new(&config, None).unwrap();
        config.path_style = true;
        S3Results::new(&config, None).unwrap();
        config.endpoint = Some("http://s3.example.com".into());
        assert!(S3Results::new(&config, None).is_err(), "plain http off loopback is refused");
    }
}
