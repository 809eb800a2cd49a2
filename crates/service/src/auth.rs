//! API key lookups served from memory, with a bounded staleness.
//!
//! Every request needs its key checked, and a database read per request would put
//! the store on the hot path. Each looked-up digest (known or not) is cached for
//! `auth.key_cache_ttl_ms` (default 1 s); after that the next request reads it again.
//! A key disabled or revoked by the admin CLI, which writes to the database from another
//! process, is therefore refused within that TTL, which config validation keeps under
//! the 2 s the API promises. Caching per digest rather than reloading a key table also
//! works unchanged when several nodes share one database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use domain::KeyDigest;
use store::{ApiKeyRecord, Store, StoreError};

/// Beyond this many cached digests (mostly garbage keys), the cache starts over; this
/// bounds memory under a flood of random keys.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    // Shared, so a cache hit costs a reference count, not a copy of the record's strings.
    key: Option<Arc<ApiKeyRecord>>,
    fetched_at: Instant,
}

/// Digest -> key record, refreshed after a TTL.
pub struct KeyCache {
    store: Arc<dyn Store>,
    ttl: Duration,
    entries: RwLock<HashMap<KeyDigest, Entry>>,
}

impl KeyCache {
    /// A cache in front of `store` trusting entries for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self { store, ttl, entries: RwLock::new(HashMap::new()) }
    }

    /// The key with this digest, at most `ttl` old.
    pub async fn lookup(&self, digest: &KeyDigest) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get(digest) {
                if e.fetched_at.elapsed() < self.ttl {
                    return Ok(e.key.clone());
                }
            }
        }
        let fetched_at = Instant::now();
        let key = self.store.find_api_key(digest).await?.map(Arc::new);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(*digest, Entry { key: key.clone(), fetched_at });
        Ok(key)
    }
}
