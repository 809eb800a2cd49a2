//! Serving a site embedded in the binary: the Studio at `/` and the operator console at
//! `/admin` are each one HTML page plus the scripts and styles it names. This module owns
//! how they are handed out, the same for both; it knows nothing of what the pages do.
//!
//! Caching: the page is revalidated on every load (`no-cache` + ETag), and names its
//! assets under a versioned path, where the version is a hash of every asset, so those are
//! cached for a year and a new binary changes their URLs. Every file is gzipped once at
//! startup, for the browsers that take gzip (all do). Every answer carries a strict
//! Content-Security-Policy: everything from this origin, no inline script or style.

use std::io::Write as _;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;

/// One file of a site as compiled in: its name under the versioned path, its content
/// type and its bytes.
pub(crate) type Asset = (&'static str, &'static str, &'static [u8]);

/// The content type of a stylesheet.
pub(crate) const CSS: &str = "text/css; charset=utf-8";
/// The content type of a JavaScript module.
pub(crate) const JS: &str = "text/javascript; charset=utf-8";

/// One file as served: its bytes, gzipped too, and the ETag of each.
pub(crate) struct File {
    content_type: &'static str,
    /// The bytes as compiled in (for the page: as rendered).
    pub(crate) body: Vec<u8>,
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

/// A page and its assets, rendered and compressed once when the router is built.
pub(crate) struct Site {
    /// What a missing asset's 404 calls the site ("Studio", "console").
    label: &'static str,
    /// The hash of every asset, the middle of their URLs.
    pub(crate) version: String,
    /// The page, rendered with the version in its asset URLs.
    pub(crate) index: File,
    assets: Vec<(&'static str, File)>,
    /// The Content-Security-Policy every answer carries.
    pub(crate) csp: HeaderValue,
}

impl Site {
    /// A site of `assets`, whose page is `render(version)`, every answer carrying `csp`.
    pub(crate) fn new(
        label: &'static str,
        assets: &[Asset],
        render: impl FnOnce(&str) -> String,
        csp: HeaderValue,
    ) -> Self {
        let mut hasher = Sha256::new();
        for (name, _, body) in assets {
            hasher.update(name.as_bytes());
            hasher.update(body);
        }
        let version = hex(&hasher.finalize()[..6]);
        let index = File::new("text/html; charset=utf-8", render(&version).into_bytes());
        let assets =
            assets.iter().map(|(name, content_type, body)| (*name, File::new(content_type, body.to_vec()))).collect();
        Self { label, version, index, assets, csp }
    }

    /// Routes serving the page at each of `pages` and the assets at `assets`, a path
    /// ending in `{version}/{file}`.
    pub(crate) fn router<S: Clone + Send + Sync + 'static>(self, pages: &[&str], assets: &str) -> Router<S> {
        let site = Arc::new(self);
        let mut router = Router::new();
        for page in pages {
            let site = site.clone();
            router = router.route(
                page,
                get(move |headers: HeaderMap| async move { site.respond(&headers, &site.index, "no-cache") }),
            );
        }
        router.route(
            assets,
            get(move |Path((version, file)): Path<(String, String)>, headers: HeaderMap| async move {
                site.get_asset(&version, &file, &headers)
            }),
        )
    }

    fn get_asset(&self, version: &str, name: &str, headers: &HeaderMap) -> Response {
        let Some((_, asset)) = self.assets.iter().find(|(n, _)| *n == name) else {
            return ApiError::NotFound(format!("No such {} file", self.label)).into_response();
        };
        // An old page asking for its own version's files after an upgrade gets today's,
        // but not cached for long: a versioned URL must never pin other bytes for a year.
        let cache = if version == self.version { "public, max-age=31536000, immutable" } else { "no-cache" };
        self.respond(headers, asset, cache)
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

/// The Content-Security-Policy of our pages: everything from this origin, no inline
/// script or style, no plugins, no framing; images and media also from `media_origins`
/// (origins as `scheme://host[:port]`, from validated configuration).
pub(crate) fn strict_csp(media_origins: &[String]) -> HeaderValue {
    let extra = media_origins.iter().map(|o| format!(" {o}")).collect::<String>();
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' blob: data:{extra}; media-src 'self' blob: data:{extra}; font-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&csp).expect("origins come from validated config URLs: visible ASCII")
}

/// Checks, for a site's unit tests, that every module one of `assets` imports
/// (`from './x.js'`) is one of them too.
#[cfg(test)]
pub(crate) fn assert_imports_served(assets: &[Asset]) {
    for (name, _, body) in assets {
        let js_or_css = name.ends_with(".js") || name.ends_with(".css");
        assert!(js_or_css, "{name}");
        let text = std::str::from_utf8(body).unwrap();
        for import in text.split("from './").skip(1) {
            let target = import.split('\'').next().unwrap();
            assert!(assets.iter().any(|(n, _, _)| *n == target), "{name} imports {target}, which is not served");
        }
    }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_version_changes_with_any_asset_and_fills_the_page() {
        const A: &[Asset] = &[("a.js", JS, b"1"), ("b.css", CSS, b"2")];
        const B: &[Asset] = &[("a.js", JS, b"1"), ("b.css", CSS, b"3")];
        let csp = || strict_csp(&[]);
        let a = Site::new("test", A, |v| format!("<script src=\"/x/{v}/a.js\">"), csp());
        let b = Site::new("test", B, |v| v.to_owned(), csp());
        assert_ne!(a.version, b.version);
        assert_eq!(a.index.body, format!("<script src=\"/x/{}/a.js\">", a.version).into_bytes());
        assert!(!a.csp.to_str().unwrap().contains("unsafe"));
    }
}
