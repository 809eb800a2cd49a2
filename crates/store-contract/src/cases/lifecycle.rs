//! The store's own lifecycle.

use store::StoreError;

use crate::support::*;

/// After close, reads and writes fail with Unavailable.
pub async fn a_closed_store_is_unavailable(db: Db) {
    assert!(db.ping().await.is_ok(), "an open store answers its ping");
    let key = account(&*db, 10, 1).await;
    let id = submit(&*db, job(&key, 1)).await;
    db.close().await;
    let grant = db.grant_credits(key.account_id, 1, None).await;
    assert!(matches!(grant, Err(StoreError::Unavailable(_))), "{grant:?}");
    let submitted = db.submit_job(job(&key, 1)).await;
    assert!(matches!(submitted, Err(StoreError::Unavailable(_))), "{submitted:?}");
    let read = db.get_job(key.account_id, id).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let listed = db.list_api_keys(None).await;
    assert!(matches!(listed, Err(StoreError::Unavailable(_))), "{listed:?}");
    let ping = db.ping().await;
    assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
}

/// The first secret stored under a name is the one every later (or racing) call gets.
pub async fn a_shared_secret_is_stored_once_and_agreed_on(db: Db) {
    let first = db.shared_secret("signing", vec![1; 32]).await.unwrap();
    assert_eq!(first, vec![1; 32]);
    assert_eq!(db.shared_secret("signing", vec![2; 32]).await.unwrap(), first, "a later candidate is ignored");
    assert_eq!(db.shared_secret("other", vec![3; 32]).await.unwrap(), vec![3; 32], "names are independent");
    let racing = futures_util::future::join_all((0..8u8).map(|n| {
        let db = db.clone();
        async move { db.shared_secret("raced", vec![n; 32]).await.unwrap() }
    }))
    .await;
    assert!(racing.iter().all(|s| *s == racing[0]), "racing first calls agree: {racing:?}");
}
