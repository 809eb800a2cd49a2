//! The operator console (the browser UI at `/admin`), served like the Studio and driven the
//! way an operator uses it: headless Chromium through chromedriver against the real
//! server (helpers/browser.rs). All without a script error, a CSP violation or a request
//! to another origin, every control named. Screenshots at 1280 and 375 px go to
//! `target/console-screenshots/` (and to `docs/` with REELGATE_UPDATE_SCREENSHOTS=1).

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::json;
use store::AuditContext;

use crate::helpers::browser::{
    artefact, assert_clean, assert_named, attr, click, js, prop, screenshot, screenshot_from, text, visible, wait_js,
    wait_text, Browser, UI_WITHIN,
};
use crate::helpers::{video, TestApp, TestKey};

/// How long a sandbox job may take to complete.
const JOB_WITHIN: Duration = Duration::from_secs(40);

/// An admin token made as `reelgate admin tokens create --name NAME` makes one.
async fn admin_token(app: &TestApp, name: &str) -> String {
    service::admin::create_token(app.store.as_ref(), name, AuditContext::cli(Some("test"))).await.expect("token").secret
}

/// Types `token` into the sign-in form and presses Enter; ticks "Remember me" if asked.
async fn sign_in(c: &Client, token: &str, remember: bool) {
    let input = c.find(Locator::Css("#admin-token")).await.unwrap();
    input.clear().await.unwrap();
    if js(c, "return document.querySelector('#remember').checked").await != json!(remember) {
        click(c, "#remember").await;
    }
    input.send_keys(&format!("{token}\u{E007}")).await.unwrap();
}

/// Waits until the view `name` (e.g. `overview`, `jobs-detail`) has finished loading.
async fn wait_view(c: &Client, name: &str) {
    let script = format!(
        "const v = document.querySelector('#view'); return !v.hidden && v.dataset.view === '{name}' && v.dataset.ready === 'true'"
    );
    wait_js(c, &script, UI_WITHIN).await;
}

/// Follows a link of the navigation, as a person clicks it.
async fn open_section(c: &Client, section: &str) {
    click(c, &format!("#nav a[data-section=\"{section}\"]")).await;
    wait_view(c, section).await;
    assert_eq!(attr(c, &format!("#nav a[data-section=\"{section}\"]"), "aria-current").await, "page");
}

/// GET /admin is the console's page with a strict CSP, revalidated on each load; its
/// assets are versioned, immutable, gzipped, and every module it imports is served; with
/// `admin.listen` set, all of it moves to that address.
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

    // With `admin.listen`, the console is served on that address only, like its API.
    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = TestApp::spawn_with(|c| c.admin.listen = Some(admin_addr)).await;
    let public = app.http.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(public.status(), 404, "not on the public address");
    let asset = app.http.get(app.url(app_js)).send().await.unwrap();
    assert_eq!(asset.status(), 404, "nor its files");
    crate::helpers::eventually(Duration::from_secs(5), || async {
        app.http.get(format!("http://{admin_addr}/healthz")).send().await.is_ok()
    })
    .await;
    let private = app.http.get(format!("http://{admin_addr}/admin")).send().await.unwrap();
    assert_eq!(private.status(), 200);
    assert_eq!(private.text().await.unwrap(), html, "the same page");
    let asset = app.http.get(format!("http://{admin_addr}{app_js}")).send().await.unwrap();
    assert_eq!(asset.status(), 200);
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

/// The operator's day: sign in with an admin token, create a customer, grant them credits
/// (the balance and the ledger follow; an overdraft is refused in words), create a key
/// (its secret shown once, then gone from the page), search for the customer, see a job
/// made with that key and another's failed one in the overview's chart, find them in the
/// explorer (by customer, by status, by id) and open the timeline, hold and release an
/// upstream account, read the audit log; sign out. Screenshots at 1280 and 375 px.
#[tokio::test]
async fn console_creates_a_customer_key_and_credits_and_finds_the_job() {
    let Some(browser) = Browser::start("console_creates_a_customer_key_and_credits_and_finds_the_job").await else {
        return;
    };
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let token = admin_token(&app, "ops-alice").await;
    // Another customer's job, one that fails upstream (and is refunded): the explorer has
    // more than one job to search, and the chart a failure to draw.
    let other = app.create_key(20).await;
    let other_job = app.submit(&other, &video("hailuo-2.3", "Someone else's job [sandbox:fail-1026]")).await;
    let c = &browser.client;
    c.set_window_size(1280, 1000).await.unwrap();
    c.goto(&app.url("/admin")).await.unwrap();
    wait_js(c, "return document.body.dataset.ready === 'true' && !document.querySelector('#signin').hidden", UI_WITHIN)
        .await;

    // A refused token, then the right one; the overview comes first.
    sign_in(c, "rga_not_a_token", false).await;
    wait_js(c, "return document.querySelector('#signin-error').textContent.includes('not valid')", UI_WITHIN).await;
    sign_in(c, &token, false).await;
    wait_view(c, "overview").await;
    assert_eq!(js(c, "return location.hash").await, json!("#/overview"));
    assert!(text(c, "#session-name").await.starts_with("ops-alice (rga_"), "who is signed in");
    assert!(visible(c, "#sandbox-badge").await, "the sandbox is marked");
    assert_eq!(js(c, "return sessionStorage.length").await, json!(1), "the token is kept for this tab");
    assert_eq!(js(c, "return localStorage.length").await, json!(0), "and only there without Remember me");
    assert_eq!(js(c, "return document.activeElement.id").await, json!("view-title"), "focus moves to the view");

    // A new customer, from the Customers section.
    open_section(c, "customers").await;
    click(c, "#new-customer summary").await;
    c.find(Locator::Css("#new-customer-name")).await.unwrap().send_keys("Acme Studios").await.unwrap();
    c.find(Locator::Css("#new-customer-email")).await.unwrap().send_keys("ops@acme.example").await.unwrap();
    click(c, "#new-customer-submit").await;
    wait_view(c, "customers-detail").await;
    wait_text(c, "#view-title", "Acme Studios").await;
    wait_text(c, "#customer-credits", "0").await;
    let account_id = js(c, "return decodeURIComponent(location.hash.split('/')[2])").await;
    let account_id = account_id.as_str().unwrap().to_string();

    // Grant credits: the balance and the ledger follow.
    c.find(Locator::Css("#grant-amount")).await.unwrap().send_keys("50").await.unwrap();
    c.find(Locator::Css("#grant-note")).await.unwrap().send_keys("Welcome credits").await.unwrap();
    click(c, "#grant-submit").await;
    wait_text(c, "#customer-credits", "50").await;
    assert!(text(c, "#grant-result").await.contains("Granted 50 credits"), "{}", text(c, "#grant-result").await);
    wait_js(c, "const r = document.querySelector('#ledger tbody tr'); return r?.dataset.kind === 'grant' && r.dataset.amount === '50' && r.textContent.includes('Welcome credits')", UI_WITHIN).await;
    // A deduction past the balance is refused, in numbers.
    c.find(Locator::Css("#grant-amount")).await.unwrap().send_keys("-80").await.unwrap();
    assert_eq!(text(c, "#grant-submit").await, "Deduct credits");
    click(c, "#grant-submit").await;
    wait_js(c, "return document.querySelector('#grant-error').textContent.includes('balance is 50')", UI_WITHIN).await;
    assert_eq!(text(c, "#customer-credits").await, "50");
    let (balance, _) = app.balance_and_ledger(account_id.parse().unwrap()).await;
    assert_eq!(balance, 50);

    // Create a key: its secret is shown once, in a dialog, then nowhere.
    c.find(Locator::Css("#key-name")).await.unwrap().send_keys("production").await.unwrap();
    click(c, "#key-submit").await;
    wait_js(c, "return document.querySelector('#secret-dialog').open && document.querySelector('#secret-value').value.startsWith('afk_')", UI_WITHIN).await;
    let secret = prop(c, "#secret-value", "value").await;
    assert_eq!(js(c, "return document.activeElement.id").await, json!("secret-value"), "focus on the secret");
    assert_named(c).await;
    artefact(c, "console-key-shown-once-1280.png").await;
    let key_id = attr(c, "#key-list tbody tr", "data-key-id").await;
    assert_eq!(attr(c, "#key-list tbody tr", "data-status").await, "active");
    assert!(text(c, "#key-list tbody tr").await.contains(&secret[..12]), "the key's prefix is listed");
    click(c, "#secret-close").await;
    wait_js(c, "return !document.querySelector('#secret-dialog').open", UI_WITHIN).await;
    let leaked = js(
        c,
        &format!(
            "const s = {}; return document.documentElement.outerHTML.includes(s) || Array.from(document.querySelectorAll('input')).some(i => i.value.includes(s)) || JSON.stringify(sessionStorage).includes(s) || JSON.stringify(localStorage).includes(s)",
            json!(secret)
        ),
    )
    .await;
    assert_eq!(leaked, json!(false), "the secret is gone from the page once the dialog is closed");
    assert_eq!(js(c, "return document.activeElement.id").await, json!("key-name"), "focus back on the form");

    // The key works: a job made with it completes and costs 5 credits.
    let key = TestKey { key: secret, key_id: key_id.parse().unwrap(), account_id: account_id.parse().unwrap() };
    let job_id = app.submit(&key, &video("hailuo-2.3", "A lighthouse at dusk")).await;
    assert_eq!(app.wait_terminal(&key, &job_id, JOB_WITHIN).await["status"], "COMPLETED");
    assert_eq!(app.wait_terminal(&other, &other_job, JOB_WITHIN).await["status"], "FAILED");

    // Find the customer again by searching, then open them: the charge is in the ledger.
    open_section(c, "customers").await;
    let listed =
        "return Array.from(document.querySelectorAll('#customer-list tbody tr')).map(r => r.dataset.accountId)";
    wait_js(c, &format!("return (() => {{ {listed} }})().length === 2"), UI_WITHIN).await;
    c.find(Locator::Css("#customer-search")).await.unwrap().send_keys("ACME\u{E007}").await.unwrap();
    wait_js(
        c,
        &format!("const ids = (() => {{ {listed} }})(); return ids.length === 1 && ids[0] === '{account_id}'"),
        UI_WITHIN,
    )
    .await;
    assert_eq!(js(c, "return location.hash").await, json!("#/customers?search=ACME"), "the search is in the address");
    let search = c.find(Locator::Css("#customer-search")).await.unwrap();
    search.clear().await.unwrap();
    search.send_keys("nobody-by-this-name\u{E007}").await.unwrap();
    wait_js(c, "return !document.querySelector('#customers-empty').hidden && document.querySelectorAll('#customer-list tbody tr').length === 0", UI_WITHIN).await;
    search.clear().await.unwrap();
    search.send_keys("acme\u{E007}").await.unwrap();
    wait_js(c, "return document.querySelectorAll('#customer-list tbody tr').length === 1", UI_WITHIN).await;
    click(c, "#customer-list tbody tr a").await;
    wait_view(c, "customers-detail").await;
    wait_text(c, "#customer-credits", "45").await;
    wait_js(c, "const r = document.querySelector('#ledger tbody tr'); return r?.dataset.kind === 'charge' && r.dataset.amount === '-5'", UI_WITHIN).await;
    wait_js(c, "return document.querySelectorAll('#usage-chart rect.bar').length >= 1", UI_WITHIN).await;
    assert_named(c).await;
    screenshot(c, 1280, "console-customer-1280.png").await;
    screenshot(c, 375, "console-customer-375.png").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // The overview: the completion and the failure drawn in the chart, the credits charged
    // and refunded today.
    open_section(c, "overview").await;
    wait_js(c, "return document.querySelectorAll('#throughput-chart rect.bar').length >= 2", UI_WITHIN).await;
    let drawn = js(
        c,
        "const svg = document.querySelector('#throughput-chart');
        const sum = (cls) => Array.from(svg.querySelectorAll(`rect.${cls}`)).reduce((n, r) => n + Number(r.dataset.value), 0);
        return { points: svg.dataset.points, completed: sum('bar-completed'), failed: sum('bar-failed'),
          height: svg.getBoundingClientRect().height, role: svg.getAttribute('role'), name: svg.querySelector('title').textContent }",
    )
    .await;
    assert_eq!(drawn["points"], "60", "a bar place for each of the last 60 minutes: {drawn}");
    assert_eq!((drawn["completed"].as_i64(), drawn["failed"].as_i64()), (Some(1), Some(1)), "{drawn}");
    assert_eq!(drawn["role"], "img");
    assert!(drawn["name"].as_str().unwrap().contains("per minute"), "{drawn}");
    assert!(drawn["height"].as_f64().unwrap() > 100.0, "{drawn}");
    assert_eq!(text(c, ".tile-completed .tile-value").await, "1");
    assert_eq!(text(c, ".tile-failed .tile-value").await, "1");
    assert_eq!(text(c, "#credits-today .tile-value").await, "10");
    assert_eq!(text(c, "#refunded-today .tile-value").await, "5");
    assert_eq!(text(c, "#throughput-totals").await, "1 completed, 1 failed in the last hour.");
    assert_named(c).await;
    screenshot(c, 1280, "console-1280.png").await;
    screenshot(c, 375, "console-375.png").await;
    // On a phone the chart is below the tiles: its own picture.
    screenshot_from(c, 375, "console-chart-375.png", Some("#throughput-title")).await;
    c.set_window_size(1280, 1000).await.unwrap();

    // The explorer: the customer's jobs (from the customer's page), then the job by its id.
    c.goto(&app.url(&format!("/admin#/customers/{account_id}"))).await.unwrap();
    wait_view(c, "customers-detail").await;
    click(c, "#customer-jobs-link").await;
    wait_view(c, "jobs").await;
    let rows =
        js(c, "return Array.from(document.querySelectorAll('#job-list tbody tr')).map(r => r.dataset.jobId)").await;
    assert_eq!(rows, json!([job_id]), "only this customer's job");
    assert_eq!(prop(c, "#filter-account", "value").await, account_id);
    click(c, "#filters-clear").await;
    wait_js(
        c,
        "return document.querySelectorAll('#job-list tbody tr').length === 2 && location.hash === '#/jobs'",
        UI_WITHIN,
    )
    .await;
    // Filtered by status: the failed job alone, its error shown in its page.
    c.find(Locator::Css("#filter-status")).await.unwrap().select_by_value("FAILED").await.unwrap();
    click(c, "#filters-apply").await;
    wait_js(c, &format!("const r = document.querySelectorAll('#job-list tbody tr'); return location.hash === '#/jobs?status=FAILED' && r.length === 1 && r[0].dataset.jobId === '{other_job}'"), UI_WITHIN).await;
    click(c, "#job-list tbody tr a").await;
    wait_view(c, "jobs-detail").await;
    assert_eq!(attr(c, "#job-detail", "data-status").await, "FAILED");
    assert!(text(c, "#job-detail").await.contains("1026"), "the error is shown: {}", text(c, "#job-detail").await);
    c.back().await.unwrap();
    wait_view(c, "jobs").await;
    assert_eq!(prop(c, "#filter-status", "value").await, "FAILED", "the filter is kept going back");
    c.find(Locator::Css("#job-id-input")).await.unwrap().send_keys(&format!("{job_id}\u{E007}")).await.unwrap();
    wait_view(c, "jobs-detail").await;
    assert_eq!(attr(c, "#job-detail", "data-status").await, "COMPLETED");
    let stages =
        js(c, "return Array.from(document.querySelectorAll('#timeline li')).map(li => li.dataset.stage)").await;
    let stages: Vec<&str> = stages.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(stages.first(), Some(&"queued"), "{stages:?}");
    assert_eq!(stages.last(), Some(&"completed"), "{stages:?}");
    assert!(stages.contains(&"running"), "{stages:?}");
    assert!(text(c, "#job-detail").await.contains("A lighthouse at dusk"), "the request is shown");
    assert_named(c).await;
    screenshot(c, 1280, "console-job-1280.png").await;
    screenshot(c, 375, "console-job-375.png").await;
    c.set_window_size(1280, 1000).await.unwrap();
    // Back returns to the list it came from.
    c.back().await.unwrap();
    wait_view(c, "jobs").await;
    assert_eq!(js(c, "return location.hash").await, json!("#/jobs?status=FAILED"));

    // The upstream accounts (the sandbox's) and the audit log of what was done here.
    open_section(c, "upstreams").await;
    wait_js(c, "return document.querySelectorAll('#upstream-list article').length >= 1", UI_WITHIN).await;
    assert_named(c).await;
    // Held out of rotation for a while, with a reason; then released.
    let card = "#upstream-list article[data-upstream=\"sandbox\"]";
    click(c, &format!("{card} details summary")).await;
    let minutes = c.find(Locator::Css(&format!("{card} input[type=number]"))).await.unwrap();
    minutes.clear().await.unwrap();
    minutes.send_keys("5").await.unwrap();
    c.find(Locator::Css(&format!("{card} input[type=text]"))).await.unwrap().send_keys("maintenance").await.unwrap();
    click(c, &format!("{card} form button[type=submit]")).await;
    wait_js(c, &format!("const t = document.querySelector('{card}')?.textContent || ''; return t.includes('out of rotation') && t.includes('maintenance')"), UI_WITHIN).await;
    artefact(c, "console-upstreams-1280.png").await;
    click(c, &format!("{card} .actions button")).await;
    wait_js(c, &format!("return document.querySelector('{card}')?.textContent.includes('in rotation') && !document.querySelector('{card}').textContent.includes('maintenance')"), UI_WITHIN).await;
    open_section(c, "audit").await;
    let audit = text(c, "#audit-list").await;
    assert!(audit.contains("ops-alice") && audit.contains(&account_id), "{audit}");
    let actions =
        js(c, "return Array.from(document.querySelectorAll('#audit-list tbody tr')).map(r => r.dataset.action)").await;
    assert!(actions.as_array().unwrap().len() >= 3, "account, credits and key: {actions}");
    // Every change's before and after, and no secret in any of them.
    js(c, "document.querySelectorAll('#audit-list details').forEach((d) => { d.open = true; }); return true").await;
    let audit = text(c, "#audit-list").await;
    assert!(audit.contains("upstream.") && audit.contains("credits.adjust"), "{audit}");
    assert!(!audit.contains(&key.key) && !audit.contains(&token), "no secret in the audit log");
    assert_named(c).await;
    artefact(c, "console-audit-1280.png").await;

    // Signing out forgets the token.
    click(c, "#sign-out").await;
    wait_js(c, "return !document.querySelector('#signin').hidden && sessionStorage.length === 0", UI_WITHIN).await;
    assert!(!visible(c, "#nav").await);
    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// "Remember me" keeps the token across a reload; a token revoked meanwhile signs the
/// console out at its next request, with the reason; a key can be revoked (after a
/// confirmation) by keyboard.
#[tokio::test]
async fn console_remembers_the_token_until_it_is_revoked() {
    let Some(browser) = Browser::start("console_remembers_the_token_until_it_is_revoked").await else { return };
    let app = TestApp::spawn().await;
    let token = admin_token(&app, "ops-bob").await;
    let customer = app.create_key(10).await;
    let c = &browser.client;
    c.set_window_size(1280, 1000).await.unwrap();
    c.goto(&app.url(&format!("/admin#/customers/{}", customer.account_id))).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &token, true).await;
    // The route asked for before signing in is the one shown after.
    wait_view(c, "customers-detail").await;
    assert_eq!(js(c, "return localStorage.length").await, json!(1));
    c.refresh().await.unwrap();
    wait_view(c, "customers-detail").await;
    assert!(!visible(c, "#signin").await, "signed in again from storage");

    // Revoke the customer's key by keyboard: Enter on Revoke, then on Confirm.
    let revoke = format!("#key-list tr[data-key-id=\"{}\"] button.danger-link", customer.key_id);
    js(c, &format!("document.querySelector('{revoke}').focus(); return true")).await;
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(
        c,
        "return document.querySelector('#confirm-dialog').open && document.activeElement.id === 'confirm-cancel'",
        UI_WITHIN,
    )
    .await;
    js(c, "document.querySelector('#confirm-ok').focus(); return true").await;
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    let row = format!("#key-list tr[data-key-id=\"{}\"]", customer.key_id);
    wait_js(c, &format!("return document.querySelector('{row}')?.dataset.status === 'revoked'"), UI_WITHIN).await;
    assert_eq!(app.me(&customer.key).await.status, 401, "the revoked key is refused");

    // The token is revoked elsewhere: the next request signs the console out.
    service::admin::revoke_token(app.store.as_ref(), &token[..12], AuditContext::cli(Some("test"))).await.unwrap();
    open_section_unchecked(c, "audit").await;
    wait_js(c, "return !document.querySelector('#signin').hidden && document.querySelector('#signin-error').textContent.includes('no longer accepted')", UI_WITHIN).await;
    assert_eq!(js(c, "return localStorage.length + sessionStorage.length").await, json!(0), "the token is forgotten");
    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// Clicks a navigation link without waiting for its view (which may never come).
async fn open_section_unchecked(c: &Client, section: &str) {
    click(c, &format!("#nav a[data-section=\"{section}\"]")).await;
}

/// A queued job is cancelled from its page: confirmed in the dialog, refunded, and the
/// timeline shows the cancel.
#[tokio::test]
async fn console_cancels_a_queued_job_from_its_page() {
    let Some(browser) = Browser::start("console_cancels_a_queued_job_from_its_page").await else { return };
    // No engine: the job stays QUEUED until someone cancels it.
    let app = TestApp::spawn().await;
    let token = admin_token(&app, "ops-carol").await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "waiting in line")).await;
    assert!(app.balance_and_ledger(key.account_id).await.0 < 100);
    let c = &browser.client;
    c.set_window_size(1280, 1000).await.unwrap();
    c.goto(&app.url(&format!("/admin#/jobs/{id}"))).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &token, false).await;
    wait_view(c, "jobs-detail").await;
    click(c, "#job-cancel").await;
    wait_js(c, "return document.querySelector('#confirm-dialog').open", UI_WITHIN).await;
    click(c, "#confirm-ok").await;
    wait_js(c, "return document.querySelector('#timeline')?.textContent.includes('cancelled')", UI_WITHIN).await;
    assert_eq!(app.get_job(&key, &id).await.body["status"], "CANCELLED");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100), "refunded once");
    assert_eq!(
        js(c, "return document.querySelector('#job-cancel') === null").await,
        json!(true),
        "nothing left to cancel"
    );
    assert_named(c).await;
    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// A finished job's webhook is sent again from its page, and the receiver gets it twice.
#[tokio::test]
async fn console_replays_a_finished_jobs_webhook() {
    let Some(browser) = Browser::start("console_replays_a_finished_jobs_webhook").await else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = crate::webhooks::receiver_on(listener, vec![]).await;
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let token = admin_token(&app, "ops-dan").await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &json!({"model": "hailuo-2.3", "prompt": "a bell", "webhookUrl": hook.url})).await;
    app.wait_terminal(&key, &id, JOB_WITHIN).await;
    crate::helpers::eventually(JOB_WITHIN, || async { hook.received().len() == 1 }).await;
    let c = &browser.client;
    c.set_window_size(1280, 1000).await.unwrap();
    c.goto(&app.url(&format!("/admin#/jobs/{id}"))).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &token, false).await;
    wait_view(c, "jobs-detail").await;
    click(c, "#job-replay").await;
    wait_text(c, "#job-replay + [role=status]", "Queued 1 again.").await;
    crate::helpers::eventually(JOB_WITHIN, || async { hook.received().len() == 2 }).await;
    assert_named(c).await;
    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}
