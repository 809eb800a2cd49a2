//! API keys, accounts and grants.

use domain::{AccountId, ApiKeyId, ApiKeySecret, ApiKeyStatus, KeyDigest};
use store::{LedgerKind, NewApiKey, StoreError};

use crate::support::*;

fn new_key(account_id: Option<AccountId>, credits: i64) -> NewApiKey {
    let secret = ApiKeySecret::generate();
    NewApiKey {
        account_id,
        name: "alice".into(),
        email: "alice@example.com".into(),
        prefix: secret.prefix,
        digest: secret.digest,
        initial_credits: credits,
        plan: "pro".into(),
        max_concurrent_jobs: 3,
    }
}

/// Keys and their accounts are created, found by digest and listed oldest first; bad requests write nothing.
pub async fn api_keys_are_created_found_and_listed(db: Db) {
    let request = new_key(None, 25);
    let digest = request.digest;
    let (account, key) = db.create_api_key(request).await.unwrap();
    assert_eq!((account.name.as_str(), account.plan.as_str()), ("alice", "pro"));
    assert_eq!((account.credits, account.max_concurrent_jobs), (25, 3));
    assert_eq!(key.account_id, account.id);
    assert_eq!(
        (key.status, key.email.as_str(), key.name.as_str()),
        (ApiKeyStatus::Active, "alice@example.com", "alice")
    );
    assert!(key.digest.ct_eq(&digest) && key.prefix.starts_with("afk_"));
    assert_eq!(get_account(&db, account.id).await, account);
    let ledger = db.ledger(account.id).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!((ledger[0].kind, ledger[0].amount, ledger[0].job_id), (LedgerKind::Grant, 25, None));
    assert_eq!(ledger[0].note.as_deref(), Some("initial credits"));

    // A second key joins the account; without initial credits no grant is written.
    let (same, second) = db.create_api_key(new_key(Some(account.id), 0)).await.unwrap();
    assert_eq!((same.id, same.credits), (account.id, 25));
    assert_eq!(second.account_id, account.id);
    assert_eq!(db.ledger(account.id).await.unwrap().len(), 1);

    // A new account with nothing granted starts empty.
    let (empty, third) = db.create_api_key(new_key(None, 0)).await.unwrap();
    assert_eq!(empty.credits, 0);
    assert!(db.ledger(empty.id).await.unwrap().is_empty());

    let found = db.find_api_key(&digest).await.unwrap().expect("found by digest");
    assert_eq!(found, key);
    assert_eq!(db.find_api_key(&second.digest).await.unwrap().map(|k| k.id), Some(second.id));
    assert!(db.find_api_key(&KeyDigest([9; 32])).await.unwrap().is_none());

    let unknown = db.create_api_key(new_key(Some(AccountId::new()), 0)).await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{unknown:?}");
    let mut duplicate = new_key(None, 5);
    duplicate.digest = digest;
    let duplicate = db.create_api_key(duplicate).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "{duplicate:?}");

    // Oldest first; the refused requests left no key behind.
    let listed = db.list_api_keys(None).await.unwrap();
    let mut expected = vec![key.clone(), second.clone(), third.clone()];
    expected.sort_by_key(|k| (k.created_at_ms, k.id));
    assert_eq!(listed, expected);
}

/// A key moves between active and disabled freely, but never back from revoked.
pub async fn api_key_status_changes_and_revocation_is_final(db: Db) {
    let key = account(&*db, 0, 1).await;
    let disabled = db.set_api_key_status(key.id, ApiKeyStatus::Disabled).await.unwrap();
    assert_eq!(disabled, store::ApiKeyRecord { status: ApiKeyStatus::Disabled, ..key.clone() });
    assert_eq!(db.find_api_key(&key.digest).await.unwrap().unwrap().status, ApiKeyStatus::Disabled);
    assert_eq!(db.set_api_key_status(key.id, ApiKeyStatus::Active).await.unwrap().status, ApiKeyStatus::Active);
    assert_eq!(db.set_api_key_status(key.id, ApiKeyStatus::Revoked).await.unwrap().status, ApiKeyStatus::Revoked);
    for back in [ApiKeyStatus::Active, ApiKeyStatus::Disabled] {
        let refused = db.set_api_key_status(key.id, back).await;
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{back:?}: {refused:?}");
    }
    // Revoking again is harmless.
    assert_eq!(db.set_api_key_status(key.id, ApiKeyStatus::Revoked).await.unwrap().status, ApiKeyStatus::Revoked);
    assert_eq!(db.find_api_key(&key.digest).await.unwrap().unwrap().status, ApiKeyStatus::Revoked);
    let missing = db.set_api_key_status(ApiKeyId::new(), ApiKeyStatus::Disabled).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
}

/// Grants are positive, each one ledger row, and the balance is always the ledger's sum.
pub async fn grants_write_ledger_rows_that_sum_to_the_balance(db: Db) {
    let key = account(&*db, 10, 1).await;
    let after = db.grant_credits(key.account_id, 5, Some("bonus".into())).await.unwrap();
    assert_eq!(after.credits, 15);
    assert_eq!(db.grant_credits(key.account_id, 7, None).await.unwrap().credits, 22);
    for refused in [0, -3] {
        let r = db.grant_credits(key.account_id, refused, None).await;
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{refused}: {r:?}");
    }
    let missing = db.grant_credits(AccountId::new(), 5, None).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert!(db.get_account(AccountId::new()).await.unwrap().is_none());

    let ledger = db.ledger(key.account_id).await.unwrap();
    let rows: Vec<_> = ledger.iter().map(|e| (e.kind, e.amount, e.note.as_deref())).collect();
    assert_eq!(
        rows,
        [
            (LedgerKind::Grant, 10, Some("initial credits")),
            (LedgerKind::Grant, 5, Some("bonus")),
            (LedgerKind::Grant, 7, None)
        ]
    );
    assert!(ledger.windows(2).all(|w| w[0].id < w[1].id && w[0].created_at_ms <= w[1].created_at_ms));
    assert!(ledger.iter().all(|e| e.account_id == key.account_id && e.job_id.is_none()));
    assert_balance(&db, key.account_id, 22).await;
}
