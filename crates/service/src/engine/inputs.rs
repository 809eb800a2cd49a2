//! Input images: fetched by reelgate (so images MiniMax cannot reach, such as private
//! hosts and inline uploads, still work; this server's own uploads are read from
//! storage by the engine instead), checked against MiniMax's rules, and handed
//! upstream as data URLs. A problem here fails the job with a clear reason and a
//! refund, before any create call is spent on it.

use base64::Engine as _;
use domain::ImageRef;
use futures_util::StreamExt;

use crate::guard;
use crate::links::Links;
use crate::results::{Object, ResultStore};

/// MiniMax's limit on an input image.
const MINIMAX_MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

/// Turns the client's image reference into a checked data URL, or the reason it cannot
/// be used. `field` names the request field in messages (`image`, `end_image`).
pub async fn prepare(
    http: &reqwest::Client,
    image: &ImageRef,
    field: &str,
    max_bytes: u64,
    allow_private: bool,
) -> Result<String, String> {
    let limit = max_bytes.min(MINIMAX_MAX_IMAGE_BYTES);
    let bytes = match image {
        ImageRef::Data(url) => {
            let encoded =
                url.split_once(";base64,").map(|(_, b)| b).ok_or(format!("{field}: not a base64 data URL"))?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| format!("{field}: the data URL is not valid base64"))?
        }
        ImageRef::Url(url) => fetch(http, url, field, limit, allow_private).await?,
    };
    data_url(&bytes, field, limit)
}

/// Checks `bytes` (size under `max_bytes` and MiniMax's limit, then [`check`]) and
/// makes the data URL handed to MiniMax.
pub fn data_url(bytes: &[u8], field: &str, max_bytes: u64) -> Result<String, String> {
    let limit = max_bytes.min(MINIMAX_MAX_IMAGE_BYTES);
    if bytes.len() as u64 >= limit {
        return Err(format!("{field}: the image is {} bytes; it must be under {limit} bytes", bytes.len()));
    }
    let mime = check(bytes).map_err(|problem| format!("{field}: {problem}"))?;
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// MiniMax's image rules: JPEG, PNG or WebP by content, short side over 300 px, aspect
/// ratio strictly between 2:5 and 5:2. Returns the MIME type.
pub fn check(bytes: &[u8]) -> Result<&'static str, String> {
    let info = render::probe_image(bytes).map_err(|e| format!("not a usable JPEG, PNG or WebP image ({e})"))?;
    let (w, h) = (u64::from(info.width), u64::from(info.height));
    if w.min(h) <= 300 {
        return Err(format!("the image is {w}x{h}; its short side must be over 300 pixels"));
    }
    // w/h strictly between 2/5 and 5/2, in integers.
    if 5 * w <= 2 * h || 2 * w >= 5 * h {
        return Err(format!("the image is {w}x{h}; its aspect ratio must be between 2:5 and 5:2"));
    }
    Ok(match info.format {
        render::ImageFormat::Jpeg => "image/jpeg",
        render::ImageFormat::Png => "image/png",
        render::ImageFormat::Webp => "image/webp",
    })
}

async fn fetch(
    http: &reqwest::Client,
    url: &str,
    field: &str,
    limit: u64,
    allow_private: bool,
) -> Result<Vec<u8>, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("{field}: not a valid URL"))?;
    guard::check_url(&parsed, allow_private).map_err(|e| format!("{field}: {e}"))?;
    let response = http.get(parsed).send().await.map_err(|e| match guard::refusal_in(&e) {
        Some(refusal) => format!("{field}: {refusal}"),
        None => format!("{field}: could not fetch the image ({e})"),
    })?;
    if !response.status().is_success() {
        return Err(format!("{field}: fetching the image answered HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n >= limit) {
        return Err(format!("{field}: the image is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{field}: the image download failed ({e})"))?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 >= limit {
            return Err(format!("{field}: the image is larger than {limit} bytes"));
        }
    }
    Ok(body)
}

/// Deletes job `job`'s copies of the uploads it names, once it no longer needs them
/// (its task was created upstream, or it failed or was cancelled before). Needs no
/// engine: a node that only serves the API cancels jobs too.
pub async fn drop_job_copies(links: &Links, results: &dyn ResultStore, job: &store::JobRecord) {
    let Ok(input) = serde_json::from_str::<serde_json::Value>(job.input.get()) else { return };
    let Ok(req) = domain::validation::parse_generate(&input, domain::validation::UrlPolicy::AllowPrivate) else {
        return;
    };
    for (field, image) in [("image", &req.image), ("end_image", &req.end_image)] {
        let Some(ImageRef::Url(url)) = image else { continue };
        if links.upload_in(url).is_none() {
            continue;
        }
        if let Err(e) = results.delete_object(Object::JobInput(job.id, field)).await {
            tracing::warn!(job.id = %job.id, error = %e, "could not delete the job's copy of an upload");
        }
    }
}
