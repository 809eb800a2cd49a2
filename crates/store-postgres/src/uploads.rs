//! Upload records (table `upload`): recording an upload with its idempotency key,
//! reading one back, and listing and forgetting expired ones for the reaper.

use deadpool_postgres::Object;
use domain::{AccountId, UploadId};
use store::{Result, UploadOutcome, UploadRecord};
use tokio_postgres::Row;

use crate::db_err;

const COLUMNS: &str = "upload_id, account_id, content_type, byte_size, sha256, idempotency_key, created_at, expires_at";

fn from_row(row: &Row) -> UploadRecord {
    UploadRecord {
        id: UploadId(row.get(0)),
        account_id: AccountId(row.get(1)),
        content_type: row.get(2),
        byte_size: row.get(3),
        sha256: row.get(4),
        idempotency_key: row.get(5),
        created_at_ms: row.get(6),
        expires_at_ms: row.get(7),
    }
}

pub(crate) async fn create(client: &Object, upload: &UploadRecord) -> Result<UploadOutcome> {
    if let Some(key) = &upload.idempotency_key {
        // An expired upload gives its key up; its row stays until the reaper has deleted
        // its bytes.
        client
            .execute(
                "update upload set idempotency_key = null
                 where account_id = $1 and idempotency_key = $2 and expires_at <= $3",
                &[&upload.account_id.0, key, &upload.created_at_ms],
            )
            .await
            .map_err(db_err)?;
    }
    // The unique (account_id, idempotency_key) decides between two uploads racing with
    // one key: the second waits for the first to commit, then inserts nothing.
    let inserted = client
        .execute(
            &format!(
                "insert into upload ({COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8)
                 on conflict (account_id, idempotency_key) do nothing"
            ),
            &[
                &upload.id.0,
                &upload.account_id.0,
                &upload.content_type,
                &upload.byte_size,
                &upload.sha256,
                &upload.idempotency_key,
                &upload.created_at_ms,
                &upload.expires_at_ms,
            ],
        )
        .await
        .map_err(db_err)?;
    if inserted == 1 {
        return Ok(UploadOutcome::Created(upload.clone()));
    }
    // A statement of its own, so its snapshot sees the upload that won.
    let row = client
        .query_one(
            &format!("select {COLUMNS} from upload where account_id = $1 and idempotency_key = $2"),
            &[&upload.account_id.0, &upload.idempotency_key],
        )
        .await
        .map_err(db_err)?;
    Ok(UploadOutcome::Existing(from_row(&row)))
}

pub(crate) async fn get(client: &Object, id: UploadId) -> Result<Option<UploadRecord>> {
    let row = client
        .query_opt(&format!("select {COLUMNS} from upload where upload_id = $1"), &[&id.0])
        .await
        .map_err(db_err)?;
    Ok(row.as_ref().map(from_row))
}

pub(crate) async fn to_reap(client: &Object, before_ms: i64, limit: usize) -> Result<Vec<UploadId>> {
    let rows = client
        .query(
            "select upload_id from upload where expires_at < $1 order by expires_at limit $2",
            &[&before_ms, &(limit as i64)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| UploadId(r.get(0))).collect())
}

pub(crate) async fn delete(client: &Object, id: UploadId) -> Result<()> {
    client.execute("delete from upload where upload_id = $1", &[&id.0]).await.map_err(db_err)?;
    Ok(())
}
