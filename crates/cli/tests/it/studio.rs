//! The Studio (the browser UI at `/`), driven the way a person uses it: headless Chromium
//! through chromedriver (WebDriver, via fantoccini) against the real server on the
//! built-in sandbox. Sign in, generate text-to-video and watch it play, upload first and
//! last frames, find the job in the history, reuse its settings, see validation errors at
//! their fields and a 402 explained; all without a script error, a CSP violation or a
//! request to another origin. Screenshots at 1280 and 375 px go to
//! `target/studio-screenshots/` (and to `docs/` with REELGATE_UPDATE_SCREENSHOTS=1).
//! The browser and the checks every test ends with are `helpers/browser.rs`, shared with
//! the operator console's tests.
//!
//! The Studio follows jobs over the job event streams when the server has them and polls
//! otherwise. The flows above pass either way and do not ask which was used; two more
//! tests put a stand-in in front of the server (studio/streams.rs) to see each way on
//! purpose: streams as their contract says (with an expired token on the way), and a
//! server without streams.
//!
//! Without `chromium` or `chromedriver` on PATH the browser tests say SKIP on the
//! terminal (scripts/test installs both), and fail instead when REELGATE_REQUIRE_CHROMIUM=1.

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::helpers::browser::{
    artefact, assert_clean, assert_named, attr, click, js, prop, screenshot, select, text, visible, wait_js, wait_text,
    Browser, UI_WITHIN,
};
use crate::helpers::TestApp;

mod streams;

/// How long a sandbox job may take to show as COMPLETED in the page.
const JOB_WITHIN: Duration = Duration::from_secs(40);

/// GET / is the page, with a strict CSP, the right content types and caching; its
/// assets are versioned and immutable; `GET /v2/server` says whether this is the sandbox.
#[tokio::test]
async fn studio_is_served_with_csp_content_types_and_caching() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str().unwrap().to_string();
    for directive in
        ["default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(csp.contains("media-src 'self' blob: data:"), "{csp}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(!html.contains("{{"), "placeholders left in the page");
    assert!(!html.contains("<script>") && !html.contains(" style="), "inline script or style in the page");

    let again = app.http.get(app.url("/")).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);

    // Every stylesheet and module the page names is served, versioned and immutable.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/studio/") && (s.ends_with(".js") || s.ends_with(".css")))
        .collect();
    assert!(assets.iter().any(|a| a.ends_with("/app.js")) && assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for asset in &assets {
        let r = app.http.get(app.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let want = if asset.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(r.headers()["content-type"], want, "{asset}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable", "{asset}");
        assert!(r.headers().contains_key("etag") && r.headers().contains_key("content-security-policy"), "{asset}");
        let text = r.text().await.unwrap();
        // A module's imports are relative, so they resolve under the same version.
        for import in text.split("from './").skip(1) {
            let name = import.split('\'').next().unwrap();
            let dir = asset.rsplit_once('/').unwrap().0;
            let r = app.http.get(app.url(&format!("{dir}/{name}"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "{asset} imports {name}");
        }
    }
    // Gzipped for clients that take it, with an ETag of its own.
    let app_js = assets.iter().find(|a| a.ends_with("/app.js")).unwrap();
    let plain = app.http.get(app.url(app_js)).send().await.unwrap();
    let plain_tag = plain.headers()["etag"].clone();
    let plain_len = plain.bytes().await.unwrap().len();
    let zipped = app.http.get(app.url(app_js)).header("Accept-Encoding", "gzip, br").send().await.unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "Accept-Encoding");
    assert_ne!(zipped.headers()["etag"], plain_tag);
    let body = zipped.bytes().await.unwrap();
    assert!(body.starts_with(&[0x1f, 0x8b]) && body.len() < plain_len / 2, "{} of {plain_len} bytes", body.len());

    let missing = app.http.get(app.url("/studio/0/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let server: Value = app.http.get(app.url("/v2/server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(server, json!({"name": "reelgate", "version": env!("CARGO_PKG_VERSION"), "sandbox": true}));
    app.stop().await.unwrap();

    // A node without the engine renders nothing itself: not the sandbox.
    let app = TestApp::spawn().await;
    let server: Value = app.http.get(app.url("/v2/server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(server["sandbox"], false);
    app.stop().await.unwrap();
}

/// Sign in, see the sandbox banner, the prices and the constraints while choosing, the
/// code for the form; generate a text-to-video job and play the result; a bad image URL
/// is shown at its field; a key with too few credits gets the 402 explained. Screenshots.
#[tokio::test]
async fn studio_generates_a_video_that_plays_and_explains_errors() {
    let Some(browser) = Browser::start("studio_generates_a_video_that_plays_and_explains_errors").await else { return };
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let poor = app.create_key(3).await;
    let c = &browser.client;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&app.url("/")).await.unwrap();

    wait_js(c, "return document.body.dataset.ready === 'true' && !document.querySelector('#signin').hidden", UI_WITHIN)
        .await;
    assert!(visible(c, "#sandbox-banner").await, "the sandbox banner shows");
    assert!(text(c, "#sandbox-banner").await.contains("sandbox"));
    artefact(c, "studio-signin-1280.png").await;

    // A wrong key is refused in words, then the right one signs in.
    sign_in(c, "afk_not_a_key", false).await;
    wait_js(c, "return document.querySelector('#signin-error').textContent.includes('not valid')", UI_WITHIN).await;
    sign_in(c, &key.key, false).await;
    wait_text(c, "#credits", "100 credits").await;
    assert_eq!(js(c, "return localStorage.length").await, json!(0), "nothing stored without Remember me");

    // The form is built from /v2/models: every model, its variants and prices.
    let models = js(c, "return Array.from(document.querySelectorAll('#model option')).map(o => o.value)").await;
    assert_eq!(models, json!(["hailuo-2.3", "hailuo-02", "hailuo-2.3-fast"]));
    select(c, "#model", "hailuo-2.3").await;
    c.find(Locator::Css("#prompt")).await.unwrap().send_keys("A lighthouse at dusk, waves below").await.unwrap();
    wait_text(c, "#prompt-count", "33 / 2000").await;
    wait_text(c, "#price-credits", "5 credits").await;
    wait_text(c, "#balance-after", "95 credits").await;
    // 1080p only at 6 s; 1080p costs 10 here.
    select(c, "#duration", "10").await;
    wait_text(c, "#price-credits", "10 credits").await;
    select(c, "#resolution", "1080p").await;
    assert_eq!(prop(c, "#duration", "value").await, "6", "1080p moved the duration to 6 s");
    assert_eq!(js(c, "return document.querySelector('#duration option[value=\"10\"]').disabled").await, json!(true));
    assert!(text(c, "#variant-help").await.contains("1080p is only available at 6 s"));
    select(c, "#resolution", "768p").await;
    wait_text(c, "#price-credits", "5 credits").await;
    // A last frame only on hailuo-02; an image required on hailuo-2.3-fast.
    assert_eq!(js(c, "return document.querySelector('#last-frame').disabled").await, json!(true));
    assert!(text(c, "#last-frame-note").await.contains("hailuo-02"));
    select(c, "#model", "hailuo-2.3-fast").await;
    assert!(text(c, "#first-frame-note").await.starts_with("Required"));
    select(c, "#model", "hailuo-02").await;
    assert_eq!(js(c, "return document.querySelector('#last-frame').disabled").await, json!(false));
    select(c, "#model", "hailuo-2.3").await;

    // The drop zones are keyboard buttons: Enter opens the file picker.
    js(c, "document.querySelector('#image-file').addEventListener('click', (e) => { window.__picked = true; e.preventDefault(); }, { once: true }); return true").await;
    c.find(Locator::Css("#first-frame .dropzone")).await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(c, "return window.__picked === true", UI_WITHIN).await;

    // The code panel: the real base URL, the key masked.
    let curl = text(c, "#code-text").await;
    assert!(curl.contains(&app.url("/v2/videos/generate")), "{curl}");
    assert!(curl.contains("A lighthouse at dusk") && !curl.contains(&key.key), "{curl}");
    for (tab, needle) in
        [("#tab-python", "import requests"), ("#tab-javascript", "await fetch("), ("#tab-go", "net/http")]
    {
        c.find(Locator::Css(tab)).await.unwrap().click().await.unwrap();
        let code = text(c, "#code-text").await;
        assert!(code.contains(needle) && !code.contains(&key.key), "{tab}: {code}");
        assert!(text(c, "#copy-code").await.starts_with("Copy "), "a copy button");
    }
    c.find(Locator::Css("#tab-curl")).await.unwrap().click().await.unwrap();

    // Generate: the job's progress, then a video that plays and seeks.
    click(c, "#submit").await;
    let job_id = wait_js(c, "return document.querySelector('.job-card')?.dataset.jobId", UI_WITHIN).await;
    let job_id = job_id.as_str().unwrap().to_string();
    wait_js(c, "return document.querySelector('.job-card video') !== null", JOB_WITHIN).await;
    assert_eq!(attr(c, ".job-card", "data-status").await, "COMPLETED");
    wait_text(c, "#credits", "95 credits").await;
    let job = app.get_job(&key, &job_id).await.body;
    let video_url = job["result"]["videoUrl"].as_str().unwrap().to_string();
    assert_eq!(attr(c, ".job-card video", "src").await, video_url);
    assert_eq!(attr(c, ".job-card a[download]", "href").await, video_url, "the download button");
    let played = js(
        c,
        r#"const v = document.querySelector('.job-card video');
        v.muted = true;
        await v.play();
        const start = performance.now();
        while (v.currentTime < 0.5) {
          if (performance.now() - start > 10000) throw new Error(`currentTime stuck at ${v.currentTime}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        v.pause();
        v.currentTime = v.duration - 0.5;
        await new Promise((r) => v.addEventListener('seeked', r, { once: true }));
        return { t: v.currentTime, d: v.duration, w: v.videoWidth, seekable: v.seekable.length };"#,
    )
    .await;
    assert!(played["d"].as_f64().unwrap() > 5.0 && played["t"].as_f64().unwrap() > 4.0, "{played}");
    assert_eq!(played["w"], 1366, "{played}");
    // The job shows in the history too, with its poster frame.
    wait_js(
        c,
        &format!("return document.querySelector('#history-list li[data-job-id=\"{job_id}\"][data-status=\"COMPLETED\"] video.poster') !== null"),
        UI_WITHIN,
    )
    .await;

    assert_named(c).await;
    screenshot(c, 1280, "studio-1280.png").await;
    screenshot(c, 375, "studio-375.png").await;
    c.set_window_size(1280, 1100).await.unwrap();

    // A 400 shows at the field it names: the server refuses an ftp image URL.
    c.find(Locator::Css("#image-url")).await.unwrap().send_keys("ftp://example.com/frame.png").await.unwrap();
    click(c, "#submit").await;
    wait_js(c, "return document.querySelector('#err-image').textContent.length > 0", UI_WITHIN).await;
    assert_eq!(attr(c, "#image-url", "aria-invalid").await, "true");
    assert!(text(c, "#err-prompt").await.is_empty(), "no error at fields the server did not name");
    artefact(c, "studio-400-1280.png").await;
    click(c, "#first-frame button.clear").await;
    assert!(text(c, "#err-image").await.is_empty());

    // A job that fails upstream: the error, and the refund.
    let prompt = c.find(Locator::Css("#prompt")).await.unwrap();
    prompt.clear().await.unwrap();
    prompt.send_keys("A storm at sea [sandbox:fail-1026]").await.unwrap();
    click(c, "#submit").await;
    wait_js(c, &format!("const j = document.querySelector('.job-card'); return j.dataset.jobId !== '{job_id}' && j.dataset.status === 'FAILED'"), JOB_WITHIN).await;
    let failed = text(c, ".job-card .outcome").await;
    assert!(failed.starts_with("Failed: ") && failed.contains("refunded"), "{failed}");
    wait_text(c, "#credits", "95 credits").await;

    // A 402 is explained with its numbers.
    click(c, "#sign-out").await;
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &poor.key, false).await;
    wait_text(c, "#credits", "3 credits").await;
    c.find(Locator::Css("#prompt")).await.unwrap().send_keys("Too dear").await.unwrap();
    wait_js(c, "return document.querySelector('#price').classList.contains('short')", UI_WITHIN).await;
    click(c, "#submit").await;
    wait_js(c, "return document.querySelector('#form-error').textContent.length > 0", UI_WITHIN).await;
    let explained = text(c, "#form-error").await;
    assert!(explained.contains("costs 5 credits") && explained.contains("balance is 3 credits"), "{explained}");
    js(c, "document.querySelector('#submit').scrollIntoView({ block: 'center' }); return true").await;
    artefact(c, "studio-402-1280.png").await;

    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// First and last frames uploaded from files (with previews) on hailuo-02, the job in
/// the history with its detail view, filters and search, and "Use these settings again".
#[tokio::test]
async fn studio_uploads_frames_and_reuses_settings_from_history() {
    let Some(browser) = Browser::start("studio_uploads_frames_and_reuses_settings_from_history").await else { return };
    let app = TestApp::spawn_engine(|c, _| c.webhooks.retry_schedule_ms = vec![0, 100, 200]).await;
    let key = app.create_key(105).await;
    // A job from elsewhere, with a webhook whose first delivery fails, for the detail view.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = crate::webhooks::receiver_on(listener, vec![500]).await;
    let hooked =
        app.submit(&key, &json!({"model": "hailuo-2.3", "prompt": "A webhook test", "webhookUrl": hooks.url})).await;
    let c = &browser.client;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&app.url("/")).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;

    // Remember me keeps the key across a reload.
    sign_in(c, &key.key, true).await;
    wait_text(c, "#credits", "100 credits").await;
    c.refresh().await.unwrap();
    wait_text(c, "#credits", "100 credits").await;
    assert!(!visible(c, "#signin").await, "signed in again from storage");

    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.png");
    let last = dir.path().join("last.png");
    std::fs::write(&first, png(640, 480, 0)).unwrap();
    std::fs::write(&last, png(640, 480, 1)).unwrap();

    select(c, "#model", "hailuo-02").await;
    c.find(Locator::Css("#prompt")).await.unwrap().send_keys("A paper boat drifts from left to right").await.unwrap();
    let uploads = app.url("/v2/uploads/");
    for (input, url, preview, path) in [
        ("#image-file", "#image-url", "#first-frame img.preview", &first),
        ("#end-image-file", "#end-image-url", "#last-frame img.preview", &last),
    ] {
        c.find(Locator::Css(input)).await.unwrap().send_keys(path.to_str().unwrap()).await.unwrap();
        wait_js(c, &format!("return document.querySelector('{url}').value.startsWith('{uploads}')"), UI_WITHIN).await;
        wait_js(c, &format!("const i = document.querySelector('{preview}'); return !i.hidden && i.complete && i.naturalWidth === 640"), UI_WITHIN)
            .await;
    }
    artefact(c, "studio-frames-1280.png").await;
    let image_url = prop(c, "#image-url", "value").await;
    let end_image_url = prop(c, "#end-image-url", "value").await;

    click(c, "#submit").await;
    let job_id = wait_js(c, "return document.querySelector('.job-card')?.dataset.jobId", UI_WITHIN).await;
    let job_id = job_id.as_str().unwrap().to_string();
    wait_js(c, "return document.querySelector('.job-card')?.dataset.status === 'COMPLETED'", JOB_WITHIN).await;
    let job = app.get_job(&key, &job_id).await.body;
    assert_eq!(job["input"]["hailuoParams"]["image"], image_url.as_str());
    assert_eq!(job["input"]["hailuoParams"]["end_image"], end_image_url.as_str());

    // The history: the job with its prompt and poster; search and filters.
    let row = format!("#history-list li[data-job-id=\"{job_id}\"]");
    wait_js(c, &format!("const r = document.querySelector('{row}'); return r && r.dataset.status === 'COMPLETED' && r.textContent.includes('paper boat') && r.querySelector('video.poster') !== null"), UI_WITHIN).await;
    assert!(attr(c, &format!("{row} video.poster"), "src").await.ends_with("#t=0.1"));
    c.find(Locator::Css("#filter-search")).await.unwrap().send_keys("lighthouse").await.unwrap();
    wait_js(c, &format!("return document.querySelector('{row}')?.hidden === true"), UI_WITHIN).await;
    c.find(Locator::Css("#filter-search")).await.unwrap().clear().await.unwrap();
    c.find(Locator::Css("#filter-search")).await.unwrap().send_keys("boat").await.unwrap();
    wait_js(c, &format!("return document.querySelector('{row}')?.hidden === false"), UI_WITHIN).await;
    select(c, "#filter-model", "hailuo-2.3").await;
    wait_js(c, &format!("return document.querySelector('{row}') === null"), UI_WITHIN).await;
    select(c, "#filter-model", "").await;
    wait_js(c, &format!("return document.querySelector('{row}') !== null"), UI_WITHIN).await;

    // The detail view of the job with a webhook lists every delivery attempt.
    c.find(Locator::Css("#filter-search")).await.unwrap().clear().await.unwrap();
    let start = Instant::now();
    while app.get_job(&key, &hooked).await.body["webhookStatus"] != "delivered" {
        assert!(start.elapsed() < JOB_WITHIN, "the webhook of {hooked} was not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    click(c, &format!("#history-list li[data-job-id=\"{hooked}\"] button.details")).await;
    wait_js(c, "return document.querySelector('#detail-body table')?.textContent.includes('HTTP 200')", UI_WITHIN)
        .await;
    let attempts = text(c, "#detail-body table").await;
    assert!(attempts.contains("HTTP 500") && attempts.contains("completed"), "{attempts}");
    click(c, "#detail-close").await;
    wait_js(c, "return !document.querySelector('#job-detail').open", UI_WITHIN).await;

    // Change the form, then put the job's settings back from its detail view.
    select(c, "#model", "hailuo-2.3").await;
    c.find(Locator::Css("#prompt")).await.unwrap().clear().await.unwrap();
    click(c, &format!("{row} button.details")).await;
    wait_js(
        c,
        "return document.querySelector('#job-detail').open && document.querySelector('#reuse-settings') !== null",
        UI_WITHIN,
    )
    .await;
    let detail = text(c, "#detail-body").await;
    for needle in ["paper boat", "Webhook deliveries", "end_image", "5 credits", "COMPLETED"] {
        assert!(detail.contains(needle), "detail view lacks {needle:?}: {detail}");
    }
    assert!(visible(c, "#detail-body video").await, "the detail view plays the video");
    assert_named(c).await;
    artefact(c, "studio-detail-1280.png").await;
    c.set_window_size(375, 812).await.unwrap();
    wait_js(c, "return window.innerWidth === 375", UI_WITHIN).await;
    artefact(c, "studio-detail-375.png").await;
    c.set_window_size(1280, 1100).await.unwrap();
    click(c, "#reuse-settings").await;
    wait_js(c, "return !document.querySelector('#job-detail').open", UI_WITHIN).await;
    assert_eq!(prop(c, "#model", "value").await, "hailuo-02");
    assert_eq!(prop(c, "#prompt", "value").await, "A paper boat drifts from left to right");
    assert_eq!(prop(c, "#image-url", "value").await, image_url);
    assert_eq!(prop(c, "#end-image-url", "value").await, end_image_url);
    assert_eq!(prop(c, "#duration", "value").await, "6");
    assert_eq!(prop(c, "#resolution", "value").await, "768p");
    wait_js(c, "const i = document.querySelector('#first-frame img.preview'); return !i.hidden && i.complete && i.naturalWidth === 640", UI_WITHIN).await;

    // Drag and drop: an image dropped on the first frame is uploaded and replaces it.
    js(
        c,
        r#"const canvas = document.createElement('canvas');
        canvas.width = 500;
        canvas.height = 400;
        const g = canvas.getContext('2d');
        g.fillStyle = '#2a7';
        g.fillRect(0, 0, 500, 400);
        const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
        const data = new DataTransfer();
        data.items.add(new File([blob], 'dropped.png', { type: 'image/png' }));
        const zone = document.querySelector('#first-frame .dropzone');
        for (const type of ['dragenter', 'dragover', 'drop']) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
        }
        return true;"#,
    )
    .await;
    wait_js(c, &format!("const v = document.querySelector('#image-url').value; return v.startsWith('{uploads}') && v !== '{image_url}'"), UI_WITHIN).await;
    wait_js(c, "const i = document.querySelector('#first-frame img.preview'); return !i.hidden && i.complete && i.naturalWidth === 500", UI_WITHIN).await;
    assert!(text(c, "#first-frame .frame-status").await.contains("dropped.png"));

    // Sign out forgets the stored key.
    click(c, "#sign-out").await;
    wait_js(c, "return !document.querySelector('#signin').hidden && localStorage.length === 0", UI_WITHIN).await;

    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// A queued job can be cancelled, and its credits come back; the history pages with
/// "Load more" and filters by status. The engine is off here, so jobs stay QUEUED (and
/// the server is no sandbox: no banner). Keyboard only.
#[tokio::test]
async fn studio_cancels_a_queued_job_by_keyboard_and_pages_the_history() {
    let Some(browser) = Browser::start("studio_cancels_a_queued_job_by_keyboard_and_pages_the_history").await else {
        return;
    };
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    // 13 earlier jobs: one more than the Studio's page of 12.
    let mut earlier = Vec::new();
    for i in 0..13 {
        earlier.push(app.submit(&key, &crate::helpers::video("hailuo-2.3", &format!("earlier job {i}"))).await);
    }
    let c = &browser.client;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&app.url("/")).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    assert!(!visible(c, "#sandbox-banner").await, "no sandbox banner without the engine");

    // Enter in the key field signs in.
    c.find(Locator::Css("#api-key")).await.unwrap().send_keys(&format!("{}\u{E007}", key.key)).await.unwrap();
    wait_text(c, "#credits", "35 credits").await;

    // The history: a page of 12, newest first (in the API's order: jobs made in the same
    // millisecond have no other), then the 13th.
    let rows = "return Array.from(document.querySelectorAll('#history-list li')).map(li => li.querySelector('.prompt').textContent)";
    let shown = "return Array.from(document.querySelectorAll('#history-list li')).map(li => li.dataset.jobId)";
    let newest_first = json!(app.all_job_ids(&key).await);
    wait_js(c, &format!("{rows}.filter(p => p.startsWith('earlier') && p.length > 8).length === 12"), UI_WITHIN).await;
    assert_eq!(js(c, shown).await, json!(newest_first.as_array().unwrap()[..12]), "newest first");
    assert!(visible(c, "#history-more").await);
    click(c, "#history-more").await;
    wait_js(c, &format!("{rows}.length === 13"), UI_WITHIN).await;
    assert_eq!(js(c, shown).await, newest_first);
    assert!(!visible(c, "#history-more").await, "no more pages");

    // A job changed elsewhere (here: cancelled with the API) changes in the list too.
    let r = app
        .call(
            reqwest::Method::POST,
            "/v2/jobs/{id}/cancel",
            &format!("/v2/jobs/{}/cancel", earlier[12]),
            Some(&key.key),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_js(
        c,
        &format!(
            "return document.querySelector('#history-list li[data-job-id=\"{}\"]')?.dataset.status === 'CANCELLED'",
            earlier[12]
        ),
        UI_WITHIN,
    )
    .await;
    wait_text(c, "#credits", "40 credits").await;

    // Enter on the focused submit button generates; Enter on Cancel cancels.
    js(c, "document.querySelector('#prompt').focus(); return true").await;
    c.active_element().await.unwrap().send_keys("Waiting in line").await.unwrap();
    js(c, "document.querySelector('#submit').focus(); return true").await;
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(c, "const j = document.querySelector('.job-card'); return j && j.dataset.status === 'QUEUED' && j.querySelector('button:not([hidden])')?.textContent === 'Cancel'", UI_WITHIN).await;
    wait_text(c, "#credits", "35 credits").await;
    js(c, "Array.from(document.querySelectorAll('.job-card button')).find(b => b.textContent === 'Cancel').focus(); return true").await;
    c.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_js(c, "return document.querySelector('.job-card')?.dataset.status === 'CANCELLED'", UI_WITHIN).await;
    assert!(text(c, ".job-card .outcome").await.contains("refunded"));
    wait_text(c, "#credits", "40 credits").await;

    // Filtered by status on the server: the two cancelled jobs alone, newest first.
    select(c, "#filter-status", "CANCELLED").await;
    let want = json!(["Waiting in line", "earlier job 12"]).to_string();
    wait_js(c, &format!("const r = (() => {{ {rows} }})(); return JSON.stringify(r) === '{want}'"), UI_WITHIN).await;

    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// The job event stream, as the contract describes it, served by a stand-in in front of
/// the real server (see streams.rs): the Studio gets a token, is refused with it once (an
/// expired token), gets another, and follows the job and the job list over the streams.
#[tokio::test]
async fn studio_follows_jobs_over_the_event_stream_contract() {
    let Some(browser) = Browser::start("studio_follows_jobs_over_the_event_stream_contract").await else { return };
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("http://{}", front.local_addr().unwrap());
    // Result and upload URLs point at the stand-in, so the page loads them from its own origin.
    let base = front_url.clone();
    // Jobs of 4 s, so that three submitted together are all running at once.
    let app = TestApp::spawn_engine(move |c, _| {
        c.engine.public_base_url = Some(base);
        c.minimax.sandbox_latency_ms = 4000;
    })
    .await;
    let key = app.create_key(100).await;
    let fake = streams::FakeStreams::new(app.url(""));
    let router = fake.router();
    tokio::spawn(async move { axum::serve(front, router).await.unwrap() });

    let c = &browser.client;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&format!("{front_url}/")).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &key.key, false).await;
    wait_text(c, "#credits", "100 credits").await;
    // The list stream was refused with the first token, then followed with a new one.
    wait_text(c, "#live-status", "Live").await;

    c.find(Locator::Css("#prompt")).await.unwrap().send_keys("Fireflies over a pond").await.unwrap();
    click(c, "#submit").await;
    let job_id = wait_js(c, "return document.querySelector('.job-card')?.dataset.jobId", UI_WITHIN).await;
    let job_id = job_id.as_str().unwrap().to_string();
    wait_js(c, "return document.querySelector('.job-card video') !== null", JOB_WITHIN).await;
    wait_text(c, "#credits", "95 credits").await;
    let row = format!("#history-list li[data-job-id=\"{job_id}\"][data-status=\"COMPLETED\"]");
    wait_js(c, &format!("return document.querySelector('{row}') !== null"), UI_WITHIN).await;

    let log = fake.logged();
    assert!(log.first().map(String::as_str) == Some("401"), "the first token was refused: {log:?}");
    assert!(fake.tokens_issued() >= 2, "a new token after the 401: {log:?}");
    assert!(log.contains(&format!("job {job_id} COMPLETED")), "the job's stream carried its end: {log:?}");
    assert!(log.contains(&"reset".to_string()), "the list stream was followed: {log:?}");

    // Three jobs at once (each takes 4 s here): two job streams at most (a browser has six
    // connections to a server, and streams keep theirs); the third job is polled, and all
    // three finish.
    for n in 2..=4 {
        click(c, "#submit").await;
        wait_js(c, &format!("return document.querySelectorAll('.job-card').length === {n}"), UI_WITHIN).await;
    }
    wait_js(
        c,
        "return document.querySelectorAll('.job-card[data-status=\"COMPLETED\"] video').length === 4",
        JOB_WITHIN,
    )
    .await;
    wait_text(c, "#credits", "80 credits").await;
    let ids =
        js(c, "return Array.from(document.querySelectorAll('.job-card')).slice(0, 3).map(e => e.dataset.jobId)").await;
    let log = fake.logged();
    let streamed = ids
        .as_array()
        .unwrap()
        .iter()
        .filter(|id| log.iter().any(|l| l.starts_with(&format!("job {} ", id.as_str().unwrap()))))
        .count();
    assert_eq!(streamed, 2, "of three jobs at once, two streamed: {log:?}");
    assert_eq!(fake.most_job_streams(), 2, "job streams open at once: {log:?}");

    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

/// Against a server without job event streams (the token route answers 404, as
/// Apiframe's own API would), the Studio polls: the job still completes in the page, the
/// credits and the history follow.
#[tokio::test]
async fn studio_polls_when_the_server_has_no_streams() {
    let Some(browser) = Browser::start("studio_polls_when_the_server_has_no_streams").await else { return };
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("http://{}", front.local_addr().unwrap());
    let base = front_url.clone();
    let app = TestApp::spawn_engine(move |c, _| c.engine.public_base_url = Some(base)).await;
    let key = app.create_key(100).await;
    let fake = streams::FakeStreams::without_streams(app.url(""));
    let router = fake.router();
    tokio::spawn(async move { axum::serve(front, router).await.unwrap() });

    let c = &browser.client;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&format!("{front_url}/")).await.unwrap();
    wait_js(c, "return !document.querySelector('#signin').hidden", UI_WITHIN).await;
    sign_in(c, &key.key, false).await;
    wait_text(c, "#credits", "100 credits").await;
    c.find(Locator::Css("#prompt")).await.unwrap().send_keys("Rain on a tin roof").await.unwrap();
    click(c, "#submit").await;
    let job_id = wait_js(c, "return document.querySelector('.job-card')?.dataset.jobId", UI_WITHIN).await;
    let job_id = job_id.as_str().unwrap().to_string();
    wait_js(c, "return document.querySelector('.job-card video') !== null", JOB_WITHIN).await;
    wait_text(c, "#credits", "95 credits").await;
    let row = format!("#history-list li[data-job-id=\"{job_id}\"][data-status=\"COMPLETED\"]");
    wait_js(c, &format!("return document.querySelector('{row} video.poster') !== null"), UI_WITHIN).await;
    assert_eq!(text(c, "#live-status").await, "", "no live list without streams");

    let log = fake.logged();
    assert_eq!(log.iter().filter(|l| l.starts_with("404 token")).count(), 1, "asked for a token once: {log:?}");
    assert!(!log.iter().any(|l| l.contains("stream")), "never opened a stream: {log:?}");
    assert!(log.iter().filter(|l| **l == format!("poll {job_id}")).count() >= 2, "polled the job: {log:?}");

    assert_clean(c).await;
    browser.close().await;
    app.stop().await.unwrap();
}

async fn sign_in(c: &Client, key: &str, remember: bool) {
    let input = c.find(Locator::Css("#api-key")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(key).await.unwrap();
    let checked = js(c, "return document.querySelector('#remember').checked").await == json!(true);
    if checked != remember {
        click(c, "#remember").await;
    }
    click(c, "#signin-submit").await;
}

/// A PNG MiniMax accepts (short side over 300 px, aspect within 2:5..5:2), a gradient
/// that differs with `seed`.
fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 60u8.wrapping_add(seed.wrapping_mul(120))])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
