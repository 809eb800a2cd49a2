//! Configuration: a typed struct loaded from the built-in defaults, an optional file
//! and `REELGATE_*` environment variables, then validated as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domain::{Catalog, PriceOverrides};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The built-in defaults, every setting commented.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database and result files; created on first start.
    pub data_dir: PathBuf,
    /// Optional TOML file overriding credit prices.
    #[serde(default)]
    pub catalog_file: Option<PathBuf>,
    /// Defaults for new accounts.
    pub accounts: AccountDefaults,
    /// API key handling.
    pub auth: AuthConfig,
    /// Request limits.
    pub limits: Limits,
}

/// Defaults for new accounts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountDefaults {
    /// Plan label shown in GET /v2/me for new accounts.
    pub default_plan: String,
    /// Jobs an account may have in PROCESSING at once.
    pub default_max_concurrent_jobs: u32,
}

/// API key handling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a looked-up API key is trusted before it is read again.
    pub key_cache_ttl_ms: u64,
}

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long an Idempotency-Key is remembered, in hours.
    pub idempotency_ttl_hours: u32,
}

impl Limits {
    /// The oldest creation time (unix ms) an Idempotency-Key may have at `now_ms` and
    /// still replay its job; older keys are forgotten.
    pub fn idempotency_window_start_ms(&self, now_ms: i64) -> i64 {
        now_ms - i64::from(self.idempotency_ttl_hours) * 3_600_000
    }
}

/// Configuration that cannot be loaded or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values parse but contradict a rule.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file`, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Variables read elsewhere (log filter, engine switches of later features) are not
        // configuration keys; without this, deny_unknown_fields would refuse to start.
        let env = Env::prefixed("REELGATE_").split("__").ignore(&["log", "allow_private_urls"]);
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults alone, ignoring files and environment (used by tests and `bench`).
    pub fn defaults() -> Self {
        Figment::from(Toml::string(DEFAULT_TOML)).extract().expect("the built-in defaults always parse")
    }

    /// Checks rules that span fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.key_cache_ttl_ms >= 2000 {
            return Err(ConfigError::Invalid(
                "auth.key_cache_ttl_ms must be below 2000 so revocations take effect within 2 s".into(),
            ));
        }
        if self.accounts.default_max_concurrent_jobs == 0 {
            return Err(ConfigError::Invalid("accounts.default_max_concurrent_jobs must be at least 1".into()));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("limits.max_body_bytes must be at least 1024".into()));
        }
        if self.limits.idempotency_ttl_hours == 0 {
            return Err(ConfigError::Invalid("limits.idempotency_ttl_hours must be at least 1".into()));
        }
        self.catalog()?;
        Ok(())
    }

    /// The SQLite database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("reelgate.db")
    }

    /// The effective catalog: built-in prices with the catalog file's overrides.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        let overrides = match &self.catalog_file {
            None => PriceOverrides::default(),
            Some(path) => Figment::from(Toml::file_exact(path))
                .extract::<PriceOverrides>()
                .map_err(|e| ConfigError::Invalid(format!("catalog file {}: {e}", path.display())))?,
        };
        Catalog::with_overrides(&overrides).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
    }

    #[test]
    fn a_catalog_file_overrides_prices_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("reelgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[prices.\"hailuo-2.3-fast\"]\n\"768p-6s\" = 4\n").unwrap();
        let mut c = Config::defaults();
        c.catalog_file = Some(good);
        let catalog = c.catalog().unwrap();
        let fast = catalog.model(domain::ModelId::Hailuo23Fast);
        assert_eq!(fast.cost_min(), 4);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[prices.\"hailuo-2.3\"]\n\"1080p-10s\" = 4\n").unwrap();
        c.catalog_file = Some(bad);
        assert!(c.validate().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
