//! The server's secret and the capability tokens made with it.
//!
//! Result URLs must open in a browser or video player, which cannot send an API key,
//! and MiniMax's callbacks carry no signature; nor can uploads' URLs, handed to any
//! client. All therefore carry a token: an HMAC of the job or upload id under a secret
//! kept in the database, so only URLs reelgate made are
//! accepted, one job's token opens nothing else, and a URL made by one node is accepted
//! by every node sharing the database.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why the shared secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The store refused or is unreachable.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// An earlier `secret.key` could not be read.
    #[error("cannot read the earlier secret.key: {0}")]
    Io(std::io::Error),
    /// A secret of the wrong length.
    #[error("{0} must hold exactly 32 bytes")]
    Invalid(String),
}

/// What a token is for; a token made for one purpose is worthless for the other.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Reading a job's result video.
    Result,
    /// MiniMax reporting on a job's task.
    Callback,
    /// Reading an uploaded file.
    Upload,
    /// Reading a key's job event streams (the claims name the key and the expiry).
    Events,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Result => b"result",
            Self::Callback => b"minimax-callback",
            Self::Upload => b"upload",
            Self::Events => b"job-events",
        }
    }
}

/// Makes and checks tokens.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// The secret shared through `store`, stored on first start. A `secret.key` left in
    /// `data_dir` by an earlier version is what gets stored, so its URLs keep working.
    pub async fn shared(store: &dyn store::Store, data_dir: &Path) -> Result<Self, SecretError> {
        let earlier = data_dir.join("secret.key");
        let candidate: [u8; 32] = match std::fs::read(&earlier) {
            Ok(bytes) => bytes.try_into().map_err(|_| SecretError::Invalid(earlier.display().to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => rand::random(),
            Err(e) => return Err(SecretError::Io(e)),
        };
        let stored = store.shared_secret("signing", candidate.to_vec()).await?;
        let key = stored.try_into().map_err(|_| SecretError::Invalid("the stored signing secret".into()))?;
        Ok(Self { key })
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

    async fn signer_on(dir: &Path) -> Signer {
        let store = store_sqlite::SqliteStore::open(&dir.join("reelgate.db")).unwrap();
        let signer = Signer::shared(&store, dir).await.unwrap();
        store::Store::close(&store).await;
        signer
    }

    #[tokio::test]
    async fn tokens_are_stable_per_secret_and_bound_to_purpose_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = signer_on(dir.path()).await;
        let again = signer_on(dir.path()).await;
        let t = a.token(Purpose::Result, "job-1");
        assert_eq!(t.len(), 32);
        assert!(again.verify(Purpose::Result, "job-1", &t), "the secret persists across restarts");
        assert!(!a.verify(Purpose::Callback, "job-1", &t));
        assert!(!a.verify(Purpose::Result, "job-2", &t));
        assert!(!a.verify(Purpose::Result, "job-1", &t[..31]));
        let other = signer_on(tempfile::tempdir().unwrap().path()).await;
        assert!(!other.verify(Purpose::Result, "job-1", &t));
    }

    #[tokio::test]
    async fn a_secret_key_file_of_an_earlier_version_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = [7u8; 32];
        std::fs::write(dir.path().join("secret.key"), earlier).unwrap();
        let signer = signer_on(dir.path()).await;
        assert_eq!(signer.key, earlier, "URLs made before the upgrade keep working");
    }
}
