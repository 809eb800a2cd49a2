//! `reelgate generate`: submits one video job to an Apiframe v2 server and, unless told
//! not to, waits for it and downloads the video. Local image paths are uploaded first
//! (`POST /v2/uploads`); the request itself is validated by the server, not here, so the
//! client stays right for any server whatever its rules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::client::{fail, print_json, wait_and_download, ApiClient, ClientArgs, ClientError};

/// Make a video: submit, wait with a progress bar, download.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Model id: hailuo-2.3, hailuo-02 or hailuo-2.3-fast.
    #[arg(long, default_value = "hailuo-2.3")]
    model: String,
    /// What the video shows (1-2000 characters).
    #[arg(long)]
    prompt: String,
    /// Length in seconds (6 or 10).
    #[arg(long)]
    duration: Option<u32>,
    /// 768p or 1080p.
    #[arg(long)]
    resolution: Option<String>,
    /// First frame: an http(s) or data: URL, or a local file, which is uploaded first.
    #[arg(long, value_name = "PATH_OR_URL")]
    image: Option<String>,
    /// Last frame (hailuo-02): an http(s) or data: URL, or a local file, uploaded first.
    #[arg(long, value_name = "PATH_OR_URL")]
    end_image: Option<String>,
    /// Let the model rewrite the prompt (`--prompt-optimizer false` to turn it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    prompt_optimizer: Option<bool>,
    /// URL the server calls when the job progresses, completes or fails.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Sent as Idempotency-Key: repeating the command with the same key and request
    /// returns the same job instead of charging again.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Print the job as JSON right after submitting it, without waiting.
    #[arg(long, conflicts_with = "out")]
    no_wait: bool,
    /// Where to save the video (default: <jobId>.mp4 in the current directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the command; the exit code says how it ended (see [`crate::client`]).
pub async fn run(args: GenerateArgs) -> ExitCode {
    let client = match ApiClient::new(&args.client) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let id = match submit(&client, &args).await {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    if args.no_wait {
        return match client.get_job(&id).await {
            Ok(job) => {
                print_json(&job);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("job {id} was submitted, but reading it back failed");
                fail(e)
            }
        };
    }
    wait_and_download(&client, &id, args.out).await
}

async fn submit(client: &ApiClient, args: &GenerateArgs) -> Result<String, ClientError> {
    let mut params = Map::new();
    if let Some(d) = args.duration {
        params.insert("duration".into(), d.into());
    }
    if let Some(r) = &args.resolution {
        params.insert("resolution".into(), r.clone().into());
    }
    if let Some(image) = &args.image {
        params.insert("image".into(), image_url(client, image).await?.into());
    }
    if let Some(image) = &args.end_image {
        params.insert("end_image".into(), image_url(client, image).await?.into());
    }
    if let Some(p) = args.prompt_optimizer {
        params.insert("prompt_optimizer".into(), p.into());
    }
    let mut body = json!({"model": args.model, "prompt": args.prompt});
    if !params.is_empty() {
        body["hailuoParams"] = Value::Object(params);
    }
    if let Some(url) = &args.webhook_url {
        body["webhookUrl"] = url.clone().into();
    }
    client.generate(&body, args.idempotency_key.as_deref()).await
}

/// A URL the API accepts for an image: URLs go as they are, anything else is a local
/// file to upload.
async fn image_url(client: &ApiClient, arg: &str) -> Result<String, ClientError> {
    if is_url(arg) {
        return Ok(arg.to_string());
    }
    let path = Path::new(arg);
    if !path.is_file() {
        return Err(ClientError::Usage(format!("{arg} is neither an http(s)/data: URL nor a readable file")));
    }
    eprintln!("uploading {arg}");
    client.upload(path).await
}

fn is_url(arg: &str) -> bool {
    let lower = arg.get(..8).unwrap_or(arg).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("data:")
}

#[cfg(test)]
mod tests {
    use super::is_url;

    #[test]
    fn urls_pass_through_and_everything_else_is_a_path() {
        for url in ["http://x/a.png", "HTTPS://x/a.png", "data:image/png;base64,AA"] {
            assert!(is_url(url), "{url}");
        }
        for path in ["./photo.jpg", "photo.jpg", "/tmp/http:/x", "C:\\p.png", "ftp://x/a.png", ""] {
            assert!(!is_url(path), "{path}");
        }
    }
}
