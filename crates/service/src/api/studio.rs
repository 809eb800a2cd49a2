//! The Studio: the browser UI at `/`, made of the static files in `crates/service/studio/`
//! embedded in the binary. It is a client of the public API like any other (`/v2/...`
//! with the user's key); this module only hands out the files and must never grow
//! routes of its own for the page to call.
//!
//! How the files are served (versioned immutable assets, ETags, gzip, the strict
//! Content-Security-Policy) is `embedded.rs`, shared with the operator console; what is
//! the Studio's own is its files and the media origins its CSP also allows, the origins
//! result videos may come from.

use axum::Router;

use crate::api::embedded::{self, Asset, Site, CSS, JS};
use crate::config::{Config, ResultsBackend, VideoUrls};
use crate::state::AppState;

/// The page; `{{VERSION}}` and `{{MEDIA_ORIGINS}}` are filled in at startup.
const INDEX: &str = include_str!("../../studio/index.html");

/// The files the page loads, by name under `/studio/<version>/`.
const ASSETS: &[Asset] = &[
    ("studio.css", CSS, include_bytes!("../../studio/studio.css")),
    ("app.js", JS, include_bytes!("../../studio/app.js")),
    ("api.js", JS, include_bytes!("../../studio/api.js")),
    ("generate.js", JS, include_bytes!("../../studio/generate.js")),
    ("history.js", JS, include_bytes!("../../studio/history.js")),
    ("progress.js", JS, include_bytes!("../../studio/progress.js")),
    ("code.js", JS, include_bytes!("../../studio/code.js")),
    ("util.js", JS, include_bytes!("../../studio/util.js")),
];

/// `/` and the Studio's assets under `/studio/<version>/`.
pub(crate) fn router(config: &Config) -> Router<AppState> {
    studio(config).router(&["/"], "/studio/{version}/{file}")
}

/// The Studio's page and files, its CSP allowing the media origins `config` implies.
fn studio(config: &Config) -> Site {
    let origins = media_origins(config);
    let render = |version: &str| INDEX.replace("{{VERSION}}", version).replace("{{MEDIA_ORIGINS}}", &origins.join(" "));
    Site::new("Studio", ASSETS, render, embedded::strict_csp(&origins))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for needle in ["/studio/{{VERSION}}/app.js", "/studio/{{VERSION}}/studio.css"] {
            assert!(INDEX.contains(needle), "index.html names {needle}");
        }
        embedded::assert_imports_served(ASSETS);
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
        let studio = studio(&config);
        let csp = studio.csp.to_str().unwrap();
        assert!(csp.contains("media-src 'self' blob: data: https://video.example.com http://127.0.0.1:9000;"), "{csp}");
        let index = String::from_utf8(studio.index.body.clone()).unwrap();
        assert!(index.contains("content=\"https://video.example.com http://127.0.0.1:9000\""));
    }
}
