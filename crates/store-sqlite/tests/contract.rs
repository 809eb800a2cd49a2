//! The shared store contract (crate `store-contract`) run against SQLite: every case on
//! a fresh database file in its own temporary directory.

use std::sync::Arc;

use store_contract::TestStore;
use store_sqlite::SqliteStore;

async fn open() -> Option<TestStore> {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = SqliteStore::open(&dir.path().join("reelgate.db")).expect("open a fresh SQLite store");
    // The directory lives until the case is over and the store closed.
    Some(TestStore { store: Arc::new(store), cleanup: Some(Box::pin(async move { drop(dir) })) })
}

store_contract::contract_tests!(open);
