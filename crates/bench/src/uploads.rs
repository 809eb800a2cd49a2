//! `reelgate bench uploads`: what concurrent large image uploads cost the server.
//!
//! It starts `reelgate serve` as a child process (file system result store, no jobs)
//! on a throwaway data directory, writes one PNG of random pixels just under MiniMax's
//! 20 MB limit, and uploads it `--uploads` times at once, each streamed from the file as
//! the `reelgate generate` client does. It reports the server's peak RSS
//! (`VmHWM`) before and after, the time, and checks every upload was accepted with the
//! full size. An upload server that buffered whole files would grow by about
//! uploads x size; a streaming one by its buffers only.
//!
//! Linux only (it reads `/proc`).

use std::time::Instant;

use anyhow::{ensure, Context};
use rand::RngCore;

use super::engine::{ChildProcess, Usage};

/// Options of `bench uploads`.
#[derive(clap::Args)]
pub struct UploadsArgs {
    /// Uploads sent at once.
    #[arg(long, default_value_t = 10)]
    pub uploads: usize,
    /// Side of the square PNG of random pixels, in pixels (2580: about 19.97 MB).
    #[arg(long, default_value_t = 2580)]
    pub side: u32,
}

/// Runs the measurement and prints the report.
pub async fn run(args: UploadsArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let data_dir = data_dir.display().to_string();
    let key = super::edge::create_key(&data_dir, 1000)?;
    let image = dir.path().join("noise.png");
    let bytes = write_noise_png(&image, args.side)?;
    let (mut server, addr) = ChildProcess::serve(
        &data_dir,
        &dir.path().join("serve.log"),
        // The engine stays on: uploads live in its result store. No job is submitted.
        &[("REELGATE_RATE_LIMITS__GENERATE_PER_SEC", "0")],
    )
    .await?;
    let client = Uploader { http: reqwest::Client::new(), url: format!("http://{addr}/v2/uploads"), key };

    // One upload first, reported apart: the server's first upload grows it by more than
    // later ones (blocking-pool threads and their allocator heaps are made once), and
    // that is not what concurrent uploads cost.
    let cold = Usage::of(server.pid())?;
    client.upload(&image).await.context("the first upload failed")?;
    let before = Usage::of(server.pid())?;
    let started = Instant::now();
    let uploads: Vec<_> = (0..args.uploads)
        .map(|_| {
            let (client, image) = (client.clone(), image.clone());
            tokio::spawn(async move { client.upload(&image).await })
        })
        .collect();
    let mut urls = Vec::new();
    for upload in uploads {
        urls.push(upload.await?.context("an upload failed")?);
    }
    let wall = started.elapsed().as_secs_f64();
    let after = Usage::of(server.pid())?;
    // The file system store keeps uploads as `results/upload-<id>`.
    let stored = std::fs::read_dir(std::path::Path::new(&data_dir).join("results"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
                .filter(|e| e.metadata().is_ok_and(|m| m.len() == bytes))
                .count()
        })
        .unwrap_or(0);
    let status = server.stop().await?;
    ensure!(status.success(), "reelgate serve exited with {status}");
    ensure!(stored > args.uploads, "only {stored} of {} uploads are stored with their full size", args.uploads + 1);

    let growth = after.peak_mib() - before.peak_mib();
    let first_growth = before.peak_mib() - cold.peak_mib();
    println!(
        "bench uploads: the server's first upload, alone: peak RSS {:.1} -> {:.1} MiB (+{first_growth:.1})",
        cold.peak_mib(),
        before.peak_mib()
    );
    println!(
        "bench uploads: {} x {:.2} MB PNG at once: all 201, {} stored whole; server peak RSS {:.1} -> {:.1} MiB (+{growth:.1}), CPU {:.2} s, wall {wall:.2} s",
        args.uploads,
        bytes as f64 / 1e6,
        stored - 1,
        before.peak_mib(),
        after.peak_mib(),
        after.cpu_secs - before.cpu_secs,
    );
    println!(
        "{}",
        serde_json::json!({"uploads": args.uploads, "file_bytes": bytes, "first_upload_growth_mib": first_growth,
            "peak_rss_before_mib": before.peak_mib(),
            "peak_rss_after_mib": after.peak_mib(), "peak_rss_growth_mib": growth, "wall_secs": wall})
    );
    Ok(())
}

/// Sends files to `POST /v2/uploads`.
#[derive(Clone)]
struct Uploader {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Uploader {
    /// Uploads `path`, streamed from disk in chunks (never held whole), and returns the
    /// upload's URL.
    async fn upload(&self, path: &std::path::Path) -> anyhow::Result<String> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = reqwest::multipart::Part::stream_with_length(body, len).file_name("noise.png");
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = self.http.post(&self.url).header("X-API-Key", &self.key).multipart(form).send().await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await?;
        ensure!(status == reqwest::StatusCode::CREATED, "POST /v2/uploads answered {status}: {answer}");
        answer["url"].as_str().map(str::to_string).context("no url in the upload's answer")
    }
}

/// Writes a `side` x `side` PNG of random RGB pixels (incompressible, so the file is
/// about 3 x side² bytes) and returns its size.
fn write_noise_png(path: &std::path::Path, side: u32) -> anyhow::Result<u64> {
    let mut pixels = vec![0u8; side as usize * side as usize * 3];
    rand::rng().fill_bytes(&mut pixels);
    let image = image::RgbImage::from_raw(side, side, pixels).context("pixel buffer size")?;
    image.save_with_format(path, image::ImageFormat::Png).context("cannot write the PNG")?;
    Ok(std::fs::metadata(path)?.len())
}
