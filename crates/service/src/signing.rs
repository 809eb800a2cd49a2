//! The server's secret and the capability tokens made with it.
//!
//! Result URLs must open in a browser or video player, which cannot send an API key,
//! and MiniMax's callbacks carry no signature. Both therefore carry a token: an HMAC of
//! the job id under a secret kept in the data directory, so only URLs reelgate made are
//! accepted and one job's token opens nothing else.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a token is for; a token made for one purpose is worthless for the other.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Reading a job's result video.
    Result,
    /// MiniMax reporting on a job's task.
    Callback,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Result => b"result",
            Self::Callback => b"minimax-callback",
        }
    }
}

/// Makes and checks tokens.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// Reads `secret.key` in `data_dir`, creating it (readable by the owner only) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("secret.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => return Ok(Self { key: bytes.try_into().expect("length checked") }),
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} must hold exactly 32 bytes", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key: [u8; 32] = rand::random();
        // Written to a temporary file and renamed, so a crash never leaves half a key.
        let mut tmp = tempfile::NamedTempFile::new_in(data_dir)?;
        tmp.write_all(&key)?;
        tmp.as_file().sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        match tmp.persist_noclobber(&path) {
            Ok(_) => Ok(Self { key }),
            // Another process created it first: use theirs.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(data_dir),
            Err(e) => Err(e.error),
        }
    }

    /// A 32-hex-digit token for `id`.
    pub fn token(&self, purpose: Purpose, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(purpose.label());
        mac.update(b":");
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is the token for `id`, compared in constant time.
    pub fn verify(&self, purpose: Purpose, id: &str, token: &str) -> bool {
        let expected = self.token(purpose, id);
        expected.len() == token.len() && expected.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_secret_and_bound_to_purpose_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load_or_create(dir.path()).unwrap();
        let again = Signer::load_or_create(dir.path()).unwrap();
        let t = a.token(Purpose::Result, "job-1");
        assert_eq!(t.len(), 32);
        assert!(again.verify(Purpose::Result, "job-1", &t), "the secret persists across restarts");
        assert!(!a.verify(Purpose::Callback, "job-1", &t));
        assert!(!a.verify(Purpose::Result, "job-2", &t));
        assert!(!a.verify(Purpose::Result, "job-1", &t[..31]));
        let other = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.verify(Purpose::Result, "job-1", &t));
    }
}
