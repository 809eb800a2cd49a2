//! Upload records: reading back, idempotency keys per account (replayed while the
//! upload lives, taken over once it expired, one winner when racing), and reaping.

use std::sync::Arc;

use domain::{AccountId, UploadId};
use store::{Store, UploadOutcome, UploadRecord};

use crate::support::*;

fn upload(account: AccountId, key: Option<&str>, byte: u8, created_at_ms: i64, ttl_ms: i64) -> UploadRecord {
    UploadRecord {
        id: UploadId::new(),
        account_id: account,
        content_type: "image/png".into(),
        byte_size: 1234,
        sha256: vec![byte; 32],
        idempotency_key: key.map(str::to_owned),
        created_at_ms,
        expires_at_ms: created_at_ms + ttl_ms,
    }
}

fn created(outcome: UploadOutcome) -> UploadRecord {
    match outcome {
        UploadOutcome::Created(u) => u,
        other => panic!("expected a new upload, got {other:?}"),
    }
}

/// An upload reads back as written; a live key replays the first upload and writes
/// nothing, per account; an expired upload's key is free again.
pub async fn uploads_read_back_and_keys_replay_per_account(db: Db) {
    let alice = account(&*db, 0, 1).await;
    let bob = account(&*db, 0, 1).await;
    let now = now_ms();
    let plain = created(db.create_upload(upload(alice.account_id, None, 1, now, 60_000)).await.unwrap());
    assert_eq!(db.get_upload(plain.id).await.unwrap(), Some(plain.clone()));
    assert!(db.get_upload(UploadId::new()).await.unwrap().is_none());
    // Uploads without a key never collide.
    created(db.create_upload(upload(alice.account_id, None, 1, now, 60_000)).await.unwrap());

    let first = created(db.create_upload(upload(alice.account_id, Some("k"), 2, now, 60_000)).await.unwrap());
    let retry = upload(alice.account_id, Some("k"), 3, now + 10, 60_000);
    assert_eq!(db.create_upload(retry.clone()).await.unwrap(), UploadOutcome::Existing(first.clone()));
    assert!(db.get_upload(retry.id).await.unwrap().is_none(), "a replay writes nothing");
    // Another account's key is its own.
    created(db.create_upload(upload(bob.account_id, Some("k"), 3, now, 60_000)).await.unwrap());

    // Once the first has expired, the key belongs to a new upload; the old row stays
    // for the reaper.
    let later = upload(alice.account_id, Some("k"), 4, first.expires_at_ms, 60_000);
    let taken = created(db.create_upload(later).await.unwrap());
    assert!(db.get_upload(first.id).await.unwrap().is_some());
    let again = upload(alice.account_id, Some("k"), 5, first.expires_at_ms + 1, 60_000);
    assert_eq!(db.create_upload(again).await.unwrap(), UploadOutcome::Existing(taken));
}

/// Uploads racing with one key: exactly one is recorded, every other sees it.
pub async fn racing_uploads_with_one_key_record_one(db: Db) {
    let alice = account(&*db, 0, 1).await;
    let now = now_ms();
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let db: Arc<dyn Store> = db.clone();
            let u = upload(alice.account_id, Some("race"), i, now, 60_000);
            tokio::spawn(async move { db.create_upload(u).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            UploadOutcome::Created(u) => winners.push(u),
            UploadOutcome::Existing(u) => seen.push(u),
        }
    }
    assert_eq!(winners.len(), 1, "one upload recorded");
    assert!(seen.iter().all(|u| *u == winners[0]), "every other caller sees the winner");
}

/// The reaper sees expired uploads, soonest first, and forgets them once deleted.
pub async fn expired_uploads_are_listed_and_deleted(db: Db) {
    let alice = account(&*db, 0, 1).await;
    let now = now_ms();
    let old = created(db.create_upload(upload(alice.account_id, None, 1, now - 10_000, 1_000)).await.unwrap());
    let older = created(db.create_upload(upload(alice.account_id, None, 1, now - 20_000, 1_000)).await.unwrap());
    let live = created(db.create_upload(upload(alice.account_id, None, 1, now, 60_000)).await.unwrap());
    let due = db.uploads_to_reap(now, 10).await.unwrap();
    assert_eq!(due, vec![older.id, old.id]);
    assert_eq!(db.uploads_to_reap(now, 1).await.unwrap(), vec![older.id]);
    db.delete_upload(older.id).await.unwrap();
    db.delete_upload(older.id).await.unwrap();
    assert!(db.get_upload(older.id).await.unwrap().is_none());
    assert_eq!(db.uploads_to_reap(now, 10).await.unwrap(), vec![old.id]);
    assert!(db.get_upload(live.id).await.unwrap().is_some());
}
