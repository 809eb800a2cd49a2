//! The Studio: the browser UI at `/`, made of the static files in `crates/service/studio/`
//! embedded in the binary. It is a client of the public API like any other (`/v2/...`
//! with the user's key); this module only hands out the files and must never grow
//! routes of its own for the page to call.
//!
//! Caching: the page at `/` is revalidated on every load (`no-cache` + ETag), and names
//! its scripts and styles under `/studio/<version>/`, where the version is a hash of
//! every asset, so those are cached for a year and a new binary changes their URLs.
//! Every file is gzipped once at startup, for the browsers that take gzip (all do).
//! Every answer carries a strict Content-Security-Policy: everything from this origin,
//! no inline script or style, and media from the origins result videos may come from.

use std::io::Write as _;
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

/// One file as served: its bytes, gzipped too, and the ETag of each.
struct File {
    content_type: &'static str,
    body: Vec<u8>,
    etag: HeaderValue,
    gzip: Vec<u8>,
    gzip_etag: HeaderValue,
}

impl File {
    fn new(content_type: &'static str, body: Vec<u8>) -> Self {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&body).expect("writing to a Vec cannot fail");
        let gzip = encoder.finish().expect("writing to a Vec cannot fail");
        let tag = hex(&Sha256::digest(&body)[..12]);
        let etag = HeaderValue::from_str(&format!("\"{tag}\"")).expect("hex is a valid header value");
        let gzip_etag = HeaderValue::from_str(&format!("\"{tag}-gz\"")).expect("hex is a valid header value");
        Self { content_type, body, etag, gzip, gzip_etag }
    }
}

/// The rendered page, the assets and their headers, made once when the router is built.
struct Studio {
    version: String,
    index: File,
    assets: Vec<(&'static str, File)>,
    csp: HeaderValue,
}

pub(crate) fn router(config: &Config) -> Router<AppState> {
    let studio = Arc::new(Studio::new(config));
    let page = studio.clone();
    Router::new()
        .route("/", get(move |headers: HeaderMap| async move { page.respond(&headers, &page.index, "no-cache") }))
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
        let index = File::new("text/html; charset=utf-8", index.into_bytes());
        let assets =
            ASSETS.iter().map(|(name, content_type, body)| (*name, File::new(content_type, body.to_vec()))).collect();
        let extra = origins.iter().map(|o| format!(" {o}")).collect::<String>();
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' blob: data:{extra}; media-src 'self' blob: data:{extra}; font-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        let csp = HeaderValue::from_str(&csp).expect("origins come from validated config URLs: visible ASCII");
        Self { version, index, assets, csp }
    }

    /// A 200 with the file (gzipped when the client takes gzip), or a 304 when the
    /// client's `If-None-Match` names the ETag of what it would get.
    fn respond(&self, req: &HeaderMap, file: &File, cache: &'static str) -> Response {
        let gzip = accepts_gzip(req);
        let (body, tag) = if gzip { (&file.gzip, &file.gzip_etag) } else { (&file.body, &file.etag) };
        let fresh = req
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag.to_str().unwrap_or("") || t.trim() == "*"));
        let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.clone().into_response() };
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::ETAG, tag.clone());
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if gzip && !fresh {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
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
    let Some((_, asset)) = studio.assets.iter().find(|(name, _)| *name == file) else {
        return ApiError::NotFound("No such Studio file".into()).into_response();
    };
    // An old page asking for its own version's files after an upgrade gets today's,
    // but not cached for long: a versioned URL must never pin other bytes for a year.
    let cache = if version == studio.version { "public, max-age=31536000, immutable" } else { "no-cache" };
    studio.respond(&headers, asset, cache)
}

/// Whether `Accept-Encoding` lists gzip (or `*`) without `q=0`.
fn accepts_gzip(req: &HeaderMap) -> bool {
    let Some(accept) = req.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else { return false };
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0));
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
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
        let index = String::from_utf8(studio.index.body.clone()).unwrap();
        assert!(index.contains("content=\"https://video.example.com http://127.0.0.1:9000\""));
    }

    #[test]
    fn etags_are_quoted_and_differ_per_bytes_and_encoding() {
        let a = File::new("text/plain", b"a".to_vec());
        let tag = a.etag.to_str().unwrap();
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        assert_ne!(a.etag, File::new("text/plain", b"b".to_vec()).etag);
        assert_ne!(a.etag, a.gzip_etag);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a.gzip[..]), &mut plain).unwrap();
        assert_eq!(plain, b"a");
    }

    #[test]
    fn gzip_is_sent_when_accepted() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br, zstd"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
