//! Signed, expiring download links, shaped like the object-store URLs MiniMax hands out
//! (`…/output.mp4?Expires=…&OSSAccessKeyId=…&Signature=…`, minimax.md §4).
//!
//! The signature is HMAC-SHA256 over the link kind, the file id and the expiry, with a secret drawn
//! per process: links die with the sandbox, as a test double's should. An "already expired" link
//! (a scripted fault) is an ordinary link whose `Expires` lies in the past.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Which of the two URLs of a file: MiniMax returns a primary and a backup (another region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Primary,
    Backup,
}

impl LinkKind {
    /// The path segment under `/sandbox/`.
    pub fn segment(self) -> &'static str {
        match self {
            LinkKind::Primary => "files",
            LinkKind::Backup => "backup",
        }
    }
}

/// The access key id shown in links; informational, as in OSS URLs.
pub const ACCESS_KEY_ID: &str = "LTAIsandbox";

pub struct Signer {
    secret: [u8; 32],
}

impl Signer {
    pub fn new(secret: [u8; 32]) -> Self {
        Signer { secret }
    }

    fn mac(&self, kind: LinkKind, file_id: u64, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(format!("{}\n{file_id}\n{expires}", kind.segment()).as_bytes());
        mac
    }

    /// The URL-safe signature of a link.
    pub fn sign(&self, kind: LinkKind, file_id: u64, expires: u64) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(kind, file_id, expires).finalize().into_bytes())
    }

    /// Checks a signature in constant time.
    pub fn verify(&self, kind: LinkKind, file_id: u64, expires: u64, signature: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        self.mac(kind, file_id, expires).verify_slice(&raw).is_ok()
    }

    /// A full download URL under `base` (no trailing slash).
    pub fn url(&self, base: &str, kind: LinkKind, file_id: u64, expires: u64) -> String {
        format!(
            "{base}/sandbox/{}/{file_id}/output.mp4?Expires={expires}&OSSAccessKeyId={ACCESS_KEY_ID}&Signature={}",
            kind.segment(),
            self.sign(kind, file_id, expires)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_kind_file_and_expiry() {
        let s = Signer::new([7; 32]);
        let sig = s.sign(LinkKind::Primary, 42, 1000);
        assert!(s.verify(LinkKind::Primary, 42, 1000, &sig));
        assert!(!s.verify(LinkKind::Backup, 42, 1000, &sig));
        assert!(!s.verify(LinkKind::Primary, 43, 1000, &sig));
        assert!(!s.verify(LinkKind::Primary, 42, 1001, &sig));
        assert!(!Signer::new([8; 32]).verify(LinkKind::Primary, 42, 1000, &sig));
        assert!(!s.verify(LinkKind::Primary, 42, 1000, "not base64!"));
    }

    #[test]
    fn url_shape() {
        let url = Signer::new([1; 32]).url("http://127.0.0.1:9", LinkKind::Backup, 5, 77);
        assert!(url.starts_with("http://127.0.0.1:9/sandbox/backup/5/output.mp4?Expires=77&OSSAccessKeyId="));
        assert!(url.contains("&Signature="));
    }
}
