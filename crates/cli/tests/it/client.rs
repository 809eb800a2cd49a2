//! `reelgate generate` and `reelgate jobs`: the real binary as a child process, a client
//! of the real server on an ephemeral port (the sandbox behind it renders real MP4s).

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;

use crate::engine::{image_host, png};
use crate::helpers::{video, TestApp, TestData, TestKey};
use crate::lifecycle::{create_key, free_port, spawn_serve, wait_for_job};

/// How a `reelgate` run ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `reelgate <args>` in `cwd` against `app` with `key` (none: no key at all), its
/// polls shortened; stderr is a pipe, so progress comes as plain lines.
async fn reelgate(app: &TestApp, key: Option<&str>, cwd: &Path, args: &[&str]) -> Run {
    let mut command = client_command(&app.url(""), key, cwd, args);
    // Blocking wait off the runtime, which keeps serving the child's requests.
    let out = tokio::task::spawn_blocking(move || command.output().expect("run reelgate")).await.unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `reelgate <args>` as a client of the server at `base`, not yet started.
fn client_command(base: &str, key: Option<&str>, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reelgate"));
    command.current_dir(cwd).args(args);
    command.args(["--base-url", base, "--poll-interval-ms", "100"]);
    command.env_remove("APIFRAME_API_KEY").env_remove("APIFRAME_BASE_URL");
    // A developer's proxy variables must not route loopback requests elsewhere.
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        command.env_remove(var);
    }
    if let Some(k) = key {
        command.env("APIFRAME_API_KEY", k);
    }
    command
}

/// The file names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Checks that `path` is the completed job's video, byte for byte, and returns the job.
async fn assert_is_the_video(app: &TestApp, key: &TestKey, id: &str, path: &Path) -> Value {
    let job = app.get_job(key, id).await.body;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let url = job["result"]["videoUrl"].as_str().unwrap();
    let served = app.http.get(url).send().await.unwrap().bytes().await.unwrap();
    let written = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&written[4..8], b"ftyp", "an MP4 file");
    assert!(
        written == served,
        "{} holds the job's video ({} vs {} bytes)",
        path.display(),
        written.len(),
        served.len()
    );
    job
}

fn key_arg(key: &TestKey) -> Option<&str> {
    Some(&key.key)
}

#[tokio::test]
async fn generate_waits_with_progress_lines_and_writes_the_video() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    let args =
        ["generate", "--prompt", "a corgi surfing", "--duration", "6", "--resolution", "768p", "--prompt-optimizer"];
    let run = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
    assert_eq!(run.code, 0, "{run:?}");

    // stdout: the path alone, `<jobId>.mp4` in the current directory by default.
    let printed = run.stdout.strip_suffix('\n').expect("one line");
    assert!(!printed.contains('\n'), "{run:?}");
    let id = printed.strip_suffix(".mp4").expect("<jobId>.mp4");
    let job = assert_is_the_video(&app, &key, id, &cwd.path().join(printed)).await;
    assert_eq!(files(cwd.path()), [printed], "no temporary file left behind");
    // An ordinary file, as the umask makes them, not a private temporary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let ordinary = cwd.path().join("ordinary");
        std::fs::write(&ordinary, b"").unwrap();
        assert_eq!(mode(&cwd.path().join(printed)), mode(&ordinary));
        std::fs::remove_file(ordinary).unwrap();
    }
    let params = &job["input"]["hailuoParams"];
    assert_eq!((params["duration"].as_u64(), params["resolution"].as_str()), (Some(6), Some("768p")), "{job}");
    assert_eq!(params["prompt_optimizer"], true, "{job}");

    // stderr is not a terminal: one plain line per change, percent never going back,
    // ending at COMPLETED 100%.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.len() >= 3, "several progress lines: {}", run.stderr);
    let mut seen = Vec::new();
    for line in &lines {
        let rest = line.strip_prefix(&format!("job {id} ")).unwrap_or_else(|| panic!("{line:?}"));
        let parts: Vec<&str> = rest.split(' ').collect();
        assert_eq!(parts.len(), 3, "status, percent, elapsed: {line:?}");
        let percent: u64 = parts[1].strip_suffix('%').unwrap().parse().unwrap();
        assert!(parts[2].strip_suffix('s').unwrap().parse::<u64>().is_ok(), "{line:?}");
        seen.push((parts[0].to_string(), percent));
    }
    assert!(seen.windows(2).all(|w| w[0] != w[1] && w[0].1 <= w[1].1), "{seen:?}");
    assert_eq!(seen.last().unwrap(), &("COMPLETED".to_string(), 100));
    assert!(seen.iter().any(|(s, _)| s == "PROCESSING"), "{seen:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn generate_passes_image_urls_and_data_urls_through() {
    use base64::Engine as _;
    let host = image_host(vec![("/first.png", png(640, 360))]).await;
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    std::fs::create_dir(cwd.path().join("videos")).unwrap();
    let first = format!("{host}/first.png");
    let last = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png(640, 360)));
    let args = [
        "generate",
        "--model",
        "hailuo-02",
        "--prompt",
        "morph",
        "--image",
        &first,
        "--end-image",
        &last,
        "--out",
        "videos/m.mp4",
    ];
    let run = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "videos/m.mp4\n");
    let id = run.stderr.lines().last().unwrap().split(' ').nth(1).unwrap().to_string();
    let job = assert_is_the_video(&app, &key, &id, &cwd.path().join("videos/m.mp4")).await;
    assert_eq!(job["input"]["hailuoParams"]["image"], first.as_str());
    assert_eq!(job["input"]["hailuoParams"]["end_image"], last.as_str());
    assert_eq!(files(&cwd.path().join("videos")), ["m.mp4"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn generate_uploads_a_local_image_first() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    // The upload route arrives with issue 14 items 1-3; until then there is nothing to
    // upload to. Any other answer (even a refusal) means it exists, and the test runs.
    let probe = app.http.post(app.url("/v2/uploads")).header("X-API-Key", &key.key).send().await.unwrap();
    let cwd = TempDir::new().unwrap();
    std::fs::write(cwd.path().join("photo.png"), png(640, 360)).unwrap();
    let args =
        ["generate", "--model", "hailuo-2.3-fast", "--prompt", "pan", "--image", "./photo.png", "--out", "v.mp4"];
    if probe.status() == 404 {
        eprintln!("SKIP generate_uploads_a_local_image_first: the server has no POST /v2/uploads (404)");
        // What a user of such a server sees: a usage error that says what to do instead.
        let run = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("accepts no uploads (POST /v2/uploads: 404)"), "{run:?}");
        assert!(app.all_job_ids(&key).await.is_empty(), "nothing submitted");
        app.stop().await.unwrap();
        return;
    }
    let run = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "v.mp4\n");
    let id = run.stderr.lines().last().unwrap().split(' ').nth(1).unwrap().to_string();
    let job = assert_is_the_video(&app, &key, &id, &cwd.path().join("v.mp4")).await;
    let image = job["input"]["hailuoParams"]["image"].as_str().unwrap();
    assert!(image.starts_with("http://") || image.starts_with("https://"), "the upload's URL: {image}");
    // What the server hosts is the file, byte for byte.
    let hosted = app.http.get(image).send().await.unwrap().bytes().await.unwrap();
    assert!(hosted == std::fs::read(cwd.path().join("photo.png")).unwrap(), "the uploaded bytes");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn no_wait_prints_the_job_and_jobs_wait_then_downloads_it() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    let args = ["generate", "--prompt", "a fox", "--no-wait", "--idempotency-key", "fox-1"];
    let run = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
    assert_eq!(run.code, 0, "{run:?}");
    let job: Value = serde_json::from_str(&run.stdout).expect("stdout is the job as JSON");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(matches!(job["status"].as_str(), Some("QUEUED" | "PROCESSING")), "{job}");
    assert_eq!(job["model"], "hailuo-2.3");
    assert!(files(cwd.path()).is_empty(), "nothing downloaded");

    // The idempotency key is sent: the same command gives the same job, charged once.
    let again = reelgate(&app, key_arg(&key), cwd.path(), &args).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(serde_json::from_str::<Value>(&again.stdout).unwrap()["id"], id.as_str());
    assert_eq!(app.balance_and_ledger(key.account_id).await, (95, 95));

    let run = reelgate(&app, key_arg(&key), cwd.path(), &["jobs", "wait", &id, "--out", "fox.mp4"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "fox.mp4\n");
    assert_is_the_video(&app, &key, &id, &cwd.path().join("fox.mp4")).await;

    let run = reelgate(&app, key_arg(&key), cwd.path(), &["jobs", "get", &id]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let job: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!((job["id"].as_str(), job["status"].as_str()), (Some(id.as_str()), Some("COMPLETED")));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_job_exits_1_with_its_error() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    let run = reelgate(&app, key_arg(&key), cwd.path(), &["generate", "--prompt", "[sandbox:fail-1026] a fox"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    let id = run.stderr.lines().next().unwrap().split(' ').nth(1).unwrap().to_string();
    let job = app.get_job(&key, &id).await.body;
    assert_eq!(job["status"], "FAILED");
    let error = job["error"].as_str().unwrap();
    assert!(run.stderr.ends_with(&format!("job {id} FAILED: {error}\n")), "{run:?}");
    assert!(files(cwd.path()).is_empty(), "no video, no temporary file");

    let run = reelgate(&app, key_arg(&key), cwd.path(), &["jobs", "wait", &id]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(error), "{run:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn usage_and_http_errors_exit_2_with_the_api_message() {
    let app = TestApp::spawn().await;
    let key = app.create_key(100).await;
    let broke = app.create_key(0).await;
    let cwd = TempDir::new().unwrap();
    let missing_job = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Option<&str>, Vec<&str>, &str)> = vec![
        (None, vec!["generate", "--prompt", "x"], "no API key"),
        (Some("afk_not_a_key"), vec!["generate", "--prompt", "x"], "Invalid API key (HTTP 401)"),
        (Some(&key.key), vec!["generate", "--prompt", "x", "--duration", "7"], "hailuoParams.duration: "),
        (Some(&key.key), vec!["generate", "--model", "veo-3", "--prompt", "x"], "\n  model: "),
        (Some(&broke.key), vec!["generate", "--prompt", "x"], "Insufficient credits (HTTP 402)"),
        (Some(&key.key), vec!["generate", "--prompt", "x", "--image", "./nope.png"], "nope.png is neither"),
        (Some(&key.key), vec!["generate"], "--prompt"),
        (Some(&key.key), vec!["jobs", "get", &missing_job], "Job not found (HTTP 404)"),
        (Some(&key.key), vec!["jobs", "wait", &missing_job], "Job not found (HTTP 404)"),
        (Some(&key.key), vec!["jobs", "list", "--status", "DONE"], "\n  status: "),
    ];
    for (k, args, expected) in cases {
        let run = reelgate(&app, k, cwd.path(), &args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?} should say {expected:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    assert!(files(cwd.path()).is_empty());
    assert!(app.all_job_ids(&key).await.is_empty(), "no job was made");
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
    app.stop().await.unwrap();

    // A server that is not there: retried a few times, then 2.
    let app = TestApp::spawn().await;
    let gone = app.url("");
    app.stop().await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_reelgate"))
            .args(["jobs", "list", "--base-url", &gone, "--api-key", "afk_x"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Connection refused"), "{out:?}");
}

#[tokio::test]
async fn jobs_list_filters_and_follows_the_cursor_with_all() {
    let app = TestApp::spawn().await;
    let key = app.create_key(1000).await;
    let cwd = TempDir::new().unwrap();
    for i in 0..4 {
        app.submit(&key, &video("hailuo-2.3", &format!("clip {i}"))).await;
    }
    app.submit(&key, &video("hailuo-02", "other")).await;
    let newest_first = app.all_job_ids(&key).await;
    let list = |args: Vec<&'static str>| {
        let app = &app;
        let key = &key;
        let cwd = cwd.path().to_path_buf();
        async move {
            let mut all = vec!["jobs", "list"];
            all.extend(args);
            let run = reelgate(app, key_arg(key), &cwd, &all).await;
            assert_eq!(run.code, 0, "{run:?}");
            let page: Value = serde_json::from_str(&run.stdout).unwrap();
            let ids: Vec<String> =
                page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
            (ids, page["hasMore"].as_bool().unwrap())
        }
    };
    assert_eq!(list(vec!["--limit", "2"]).await, (newest_first[..2].to_vec(), true));
    assert_eq!(list(vec!["--limit", "2", "--all"]).await, (newest_first.clone(), false));
    let (ids, _) = list(vec!["--model", "hailuo-2.3", "--limit", "1", "--all"]).await;
    assert_eq!(ids, newest_first[1..].to_vec(), "the hailuo-02 job was submitted last");
    assert_eq!(list(vec!["--status", "COMPLETED", "--all"]).await, (vec![], false));
    assert_eq!(list(vec!["--status", "QUEUED"]).await.0.len(), 5);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn waiting_honours_retry_after_when_reads_are_rate_limited() {
    let app = TestApp::spawn_engine(|c, _| {
        c.rate_limits.read_per_sec = 1;
        c.rate_limits.read_burst = 1;
    })
    .await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    // Polls every 100 ms against a budget of one read a second: most are answered 429.
    let run = reelgate(&app, key_arg(&key), cwd.path(), &["generate", "--prompt", "slowly", "--out", "s.mp4"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "s.mp4\n");
    let id = run.stderr.lines().last().unwrap().split(' ').nth(1).unwrap().to_string();
    // The test's own reads go through the same limit: wait it out as the client did.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let job = app.call(Method::GET, "/v2/jobs/{id}", &format!("/v2/jobs/{id}"), Some(&key.key), None, &[]).await;
    assert_eq!(job.body["status"], "COMPLETED", "{:?}", job.body);
    assert!(cwd.path().join("s.mp4").is_file());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_survives_a_server_restart_by_retrying_network_errors() {
    let data = TestData::new();
    let key = create_key(&data, "restart", 100);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let fast = [
        ("REELGATE_ENGINE__FIRST_POLL_DELAY_MS", "200"),
        ("REELGATE_ENGINE__POLL_INTERVAL_MS", "200"),
        ("REELGATE_MINIMAX__SANDBOX_LATENCY_MS", "1000"),
    ];
    let mut server = spawn_serve(&data, port, &[], &fast).await;
    let cwd = TempDir::new().unwrap();
    let submit = client_command(&base, Some(&key), cwd.path(), &["generate", "--prompt", "a heron", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(submit.status.code(), Some(0), "{submit:?}");
    let id = serde_json::from_slice::<Value>(&submit.stdout).unwrap()["id"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    wait_for_job(&http, &base, &key, &id, deadline, "COMPLETED", |j| j["status"] == "COMPLETED").await;

    // The server goes away; the client's first read fails, and it tries again until
    // the server is back on the same port.
    server.kill().unwrap();
    server.wait().unwrap();
    let waiting = client_command(&base, Some(&key), cwd.path(), &["jobs", "wait", &id, "--out", "heron.mp4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _server = spawn_serve(&data, port, &[], &fast).await;
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "heron.mp4\n");
    let bytes = std::fs::read(cwd.path().join("heron.mp4")).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp");
}

#[tokio::test]
async fn on_a_terminal_progress_is_a_bar() {
    // `script` (util-linux) runs the command on a pseudo-terminal and copies what it
    // shows to its own stdout.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIP on_a_terminal_progress_is_a_bar: no `script` to give the client a terminal");
        return;
    }
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    let client = client_command(&app.url(""), Some(&key.key), cwd.path(), &[]);
    let mut line = vec![client.get_program().to_string_lossy().into_owned()];
    line.extend(["generate", "--prompt", "a-lighthouse", "--out", "bar.mp4"].map(String::from));
    line.extend(client.get_args().map(|a| a.to_string_lossy().into_owned()));
    let mut command = Command::new("script");
    command.current_dir(cwd.path()).args(["-qec", &line.join(" "), "/dev/null"]);
    command.env("APIFRAME_API_KEY", &key.key).env("TERM", "xterm");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains(&format!("[{}] 100%", "=".repeat(40))), "a full bar: {shown:?}");
    assert!(shown.contains("COMPLETED") && shown.contains("bar.mp4"), "{shown:?}");
    let plain = |l: &str| l.starts_with("job ") && l.contains("% ") && l.ends_with('s');
    assert!(!shown.lines().map(str::trim).any(plain), "no plain progress lines on a terminal: {shown:?}");
    assert!(cwd.path().join("bar.mp4").is_file());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rate_limited_generate_is_sent_again_after_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limits.generate_per_sec = 1;
        c.rate_limits.generate_burst = 1;
    })
    .await;
    let key = app.create_key(100).await;
    let cwd = TempDir::new().unwrap();
    // The first takes the only token; the second is refused with 429 and Retry-After,
    // waits, and is accepted: charged once, like the first.
    for prompt in ["first", "second"] {
        let run = reelgate(&app, key_arg(&key), cwd.path(), &["generate", "--prompt", prompt, "--no-wait"]).await;
        assert_eq!(run.code, 0, "{prompt}: {run:?}");
    }
    assert_eq!(app.all_job_ids(&key).await.len(), 2);
    assert_eq!(app.balance_and_ledger(key.account_id).await, (90, 90));
    app.stop().await.unwrap();
}
