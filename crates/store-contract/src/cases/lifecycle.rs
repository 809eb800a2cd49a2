//! The store's own lifecycle.

use store::StoreError;

use crate::support::*;

/// After close, reads and writes fail with Unavailable.
pub async fn a_closed_store_is_unavailable(db: Db) {
    let key = account(&db, 10, 1).await;
    let id = submit(&db, job(&key, 1)).await;
    db.close().await;
    let grant = db.grant_credits(key.account_id, 1, None).await;
    assert!(matches!(grant, Err(StoreError::Unavailable(_))), "{grant:?}");
    let submitted = db.submit_job(job(&key, 1)).await;
    assert!(matches!(submitted, Err(StoreError::Unavailable(_))), "{submitted:?}");
    let read = db.get_job(key.account_id, id).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let listed = db.list_api_keys().await;
    assert!(matches!(listed, Err(StoreError::Unavailable(_))), "{listed:?}");
}
