//! The signatures on a client webhook delivery, in both schemes reelgate speaks.
//!
//! Every delivery carries two signatures made with one secret, so that a receiver can
//! use whichever tooling it already has:
//!
//! - **Apiframe's**, which its official SDK verifies: `X-Webhook-Event` names the event and
//!   `X-Webhook-Signature` is `sha256=` followed by the lowercase hex HMAC-SHA256 of the
//!   body bytes.
//! - **Standard Webhooks** (the svix scheme): `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. Unlike
//!   Apiframe's, this one binds the message id and the time, so a receiver can refuse
//!   replays and dedupe retries.
//!
//! The secret is the one Apiframe defined: the raw 32-byte SHA-256 digest of the API key
//! that created the job. reelgate stores exactly that digest for each key, so no extra
//! secret has to be generated, stored or rotated; Standard Webhooks libraries take it as
//! `whsec_<base64>`, which `GET /v2/me` shows to the key's owner.
//!
//! This module only computes headers. It does no I/O, owns no clock (the caller passes
//! the timestamp, so a retry is signed with the time it is sent at) and never logs: the
//! secret and the body must not reach a log line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The per-key signing secret: the raw 32-byte SHA-256 digest of the API key that created the job.
///
/// reelgate stores exactly this digest as `ApiKeyRecord.digest` (a [`domain::KeyDigest`]),
/// so the secret is `SigningSecret(record.digest.0)`.
#[derive(Clone)]
pub struct SigningSecret(pub [u8; 32]);

impl SigningSecret {
    /// `whsec_` + standard base64 of the 32 bytes: what Standard Webhooks libraries take.
    pub fn whsec(&self) -> String {
        format!("whsec_{}", STANDARD.encode(self.0))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC-SHA256 accepts a key of any length")
    }
}

impl From<&domain::KeyDigest> for SigningSecret {
    fn from(digest: &domain::KeyDigest) -> Self {
        Self(digest.0)
    }
}

// A hand-written Debug, so that a secret inside a struct that is logged with `{:?}`
// prints nothing usable.
impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The headers of one delivery attempt, both schemes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `X-Webhook-Event`: `completed`, `failed` or `progress`.
    pub apiframe_event: String,
    /// `X-Webhook-Signature`: `sha256=<lowercase hex>` over the body.
    pub apiframe_signature: String,
    /// `webhook-id`: the message id, the same on every retry of one event.
    pub webhook_id: String,
    /// `webhook-timestamp`: unix seconds when this attempt was signed.
    pub webhook_timestamp: String,
    /// `webhook-signature`: `v1,<base64>` over `{id}.{timestamp}.{body}`.
    pub webhook_signature: String,
}

impl SignedHeaders {
    /// The headers as (name, value) pairs, ready to put on a request.
    ///
    /// Names are in the case each scheme documents; HTTP header names are
    /// case-insensitive, so receivers see them however their framework spells them.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            ("X-Webhook-Event", &self.apiframe_event),
            ("X-Webhook-Signature", &self.apiframe_signature),
            ("webhook-id", &self.webhook_id),
            ("webhook-timestamp", &self.webhook_timestamp),
            ("webhook-signature", &self.webhook_signature),
        ]
    }
}

/// Signs `body` (the exact bytes sent) for event `event` with message id `id` at unix time `timestamp`.
///
/// `event` is `completed`, `failed` or `progress`. `id` and `event` become header values,
/// so they must be visible ASCII; the outbox makes ids of that kind. The body must be
/// sent exactly as passed here: both signatures cover its bytes, and re-serialising the
/// JSON would break them.
pub fn sign(secret: &SigningSecret, event: &str, id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
    let mut apiframe = secret.mac();
    apiframe.update(body);
    let apiframe = apiframe.finalize().into_bytes();

    let timestamp = timestamp.to_string();
    // Fed in pieces rather than formatted into one buffer, so the body is never copied.
    let mut standard = secret.mac();
    for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        standard.update(part);
    }
    let standard = standard.finalize().into_bytes();

    SignedHeaders {
        apiframe_event: event.to_owned(),
        apiframe_signature: format!("sha256={}", lower_hex(&apiframe)),
        webhook_id: id.to_owned(),
        webhook_timestamp: timestamp,
        webhook_signature: format!("v1,{}", STANDARD.encode(standard)),
    }
}

// Apiframe's SDK compares the hex text, so the case matters: it must be lowercase.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use sha2::Digest;

    use super::*;

    /// The key string of the known-answer tests; the secret is its SHA-256 digest.
    const KEY: &str = "afk_test";
    const BODY: &[u8] = br#"{"event":"completed"}"#;

    // The expected values below were computed once, outside this code, with Python's
    // standard library:
    //   k = hashlib.sha256(b"afk_test").digest()
    //   hmac.new(k, b'{"event":"completed"}', hashlib.sha256).hexdigest()
    //   "whsec_" + base64.b64encode(k).decode()
    //   base64.b64encode(hmac.new(k, b'msg_1.1700000000.{"event":"completed"}', hashlib.sha256).digest())
    const KNOWN_APIFRAME: &str = "sha256=5417f2238951f061baa77c85bde08f7518fdc3cd2bd9d731be273c65f66697e4";
    const KNOWN_WHSEC: &str = "whsec_rhT3gvpjmelleB4tDmgxAtPoZMhI9wlfvjJXyRnbtco=";
    const KNOWN_STANDARD: &str = "v1,iiMWL0oL2cBY1Dov/0mfWuSWH4iPOZWubWYutx3ptuA=";

    fn secret_of(key: &str) -> SigningSecret {
        SigningSecret(Sha256::digest(key.as_bytes()).into())
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn completed_body() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "event": "completed",
            "jobId": "0b6c5f0e-8a55-4f3e-9a51-3f1c1f6f9e2a",
            "status": "COMPLETED",
            "progress": 100,
            "result": {"videoUrl": "https://example.test/v/1.mp4"},
            "model": "hailuo-02",
            "creditCost": 30,
            "completedAt": "2025-01-01T00:00:00Z",
        }))
        .expect("a json! value serialises")
    }

    /// HMAC-SHA256 written out from RFC 2104 on top of plain SHA-256, so the checks below
    /// do not share the `hmac` crate with the code they check.
    fn rfc2104_hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
        // SHA-256 has 64-byte blocks; a 32-byte key is zero-padded to one block.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
        let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new().chain_update(&inner_key).chain_update(message).finalize();
        Sha256::new().chain_update(&outer_key).chain_update(inner).finalize().into()
    }

    /// Verifies `X-Webhook-Signature` the way Apiframe's SDK does: the `sha256=` prefix is
    /// optional, the rest is hex of the HMAC of the raw body.
    fn apiframe_verify(secret: &[u8; 32], header: &str, body: &[u8]) -> bool {
        let hex = header.strip_prefix("sha256=").unwrap_or(header);
        let expected = rfc2104_hmac_sha256(secret, body);
        let expected_hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        hex == expected_hex
    }

    fn header_map(headers: &SignedHeaders) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers.pairs() {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("signed headers are valid header values"),
            );
        }
        map
    }

    /// Runs `python3 -c script` with `body` on stdin. `None` means "skip": python3 is
    /// missing, or the script exited 77 because a module it needs is not installed.
    fn python(script: &str, args: &[&str], body: &[u8]) -> Option<bool> {
        let mut child = match Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(_) => return None,
        };
        child.stdin.take().expect("stdin was piped").write_all(body).expect("python3 reads its stdin");
        let output = child.wait_with_output().expect("python3 ran");
        match output.status.code() {
            Some(77) => None,
            Some(0) => Some(true),
            _ => {
                eprintln!("python3 said: {}", String::from_utf8_lossy(&output.stderr));
                Some(false)
            }
        }
    }

    #[test]
    fn known_answers_match_values_computed_by_python() {
        let secret = secret_of(KEY);
        let headers = sign(&secret, "completed", "msg_1", 1_700_000_000, BODY);
        assert_eq!(headers.apiframe_signature, KNOWN_APIFRAME);
        assert_eq!(headers.apiframe_event, "completed");
        assert_eq!(secret.whsec(), KNOWN_WHSEC);
        assert_eq!(headers.webhook_id, "msg_1");
        assert_eq!(headers.webhook_timestamp, "1700000000");
        assert_eq!(headers.webhook_signature, KNOWN_STANDARD);
    }

    #[test]
    fn the_secret_is_the_stored_key_digest() {
        let digest = domain::KeyDigest::of(KEY);
        assert_eq!(SigningSecret::from(&digest).0, secret_of(KEY).0);
    }

    #[test]
    fn pairs_name_every_header_once() {
        let headers = sign(&secret_of(KEY), "failed", "msg_2", 1, BODY);
        assert_eq!(
            headers.pairs(),
            [
                ("X-Webhook-Event", "failed"),
                ("X-Webhook-Signature", headers.apiframe_signature.as_str()),
                ("webhook-id", "msg_2"),
                ("webhook-timestamp", "1"),
                ("webhook-signature", headers.webhook_signature.as_str()),
            ]
        );
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        assert_eq!(format!("{:?}", secret_of(KEY)), "SigningSecret(<redacted>)");
    }

    #[test]
    fn apiframe_header_is_sha256_prefix_and_lowercase_hex() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let headers = sign(&secret, "completed", "msg_3", now(), &body);
        let hex = headers.apiframe_signature.strip_prefix("sha256=").expect("the header starts with sha256=");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{hex}");
        // The SDK accepts the header as sent and also the bare hex.
        assert!(apiframe_verify(&secret.0, &headers.apiframe_signature, &body));
        assert!(apiframe_verify(&secret.0, hex, &body));
        // And an uppercase rendering is a different string: the SDK compares text.
        assert!(!apiframe_verify(&secret.0, &hex.to_uppercase(), &body));
    }

    #[test]
    fn apiframe_signature_verifies_with_the_hmac_crate_too() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let headers = sign(&secret, "completed", "msg_4", now(), &body);
        let hex = &headers.apiframe_signature["sha256=".len()..];
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits")).collect();
        let mut mac = HmacSha256::new_from_slice(&secret.0).expect("any key length");
        mac.update(&body);
        mac.verify_slice(&bytes).expect("the signature verifies");
    }

    #[test]
    fn apiframe_signature_rejects_tampering_and_other_keys() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let headers = sign(&secret, "completed", "msg_5", now(), &body);
        let mut tampered = body.clone();
        *tampered.last_mut().expect("non-empty body") = b' ';
        let reserialised =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&body).expect("valid JSON"))
                .expect("serialises");
        let cases: [(&str, &[u8; 32], &[u8]); 4] = [
            ("the body as sent", &secret.0, &body),
            ("a tampered body", &secret.0, &tampered),
            ("the same JSON re-serialised", &secret.0, &reserialised),
            ("another key", &secret_of("afk_other").0, &body),
        ];
        for (case, key, checked) in cases {
            let expected = case == "the body as sent";
            assert_eq!(apiframe_verify(key, &headers.apiframe_signature, checked), expected, "{case}");
        }
    }

    #[test]
    fn apiframe_signature_verifies_with_python_hmac() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let headers = sign(&secret, "completed", "msg_6", now(), &body);
        // The key string goes in, not our digest: Python derives the secret itself.
        let script = r#"
import hashlib, hmac, sys
key, header = sys.argv[1], sys.argv[2]
secret = hashlib.sha256(key.encode()).digest()
body = sys.stdin.buffer.read()
expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
sys.exit(0 if hmac.compare_digest(expected, header) else 1)
"#;
        let Some(ok) = python(script, &[KEY, &headers.apiframe_signature], &body) else {
            println!("SKIP: python3 is not installed");
            return;
        };
        assert!(ok, "Python's hmac disagrees with the Apiframe signature");
        let mut tampered = body.clone();
        tampered.push(b'\n');
        assert_eq!(python(script, &[KEY, &headers.apiframe_signature], &tampered), Some(false));
    }

    #[test]
    fn standard_webhooks_rust_library_verifies() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let now = now();
        let headers = sign(&secret, "completed", "msg_7", now, &body);
        let verifier = standardwebhooks::Webhook::new(&secret.whsec()).expect("a valid whsec_ secret");
        verifier.verify(&body, &header_map(&headers)).expect("standardwebhooks accepts our signature");
    }

    #[test]
    fn standard_webhooks_rust_library_rejects_tampering() {
        use standardwebhooks::WebhookError;

        let secret = secret_of(KEY);
        let body = completed_body();
        let now = now();
        let headers = sign(&secret, "completed", "msg_8", now, &body);
        let verifier = standardwebhooks::Webhook::new(&secret.whsec()).expect("a valid whsec_ secret");
        let other = standardwebhooks::Webhook::new(&secret_of("afk_other").whsec()).expect("valid");

        let mut tampered = body.clone();
        tampered[2] ^= 0x20;
        let mut other_id = headers.clone();
        other_id.webhook_id = "msg_9".into();
        // Within the library's five-minute tolerance, so only the signature can refuse it.
        let mut other_time = headers.clone();
        other_time.webhook_timestamp = (now - 1).to_string();

        let cases = [
            ("a tampered body", &verifier, &headers, &tampered),
            ("a different id", &verifier, &other_id, &body),
            ("a different timestamp", &verifier, &other_time, &body),
            ("another key", &other, &headers, &body),
        ];
        for (case, verifier, headers, checked) in cases {
            match verifier.verify(checked, &header_map(headers)) {
                Err(WebhookError::InvalidSignature) => {}
                other => panic!("{case}: expected InvalidSignature, got {other:?}"),
            }
        }
    }

    #[test]
    fn standard_webhooks_python_library_verifies() {
        let secret = secret_of(KEY);
        let body = completed_body();
        let headers = sign(&secret, "completed", "msg_10", now(), &body);
        let script = r#"
import sys
try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError:
    sys.exit(77)
secret, msg_id, timestamp, signature = sys.argv[1:5]
body = sys.stdin.buffer.read()
headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
try:
    Webhook(secret).verify(body, headers)
except WebhookVerificationError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"#;
        let whsec = secret.whsec();
        let run = |h: &SignedHeaders, body: &[u8]| {
            let args = [whsec.as_str(), &h.webhook_id, &h.webhook_timestamp, &h.webhook_signature];
            python(script, &args, body)
        };
        let Some(ok) = run(&headers, &body) else {
            println!("SKIP: python3 or its standardwebhooks package is not installed");
            return;
        };
        assert!(ok, "Python's standardwebhooks refused our signature");

        let mut tampered = body.clone();
        tampered.insert(1, b' ');
        let mut other_id = headers.clone();
        other_id.webhook_id = "msg_11".into();
        assert_eq!(run(&headers, &tampered), Some(false), "a tampered body");
        assert_eq!(run(&other_id, &body), Some(false), "a different id");
    }

    #[test]
    fn retries_keep_the_id_and_resign_with_their_own_time() {
        let secret = secret_of(KEY);
        let first = sign(&secret, "completed", "msg_12", 1_700_000_000, BODY);
        let retry = sign(&secret, "completed", "msg_12", 1_700_000_005, BODY);
        assert_eq!(first.webhook_id, retry.webhook_id);
        // Apiframe's signature covers the body only; the Standard one moves with the time.
        assert_eq!(first.apiframe_signature, retry.apiframe_signature);
        assert_ne!(first.webhook_signature, retry.webhook_signature);
    }

    #[test]
    fn whsec_round_trips_to_the_raw_secret() {
        let secret = secret_of(KEY);
        let encoded = secret.whsec();
        let decoded = STANDARD.decode(encoded.strip_prefix("whsec_").expect("whsec_ prefix")).expect("standard base64");
        assert_eq!(decoded, secret.0);
    }
}
