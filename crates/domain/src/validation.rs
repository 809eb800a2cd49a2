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

/// Problems found in a request, by JSON path, each with one or more messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub BTreeMap<String, Vec<String>>);

impl ValidationErrors {
    /// Records a problem at `path`.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.entry(path.into()).or_default().push(message.into());
    }

    /// A single problem with the body as a whole.
    pub fn root(message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.add(ROOT_PATH, message);
        e
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

/// Parses and checks a generate body, reporting every problem found.
pub fn parse_generate(body: &Value) -> Result<GenerateRequest, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let Some(obj) = body.as_object() else {
        return Err(ValidationErrors::root("Expected a JSON object"));
    };
    for key in obj.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            errors.add(key.clone(), format!("Unrecognized key '{key}'"));
        }
    }

    let model = match obj.get("model") {
        None => {
            errors.add("model", "Required");
            None
        }
        Some(Value::String(s)) => match ModelId::parse(s) {
            Some(m) => Some(m),
            None => {
                let known: Vec<_> = ModelId::ALL.iter().map(|m| m.as_str()).collect();
                errors.add("model", format!("Unknown model '{s}'; expected one of {}", known.join(", ")));
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

    let params = parse_params(obj.get("hailuoParams"), model, &mut errors);
    let webhook_url = match obj.get("webhookUrl") {
        None => None,
        Some(v) => check_http_url(v, "webhookUrl", &mut errors),
    };
    let webhook_events = obj.get("webhookEvents").and_then(|v| parse_events(v, &mut errors));

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

fn parse_params(value: Option<&Value>, model: Option<ModelId>, errors: &mut ValidationErrors) -> Params {
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
    for key in obj.keys() {
        if !PARAM_KEYS.contains(&key.as_str()) {
            errors.add(format!("hailuoParams.{key}"), format!("Unrecognized key '{key}'"));
        }
    }
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
        p.image = check_image(v, "hailuoParams.image", errors);
    }
    if let Some(v) = obj.get("end_image") {
        let accepted = model.is_none_or(ModelId::accepts_end_image);
        if !accepted {
            errors.add("hailuoParams.end_image", "end_image is only supported by hailuo-02");
        } else if !obj.contains_key("image") {
            errors.add("hailuoParams.end_image", "end_image requires image (the first frame)");
        } else {
            p.end_image = check_image(v, "hailuoParams.end_image", errors);
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
    p
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
            None => errors.add(format!("webhookEvents.{i}"), "Expected 'progress', 'completed' or 'failed'"),
        }
    }
    events.sort();
    Some(events)
}

fn check_image(value: &Value, path: &str, errors: &mut ValidationErrors) -> Option<ImageRef> {
    let Some(s) = value.as_str() else {
        errors.add(path, "Expected string");
        return None;
    };
    if s.len() >= 5 && s[..5].eq_ignore_ascii_case("data:") {
        return match check_data_url(s) {
            Ok(()) => Some(ImageRef::Data(s.to_string())),
            Err(msg) => {
                errors.add(path, msg);
                None
            }
        };
    }
    check_http_url(value, path, errors).map(ImageRef::Url)
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
        return Err(format!("Unsupported image type 'image/{subtype}'; expected JPEG, PNG or WebP"));
    }
    if payload.is_empty() {
        return Err("Data URL carries no image data".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| "Data URL payload is not valid base64".to_string())?;
    Ok(())
}

/// Checks that `value` is an absolute http(s) URL with a host.
fn check_http_url(value: &Value, path: &str, errors: &mut ValidationErrors) -> Option<String> {
    let Some(s) = value.as_str() else {
        errors.add(path, "Expected string");
        return None;
    };
    match http_url_problem(s) {
        None => Some(s.to_string()),
        Some(msg) => {
            errors.add(path, msg);
            None
        }
    }
}

fn http_url_problem(s: &str) -> Option<String> {
    if s.len() > URL_MAX_LEN {
        return Some(format!("URL must be at most {URL_MAX_LEN} characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("Invalid URL: contains whitespace or control characters".into());
    }
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return Some("Invalid URL: expected an http:// or https:// URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host_only = if host.starts_with('[') {
        host.split(']').next().map(|h| h.trim_start_matches('[')).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if host_only.is_empty() {
        return Some("Invalid URL: missing host".into());
    }
    None
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
        parse_generate(&body).expect_err("should be refused").0
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let r = parse_generate(&json!({"model": "hailuo-2.3", "prompt": "a cat"})).unwrap();
        assert_eq!(r.model, ModelId::Hailuo23);
        assert_eq!(r.duration, Duration::Six);
        assert_eq!(r.resolution, Resolution::P768);
        assert_eq!(r.webhook_events, None);
    }

    #[test]
    fn full_hailuo_02_request_parses() {
        let r = parse_generate(&json!({
            "model": "hailuo-02", "prompt": "x",
            "hailuoParams": {"duration": 10, "resolution": "768p", "image": "https://e.com/a.png",
                             "end_image": "data:image/png;base64,iVBORw0KGgo=", "prompt_optimizer": false},
            "webhookUrl": "https://hooks.example.com/x", "webhookEvents": ["failed", "completed", "failed"]
        }))
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
}
