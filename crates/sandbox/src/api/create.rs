//! `POST /v1/video_generation`: authentication, proxy-level faults, the RPM window, MiniMax's
//! parameter rules, scripted refusals, the callback handshake, then a new task.
//!
//! The order matters for what a client can observe: proxy faults (`http-*`, `hang`) happen before
//! MiniMax sees the request, so they never count against the RPM window; everything after the
//! window check does, including requests later refused with 2013, as a real RPM limit would.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use rand::Rng as _;
use serde_json::{Map, Value};

use crate::api::{authenticate, key_fault, ok_json, Shared};
use crate::callback::Stage;
use crate::images::ImageRef;
use crate::markers::{self, CreateFault, Markers};
use crate::rules::{self, Mode};
use crate::saved::{SavedImage, TaskRecord};
use crate::tasks::{NewTask, RenderSpec};
use crate::wire::{self, BaseResp, CreateResponse};

fn refuse(base_resp: BaseResp) -> Response {
    ok_json(&CreateResponse { task_id: String::new(), base_resp })
}

pub async fn create_video(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match authenticate(&shared, &headers) {
        Ok(key) => key,
        Err(base_resp) => return refuse(base_resp),
    };
    let body: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
    let prompt = body.as_ref().and_then(|b| b.get("prompt")).and_then(Value::as_str).unwrap_or("");
    let markers = markers::parse(prompt);

    // Proxy-level faults: scripted by marker, or drawn at random.
    let counted = markers.as_ref().is_ok_and(|m| !m.create.is_empty() || m.always_refuse.is_some());
    let scripted = match &markers {
        Ok(m) if counted => {
            let mut attempts = shared.attempts.lock().expect("attempt lock poisoned only by a panic inside it");
            let n = attempts.entry(prompt.to_owned()).or_insert(0);
            let attempt = *n;
            *n += 1;
            m.create_fault(attempt)
        }
        _ => None,
    };
    match scripted {
        Some(CreateFault::Http(status)) => return proxy_error(status),
        Some(CreateFault::Hang) => {
            shared.until_shutdown().await;
            return proxy_error(503);
        }
        _ => {}
    }
    if shared.chance(shared.config.faults.http_502) {
        return proxy_error(502);
    }

    let now = shared.clock.now_ms();
    if !shared.limiter.admit_create(&key, now) {
        if counted {
            // A request the rate limit turned away never reached the scripted fault: give the
            // attempt back, so `transient-CODExN` still means N answers of CODE.
            if let Some(n) =
                shared.attempts.lock().expect("attempt lock poisoned only by a panic inside it").get_mut(prompt)
            {
                *n = n.saturating_sub(1);
            }
        }
        return refuse(BaseResp::code(wire::RATE_LIMIT));
    }
    if let Some(base_resp) = key_fault(&key) {
        return refuse(base_resp);
    }
    let Some(body) = &body else {
        return refuse(BaseResp::invalid("request body must be a JSON object"));
    };
    let markers = match markers {
        Ok(m) => m,
        Err(detail) => return refuse(BaseResp::invalid(detail)),
    };
    let request = match validate(&shared, body).await {
        Ok(r) => r,
        Err(detail) => return refuse(BaseResp::invalid(detail)),
    };
    if let Some(CreateFault::Code(code)) = scripted {
        return refuse(BaseResp::code(code));
    }
    if shared.chance(shared.config.faults.create_error) {
        let code = shared.config.faults.create_error_code.unwrap_or(wire::UNKNOWN_ERROR);
        return refuse(BaseResp::code(code));
    }
    if let Some(url) = &request.callback_url {
        shared.limiter.callback_handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(why) = crate::callback::handshake(&shared.http, url).await {
            tracing::debug!(reason = %why, "sandbox callback handshake failed");
            return refuse(BaseResp::invalid("fail to check callback url"));
        }
    }

    let task_id = insert_task(&shared, &key, prompt, request, &markers);
    if let Err(e) = save_task(&shared, task_id, &key).await {
        // Answering with a task id that a restart could lose would break MiniMax's promise;
        // an error the client retries does not.
        tracing::error!(error = %e, "sandbox could not keep a new task on disk");
        return refuse(BaseResp::code(wire::UNKNOWN_ERROR));
    }
    shared.limiter.task_created(&key);
    ok_json(&CreateResponse { task_id: task_id.to_string(), base_resp: BaseResp::ok() })
}

/// A create request that passed every rule.
struct Validated {
    resolution: u32,
    duration: u32,
    first_frame: Option<ImageRef>,
    last_frame: Option<ImageRef>,
    callback_url: Option<String>,
}

/// Reads an optional field of a given JSON type; null counts as absent.
fn field<'a, T>(
    body: &'a Map<String, Value>,
    name: &str,
    kind: &str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| format!("{name} must be {kind}")),
    }
}

async fn validate(shared: &Shared, body: &Map<String, Value>) -> Result<Validated, String> {
    let model = field(body, "model", "a string", Value::as_str)?;
    let prompt = field(body, "prompt", "a string", Value::as_str)?;
    let duration = field(body, "duration", "an integer", Value::as_i64)?;
    let resolution = field(body, "resolution", "a string", Value::as_str)?;
    let first = field(body, "first_frame_image", "a string", Value::as_str)?;
    let last = field(body, "last_frame_image", "a string", Value::as_str)?;
    let subject = field(body, "subject_reference", "an array", Value::as_array)?;
    let callback_url = field(body, "callback_url", "a string", Value::as_str)?;
    // Accepted and ignored: they change how MiniMax works, not what the sandbox answers.
    for flag in ["prompt_optimizer", "fast_pretreatment", "aigc_watermark"] {
        field(body, flag, "a boolean", Value::as_bool)?;
    }

    let mode = if subject.is_some() {
        Mode::SubjectReference
    } else if last.is_some() {
        Mode::FirstLastFrame
    } else if first.is_some() {
        Mode::ImageToVideo
    } else {
        Mode::TextToVideo
    };
    let params = rules::check_params(model, mode, resolution, duration).map_err(|e| e.to_string())?;
    if let Some(prompt) = prompt {
        rules::check_prompt(prompt)?;
    }
    if mode == Mode::TextToVideo && prompt.is_none_or(str::is_empty) {
        return Err("prompt is required".into());
    }
    let subject_image = match subject {
        Some(items) => Some(subject_image(items)?),
        None => None,
    };
    let first_frame = match first {
        Some(v) => Some(shared.images.intake("first_frame_image", v).await?),
        None => None,
    };
    let last_frame = match last {
        Some(v) => Some(shared.images.intake("last_frame_image", v).await?),
        None => None,
    };
    if let Some(v) = subject_image {
        // Checked like a frame, but the picture of a character is not a frame of the video.
        shared.images.intake("subject_reference.image", v).await?;
    }
    if let Some(url) = callback_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("fail to check callback url".into());
        }
    }
    Ok(Validated {
        resolution: params.resolution,
        duration: params.duration,
        first_frame,
        last_frame,
        callback_url: callback_url.map(str::to_owned),
    })
}

/// `subject_reference`: exactly one `{"type": "character", "image": ["<one image>"]}`.
fn subject_image(items: &[Value]) -> Result<&str, String> {
    let [item] = items else {
        return Err("subject_reference must contain exactly one element".into());
    };
    if item.get("type").and_then(Value::as_str) != Some("character") {
        return Err("subject_reference type must be character".into());
    }
    match item.get("image").and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::String(image)]) => Ok(image),
        _ => Err("subject_reference image must be an array with exactly one image".into()),
    }
}

fn insert_task(shared: &Shared, key: &str, prompt: &str, request: Validated, markers: &Markers) -> u64 {
    let faults = markers.task_faults();
    let mut latency = shared.latency_ms as f64;
    if let Some(f) = &faults {
        latency *= f64::from(f.slow_factor.max(1));
    }
    let jitter = shared.config.latency_jitter.clamp(0.0, 1.0);
    if jitter > 0.0 {
        let factor = shared.rng.lock().expect("rng lock poisoned only by a panic inside it").random_range(-1.0..=1.0);
        latency *= 1.0 + jitter * factor;
    }
    let latency_ms = latency.clamp(0.0, f64::from(u32::MAX)) as u32;

    let fail_code = match faults.as_ref().and_then(|f| f.fail_code) {
        Some(code) => code,
        None if shared.chance(shared.config.faults.task_fail) => wire::OUTPUT_SENSITIVE,
        None => 0,
    };
    // The output follows the first frame's aspect (the last frame's when it comes alone).
    let frame = request.first_frame.or(request.last_frame).map(|i| (i.width, i.height));
    let (width, height) = crate::renderer::output_size(request.resolution, frame);
    let spec = RenderSpec {
        width,
        height,
        seconds: request.duration,
        prompt: shared.tasks.intern_prompt(prompt),
        first_frame: request.first_frame,
        last_frame: request.last_frame,
    };
    let created_ms = shared.clock.now_ms();
    let has_callback = request.callback_url.is_some();
    let (task_id, _) = shared.tasks.insert(NewTask {
        owner: shared.owner(key),
        created_ms,
        latency_ms,
        spec,
        fail_code: u16::try_from(fail_code).unwrap_or(u16::MAX),
        faults,
        callback_url: request.callback_url,
    });
    if has_callback {
        let processing_at = shared.tasks.with_task(task_id, None, |t, _| t.processing_at()).unwrap_or(created_ms);
        shared.pusher.schedule(processing_at, task_id, Stage::Processing);
    }
    task_id
}

/// Writes the new task to the data directory, when the sandbox keeps its tasks, before the
/// create answers (see `saved`).
async fn save_task(shared: &Shared, task_id: u64, key: &str) -> std::io::Result<()> {
    let Some(files) = shared.saved.clone() else { return Ok(()) };
    let key_sha256 = crate::images::hex(&crate::api::key_digest(key));
    let record = shared
        .tasks
        .with_task(task_id, None, |task, _| TaskRecord {
            task_id,
            file_id: task.file_id,
            key_sha256,
            created_unix_ms: shared.clock.unix_ms(task.created_ms),
            latency_ms: task.latency_ms,
            fail_code: task.fail_code,
            prompt: task.spec.prompt.to_string(),
            width: task.spec.width,
            height: task.spec.height,
            seconds: task.spec.seconds,
            first_frame: task.spec.first_frame.as_ref().map(SavedImage::of),
            last_frame: task.spec.last_frame.as_ref().map(SavedImage::of),
            callback_url: task.callback_url.as_deref().map(str::to_owned),
        })
        .ok_or_else(|| std::io::Error::other("the task vanished before it was saved"))?;
    tokio::task::spawn_blocking(move || files.save(&record)).await.map_err(std::io::Error::other)?
}

/// The HTML error page a reverse proxy in front of the API would answer with.
pub fn proxy_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n\
         <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    (status, Html(page)).into_response()
}
