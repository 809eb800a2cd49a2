//! Parsing a `POST /v2/videos/generate` body into a [`GenerateRequest`].
//!
//! The body is inspected as a `serde_json::Value` rather than deserialized straight
//! into a struct so that every problem is reported at once, keyed by its JSON path,
//! the way Apiframe's Zod-based validation does (`{"hailuoParams.duration": ["..."]}`).
//! Unknown keys are errors at every level, mirroring the spec's
//! `additionalProperties: false`.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::address::{self, UrlRefusal};
use crate::job::WebhookEvent;
use crate::model::{Duration, ModelId, Resolution};

/// Longest prompt accepted for Hailuo models, in characters (the spec's maxLength).
pub const PROMPT_MAX_CHARS: usize = 2000;
/// Longest http(s) URL accepted for images and webhooks.
pub const URL_MAX_LEN: usize = 2048;
/// Path used for problems with the body as a whole (not JSON, not an object).
pub const ROOT_PATH: &str = "body";

const TOP_LEVEL_KEYS: [&str; 5] = ["model", "prompt", "hailuoParams", "webhookUrl", "webhookEvents"];
const PARAM_KEYS: [&str; 5] = ["duration", "resolution", "image", "end_image", "prompt_optimizer"];
const DATA_URL_IMAGE_TYPES: [&str; 4] = ["png", "jpeg", "jpg", "webp"];

/// Most problems listed in one answer; the rest are only counted (see [`ValidationErrors`]).
pub const MAX_LISTED_PROBLEMS: usize = 50;
/// Budget for the listed paths and messages, in bytes as written in JSON.
pub const MAX_LISTED_BYTES: usize = 8 * 1024;
/// Most characters of client input quoted back in a path or message.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Problems found in a request, by JSON path, each with one or more messages.
///
/// A refusal must cost less than the request that caused it. A 1 MB body can hold
/// half a million wrong items or a key a megabyte long, so only the first
/// [`MAX_LISTED_PROBLEMS`] problems (within [`MAX_LISTED_BYTES`]) are kept; the others
/// are counted, and [`ValidationErrors::details`] adds one entry saying how many. Client
/// text inside a path or message goes through [`quote`] first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors {
    listed: BTreeMap<String, Vec<String>>,
    listed_count: usize,
    listed_bytes: usize,
    omitted: usize,
}

impl ValidationErrors {
    /// Records a problem at `path`, or only counts it once the list is full.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        if self.is_full() {
            self.omitted += 1;
            return;
        }
        let (path, message) = (path.into(), message.into());
        let cost = json_len(&path) + json_len(&message);
        if self.listed_bytes + cost > MAX_LISTED_BYTES {
            self.omitted += 1;
            return;
        }
        self.listed_count += 1;
        self.listed_bytes += cost;
        self.listed.entry(path).or_default().push(message);
    }

    /// Counts `n` problems without listing them (for callers that know the list is full).
    pub fn omit(&mut self, n: usize) {
        self.omitted = self.omitted.saturating_add(n);
    }

    /// Whether no further problem would be listed, so callers can skip building messages.
    pub fn is_full(&self) -> bool {
        self.listed_count >= MAX_LISTED_PROBLEMS
    }

    /// A single problem with the body as a whole.
    pub fn root(message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.add(ROOT_PATH, message);
        e
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.listed_count == 0 && self.omitted == 0
    }

    /// The listed problems by path.
    pub fn listed(&self) -> &BTreeMap<String, Vec<String>> {
        &self.listed
    }

    /// How many problems were found but not listed.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The `details` object of a 400 answer: the listed problems and, when some were
    /// left out, one more message under [`ROOT_PATH`] saying how many.
    pub fn details(&self) -> BTreeMap<String, Vec<String>> {
        let mut details = self.listed.clone();
        if self.omitted > 0 {
            let n = self.omitted;
            let message = if n == 1 {
                "1 more problem was found and not listed".to_string()
            } else {
                format!("{n} more problems were found and not listed")
            };
            details.entry(ROOT_PATH.to_string()).or_default().push(message);
        }
        details
    }
}

/// Bytes `s` takes as a JSON string with its quotes and a separator, counting each
/// control character at its longest escape (`\u00XX`).
fn json_len(s: &str) -> usize {
    3 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Client text as it may appear in a path or message: at most [`MAX_QUOTED_CHARS`]
/// characters (then `…`), control characters shown as `?`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_QUOTED_CHARS * 4 + 3));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// Which destinations client URLs may name at submission (the operator's
/// `engine.allow_private_urls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlPolicy<'a> {
    /// IP-literal URLs must be public addresses (the default).
    PublicOnly,
    /// As `PublicOnly`, except image URLs starting with this prefix: the server's own
    /// upload URLs (`{public_base_url}/v2/uploads/`), which may well be on loopback.
    /// The engine reads those from storage, never over HTTP, and the caller checks
    /// that they name a live upload of the account.
    PublicExceptOwnUploads(&'a str),
    /// Loopback and private addresses are allowed too.
    AllowPrivate,
}

impl UrlPolicy<'_> {
    /// The policy for the operator's setting.
    pub fn allowing_private(allow: bool) -> Self {
        if allow {
            Self::AllowPrivate
        } else {
            Self::PublicOnly
        }
    }
}

/// An input image reference, kept as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An http(s) URL that the engine fetches.
    Url(String),
    /// A `data:image/...;base64,` URL carrying the bytes inline.
    Data(String),
}

impl ImageRef {
    /// The reference as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Url(s) | Self::Data(s) => s,
        }
    }
}

/// A valid video generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    /// Which Hailuo model.
    pub model: ModelId,
    /// The text prompt.
    pub prompt: String,
    /// Clip length (default 6 s).
    pub duration: Duration,
    /// Output resolution (default 768p).
    pub resolution: Resolution,
    /// First frame, for image-to-video.
    pub image: Option<ImageRef>,
    /// Last frame (hailuo-02 only, with `image`).
    pub end_image: Option<ImageRef>,
    /// MiniMax's prompt optimizer switch, when given.
    pub prompt_optimizer: Option<bool>,
    /// Where to send webhooks.
    pub webhook_url: Option<String>,
    /// Which events to send; `None` means the default set.
    pub webhook_events: Option<Vec<WebhookEvent>>,
}

/// Parses and checks a generate body, reporting every problem found (up to the
/// bounds of [`ValidationErrors`]). `urls` says whether IP-literal URLs may name
/// private addresses.
pub fn parse_generate(body: &Value, urls: UrlPolicy<'_>) -> Result<GenerateRequest, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let Some(obj) = body.as_object() else {
        return Err(ValidationErrors::root("Expected a JSON object"));
    };

    let model = match obj.get("model") {
        None => {
            errors.add("model", "Required");
            None
        }
        Some(Value::String(s)) => match ModelId::parse(s) {
            Some(m) => Some(m),
            None => {
                let known: Vec<_> = ModelId::ALL.iter().map(|m| m.as_str()).collect();
                errors.add("model", format!("Unknown model '{}'; expected one of {}", quote(s), known.join(", ")));
                None
            }
        },
        Some(_) => {
            errors.add("model", "Expected string");
            None
        }
    };

    let prompt = match obj.get("prompt") {
        None => {
            errors.add("prompt", "Required");
            None
        }
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 {
                errors.add("prompt", "Prompt must contain at least 1 character");
            } else if s.trim().is_empty() {
                errors.add("prompt", "Prompt must not be blank");
            } else if chars > PROMPT_MAX_CHARS {
                errors
                    .add("prompt", format!("Prompt must contain at most {PROMPT_MAX_CHARS} characters (got {chars})"));
            }
            Some(s.clone())
        }
        Some(_) => {
            errors.add("prompt", "Expected string");
            None
        }
    };

    let params = parse_params(obj.get("hailuoParams"), model, urls, &mut errors);
    let webhook_url = match obj.get("webhookUrl") {
        None => None,
        Some(v) => check_http_url(v, "webhookUrl", urls, &mut errors),
    };
    let webhook_events = obj.get("webhookEvents").and_then(|v| parse_events(v, &mut errors));
    // Unknown keys last: when a body has thousands, the problems with the known
    // fields are the ones worth a place in the bounded list.
    report_unknown_keys(obj, &TOP_LEVEL_KEYS, "", &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    let (model, prompt) = (model.expect("checked above"), prompt.expect("checked above"));
    Ok(GenerateRequest {
        model,
        prompt,
        duration: params.duration,
        resolution: params.resolution,
        image: params.image,
        end_image: params.end_image,
        prompt_optimizer: params.prompt_optimizer,
        webhook_url,
        webhook_events,
    })
}

struct Params {
    duration: Duration,
    resolution: Resolution,
    image: Option<ImageRef>,
    end_image: Option<ImageRef>,
    prompt_optimizer: Option<bool>,
}

fn parse_params(
    value: Option<&Value>,
    model: Option<ModelId>,
    urls: UrlPolicy<'_>,
    errors: &mut ValidationErrors,
) -> Params {
    let mut p = Params {
        duration: Duration::Six,
        resolution: Resolution::P768,
        image: None,
        end_image: None,
        prompt_optimizer: None,
    };
    let empty = Map::new();
    let obj = match value {
        None => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => {
            errors.add("hailuoParams", "Expected object");
            return p;
        }
    };
    let duration_given = obj.contains_key("duration");
    if let Some(v) = obj.get("duration") {
        match v.as_f64().and_then(Duration::from_seconds) {
            Some(d) => p.duration = d,
            None => errors.add("hailuoParams.duration", "Expected 6 or 10"),
        }
    }
    if let Some(v) = obj.get("resolution") {
        match v.as_str().and_then(Resolution::parse) {
            Some(r) => p.resolution = r,
            None => errors.add("hailuoParams.resolution", "Expected '768p' or '1080p'"),
        }
    }
    if duration_given && p.resolution == Resolution::P1080 && p.duration == Duration::Ten {
        errors.add(
            "hailuoParams.duration",
            "1080p supports only 6-second videos; use duration 6, or 768p for 10 seconds",
        );
    }
    if let Some(v) = obj.get("image") {
        p.image = check_image(v, "hailuoParams.image", urls, errors);
    }
    if let Some(v) = obj.get("end_image") {
        let accepted = model.is_none_or(ModelId::accepts_end_image);
        if !accepted {
            errors.add("hailuoParams.end_image", "end_image is only supported by hailuo-02");
        } else if !obj.contains_key("image") {
            errors.add("hailuoParams.end_image", "end_image requires image (the first frame)");
        } else {
            p.end_image = check_image(v, "hailuoParams.end_image", urls, errors);
        }
    }
    if let Some(v) = obj.get("prompt_optimizer") {
        match v.as_bool() {
            Some(b) => p.prompt_optimizer = Some(b),
            None => errors.add("hailuoParams.prompt_optimizer", "Expected boolean"),
        }
    }
    if model.is_some_and(ModelId::requires_image) && !obj.contains_key("image") {
        errors.add("hailuoParams.image", "hailuo-2.3-fast is image-to-video only: image is required");
    }
    report_unknown_keys(obj, &PARAM_KEYS, "hailuoParams.", errors);
    p
}

/// Reports each key of `obj` not in `known`, under `prefix` + the key (quoted).
fn report_unknown_keys(obj: &Map<String, Value>, known: &[&str], prefix: &str, errors: &mut ValidationErrors) {
    for key in obj.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        if errors.is_full() {
            // Counting only: no strings built for problems nobody will see.
            errors.omit(1);
            continue;
        }
        let key = quote(key);
        errors.add(format!("{prefix}{key}"), format!("Unrecognized key '{key}'"));
    }
}

fn parse_events(value: &Value, errors: &mut ValidationErrors) -> Option<Vec<WebhookEvent>> {
    let Some(items) = value.as_array() else {
        errors.add("webhookEvents", "Expected array");
        return None;
    };
    if items.is_empty() {
        errors.add("webhookEvents", "Array must contain at least 1 element");
        return None;
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str().and_then(WebhookEvent::parse) {
            Some(e) if !events.contains(&e) => events.push(e),
            Some(_) => {}
            None if errors.is_full() => errors.omit(1),
            None => errors.add(format!("webhookEvents.{i}"), "Expected 'progress', 'completed' or 'failed'"),
        }
    }
    events.sort();
    Some(events)
}

fn check_image(value: &Value, path: &str, urls: UrlPolicy<'_>, errors: &mut ValidationErrors) -> Option<ImageRef> {
    let Some(s) = value.as_str() else {
        errors.add(path, "Expected string");
        return None;
    };
    if let UrlPolicy::PublicExceptOwnUploads(prefix) = urls {
        if s.starts_with(prefix) && s.len() <= URL_MAX_LEN {
            return Some(ImageRef::Url(s.to_string()));
        }
    }
    // `get`, not indexing: byte 5 may fall inside a multi-byte character.
    if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("data:")) {
        return match check_data_url(s) {
            Ok(()) => Some(ImageRef::Data(s.to_string())),
            Err(msg) => {
                errors.add(path, msg);
                None
            }
        };
    }
    check_http_url(value, path, urls, errors).map(ImageRef::Url)
}

fn check_data_url(s: &str) -> Result<(), String> {
    let rest = &s[5..];
    let Some((header, payload)) = rest.split_once(',') else {
        return Err("Invalid data URL: missing ','".into());
    };
    let header = header.to_ascii_lowercase();
    let Some(mime) = header.strip_suffix(";base64") else {
        return Err("Data URL must be base64-encoded (data:image/...;base64,...)".into());
    };
    let Some(subtype) = mime.strip_prefix("image/") else {
        return Err("Data URL must carry an image (data:image/...)".into());
    };
    if !DATA_URL_IMAGE_TYPES.contains(&subtype) {
        return Err(format!("Unsupported image type 'image/{}'; expected JPEG, PNG or WebP", quote(subtype)));
    }
    if payload.is_empty() {
        return Err("Data URL carries no image data".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| "Data URL payload is not valid base64".to_string())?;
    Ok(())
}

/// Checks that `value` is an http(s) URL reelgate could later fetch or deliver to.
fn check_http_url(value: &Value, path: &str, urls: UrlPolicy<'_>, errors: &mut ValidationErrors) -> Option<String> {
    let Some(s) = value.as_str() else {
        errors.add(path, "Expected string");
        return None;
    };
    match http_url_problem(s, urls) {
        None => Some(s.to_string()),
        Some(msg) => {
            errors.add(path, msg);
            None
        }
    }
}

/// What is wrong with `s` as a client URL, if anything.
///
/// It is parsed with the WHATWG parser the HTTP client uses later, so a URL accepted
/// here is one the fetch or the delivery reads the same way (`http://[::1` or a zone
/// id such as `[fe80::1%25lo]` do not parse, and `http://0x7f.1/` is 127.0.0.1 for
/// both). IP-literal hosts are judged here by `address`'s rule; host names are
/// resolved, and their addresses checked, only when the URL is used.
fn http_url_problem(s: &str, urls: UrlPolicy<'_>) -> Option<String> {
    if s.len() > URL_MAX_LEN {
        return Some(format!("URL must be at most {URL_MAX_LEN} characters"));
    }
    // The parser would silently strip these; a URL that needs that is not what the client meant.
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("Invalid URL: contains whitespace or control characters".into());
    }
    let url = match url::Url::parse(s) {
        Ok(url) => url,
        // The parser's messages are fixed phrases ("invalid IPv6 address"), never the input.
        Err(e) => return Some(format!("Invalid URL: {e}")),
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Some("Invalid URL: expected an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some("Invalid URL: missing host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("URL must not contain user info (user:password@)".into());
    }
    match address::check_destination(&url, urls == UrlPolicy::AllowPrivate) {
        Ok(()) => None,
        Err(UrlRefusal::Forbidden { addr, reason }) => {
            Some(format!("URL must not point at a {reason} address ({addr}); use a public host"))
        }
        Err(e) => Some(format!("Invalid URL: {e}")),
    }
}

/// SHA-256 of the body in a canonical form (object keys sorted, no whitespace), so
/// an idempotent replay matches however the client orders its keys.
pub fn fingerprint(body: &Value) -> [u8; 32] {
    let mut canonical = Vec::with_capacity(256);
    write_canonical(body, &mut canonical);
    Sha256::digest(&canonical).into()
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // Sorting here, not relying on serde_json's map order: a dependency turning on
            // `preserve_order` would otherwise silently change every fingerprint.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(body: Value) -> BTreeMap<String, Vec<String>> {
        parse_generate(&body, UrlPolicy::PublicOnly).expect_err("should be refused").details()
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let r = parse_generate(&json!({"model": "hailuo-2.3", "prompt": "a cat"}), UrlPolicy::PublicOnly).unwrap();
        assert_eq!(r.model, ModelId::Hailuo23);
        assert_eq!(r.duration, Duration::Six);
        assert_eq!(r.resolution, Resolution::P768);
        assert_eq!(r.webhook_events, None);
    }

    #[test]
    fn full_hailuo_02_request_parses() {
        let r = parse_generate(
            &json!({
                "model": "hailuo-02", "prompt": "x",
                "hailuoParams": {"duration": 10, "resolution": "768p", "image": "https://e.com/a.png",
                                 "end_image": "data:image/png;base64,iVBORw0KGgo=", "prompt_optimizer": false},
                "webhookUrl": "https://hooks.example.com/x", "webhookEvents": ["failed", "completed", "failed"]
            }),
            UrlPolicy::PublicOnly,
        )
        .unwrap();
        assert_eq!(r.duration, Duration::Ten);
        assert_eq!(r.image, Some(ImageRef::Url("https://e.com/a.png".into())));
        assert!(matches!(r.end_image, Some(ImageRef::Data(_))));
        assert_eq!(r.prompt_optimizer, Some(false));
        assert_eq!(r.webhook_events, Some(vec![WebhookEvent::Completed, WebhookEvent::Failed]));
    }

    #[test]
    fn each_rule_reports_its_path() {
        let table: Vec<(Value, &str)> = vec![
            (json!({"prompt": "x"}), "model"),
            (json!({"model": "sora-2", "prompt": "x"}), "model"),
            (json!({"model": 3, "prompt": "x"}), "model"),
            (json!({"model": "hailuo-2.3"}), "prompt"),
            (json!({"model": "hailuo-2.3", "prompt": ""}), "prompt"),
            (json!({"model": "hailuo-2.3", "prompt": "   "}), "prompt"),
            (json!({"model": "hailuo-2.3", "prompt": "é".repeat(2001)}), "prompt"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "seed": 1}), "seed"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"fps": 1}}), "hailuoParams.fps"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": []}), "hailuoParams"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"duration": 8}}), "hailuoParams.duration"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"duration": "6"}}), "hailuoParams.duration"),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"resolution": "720p"}}),
                "hailuoParams.resolution",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"resolution": "1080p", "duration": 10}}),
                "hailuoParams.duration",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "ftp://x/y.png"}}),
                "hailuoParams.image",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "data:text/plain;base64,aGk="}}),
                "hailuoParams.image",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "data:image/png;base64,@@@"}}),
                "hailuoParams.image",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": "https://e.com/a.png", "end_image": "https://e.com/b.png"}}),
                "hailuoParams.end_image",
            ),
            (
                json!({"model": "hailuo-02", "prompt": "x", "hailuoParams": {"end_image": "https://e.com/b.png"}}),
                "hailuoParams.end_image",
            ),
            (
                json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"prompt_optimizer": "yes"}}),
                "hailuoParams.prompt_optimizer",
            ),
            (json!({"model": "hailuo-2.3-fast", "prompt": "x"}), "hailuoParams.image"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": "not a url"}), "webhookUrl"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": "https://"}), "webhookUrl"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "webhookEvents": []}), "webhookEvents"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "webhookEvents": "completed"}), "webhookEvents"),
            (json!({"model": "hailuo-2.3", "prompt": "x", "webhookEvents": ["completed", "done"]}), "webhookEvents.1"),
        ];
        for (body, path) in table {
            let errs = errors_of(body.clone());
            assert!(errs.contains_key(path), "{body} should fail at {path}, got {errs:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = errors_of(json!({"model": "nope", "prompt": "", "extra": true, "hailuoParams": {"duration": 7}}));
        let paths: Vec<_> = errs.keys().map(String::as_str).collect();
        assert_eq!(paths, ["extra", "hailuoParams.duration", "model", "prompt"]);
    }

    #[test]
    fn non_objects_are_refused_at_the_root() {
        for body in [json!([]), json!("x"), json!(null), json!(1)] {
            assert!(errors_of(body).contains_key(ROOT_PATH));
        }
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(
            r#"{"model":"hailuo-2.3","prompt":"x","hailuoParams":{"duration":6,"resolution":"768p"}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"hailuoParams":{"resolution":"768p","duration":6},"prompt":"x","model":"hailuo-2.3"}"#,
        )
        .unwrap();
        let c: Value = serde_json::from_str(r#"{"model":"hailuo-2.3","prompt":"y"}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    fn body_with(extra: (&str, Value)) -> Value {
        let mut body = json!({"model": "hailuo-2.3", "prompt": "x"});
        body[extra.0] = extra.1;
        body
    }

    /// Bytes of the `details` object as the API writes it.
    fn details_size(errors: &ValidationErrors) -> usize {
        serde_json::to_string(&errors.details()).unwrap().len()
    }

    #[test]
    fn half_a_million_wrong_events_list_fifty_and_count_the_rest() {
        let body = body_with(("webhookEvents", Value::Array(vec![json!(0); 500_000])));
        let errors = parse_generate(&body, UrlPolicy::PublicOnly).unwrap_err();
        assert_eq!(errors.listed().values().map(Vec::len).sum::<usize>(), MAX_LISTED_PROBLEMS);
        assert_eq!(errors.omitted(), 500_000 - MAX_LISTED_PROBLEMS);
        let details = errors.details();
        assert_eq!(details[ROOT_PATH], ["499950 more problems were found and not listed"]);
        assert!(details_size(&errors) < 8 * 1024, "{}", details_size(&errors));
    }

    #[test]
    fn thousands_of_unknown_keys_come_after_the_real_problems() {
        let mut body = json!({"prompt": ""});
        for i in 0..5000 {
            body[format!("k{i}")] = json!(1);
        }
        let details = errors_of(body);
        // The known fields' problems are listed although 5,000 unknown keys came first.
        assert!(details.contains_key("model") && details.contains_key("prompt"), "{details:?}");
        assert_eq!(details.len(), MAX_LISTED_PROBLEMS + 1, "50 paths and the count");
        assert_eq!(details[ROOT_PATH], ["4952 more problems were found and not listed"]);
    }

    #[test]
    fn client_text_is_quoted_short_and_without_control_characters() {
        let long_key = format!("{}\u{0}tail", "k".repeat(100_000));
        let details = errors_of(body_with((&long_key, json!(1))));
        let (path, messages) = details.iter().next().unwrap();
        assert_eq!(path.chars().count(), MAX_QUOTED_CHARS + 1, "the key is cut and marked with …");
        assert!(path.ends_with('…'));
        assert!(messages[0].len() < 300, "{}", messages[0].len());

        let details = errors_of(json!({"model": format!("m\n{}", "x".repeat(1_000_000)), "prompt": "x"}));
        assert!(details["model"][0].len() < 300);
        assert!(details["model"][0].starts_with("Unknown model 'm?xxx"));
        assert_eq!(quote("short"), "short");
    }

    #[test]
    fn the_byte_budget_holds_whatever_the_messages() {
        let mut errors = ValidationErrors::default();
        for i in 0..10_000 {
            // Control characters cost six bytes each once escaped in JSON.
            errors.add(format!("p{i}"), "\u{1}".repeat(MAX_QUOTED_CHARS));
        }
        assert!(details_size(&errors) <= MAX_LISTED_BYTES + 100, "{}", details_size(&errors));
        assert_eq!(errors.listed().len() + errors.omitted(), 10_000);
        assert!(!errors.is_empty());
    }

    #[test]
    fn the_servers_own_upload_urls_pass_on_loopback_and_nothing_else_does() {
        let own = UrlPolicy::PublicExceptOwnUploads("http://127.0.0.1:8080/v2/uploads/");
        let body = |image: &str, webhook: &str| json!({"model": "hailuo-2.3-fast", "prompt": "p", "hailuoParams": {"image": image}, "webhookUrl": webhook});
        let upload = "http://127.0.0.1:8080/v2/uploads/0192/abc.png";
        let r = parse_generate(&body(upload, "https://hooks.example.com/x"), own).unwrap();
        assert_eq!(r.image, Some(ImageRef::Url(upload.into())));
        // Anything else on loopback is still refused, and the exception is for images only.
        let e = parse_generate(&body("http://127.0.0.1:8080/v2/results/x.mp4", "https://hooks.example.com/x"), own)
            .unwrap_err();
        assert!(e.details().contains_key("hailuoParams.image"), "{e:?}");
        let e = parse_generate(&body(upload, "http://127.0.0.1:8080/v2/uploads/hook"), own).unwrap_err();
        assert!(e.details().contains_key("webhookUrl") && !e.details().contains_key("hailuoParams.image"), "{e:?}");
        // Without the exception the upload URL is a loopback literal like any other.
        assert!(parse_generate(&body(upload, "https://hooks.example.com/x"), UrlPolicy::PublicOnly).is_err());
    }

    #[test]
    fn urls_are_parsed_as_the_http_client_will_read_them() {
        let refused = [
            "http://[::1",
            "http://[fe80::1%25lo]/x",
            "https://user:pw@example.com/hook",
            "https://user@example.com/hook",
            "ftp://example.com/x",
            "javascript:alert(1)",
            "http://",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.7/hook",
            "http://0x7f.1/hook",
            "http://[fe80::1]/x",
            "http://[::ffff:192.168.0.1]/x",
        ];
        for url in refused {
            for field in ["webhookUrl", "image"] {
                let body = if field == "image" {
                    json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": url}})
                } else {
                    body_with(("webhookUrl", json!(url)))
                };
                let path = if field == "image" { "hailuoParams.image" } else { "webhookUrl" };
                let details = errors_of(body);
                assert!(details.contains_key(path), "{url} must be refused at {path}: {details:?}");
            }
        }
        for url in
            ["https://hooks.example.com/x?a=1", "http://8.8.8.8/x", "http://[2606:4700::1111]/x", "http://localhost/x"]
        {
            assert!(parse_generate(&body_with(("webhookUrl", json!(url))), UrlPolicy::PublicOnly).is_ok(), "{url}");
        }
    }

    #[test]
    fn private_addresses_pass_when_the_operator_allows_them() {
        for url in ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://10.0.0.7/hook"] {
            let body = body_with(("webhookUrl", json!(url)));
            assert!(parse_generate(&body, UrlPolicy::AllowPrivate).is_ok(), "{url}");
            assert!(parse_generate(&body, UrlPolicy::PublicOnly).is_err(), "{url}");
        }
        // Unparseable URLs and user info are refused whatever the setting.
        for url in ["http://[::1", "http://u:p@127.0.0.1/"] {
            assert!(parse_generate(&body_with(("webhookUrl", json!(url))), UrlPolicy::AllowPrivate).is_err());
        }
    }

    /// Found by the property tests below: the `data:` prefix check sliced the string at
    /// byte 5, inside a multi-byte character, and the handler panicked (a 500).
    #[test]
    fn an_image_with_a_multibyte_character_across_byte_five_is_a_400_not_a_panic() {
        for image in ["ଅ𐇐", "abcdé", "data\u{e9}image"] {
            let details = errors_of(json!({"model": "hailuo-2.3", "prompt": "x", "hailuoParams": {"image": image}}));
            assert!(details.contains_key("hailuoParams.image"), "{image}: {details:?}");
        }
    }

    /// Property tests: whatever the body, validation answers without panicking and its
    /// answer stays within the bounds. Case counts are bounded so this runs in the
    /// normal suite in a few seconds.
    mod properties {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep.
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                "\\PC{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..6).prop_map(Value::Array),
                    btree_map("\\PC{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Strings near what the validator looks for: URLs, data URLs, odd Unicode.
        fn tricky_string() -> impl Strategy<Value = String> {
            let prefixes = prop_oneof![
                Just(""),
                Just("http://"),
                Just("https://"),
                Just("HTTP://"),
                Just("data:"),
                Just("DATA:image/png;base64,"),
                Just("data:image/"),
                Just("http://["),
                Just("https://user@"),
                Just("http://127.0.0.1"),
            ];
            (prefixes, "\\PC{0,24}", "[a-z0-9:/\\[\\]%@.;,=+]{0,24}").prop_map(|(p, a, b)| format!("{p}{a}{b}"))
        }

        fn field_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                4 => tricky_string().prop_map(Value::String),
                1 => prop_oneof![Just("hailuo-2.3"), Just("hailuo-02"), Just("hailuo-2.3-fast")].prop_map(|s| json!(s)),
                1 => prop_oneof![Just(6), Just(10), Just(7)].prop_map(|n| json!(n)),
                1 => prop_oneof![Just("768p"), Just("1080p")].prop_map(|s| json!(s)),
                1 => vec(prop_oneof![Just("progress"), Just("completed"), Just("failed"), Just("x")], 0..5)
                    .prop_map(|v| json!(v)),
                2 => any_json(),
            ]
        }

        /// Objects whose keys are mostly the ones the validator knows.
        fn near_valid_body() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                4 => proptest::sample::select(TOP_LEVEL_KEYS.to_vec()).prop_map(str::to_string),
                1 => "\\PC{0,6}",
            ];
            let param_key = prop_oneof![
                4 => proptest::sample::select(PARAM_KEYS.to_vec()).prop_map(str::to_string),
                1 => "\\PC{0,6}",
            ];
            let params = btree_map(param_key, field_value(), 0..6).prop_map(|m| Value::Object(m.into_iter().collect()));
            (btree_map(key, field_value(), 0..6), proptest::option::of(params)).prop_map(|(m, params)| {
                let mut obj: Map<String, Value> = m.into_iter().collect();
                if let Some(p) = params {
                    obj.insert("hailuoParams".into(), p);
                }
                Value::Object(obj)
            })
        }

        fn check_bounded(body: &Value) {
            for urls in [UrlPolicy::PublicOnly, UrlPolicy::AllowPrivate] {
                match parse_generate(body, urls) {
                    Ok(r) => assert!(r.prompt.chars().count() <= PROMPT_MAX_CHARS),
                    Err(e) => {
                        assert!(!e.is_empty());
                        assert!(e.listed().values().map(Vec::len).sum::<usize>() <= MAX_LISTED_PROBLEMS);
                        assert!(serde_json::to_string(&e.details()).unwrap().len() <= MAX_LISTED_BYTES + 100);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_json_body_is_answered_within_bounds(body in any_json()) {
                check_bounded(&body);
            }

            #[test]
            fn near_valid_bodies_are_answered_within_bounds(body in near_valid_body()) {
                check_bounded(&body);
            }

            #[test]
            fn accepted_urls_parse_and_name_no_private_literal(url in tricky_string()) {
                let body = json!({"model": "hailuo-2.3", "prompt": "x", "webhookUrl": url,
                                  "hailuoParams": {"image": url}});
                if let Ok(r) = parse_generate(&body, UrlPolicy::PublicOnly) {
                    let parsed = url::Url::parse(r.webhook_url.as_deref().unwrap()).expect("accepted URLs parse");
                    prop_assert!(address::check_destination(&parsed, false).is_ok());
                    prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
                }
            }
        }
    }
}
