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

/// The longest image side accepted. MiniMax documents none; this is the bound the
/// sandbox's renderer decodes, kept so that a job accepted here can run there too.
const MAX_SIDE: u32 = 16_384;

/// MiniMax's image rules: JPEG, PNG or WebP by content, short side over 300 px, aspect
/// ratio strictly between 2:5 and 5:2. Returns the MIME type. Reads the header only
/// (the `image` crate), never the pixels, so the head of an upload is enough.
pub fn check(bytes: &[u8]) -> Result<&'static str, String> {
    let (w, h, mime) = probe(bytes).map_err(|e| format!("not a usable JPEG, PNG or WebP image ({e})"))?;
    let (w, h) = (u64::from(w), u64::from(h));
    if w.min(h) <= 300 {
        return Err(format!("the image is {w}x{h}; its short side must be over 300 pixels"));
    }
    // w/h strictly between 2/5 and 5/2, in integers.
    if 5 * w <= 2 * h || 2 * w >= 5 * h {
        return Err(format!("the image is {w}x{h}; its aspect ratio must be between 2:5 and 5:2"));
    }
    Ok(mime)
}

/// Width, height and MIME type of a JPEG, PNG or WebP image, told by its magic bytes
/// (never by a declared type) and read from its header.
fn probe(bytes: &[u8]) -> Result<(u32, u32, &'static str), String> {
    use image::ImageFormat as F;
    let (format, name, mime) = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (F::Jpeg, "JPEG", "image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        (F::Png, "PNG", "image/png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        (F::WebP, "WebP", "image/webp")
    } else {
        let leading = bytes.iter().take(12).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        return Err(format!(
            "unsupported image format: expected JPEG, PNG or WebP, but the file starts with [{leading}]"
        ));
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let too_large = || format!("{name} image too large: each side must be at most {MAX_SIDE} pixels");
    let (width, height) = reader.into_dimensions().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        other => format!("invalid {name} image: {other}"),
    })?;
    if width == 0 || height == 0 {
        return Err(format!("invalid {name} image: the image is {width}x{height} pixels"));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(too_large());
    }
    Ok((width, height, mime))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn images_are_checked_against_minimax_rules_from_their_header() {
        let png_640 = png(640, 480);
        let cases: [(&[u8], Result<&str, &str>); 6] = [
            (&png_640, Ok("image/png")),
            // The header alone (an upload's head) is enough.
            (&png_640[..64], Ok("image/png")),
            (&png(300, 600), Err("its short side must be over 300 pixels")),
            (&png(1000, 400), Err("its aspect ratio must be between 2:5 and 5:2")),
            (b"GIF89a......", Err("unsupported image format: expected JPEG, PNG or WebP")),
            (b"\x89PNG\r\n\x1a\n", Err("invalid PNG image")),
        ];
        for (bytes, expected) in cases {
            match (check(bytes), expected) {
                (Ok(mime), Ok(want)) => assert_eq!(mime, want),
                (Err(problem), Err(want)) => assert!(problem.contains(want), "{problem}"),
                (got, want) => panic!("{got:?}, expected {want:?}"),
            }
        }
    }
}
