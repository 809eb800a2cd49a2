//! Uploads (`POST /v2/uploads`): real image files sent as multipart bodies to the real
//! server, stored in the file system or in an S3-compatible bucket (moto_server), served
//! back by URL without a key, expired and reaped; and used as `image` / `end_image` of a
//! job, read by the engine from storage with the SSRF guard closed to loopback.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use service::config::ResultsBackend;
use service::results::testkit::TestS3;
use service::Config;

use crate::helpers::{eventually, ReferenceSpec, Reply, TestApp, TestKey};

const WITHIN: Duration = Duration::from_secs(30);

/// Where the app under test keeps uploads.
#[derive(Clone, Copy, Debug)]
enum Storage {
    Fs,
    S3,
}

/// The app and, on S3, its server and bucket.
struct Setup {
    app: TestApp,
    s3: Option<(TestS3, String)>,
}

impl Setup {
    /// Starts the engine (uploads live in its result store) on `storage`, after `tweak`.
    /// `None` when S3 is wanted but skipped (`REELGATE_SKIP_S3=1`).
    async fn start(storage: Storage, test: &str, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Option<Self> {
        let s3 = match storage {
            Storage::Fs => None,
            Storage::S3 => {
                let s3 = TestS3::get(test).await?;
                let bucket = s3.create_bucket().await;
                Some((s3, bucket))
            }
        };
        let s3_config = s3.as_ref().map(|(s3, bucket)| s3.config(bucket));
        let app = TestApp::spawn_engine(move |c, _| {
            if let Some(config) = s3_config {
                c.results.backend = ResultsBackend::S3;
                c.results.s3 = config;
            }
            tweak(c);
        })
        .await;
        Some(Self { app, s3 })
    }

    /// How many uploads (and jobs' copies of them) storage holds.
    async fn stored_uploads(&self) -> usize {
        match &self.s3 {
            Some((s3, bucket)) => {
                s3.object_count_under(bucket, "results/uploads/").await
                    + s3.object_count_under(bucket, "results/inputs/").await
            }
            None => match std::fs::read_dir(self.app.config.results_dir()) {
                Ok(dir) => dir
                    .filter(|e| {
                        let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
                        name.starts_with("upload-") || name.starts_with("input-")
                    })
                    .count(),
                Err(_) => 0,
            },
        }
    }
}

// ----- files -----

/// A smooth test picture on 0..1 coordinates, so any size shows the same content
/// (the renderer's tests use the same idea).
fn pattern(w: u32, h: u32, variant: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = ((f64::from(x) + 0.5) / f64::from(w), (f64::from(y) + 0.5) / f64::from(h));
        let px = match variant {
            0 => [u * 255.0, v * 255.0, (1.0 - u) * 200.0 + 30.0],
            _ => [(1.0 - v) * 230.0, 40.0 + u * 100.0, v * 255.0],
        };
        image::Rgb(px.map(|c| c.round() as u8))
    })
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png(w: u32, h: u32, variant: u32) -> Vec<u8> {
    encode(&pattern(w, h, variant), image::ImageFormat::Png)
}

/// A PNG of noise, which does not compress: about 3 bytes a pixel.
fn noisy_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(2_246_822_519)).wrapping_mul(3_266_489_917);
        image::Rgb([(n >> 8) as u8, (n >> 16) as u8, (n >> 24) as u8])
    });
    encode(&img, image::ImageFormat::Png)
}

/// A real GIF: 1x1, one palette entry (the classic smallest GIF).
fn gif() -> Vec<u8> {
    let mut g = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00".to_vec();
    g.extend_from_slice(b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;");
    g
}

/// A real MP4, made by the renderer the sandbox uses.
fn mp4() -> Vec<u8> {
    let req = render::RenderRequest {
        width: 64,
        height: 48,
        seconds: 1,
        prompt: "a clip".into(),
        first_frame: None,
        last_frame: None,
    };
    render::render_mp4_to_vec(&req).unwrap()
}

/// A real WAV: a tenth of a second of 8 kHz, 16-bit mono silence.
fn wav() -> Vec<u8> {
    let samples = 800u32;
    let data = samples * 2;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(w.len() + data as usize, 0);
    w
}

// ----- requests -----

const BOUNDARY: &str = "reelgate-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body of `(field name, file name, declared type, bytes)` parts.
fn multipart(parts: &[(&str, &str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n").as_bytes(),
        );
        body.extend_from_slice(format!("Content-Type: {content_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Posts `body` to /v2/uploads and checks the answer against the reference spec.
async fn post_upload(app: &TestApp, key: &TestKey, body: reqwest::Body, idem: Option<&str>) -> Reply {
    let mut req = app
        .http
        .post(app.url("/v2/uploads"))
        .header("X-API-Key", &key.key)
        .header("Content-Type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body);
    if let Some(idem) = idem {
        req = req.header("Idempotency-Key", idem);
    }
    let resp = req.send().await.expect("request sent");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
    ReferenceSpec::get().check("POST", "/v2/uploads", status.as_u16(), &body);
    Reply { status, headers, body }
}

/// Uploads one file as part `file` (declared as a PNG whatever it is: the server must
/// look at the bytes).
async fn upload(app: &TestApp, key: &TestKey, bytes: &[u8]) -> Reply {
    post_upload(app, key, multipart(&[("file", "picture.png", "image/png", bytes)]).into(), None).await
}

/// Uploads a file that must be accepted; returns the 201 body.
async fn uploaded(app: &TestApp, key: &TestKey, bytes: &[u8]) -> Value {
    let r = upload(app, key, bytes).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

fn refusal(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let details = r.body["details"]["file"].as_array().unwrap_or_else(|| panic!("no details.file: {}", r.body));
    details.iter().map(|d| d.as_str().unwrap()).collect::<Vec<_>>().join("; ")
}

// ----- accepting and refusing -----

async fn accepts_hailuo_images_and_refuses_the_rest(storage: Storage, test: &str) {
    let Some(setup) = Setup::start(storage, test, |_| {}).await else { return };
    let app = &setup.app;
    let key = app.create_key(0).await;
    let jpeg = encode(&pattern(640, 480, 0), image::ImageFormat::Jpeg);
    let webp = encode(&pattern(360, 640, 1), image::ImageFormat::WebP);
    let accepted = [("image/png", png(640, 360, 0)), ("image/jpeg", jpeg), ("image/webp", webp)];
    for (content_type, bytes) in &accepted {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let body = uploaded(app, &key, bytes).await;
        assert_eq!(body["kind"], "image");
        assert_eq!(body["contentType"], *content_type, "decided from the bytes, not the declared image/png");
        assert_eq!(body["byteSize"], bytes.len());
        let url = body["url"].as_str().unwrap();
        let id = body["id"].as_str().unwrap();
        assert!(url.starts_with(&app.url(&format!("/v2/uploads/{id}/"))), "{url}");
        let expires = time::OffsetDateTime::parse(
            body["expiresAt"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ttl_ms = (expires.unix_timestamp_nanos() / 1_000_000) as i64 - before;
        assert!((7_199_000..=7_201_000).contains(&ttl_ms), "expires after uploads.ttl_secs: {ttl_ms} ms");

        // Fetchable without a key, whole and by range.
        let whole = app.http.get(url).send().await.unwrap();
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.headers()["content-type"], *content_type);
        assert_eq!(whole.headers()["content-length"], bytes.len().to_string().as_str());
        assert!(whole.bytes().await.unwrap() == bytes.as_slice(), "the same bytes");
        let part = app.http.get(url).header("Range", "bytes=10-109").send().await.unwrap();
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()["content-range"], format!("bytes 10-109/{}", bytes.len()).as_str());
        assert!(part.bytes().await.unwrap() == bytes[10..110]);
        let outside = app.http.get(url).header("Range", format!("bytes={}-", bytes.len())).send().await.unwrap();
        assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        // A wrong token opens nothing.
        let forged = format!("{}/{}.png", &url[..url.rfind('/').unwrap()], "0".repeat(32));
        assert_eq!(app.http.get(&forged).send().await.unwrap().status(), 404);
    }
    assert_eq!(setup.stored_uploads().await, 3);

    let images_only = "Hailuo takes JPEG, PNG or WebP images";
    // A good image whose file goes on past MiniMax's 20 MB (a decoder ignores what
    // follows the end of a PNG): the head passes, the size does not.
    let mut huge = png(640, 360, 0);
    huge.resize(20 * 1024 * 1024 + 1, 0);
    let refused: [(&str, Vec<u8>, &str); 7] = [
        ("over 20 MB", huge, "must be smaller than 20971520 bytes"),
        ("GIF", gif(), images_only),
        ("MP4", mp4(), images_only),
        ("WAV", wav(), images_only),
        ("200 px", png(200, 200, 0), "short side must be over 300 pixels"),
        ("1:4", png(400, 1600, 0), "aspect ratio must be between 2:5 and 5:2"),
        ("empty", Vec::new(), "The file is empty"),
    ];
    for (what, bytes, message) in &refused {
        let details = refusal(&upload(app, &key, bytes).await);
        assert!(details.contains(message), "{what}: {details}");
    }
    let none = post_upload(app, &key, multipart(&[("note", "a.txt", "text/plain", b"hello")]).into(), None).await;
    assert!(refusal(&none).contains("`file` part is required"), "{}", none.body);
    let png_bytes = png(640, 360, 0);
    let two = multipart(&[("file", "a.png", "image/png", &png_bytes), ("file", "b.png", "image/png", &png_bytes)]);
    let two = post_upload(app, &key, two.into(), None).await;
    assert!(refusal(&two).contains("exactly one file"), "{}", two.body);
    assert_eq!(setup.stored_uploads().await, 3, "nothing refused was kept");
    if let Some((s3, bucket)) = &setup.s3 {
        eventually(WITHIN, || async { s3.multipart_uploads(bucket).await == 0 }).await;
    }

    // No key, no upload.
    let anonymous = app.http.post(app.url("/v2/uploads")).body(multipart(&[])).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    setup.app.stop().await.unwrap();
}

#[tokio::test]
async fn uploads_on_the_file_system_accept_hailuo_images_and_refuse_the_rest() {
    accepts_hailuo_images_and_refuses_the_rest(Storage::Fs, "uploads_on_the_file_system_accept_hailuo_images").await;
}

#[tokio::test]
async fn uploads_in_s3_accept_hailuo_images_and_refuse_the_rest() {
    accepts_hailuo_images_and_refuses_the_rest(Storage::S3, "uploads_in_s3_accept_hailuo_images").await;
}

#[tokio::test]
async fn an_upload_over_the_limit_gets_a_json_413_while_the_client_is_still_sending() {
    let Some(setup) = Setup::start(Storage::Fs, "upload_413", |c| c.limits.max_upload_bytes = 64 * 1024).await else {
        return;
    };
    let app = &setup.app;
    let key = app.create_key(0).await;
    // A valid image larger than the JSON body limit (1 MiB), sent in 16 KiB chunks with
    // pauses and no Content-Length: the server sees the limit pass while the client
    // still writes, and the client still reads the JSON answer.
    let big = multipart(&[("file", "big.png", "image/png", &noisy_png(800, 600))]);
    assert!(big.len() > app.config.limits.max_body_bytes, "{}", big.len());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::StreamExt::then(futures_util::stream::iter(chunks), |chunk| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        chunk
    });
    let r = post_upload(app, &key, reqwest::Body::wrap_stream(stream), None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("65536"), "{}", r.body);

    // Declared up front: refused from the header.
    let r = post_upload(app, &key, big.clone().into(), None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(setup.stored_uploads().await, 0, "nothing was kept");

    // The upload limit is apart from the JSON one: under a larger upload limit the same
    // body, over 1 MiB, is stored.
    let app = setup
        .app
        .restart(|c, _| {
            crate::helpers::fast_engine(c);
            c.limits.max_upload_bytes = 4 * 1024 * 1024;
        })
        .await;
    let r = post_upload(&app, &key, big.into(), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    app.stop().await.unwrap();
}

// ----- expiry and idempotency -----

async fn expire_and_reap(storage: Storage) {
    let test = format!("uploads_expire_and_are_reaped_{storage:?}");
    let Some(setup) = Setup::start(storage, &test, |c| {
        c.uploads.ttl_secs = 1;
        c.uploads.reap_interval_ms = 100;
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    let key = app.create_key(0).await;
    let body = uploaded(app, &key, &png(640, 360, 0)).await;
    let url = body["url"].as_str().unwrap();
    let id: domain::UploadId = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.http.get(url).send().await.unwrap().status(), 200);
    assert_eq!(setup.stored_uploads().await, 1);
    eventually(WITHIN, || async { app.http.get(url).send().await.unwrap().status() == 404 }).await;
    let gone = app.http.get(url).send().await.unwrap();
    assert_eq!(gone.headers()["content-type"], "application/json");
    // The reaper deletes the bytes and then the record.
    eventually(WITHIN, || async { app.store.get_upload(id).await.unwrap().is_none() }).await;
    assert_eq!(setup.stored_uploads().await, 0, "the bytes are gone from storage");
    setup.app.stop().await.unwrap();
}

#[tokio::test]
async fn uploads_on_the_file_system_expire_and_are_reaped() {
    expire_and_reap(Storage::Fs).await;
}

#[tokio::test]
async fn uploads_in_s3_expire_and_are_reaped() {
    expire_and_reap(Storage::S3).await;
}

#[tokio::test]
async fn an_idempotent_upload_retry_returns_the_same_upload_and_other_bytes_conflict() {
    let Some(setup) = Setup::start(Storage::Fs, "upload_idempotency", |_| {}).await else { return };
    let app = &setup.app;
    let key = app.create_key(0).await;
    let other_account = app.create_key(0).await;
    let first_png = png(640, 360, 0);
    let body = || multipart(&[("file", "a.png", "image/png", &first_png)]).into();
    let first = post_upload(app, &key, body(), Some("upload-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let retry = post_upload(app, &key, body(), Some("upload-1")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body, first.body, "the same upload");
    assert_eq!(retry.headers["idempotent-replayed"], "true");

    let other = multipart(&[("file", "b.png", "image/png", &png(640, 360, 1))]).into();
    let conflict = post_upload(app, &key, other, Some("upload-1")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.body);
    assert!(conflict.body["error"].as_str().unwrap().contains("Idempotency-Key"), "{}", conflict.body);

    // Keys belong to an account: another account's same key is a new upload.
    let theirs = post_upload(app, &other_account, body(), Some("upload-1")).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.body);
    assert_ne!(theirs.body["id"], first.body["id"]);
    assert_eq!(setup.stored_uploads().await, 2, "retries and conflicts keep no bytes");
    setup.app.stop().await.unwrap();
}

// ----- using uploads in jobs -----

/// Frame `n` of an MP4 decoded by FFmpeg, as RGB8, or `None` without FFmpeg.
fn frame_rgb(video: &[u8], n: u32, width: u32, height: u32) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.mp4");
    std::fs::write(&path, video).unwrap();
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-vf", &format!("select=eq(n\\,{n})"), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .ok()?;
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), (width * height * 3) as usize, "frame {n}");
    Some(out.stdout)
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / a.len() as f64
}

/// Width and height from the first `tkhd` box of an MP4 (16.16 fixed point).
fn mp4_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let at = bytes.windows(4).position(|w| w == b"tkhd")? + 4;
    let field = |o: usize| u32::from_be_bytes(bytes[at + o..at + o + 4].try_into().unwrap()) >> 16;
    Some((field(76), field(80)))
}

async fn start_and_end_images(storage: Storage) {
    let test = format!("uploaded_images_start_and_end_a_video_{storage:?}");
    // The guard stays closed to loopback: an upload fetched over HTTP would fail the job.
    let Some(setup) = Setup::start(storage, &test, |c| c.engine.allow_private_urls = false).await else {
        return;
    };
    let app = &setup.app;
    let key = app.create_key(1000).await;
    let first = uploaded(app, &key, &png(640, 360, 0)).await;
    let last = uploaded(app, &key, &encode(&pattern(640, 360, 1), image::ImageFormat::Jpeg)).await;
    let request = json!({"model": "hailuo-02", "prompt": "a slow dissolve",
                         "hailuoParams": {"image": first["url"], "end_image": last["url"], "duration": 6}});
    let id = app.submit(&key, &request).await;
    let job = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["input"], request, "the job's input echoes what was sent");
    let video = app.http.get(job["result"]["videoUrl"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    let (w, h) = mp4_size(&video).unwrap();
    assert_eq!((w, h), (1366, 768), "the output keeps the uploaded image's aspect ratio");
    let expected = |variant| pattern(w, h, variant).into_raw();
    match (frame_rgb(&video, 0, w, h), frame_rgb(&video, 143, w, h)) {
        (Some(start), Some(end)) => {
            let (start, end) = (mean_abs_diff(&start, &expected(0)), mean_abs_diff(&end, &expected(1)));
            eprintln!("{test}: mean abs diff {start:.3} at the start, {end:.3} at the end");
            assert!(mean_abs_diff(&expected(0), &expected(1)) > 40.0, "the two test images differ");
            assert!(start < 4.0, "starts on the uploaded image (mean abs diff {start:.2})");
            assert!(end < 6.0, "ends on the uploaded end image (mean abs diff {end:.2})");
        }
        _ => {
            assert!(
                std::env::var("REELGATE_REQUIRE_FFMPEG").as_deref() != Ok("1"),
                "ffmpeg not installed, and REELGATE_REQUIRE_FFMPEG=1"
            );
            eprintln!("{test}: ffmpeg not installed; checked the video's size only");
        }
    }
    // The job's copies of the uploads are gone once MiniMax has the images; the uploads stay.
    eventually(WITHIN, || async { setup.stored_uploads().await == 2 }).await;
    let ledger = app.store.ledger(key.account_id).await.unwrap();
    assert_eq!(ledger.iter().filter(|e| e.kind == store::LedgerKind::Refund).count(), 0);
    setup.app.stop().await.unwrap();
}

#[tokio::test]
async fn uploaded_images_on_the_file_system_start_and_end_a_hailuo_02_video() {
    start_and_end_images(Storage::Fs).await;
}

#[tokio::test]
async fn uploaded_images_in_s3_start_and_end_a_hailuo_02_video() {
    start_and_end_images(Storage::S3).await;
}

#[tokio::test]
async fn unknown_foreign_or_expired_upload_urls_are_refused_before_any_charge() {
    let Some(setup) = Setup::start(Storage::Fs, "upload_refusals", |c| {
        c.uploads.ttl_secs = 1;
        c.uploads.reap_interval_ms = 3_600_000;
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    let key = app.create_key(100).await;
    let other = app.create_key(100).await;
    let theirs = uploaded(app, &other, &png(640, 360, 0)).await;
    let mine = uploaded(app, &key, &png(640, 360, 0)).await;
    let mine_url = mine["url"].as_str().unwrap().to_string();
    let unknown = format!("{}/v2/uploads/{}/{}.png", app.url(""), uuid::Uuid::now_v7(), "ab".repeat(16));
    let forged = format!("{}/{}.png", &mine_url[..mine_url.rfind('/').unwrap()], "cd".repeat(16));
    let cases = [
        ("image", unknown.clone()),
        ("image", forged),
        ("image", theirs["url"].as_str().unwrap().to_string()),
        ("end_image", unknown),
    ];
    for (field, url) in &cases {
        let mut params = json!({"image": mine_url});
        params[*field] = json!(url);
        let r = app.generate(&key, &json!({"model": "hailuo-02", "prompt": "x", "hailuoParams": params})).await;
        assert_eq!(r.status, 400, "{field} {url}: {}", r.body);
        let detail = &r.body["details"][format!("hailuoParams.{field}")];
        assert!(detail[0].as_str().unwrap().contains("No such upload"), "{}", r.body);
    }
    // Once expired (not yet reaped), the same URL is refused too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r =
        app.generate(&key, &json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": mine_url}})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["details"]["hailuoParams.image"][0].as_str().unwrap().contains("expired"), "{}", r.body);

    assert_eq!(app.all_job_ids(&key).await.len(), 0, "no job");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100), "nothing charged");
    assert_eq!(setup.stored_uploads().await, 2, "no copies left behind");
    setup.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_whose_upload_expires_after_acceptance_still_completes() {
    let Some(setup) = Setup::start(Storage::Fs, "upload_expires_after_acceptance", |c| {
        c.uploads.ttl_secs = 1;
        c.uploads.reap_interval_ms = 100;
        c.minimax.sandbox_latency_ms = 3000;
        c.engine.allow_private_urls = false;
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    // One job at a time for this account, so the second waits in its queue.
    let secret = domain::ApiKeySecret::generate();
    let (account, record) = app
        .store
        .create_api_key(store::NewApiKey {
            account_id: None,
            name: "one at a time".into(),
            email: "test@reelgate.local".into(),
            prefix: secret.prefix.clone(),
            digest: secret.digest,
            initial_credits: 100,
            plan: "self-hosted".into(),
            max_concurrent_jobs: 1,
        })
        .await
        .unwrap();
    let key = TestKey { key: secret.plaintext, key_id: record.id, account_id: account.id };
    let upload = uploaded(app, &key, &png(640, 360, 0)).await;
    let upload_id: domain::UploadId = upload["id"].as_str().unwrap().parse().unwrap();
    let blocker = app.submit(&key, &crate::helpers::video("hailuo-2.3", "first in line")).await;
    let waiting = app
        .submit(&key, &json!({"model": "hailuo-2.3", "prompt": "second", "hailuoParams": {"image": upload["url"]}}))
        .await;
    // The upload expires and is reaped while the job still waits for its turn.
    eventually(WITHIN, || async { app.store.get_upload(upload_id).await.unwrap().is_none() }).await;
    assert_eq!(app.http.get(upload["url"].as_str().unwrap()).send().await.unwrap().status(), 404);
    assert_eq!(app.get_job(&key, &waiting).await.body["status"], "QUEUED", "reaped before the engine took the job");
    assert_eq!(app.wait_terminal(&key, &blocker, WITHIN).await["status"], "COMPLETED");
    let job = app.wait_terminal(&key, &waiting, WITHIN).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    eventually(WITHIN, || async { setup.stored_uploads().await == 0 }).await;
    setup.app.stop().await.unwrap();
}

#[tokio::test]
async fn an_upload_that_trickles_in_gets_a_408_at_its_deadline_and_leaves_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(setup) = Setup::start(Storage::Fs, "upload_deadline", |c| {
        c.server.body_read_timeout_ms = 5_000;
        c.uploads.body_deadline_ms = 1_500;
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    let key = app.create_key(0).await;
    // A good image's start, so the file is being stored when the deadline comes.
    let body = multipart(&[("file", "slow.png", "image/png", &noisy_png(600, 600))]);
    assert!(body.len() / 2 > 256 * 1024, "more than the head the server probes arrives");
    let first = &body[..body.len() / 2];
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v2/uploads HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        key.key,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    // Then one byte every 200 ms: never a gap as long as the body timeout.
    let trickle = async {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let answer = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    let answer = tokio::select! {
        answer = answer => answer,
        () = trickle => panic!("no answer while the upload trickled for 20 s"),
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(setup.stored_uploads().await, 0, "the half-stored file was dropped");
    assert_eq!(
        std::fs::read_dir(app.config.results_dir()).map(|d| d.count()).unwrap_or(0),
        0,
        "no temporary file either"
    );
    setup.app.stop().await.unwrap();
}

// ----- a node without the engine -----

/// The path of `url` (scheme, host and port dropped), to ask another node for it.
fn path_of(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    parsed.path().to_string()
}

/// A node whose engine is off serves a completed job's `videoUrl` and takes uploads
/// instead of answering 503: the result store and the URL signer belong to the app, not
/// to the engine. On PostgreSQL a second node joins the same database (and the same
/// result directory, as a shared volume would be); on SQLite, where one server owns its
/// data directory, the same node comes back with its engine off.
#[tokio::test]
async fn a_node_without_the_engine_serves_results_and_takes_uploads() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &crate::helpers::video("hailuo-2.3", "served by another node")).await;
    let done = app.wait_terminal(&key, &id, WITHIN).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let video_path = path_of(done["result"]["videoUrl"].as_str().unwrap());

    let mut config = app.config.clone();
    config.engine.enabled = false;
    let (base, other, app) = if app.data().database_url().is_some() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let node = tokio::spawn(service::run(config, listener, async move {
            let _ = stopped.await;
        }));
        eventually(Duration::from_secs(10), || async {
            reqwest::get(format!("http://{addr}/healthz")).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        (format!("http://{addr}"), Some((stop, node)), app)
    } else {
        let app = app.restart(|c, _| c.engine.enabled = false).await;
        (format!("http://{}", app.addr), None, app)
    };

    let video = reqwest::get(format!("{base}{video_path}")).await.unwrap();
    assert_eq!(video.status(), StatusCode::OK);
    let bytes = video.bytes().await.unwrap();
    assert_eq!(bytes.get(4..8), Some(&b"ftyp"[..]), "an MP4 file");

    let created = app
        .http
        .post(format!("{base}/v2/uploads"))
        .header("X-API-Key", &key.key)
        .header("Content-Type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(multipart(&[("file", "picture.png", "image/png", &png(640, 480, 1))]))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    let url = body["url"].as_str().unwrap();
    assert!(url.starts_with(&base), "the upload URL is the node's own: {url}");
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap().len(), png(640, 480, 1).len());

    if let Some((stop, node)) = other {
        let _ = stop.send(());
        node.await.unwrap().unwrap();
    }
    app.stop().await.unwrap();
}
