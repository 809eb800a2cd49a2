//! The operator console: the browser UI at `/admin`, made of the static files in
//! `crates/service/admin-console/` embedded in the binary. It is a client of the admin API
//! (`/admin/v1/...`, with the admin token the operator signs in with) like any other;
//! this module only hands out the files and must never grow routes for the page to call.
//!
//! The files are served as the Studio's are (`embedded.rs`): the page revalidated on every
//! load, its assets under `/admin/assets/<version>/` cached for a year, gzip, ETags and the
//! same strict Content-Security-Policy. The console shows no media, so its CSP allows no
//! origin but this one.

use axum::Router;

use crate::api::embedded::{self, Asset, Site, CSS, JS};

/// The page; `{{VERSION}}` is filled in at startup.
const INDEX: &str = include_str!("../../admin-console/index.html");

/// The files the page loads, by name under `/admin/assets/<version>/`.
const ASSETS: &[Asset] = &[
    ("console.css", CSS, include_bytes!("../../admin-console/console.css")),
    ("app.js", JS, include_bytes!("../../admin-console/app.js")),
    ("api.js", JS, include_bytes!("../../admin-console/api.js")),
    ("ui.js", JS, include_bytes!("../../admin-console/ui.js")),
    ("chart.js", JS, include_bytes!("../../admin-console/chart.js")),
    ("overview.js", JS, include_bytes!("../../admin-console/overview.js")),
    ("customers.js", JS, include_bytes!("../../admin-console/customers.js")),
    ("jobs.js", JS, include_bytes!("../../admin-console/jobs.js")),
    ("upstreams.js", JS, include_bytes!("../../admin-console/upstreams.js")),
    ("audit.js", JS, include_bytes!("../../admin-console/audit.js")),
    // The Studio's DOM and formatting helpers, one file serving both pages.
    ("util.js", JS, include_bytes!("../../studio/util.js")),
];

/// `/admin` (and `/admin/`, as operators type it) and the console's assets.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    console().router(&["/admin", "/admin/"], "/admin/assets/{version}/{file}")
}

/// The console's page and files, with the strict CSP and no other origin.
fn console() -> Site {
    Site::new("console", ASSETS, |version| INDEX.replace("{{VERSION}}", version), embedded::strict_csp(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for needle in ["/admin/assets/{{VERSION}}/app.js", "/admin/assets/{{VERSION}}/console.css"] {
            assert!(INDEX.contains(needle), "index.html names {needle}");
        }
        embedded::assert_imports_served(ASSETS);
        let page = String::from_utf8(console().index.body).unwrap();
        assert!(!page.contains("{{") && !page.contains("<script>") && !page.contains(" style="), "{page}");
    }
}
