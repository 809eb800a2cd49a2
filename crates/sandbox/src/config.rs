//! Every knob of the sandbox in one serde struct, with the defaults a developer gets from
//! `reelgate sim` with no flags. The sandbox reads no environment: `reelgate sim` maps
//! [`LATENCY_ENV`] onto its `--latency-ms` flag, and the server passes its own setting.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Environment variable `reelgate sim` reads for `--latency-ms` when the flag is absent.
pub const LATENCY_ENV: &str = "REELGATE_SANDBOX_LATENCY_MS";

/// Default total time from create to `Success`, in milliseconds.
pub const DEFAULT_LATENCY_MS: u64 = 10_000;

/// Configuration of one sandbox server.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Accepted API keys. Empty: any non-empty bearer key is accepted.
    pub keys: Vec<String>,
    /// Creates allowed per key in any sliding 60 s window; more answer 1002 "rate limit". 0 disables the limit.
    pub rpm: u32,
    /// Queries and retrieves allowed per key in any sliding 60 s window. None (the default) disables it.
    pub query_rpm: Option<u32>,
    /// Time from create to the terminal status, in ms. None: 10 000.
    pub latency_ms: Option<u64>,
    /// Each task's latency is drawn uniformly within ±this fraction of `latency_ms` (0 = exact).
    pub latency_jitter: f64,
    /// Lifetime of the download links handed out by `files/retrieve`, in seconds.
    pub link_ttl_secs: u64,
    /// Holds every task (`tasks/`, so a restart keeps them), the render cache and uploaded images.
    /// None: a temporary directory removed at shutdown, and tasks live in memory only.
    pub data_dir: Option<PathBuf>,
    /// How long a task kept in `data_dir` is remembered, in seconds; older ones are deleted at start.
    pub task_retention_secs: u64,
    /// Base of the download URLs handed out, e.g. when behind a proxy. None: `http://<bound address>`.
    pub public_base_url: Option<String>,
    /// Renders running at once (each is CPU-bound on a blocking thread). 0: the number of CPUs.
    pub render_concurrency: usize,
    /// Largest image accepted from an http URL, in bytes (data URLs are bounded by the 20 MB rule).
    pub max_image_fetch_bytes: u64,
    /// Random faults, for soak and chaos testing. Prompt markers give deterministic ones.
    pub faults: FaultConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            keys: Vec::new(),
            rpm: 20,
            query_rpm: None,
            latency_ms: None,
            latency_jitter: 0.0,
            link_ttl_secs: 3600,
            data_dir: None,
            task_retention_secs: 7 * 24 * 3600,
            public_base_url: None,
            render_concurrency: 0,
            max_image_fetch_bytes: 20 * 1024 * 1024,
            faults: FaultConfig::default(),
        }
    }
}

impl SandboxConfig {
    /// The task latency in force: the field if set, else 10 s.
    pub fn effective_latency_ms(&self) -> u64 {
        self.latency_ms.unwrap_or(DEFAULT_LATENCY_MS)
    }

    pub(crate) fn link_ttl(&self) -> Duration {
        Duration::from_secs(self.link_ttl_secs)
    }

    pub(crate) fn effective_render_concurrency(&self) -> usize {
        if self.render_concurrency > 0 {
            self.render_concurrency
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Random fault injection: each fraction is a probability in 0..=1, drawn per request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Seed for the fault RNG (and the id generators), so a run can be replayed. None: seeded from entropy.
    pub seed: Option<u64>,
    /// Fraction of creates answered with `create_error_code` instead of a task.
    pub create_error: f64,
    /// The `base_resp` code of a random create error; must be one the sandbox knows (default 1000 "unknown error").
    pub create_error_code: Option<i64>,
    /// Fraction of creates answered by an HTTP 502 HTML page, as from a proxy in front of the API.
    pub http_502: f64,
    /// Fraction of tasks that end `Fail` with 1027 "output new_sensitive".
    pub task_fail: f64,
    /// Fraction of queries answered with a truncated JSON body.
    pub malformed_json: f64,
    /// Fraction of retrieves whose links are already expired.
    pub expired_link: f64,
    /// Fraction of downloads cut half way through.
    pub truncated_download: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_config_takes_defaults_and_refuses_typos() {
        let c: SandboxConfig =
            serde_json::from_str(r#"{"rpm": 5, "latency_ms": 250, "faults": {"task_fail": 0.5, "seed": 3}}"#).unwrap();
        assert_eq!((c.rpm, c.effective_latency_ms(), c.link_ttl_secs), (5, 250, 3600));
        assert_eq!((c.faults.task_fail, c.faults.seed), (0.5, Some(3)));
        assert!(serde_json::from_str::<SandboxConfig>(r#"{"rmp": 5}"#).is_err());
        let d = SandboxConfig::default();
        assert_eq!((d.rpm, d.query_rpm, d.keys.len()), (20, None, 0));
    }
}
