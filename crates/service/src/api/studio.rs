//! The Studio: the browser UI at `/`, made of the static files in `crates/service/studio/`
//! embedded in the binary. It is a client of the public API like any other (`/v2/...`
//! with the user's key); this module only hands out the files and must never grow
//! routes of its own for the page to call.
//!
//! Caching: the page at `/` is revalidated on every load (`no-cache` + ETag), and names
//! its scripts and styles under `/studio/<version>/`, where the version is a hash of
//! every asset, so those are cached for a year and a new binary changes their URLs.
//! Every answer carries a strict Content-Security-Policy: everything from this origin,
//! no inline script or style, and media from the origins result videos may come from.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::config::{Config, ResultsBackend, VideoUrls};
use crate::state::AppState;

/// The page; `{{VERSION}}` and `{{MEDIA_ORIGINS}}` are filled in at startup.
const INDEX: &str = include_str!("../../studio/index.html");

/// The files the page loads, by name under `/studio/<version>/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("studio.css", "text/css; charset=utf-8", include_bytes!("../../studio/studio.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/api.js")),
    ("generate.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/generate.js")),
    ("history.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/history.js")),
    ("progress.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/progress.js")),
    ("code.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/code.js")),
    ("util.js", "text/javascript; charset=utf-8", include_bytes!("../../studio/util.js")),
];

/// The rendered page and its headers, made once when the router is built.
struct Studio {
    version: String,
    index: String,
    index_etag: HeaderValue,
    csp: HeaderValue,
}

pub(crate) fn router(config: &Config) -> Router<AppState> {
    let studio = Arc::new(Studio::new(config));
    let page = studio.clone();
    Router::new()
        .route("/", get(move |headers: HeaderMap| async move { page.get_index(&headers) }))
        .route("/studio/{version}/{file}", get(get_asset).with_state(studio))
}

impl Studio {
    fn new(config: &Config) -> Self {
        let mut hasher = Sha256::new();
        for (name, _, body) in ASSETS {
            hasher.update(name.as_bytes());
            hasher.update(body);
        }
        let version = hex(&hasher.finalize()[..6]);
        let origins = media_origins(config);
        let index = INDEX.replace("{{VERSION}}", &version).replace("{{MEDIA_ORIGINS}}", &origins.join(" "));
        let index_etag = etag(index.as_bytes());
        let extra = origins.iter().map(|o| format!(" {o}")).collect::<String>();
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' blob: data:{extra}; media-src 'self' blob: data:{extra}; font-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        let csp = HeaderValue::from_str(&csp).expect("origins come from validated config URLs: visible ASCII");
        Self { version, index, index_etag, csp }
    }

    fn get_index(&self, headers: &HeaderMap) -> Response {
        self.respond(headers, "text/html; charset=utf-8", "no-cache", &self.index_etag, self.index.clone().into_bytes())
    }

    /// A 200 with the body, or a 304 when the client's `If-None-Match` names this ETag.
    fn respond(
        &self,
        req: &HeaderMap,
        content_type: &str,
        cache: &'static str,
        tag: &HeaderValue,
        body: Vec<u8>,
    ) -> Response {
        let fresh = req
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag.to_str().unwrap_or("") || t.trim() == "*"));
        let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("static content type"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::ETAG, tag.clone());
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        response
    }
}

async fn get_asset(
    State(studio): State<Arc<Studio>>,
    Path((version, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return ApiError::NotFound("No such Studio file".into()).into_response();
    };
    // An old page asking for its own version's files after an upgrade gets today's,
    // but not cached for long: a versioned URL must never pin other bytes for a year.
    let cache = if version == studio.version { "public, max-age=31536000, immutable" } else { "no-cache" };
    studio.respond(&headers, content_type, cache, &etag(body), body.to_vec())
}

/// The origins, other than this one, that result videos and uploads may be served
/// from: the configured public base URL (it may differ from the address the page was
/// opened on), and the bucket when videos are handed out as presigned S3 URLs.
fn media_origins(config: &Config) -> Vec<String> {
    let mut origins = Vec::new();
    let mut push = |raw: &str| {
        if let Ok(url) = url::Url::parse(raw) {
            let origin = url.origin().ascii_serialization();
            if origin != "null" && !origins.contains(&origin) {
                origins.push(origin);
            }
        }
    };
    if let Some(base) = &config.engine.public_base_url {
        push(base);
    }
    let s3 = &config.results.s3;
    if config.results.backend == ResultsBackend::S3 && s3.video_urls == VideoUrls::Presigned {
        match (&s3.endpoint, &s3.bucket) {
            (Some(endpoint), _) if s3.path_style => push(endpoint),
            (Some(endpoint), Some(bucket)) => {
                if let Ok(mut url) = url::Url::parse(endpoint) {
                    let host = url.host_str().map(|h| format!("{bucket}.{h}"));
                    if let Some(host) = host {
                        if url.set_host(Some(&host)).is_ok() {
                            push(url.as_str());
                        }
                    }
                }
            }
            (Some(endpoint), None) => push(endpoint),
            // AWS itself, addressed as results/s3.rs has object_store do it.
            (None, Some(_)) if s3.path_style => push(&format!("https://s3.{}.amazonaws.com", s3.region)),
            (None, Some(bucket)) => push(&format!("https://{bucket}.s3.{}.amazonaws.com", s3.region)),
            (None, None) => {}
        }
    }
    origins
}

fn etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    HeaderValue::from_str(&format!("\"{}\"", hex(&digest[..12]))).expect("hex is a valid header value")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for (name, _, _) in ASSETS {
            let js_or_css = name.ends_with(".js") || name.ends_with(".css");
            assert!(js_or_css, "{name}");
        }
        for needle in ["/studio/{{VERSION}}/app.js", "/studio/{{VERSION}}/studio.css"] {
            assert!(INDEX.contains(needle), "index.html names {needle}");
        }
        // Every module imported by another is an asset.
        for (name, _, body) in ASSETS {
            let text = std::str::from_utf8(body).unwrap();
            for import in text.split("from './").skip(1) {
                let target = import.split('\'').next().unwrap();
                assert!(ASSETS.iter().any(|(n, _, _)| *n == target), "{name} imports {target}, which is not served");
            }
        }
    }

    #[test]
    fn media_may_come_from_the_public_base_url_and_a_presigning_bucket() {
        let mut config = Config::defaults();
        assert_eq!(media_origins(&config), Vec::<String>::new());
        config.engine.public_base_url = Some("https://video.example.com/base".into());
        assert_eq!(media_origins(&config), ["https://video.example.com"]);
        config.results.backend = ResultsBackend::S3;
        config.results.s3.bucket = Some("clips".into());
        config.results.s3.region = "eu-west-1".into();
        assert_eq!(media_origins(&config).len(), 1, "proxied videos come from reelgate");
        config.results.s3.video_urls = VideoUrls::Presigned;
        config.results.s3.path_style = false;
        assert_eq!(media_origins(&config)[1], "https://clips.s3.eu-west-1.amazonaws.com");
        config.results.s3.endpoint = Some("https://s3.example.net".into());
        assert_eq!(media_origins(&config)[1], "https://clips.s3.example.net");
        config.results.s3.endpoint = Some("http://127.0.0.1:9000".into());
        config.results.s3.path_style = true;
        assert_eq!(media_origins(&config)[1], "http://127.0.0.1:9000");
        // The origins go into the CSP header as they are.
        let studio = Studio::new(&config);
        let csp = studio.csp.to_str().unwrap();
        assert!(csp.contains("media-src 'self' blob: data: https://video.example.com http://127.0.0.1:9000;"), "{csp}");
        assert!(studio.index.contains("content=\"https://video.example.com http://127.0.0.1:9000\""));
    }

    #[test]
    fn etags_are_quoted_and_depend_on_the_bytes() {
        let a = etag(b"a");
        assert!(a.to_str().unwrap().starts_with('"') && a.to_str().unwrap().ends_with('"'));
        assert_ne!(a, etag(b"b"));
    }
}
