//! API key secrets: generation, the stored digest, and constant-time comparison.
//!
//! Only the SHA-256 digest of a key is ever stored. Looking a key up by its digest
//! leaks nothing useful through timing: an attacker controls the key, not its digest,
//! so learning how many leading digest bytes matched tells them nothing about any real
//! key. The final equality check is constant-time anyway, so no path compares secrets
//! byte by byte with an early exit.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Every key starts with this, as Apiframe's do.
pub const KEY_PREFIX: &str = "afk_";
/// Every admin token starts with this, so neither kind of secret passes for the other.
pub const ADMIN_TOKEN_PREFIX: &str = "rga_";
/// Random characters after the prefix (base62, about 238 bits of entropy).
pub const KEY_RANDOM_LEN: usize = 40;
/// Characters of the key kept in clear as its public `prefix` (`afk_` plus 8).
pub const DISPLAY_PREFIX_LEN: usize = 12;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of an API key's full text: what the database stores and indexes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// Digest of a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Compares two digests without an early exit.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not secret, but there is no reason to spray it into logs either.
        f.write_str("KeyDigest(..)")
    }
}

/// A freshly generated key: the plaintext is shown once and then dropped.
pub struct ApiKeySecret {
    /// The full key, `afk_` + 40 base62 characters.
    pub plaintext: String,
    /// What is stored.
    pub digest: KeyDigest,
    /// The public prefix shown in listings and `/v2/me`.
    pub prefix: String,
}

impl ApiKeySecret {
    /// Generates a key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::generate_with(KEY_PREFIX)
    }

    /// Generates an admin token (`rga_` + 40 base62 characters) the same way.
    pub fn generate_admin_token() -> Self {
        Self::generate_with(ADMIN_TOKEN_PREFIX)
    }

    fn generate_with(kind_prefix: &str) -> Self {
        let mut rng = rand::rng();
        let mut plaintext = String::with_capacity(kind_prefix.len() + KEY_RANDOM_LEN);
        plaintext.push_str(kind_prefix);
        for _ in 0..KEY_RANDOM_LEN {
            plaintext.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
        }
        let digest = KeyDigest::of(&plaintext);
        let prefix = plaintext[..DISPLAY_PREFIX_LEN].to_string();
        Self { plaintext, digest, prefix }
    }
}

/// Cheap shape check run before hashing, so garbage headers are refused uniformly.
pub fn looks_like_key(candidate: &str) -> bool {
    candidate.len() <= 256 && candidate.starts_with(KEY_PREFIX)
}

/// The same check for admin tokens.
pub fn looks_like_admin_token(candidate: &str) -> bool {
    candidate.len() <= 256 && candidate.starts_with(ADMIN_TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_apiframe_shape() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert!(a.plaintext.starts_with("afk_"));
        assert_eq!(a.plaintext.len(), 44);
        assert!(a.plaintext[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.digest, KeyDigest::of(&a.plaintext));
        assert!(a.plaintext.starts_with(&a.prefix));
        let t = ApiKeySecret::generate_admin_token();
        assert!(t.plaintext.starts_with("rga_") && t.plaintext.len() == 44 && looks_like_admin_token(&t.plaintext));
        assert!(!looks_like_key(&t.plaintext) && !looks_like_admin_token(&a.plaintext));
    }

    #[test]
    fn constant_time_equality_agrees_with_eq() {
        let a = KeyDigest::of("afk_a");
        let b = KeyDigest::of("afk_b");
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
    }
}
