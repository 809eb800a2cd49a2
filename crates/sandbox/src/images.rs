//! Image inputs: turns a `first_frame_image` / `last_frame_image` / subject image value (data URL
//! or http URL) into checked bytes stored once on disk by content hash.
//!
//! Tasks keep only an [`ImageRef`] (hash and size): a thousand jobs from the same picture cost
//! one file, and the task table never holds image bytes. The format is judged by magic bytes,
//! never by the data URL's MIME type, as MiniMax documents JPG/JPEG/PNG/WebP (minimax.md §1.4).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::rules;

/// A stored image: its content hash and pixel size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub hash: [u8; 32],
    pub width: u32,
    pub height: u32,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The formats MiniMax accepts, recognised by their first bytes.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// Content-addressed image files under `<data_dir>/images`.
pub struct ImageStore {
    dir: PathBuf,
    known: Mutex<HashSet<[u8; 32]>>,
    http: reqwest::Client,
    max_fetch_bytes: u64,
}

impl ImageStore {
    pub fn new(dir: PathBuf, http: reqwest::Client, max_fetch_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ImageStore { dir, known: Mutex::new(HashSet::new()), http, max_fetch_bytes })
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.img", hex(hash)))
    }

    /// Reads a stored image back (blocking: call it from a blocking thread).
    pub fn load(&self, image: &ImageRef) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(&image.hash))
    }

    /// Accepts one image value from a request; `Err` is the 2013 detail.
    pub async fn intake(&self, field: &str, value: &str) -> Result<ImageRef, String> {
        let bytes = if let Some(rest) = value.strip_prefix("data:") {
            decode_data_url(field, rest)?
        } else if value.starts_with("http://") || value.starts_with("https://") {
            self.fetch(field, value).await?
        } else {
            return Err(format!("{field} must be a public URL or a base64 data URL"));
        };
        if bytes.len() >= rules::MAX_IMAGE_BYTES {
            return Err(format!("{field} size exceeds the limit, must be less than 20MB"));
        }
        if sniff(&bytes).is_none() {
            return Err(format!("{field} format is not supported, supported formats: JPG, JPEG, PNG, WebP"));
        }
        let (width, height) =
            crate::renderer::probe(&bytes).map_err(|e| format!("{field} could not be read as an image: {e}"))?;
        rules::check_image(field, bytes.len(), width, height)?;
        if width.max(height) > crate::renderer::MAX_INPUT_SIDE {
            // Not a MiniMax rule: the sandbox's renderer could not decode it later.
            return Err(format!(
                "{field} dimensions {width}x{height} are too large for the sandbox, each side must be at most {}px",
                crate::renderer::MAX_INPUT_SIDE
            ));
        }
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.known.lock().expect("image set lock poisoned only by a panic inside it").contains(&hash) {
            return Ok(ImageRef { hash, width, height });
        }
        // A new image is decoded once now, so that a corrupt file is refused at create, as MiniMax
        // would, rather than failing the render later. Repeats of it skip this (see above).
        let (bytes, decoded) = tokio::task::spawn_blocking(move || {
            let decoded = crate::renderer::check_decodes(&bytes);
            (bytes, decoded)
        })
        .await
        .map_err(|_| format!("{field} could not be read as an image"))?;
        decoded.map_err(|e| format!("{field} could not be read as an image: {e}"))?;
        self.store(&hash, bytes).await.map_err(|e| {
            tracing::error!(error = %e, "sandbox could not store an input image");
            format!("{field} could not be stored")
        })?;
        Ok(ImageRef { hash, width, height })
    }

    async fn store(&self, hash: &[u8; 32], bytes: Vec<u8>) -> std::io::Result<()> {
        let path = self.path(hash);
        let tmp = self.dir.join(format!("{}.{}.tmp", hex(hash), rand::random::<u64>()));
        tokio::fs::write(&tmp, &bytes).await?;
        // Rename is atomic: a concurrent writer of the same content just replaces identical bytes.
        tokio::fs::rename(&tmp, &path).await?;
        self.known.lock().expect("image set lock poisoned only by a panic inside it").insert(*hash);
        Ok(())
    }

    /// Downloads an http(s) image with a size cap (https works only if the HTTP client has TLS).
    async fn fetch(&self, field: &str, url: &str) -> Result<Vec<u8>, String> {
        let fail = |why: String| format!("{field} could not be downloaded: {why}");
        let mut resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status().as_u16())));
        }
        let cap = self.max_fetch_bytes.min(rules::MAX_IMAGE_BYTES as u64);
        if resp.content_length().is_some_and(|len| len >= cap) {
            return Err(format!("{field} size exceeds the limit, must be less than 20MB"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.without_url().to_string()))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 >= cap {
                return Err(format!("{field} size exceeds the limit, must be less than 20MB"));
            }
        }
        Ok(bytes)
    }
}

/// Decodes `<mime>;base64,<data>` (the part after `data:`).
fn decode_data_url(field: &str, rest: &str) -> Result<Vec<u8>, String> {
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(format!("{field} is not a valid data URL"));
    };
    if !meta.ends_with(";base64") {
        return Err(format!("{field} data URL must be base64 encoded"));
    }
    // Refuse before decoding what cannot be under the limit: 4 base64 chars carry 3 bytes.
    if data.len() / 4 * 3 > rules::MAX_IMAGE_BYTES + 3 {
        return Err(format!("{field} size exceeds the limit, must be less than 20MB"));
    }
    let engine = &base64::engine::general_purpose::STANDARD;
    engine
        .decode(data)
        .or_else(|_| engine.decode(data.split_ascii_whitespace().collect::<String>()))
        .map_err(|_| format!("{field} is not valid base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url("f", "image/png;base64,aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_data_url("f", "image/png;base64,aGVs\nbG8=").unwrap(), b"hello");
        assert!(decode_data_url("f", "image/png,hello").is_err());
        assert!(decode_data_url("f", "image/png;base64").is_err());
        assert!(decode_data_url("f", "image/png;base64,!!!").is_err());
    }
}
