//! The operator console (the browser UI at `/admin`), served like the Studio and driven the
//! way an operator uses it: headless Chromium through chromedriver against the real
//! server (helpers/browser.rs). All without a script error, a CSP violation or a request
//! to another origin, every control named. Screenshots at 1280 and 375 px go to
//! `target/console-screenshots/` (and to `docs/` with REELGATE_UPDATE_SCREENSHOTS=1).

use serde_json::json;

use crate::helpers::browser::{
    artefact, assert_clean, assert_named, js, screenshot, text, visible, wait_js, Browser, UI_WITHIN,
};
use crate::helpers::TestApp;

/// GET /admin is the console's page with a strict CSP, revalidated on each load; its
/// assets are versioned, immutable, gzipped, and every module it imports is served.
#[tokio::test]
async fn console_is_served_with_csp_and_caching() {
    let app = TestApp::spawn().await;
    for path in ["/admin", "/admin/"] {
        let page = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["cache-control"], "no-cache");
    }
    let page = app.http.get(app.url("/admin")).send().await.unwrap();
    let headers = page.headers().clone();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap().to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains("http"), "{csp}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(!html.contains("{{"), "placeholders left in the page");
    assert!(!html.contains("<script>") && !html.contains(" style="), "inline script or style in the page");
    let again = app.http.get(app.url("/admin")).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);

    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/admin/assets/") && (s.ends_with(".js") || s.ends_with(".css")))
        .collect();
    assert!(assets.iter().any(|a| a.ends_with("/app.js")) && assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = assets.iter().map(|a| a.to_string()).collect();
    while let Some(asset) = todo.pop() {
        if !seen.insert(asset.clone()) {
            continue;
        }
        let r = app.http.get(app.url(&asset)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let want = if asset.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(r.headers()["content-type"], want, "{asset}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable", "{asset}");
        assert!(r.headers().contains_key("etag") && r.headers().contains_key("content-security-policy"), "{asset}");
        let text = r.text().await.unwrap();
        // Imports are relative, so they resolve under the same version; follow them all.
        let dir = asset.rsplit_once('/').unwrap().0.to_string();
        for import in text.split("from './").skip(1) {
            todo.push(format!("{dir}/{}", import.split('\'').next().unwrap()));
        }
    }
    for module in ["app.js", "api.js", "chart.js", "overview.js", "customers.js", "jobs.js", "util.js"] {
        assert!(seen.iter().any(|a| a.ends_with(&format!("/{module}"))), "{module} is reached from the page: {seen:?}");
    }

    let app_js = assets.iter().find(|a| a.ends_with("/app.js")).unwrap();
    let zipped = app.http.get(app.url(app_js)).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "Accept-Encoding");
    // An old version's URL still answers, but is not cached for a year.
    let old = app.http.get(app.url("/admin/assets/0/app.js")).send().await.unwrap();
    assert_eq!(old.status(), 200);
    assert_eq!(old.headers()["cache-control"], "no-cache");
    let missing = app.http.get(app.url("/admin/assets/0/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    app.stop().await.unwrap();
}

/// The sign-in screen: focus starts in the token field, every control is named, the form
/// works by keyboard alone (Tab to "Remember me", Space ticks it, Enter submits), and a
/// token the server refuses is explained; nothing is stored. Screenshots.
#[tokio::test]
async fn console_sign_in_is_named_and_works_by_keyboard() {
    let Some(browser) = Browser::start("console_sign_in_is_named_and_works_by_keyboard").await else { return };
    let app = TestApp::spawn().await;
    let c = &browser.client;
    c.set_window_size(1280, 900).await.unwrap();
    c.goto(&app.url("/admin")).await.unwrap();
    wait_js(c, "return document.body.dataset.ready === 'true' && !document.querySelector('#signin').hidden", UI_WITHIN)
        .await;
    assert!(!visible(c, "#nav").await, "no navigation before signing in");
    assert_eq!(js(c, "return document.activeElement.id").await, json!("admin-token"), "focus starts in the field");
    assert_named(c).await;

    // Enter with nothing typed: asked for a token, focus stays.
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(
        c,
        "return document.querySelector('#signin-error').textContent.includes('Paste an admin token')",
        UI_WITHIN,
    )
    .await;
    // A customer's key is not an admin token. Tab, Space, Tab, Enter: the keyboard alone.
    c.active_element().await.unwrap().send_keys("afk_not_an_admin_token").await.unwrap();
    c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
    assert_eq!(js(c, "return document.activeElement.id").await, json!("remember"));
    c.active_element().await.unwrap().send_keys(" ").await.unwrap();
    assert_eq!(js(c, "return document.querySelector('#remember').checked").await, json!(true));
    c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
    assert_eq!(js(c, "return document.activeElement.id").await, json!("signin-submit"));
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(
        c,
        "const e = document.querySelector('#signin-error').textContent; return e.length > 0 && !e.includes('Paste')",
        UI_WITHIN,
    )
    .await;
    let refused = text(c, "#signin-error").await;
    assert!(refused.contains("not valid") || refused.contains("Could not sign in"), "{refused}");
    assert_eq!(js(c, "return localStorage.length + sessionStorage.length").await, json!(0), "nothing stored");
    assert!(!visible(c, "#nav").await);

    screenshot(c, 1280, "console-signin-1280.png").await;
    screenshot(c, 375, "console-signin-375.png").await;
    c.set_window_size(375, 812).await.unwrap();
    // The skip link shows when focused, and Enter on it moves focus to the form.
    js(c, "document.querySelector('.skip-link').focus(); return true").await;
    assert!(visible(c, ".skip-link").await);
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    assert_eq!(js(c, "return document.activeElement.id").await, json!("admin-token"));
    assert_eq!(js(c, "return location.hash").await, json!(""), "the skip link leaves the route alone");
    artefact(c, "console-signin-error-375.png").await;
    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}
