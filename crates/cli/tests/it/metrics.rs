//! `/metrics` read with an independent Prometheus text-format parser: every counter at
//! zero on a fresh server, the histograms moving once a job has run, the build info,
//! and the optional bearer token.

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};

use crate::helpers::{video, TestApp};

const WITHIN: Duration = Duration::from_secs(30);

/// The scrape, parsed, and the names of the counter families its `# TYPE` lines declare
/// (the parser keeps types to itself).
async fn scrape(app: &TestApp) -> (Scrape, Vec<String>) {
    let text = app.metrics().await;
    let counters =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).map(str::to_owned).collect();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition");
    (scrape, counters)
}

fn samples<'a>(scrape: &'a Scrape, metric: &str) -> impl Iterator<Item = &'a Sample> {
    let metric = metric.to_owned();
    scrape.samples.iter().filter(move |s| s.metric == metric)
}

/// The total count of a histogram's `_count` samples whose labels include `labels`.
fn observations(scrape: &Scrape, histogram: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, &format!("{histogram}_count"))
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) => v,
            ref other => panic!("{histogram}_count is a number, not {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn every_counter_is_present_at_zero_on_a_fresh_server() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let (scrape, counters) = scrape(&app).await;
    for expected in [
        "reelgate_jobs_completed",
        "reelgate_jobs_failed",
        "reelgate_refunds",
        "reelgate_callbacks",
        "reelgate_download_failures",
        "reelgate_submissions",
        "reelgate_upstream_errors",
        "reelgate_upstream_accounts_benched",
        "reelgate_webhook_attempts",
    ] {
        assert!(counters.iter().any(|c| c == expected), "{expected} is declared: {counters:?}");
    }
    for family in &counters {
        let found: Vec<_> = samples(&scrape, &format!("{family}_total")).collect();
        assert!(!found.is_empty(), "{family}_total has a sample from the start");
        for sample in found {
            assert!(matches!(sample.value, Value::Untyped(0.0) | Value::Counter(0.0)), "{sample:?}");
        }
    }
    let upstream = samples(&scrape, "reelgate_submissions_total").next().expect("the sandbox upstream");
    assert_eq!(upstream.labels.get("upstream"), Some("sandbox"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn build_info_and_the_gauges_are_present() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let (scrape, _) = scrape(&app).await;
    let build = samples(&scrape, "reelgate_build_info").next().expect("build info");
    assert_eq!(build.value, Value::Gauge(1.0));
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    for gauge in [
        "reelgate_jobs_queued",
        "reelgate_jobs_active",
        "reelgate_oldest_queued_job_age_seconds",
        "reelgate_upstream_creates_left",
    ] {
        assert!(samples(&scrape, gauge).any(|s| matches!(s.value, Value::Gauge(_))), "{gauge}");
    }
    let left = samples(&scrape, "reelgate_upstream_creates_left").next().unwrap();
    assert_eq!(left.labels.get("upstream"), Some("sandbox"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_histograms_move_once_a_job_has_completed() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let id = app.submit(&key, &video("hailuo-2.3", "a lighthouse at dusk")).await;
    assert_eq!(app.wait_terminal(&key, &id, WITHIN).await["status"], "COMPLETED");

    let (scrape, _) = scrape(&app).await;
    let job = [("model", "hailuo-2.3"), ("outcome", "completed")];
    assert_eq!(observations(&scrape, "reelgate_job_duration_seconds", &job), 1.0);
    let histogram = samples(&scrape, "reelgate_job_duration_seconds").next().expect("job duration buckets");
    let Value::Histogram(buckets) = &histogram.value else { panic!("{histogram:?}") };
    assert!(buckets.iter().any(|b| b.less_than.is_infinite() && b.count == 1.0), "{buckets:?}");

    let created = [("call", "create"), ("outcome", "ok")];
    assert_eq!(observations(&scrape, "reelgate_upstream_request_duration_seconds", &created), 1.0);
    assert!(observations(&scrape, "reelgate_upstream_request_duration_seconds", &[("call", "query")]) >= 1.0);

    let generated = [("route", "/v2/videos/generate"), ("status_class", "2xx")];
    assert_eq!(observations(&scrape, "reelgate_http_request_duration_seconds", &generated), 1.0);
    // Labeled by route template, never by the job id in the path. Read from the text:
    // prometheus-parse drops a sample whose label value holds a `}`, as `{id}` does
    // (Prometheus itself reads it).
    let text = app.metrics().await;
    let job_reads = "reelgate_http_request_duration_seconds_count{route=\"/v2/jobs/{id}\",status_class=\"2xx\"} ";
    assert!(text.lines().any(|l| l.starts_with(job_reads)), "{text}");
    assert!(!text.contains(&id), "{text}");
    assert_eq!(samples(&scrape, "reelgate_jobs_completed_total").next().unwrap().value, Value::Untyped(1.0));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_configured_bearer_token_guards_the_metrics() {
    let app = TestApp::spawn_with(|c| c.metrics.bearer_token = "scrape-secret".into()).await;
    let url = app.url("/metrics");
    let none = app.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = app.http.get(&url).bearer_auth("scrape-secreT").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app.http.get(&url).bearer_auth("scrape-secret").send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("reelgate_build_info"));
    app.stop().await.unwrap();
}
