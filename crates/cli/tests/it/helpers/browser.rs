//! Driving our web pages (the Studio, the operator console) in headless Chromium through
//! chromedriver (WebDriver, via fantoccini), as a person would, and the checks every such
//! test ends with: no script error, CSP violation or console.error, nothing fetched from
//! another origin, every control named; and screenshots for a person to look at.
//!
//! Without `chromium` or `chromedriver` on PATH, [`Browser::start`] prints SKIP and the
//! test returns; with REELGATE_REQUIRE_CHROMIUM=1 (scripts/test sets it where it could
//! install both) that is a failure instead.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long an ordinary UI reaction (a click's result, a request's answer) may take.
pub const UI_WITHIN: Duration = Duration::from_secs(20);

/// Installed before any of the page's scripts run (CDP `addScriptToEvaluateOnNewDocument`):
/// collects script errors, rejected promises, console.error calls, CSP violations and
/// every resource fetched from another origin.
const HOOK: &str = r#"
(() => {
  const seen = { errors: [], foreign: [] };
  Object.defineProperty(window, '__browserTest', { value: seen });
  addEventListener('error', (e) => {
    if (e instanceof ErrorEvent) seen.errors.push(`error: ${e.message} at ${e.filename}:${e.lineno}`);
  }, true);
  addEventListener('unhandledrejection', (e) => {
    const r = e.reason;
    seen.errors.push(`unhandled rejection: ${r && (r.stack || r.message) || r}`);
  });
  document.addEventListener('securitypolicyviolation', (e) => {
    seen.errors.push(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`);
  });
  const error = console.error.bind(console);
  console.error = (...args) => { seen.errors.push(`console.error: ${args.map(String).join(' ')}`); error(...args); };
  const note = (name) => {
    if (/^(data|blob):/.test(name)) return;
    try { if (new URL(name).origin !== location.origin) seen.foreign.push(name); } catch { seen.foreign.push(name); }
  };
  new PerformanceObserver((list) => list.getEntries().forEach((e) => note(e.name)))
    .observe({ type: 'resource', buffered: true });
})();
"#;

/// Every control in the page (shown or not) has an accessible name: a label, aria-label,
/// aria-labelledby or, for buttons, links and tabs, its text.
pub async fn assert_named(c: &Client) {
    let unnamed = js(
        c,
        r#"const missing = [];
        const selector = 'input, select, textarea, button, [role="button"], [role="tab"], a[href], video[controls], progress';
        for (const e of document.querySelectorAll(selector)) {
          const byIds = (e.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean)
            .map((id) => document.getElementById(id)?.textContent || '').join(' ');
          const name = (e.getAttribute('aria-label') || '').trim() || byIds.trim()
            || (e.id && document.querySelector(`label[for="${CSS.escape(e.id)}"]`)?.textContent.trim())
            || e.closest('label')?.textContent.trim()
            || (/^(BUTTON|A)$/.test(e.tagName) || e.getAttribute('role') ? e.textContent.trim() : '');
          if (!name) missing.push(e.outerHTML.slice(0, 160));
        }
        return missing;"#,
    )
    .await;
    assert_eq!(unnamed, json!([]), "controls without an accessible name");
}

/// No script error, CSP violation or console.error, and nothing fetched from another origin.
pub async fn assert_clean(c: &Client) {
    let seen = js(c, "return window.__browserTest").await;
    assert_eq!(seen["errors"], json!([]), "errors in the page: {seen}");
    assert_eq!(seen["foreign"], json!([]), "requests to other origins: {seen}");
    let origins = js(
        c,
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !/^(data|blob):/.test(n) && new URL(n).origin !== location.origin)",
    )
    .await;
    assert_eq!(origins, json!([]), "resources from other origins");
}

/// Saves a screenshot at `width` px wide under target/<page>-screenshots/ (the page being
/// the name up to its first `-`), and into docs/ when REELGATE_UPDATE_SCREENSHOTS=1.
pub async fn screenshot(c: &Client, width: u32, name: &str) {
    screenshot_from(c, width, name, None).await;
}

/// As [`screenshot`], with the window scrolled so that the element `selector` is at its
/// top (when given), for what a phone shows further down.
pub async fn screenshot_from(c: &Client, width: u32, name: &str, selector: Option<&str>) {
    c.set_window_size(width, if width < 600 { 812 } else { 1100 }).await.unwrap();
    let inner =
        wait_js(c, &format!("return window.innerWidth === {width} ? window.innerWidth : null"), UI_WITHIN).await;
    assert_eq!(inner, width);
    match selector {
        Some(s) => {
            js(c, &format!("document.querySelector({}).scrollIntoView({{ block: 'start' }}); return true", json!(s)))
                .await
        }
        None => js(c, "window.scrollTo(0, 0); return true").await,
    };
    // Laid out for this width: nothing wider than the viewport.
    let overflow = js(c, "return document.documentElement.scrollWidth - window.innerWidth").await;
    assert_eq!(overflow, 0, "the page is wider than {width} px");
    let png = c.screenshot().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = screenshot_dir(name);
    std::fs::write(dir.join(name), &png).unwrap();
    if std::env::var("REELGATE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        std::fs::write(root.join("docs").join(name), &png).unwrap();
    }
    // And the whole page, for a person to look over (target/ only): the window made as
    // tall as the document.
    let sizes = js(c, "return [window.outerHeight - window.innerHeight, document.documentElement.scrollHeight]").await;
    let (chrome, page) = (sizes[0].as_u64().unwrap() as u32, sizes[1].as_u64().unwrap() as u32);
    c.set_window_size(width, chrome + page.min(6000)).await.unwrap();
    let full = c.screenshot().await.unwrap();
    std::fs::write(dir.join(name.replace(".png", "-full.png")), &full).unwrap();
}

/// Saves what the window shows now under target/<page>-screenshots/, for a person to look at.
pub async fn artefact(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = screenshot_dir(name);
    std::fs::write(dir.join(name), png).unwrap();
}

fn screenshot_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let page = name.split('-').next().unwrap_or("page");
    let dir = target.join(format!("{page}-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `script` (a function body; it may `await`) and returns its value.
pub async fn js(c: &Client, script: &str) -> Value {
    let wrapped = format!("return (async () => {{ {script} }})();");
    c.execute(&wrapped, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `script` until it returns something truthy, and returns that; fails after `within`.
pub async fn wait_js(c: &Client, script: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = js(c, script).await;
        let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
        if truthy {
            return v;
        }
        if start.elapsed() > within {
            let state =
                js(c, "return { seen: window.__browserTest, page: document.body.innerText.slice(0, 3000) }").await;
            panic!("not true within {within:?}: {script}\npage: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_text(c: &Client, selector: &str, want: &str) {
    let script = format!("return document.querySelector('{selector}')?.textContent.trim() === {}", json!(want));
    let start = Instant::now();
    loop {
        if js(c, &script).await == json!(true) {
            return;
        }
        if start.elapsed() > UI_WITHIN {
            panic!("{selector} shows {:?}, not {want:?}", text(c, selector).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn text(c: &Client, selector: &str) -> String {
    let v = js(c, &format!("return document.querySelector('{selector}')?.textContent.trim() ?? null")).await;
    v.as_str().unwrap_or_else(|| panic!("no {selector}")).to_string()
}

pub async fn attr(c: &Client, selector: &str, name: &str) -> String {
    let v = js(c, &format!("return document.querySelector('{selector}')?.getAttribute('{name}') ?? null")).await;
    v.as_str().unwrap_or_else(|| panic!("no {selector} with {name}")).to_string()
}

pub async fn prop(c: &Client, selector: &str, name: &str) -> String {
    let v = js(c, &format!("return String(document.querySelector('{selector}')['{name}'])")).await;
    v.as_str().unwrap().to_string()
}

pub async fn visible(c: &Client, selector: &str) -> bool {
    c.find(Locator::Css(selector)).await.unwrap().is_displayed().await.unwrap()
}

pub async fn click(c: &Client, selector: &str) {
    c.find(Locator::Css(selector)).await.unwrap_or_else(|e| panic!("{selector}: {e}")).click().await.unwrap();
}

/// Chooses an option as a person does (WebDriver clicks it), which fires `change`.
pub async fn select(c: &Client, selector: &str, value: &str) {
    c.find(Locator::Css(selector)).await.unwrap().select_by_value(value).await.unwrap();
    assert_eq!(prop(c, selector, "value").await, value, "{selector}");
}

/// A WebDriver session on headless Chromium, through a chromedriver of our own on a
/// free port; both are stopped by [`Browser::close`] or, failing that, on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after printing SKIP) when chromium or chromedriver is missing, unless
    /// REELGATE_REQUIRE_CHROMIUM=1 makes that a failure.
    pub async fn start(test: &str) -> Option<Self> {
        let (Some(_chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver")) else {
            assert!(
                std::env::var("REELGATE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
                "chromium or chromedriver not installed, and REELGATE_REQUIRE_CHROMIUM=1"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: chromium or chromedriver not installed (scripts/test installs both)"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = {
            use std::os::unix::process::CommandExt as _;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--mute-audio", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.path().display()),
            ]}
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver on {url}: {e}"),
            }
        };
        client
            .issue_cmd(Cdp { cmd: "Page.addScriptToEvaluateOnNewDocument", params: json!({"source": HOOK}) })
            .await
            .expect("install the page hook");
        Some(Self { client, driver, _profile: profile })
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}

/// chromedriver's passthrough to the Chrome DevTools Protocol.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"cmd": self.cmd, "params": self.params}).to_string()))
    }
}

/// The first `name` that is a file in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}
