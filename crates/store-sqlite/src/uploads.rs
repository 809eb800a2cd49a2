//! Upload records (table `upload`): recording an upload with its idempotency key,
//! reading one back, and listing and forgetting expired ones for the reaper.
//! Writes run on the writer thread like every other write.

use domain::UploadId;
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::{Result, UploadOutcome, UploadRecord};

use crate::db::map_err;
use crate::writer::WriteCtx;

const COLUMNS: &str = "upload_id, account_id, content_type, byte_size, sha256, idempotency_key, created_at, expires_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<UploadRecord> {
    let bad =
        |col: usize| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, "invalid id".into());
    let id: String = row.get(0)?;
    let account: String = row.get(1)?;
    Ok(UploadRecord {
        id: id.parse().map_err(|_| bad(0))?,
        account_id: account.parse().map_err(|_| bad(1))?,
        content_type: row.get(2)?,
        byte_size: row.get(3)?,
        sha256: row.get(4)?,
        idempotency_key: row.get(5)?,
        created_at_ms: row.get(6)?,
        expires_at_ms: row.get(7)?,
    })
}

/// Inside the writer's transaction, so checking the key and inserting cannot be split
/// by another upload with the same key.
pub(crate) fn create_in_tx(ctx: &WriteCtx<'_>, upload: &UploadRecord) -> Result<UploadOutcome> {
    let conn = ctx.conn;
    let account = upload.account_id.to_string();
    if let Some(key) = &upload.idempotency_key {
        let existing = conn
            .prepare_cached(&format!("select {COLUMNS} from upload where account_id = ?1 and idempotency_key = ?2"))
            .and_then(|mut s| s.query_row(params![account, key], from_row).optional())
            .map_err(map_err)?;
        match existing {
            Some(found) if found.expires_at_ms > upload.created_at_ms => return Ok(UploadOutcome::Existing(found)),
            // An expired upload gives its key up; its row stays until the reaper has
            // deleted its bytes.
            Some(found) => {
                conn.prepare_cached("update upload set idempotency_key = null where upload_id = ?1")
                    .and_then(|mut s| s.execute([found.id.to_string()]))
                    .map_err(map_err)?;
            }
            None => {}
        }
    }
    conn.prepare_cached(&format!("insert into upload ({COLUMNS}) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"))
        .and_then(|mut s| {
            s.execute(params![
                upload.id.to_string(),
                account,
                upload.content_type,
                upload.byte_size,
                upload.sha256,
                upload.idempotency_key,
                upload.created_at_ms,
                upload.expires_at_ms,
            ])
        })
        .map_err(map_err)?;
    Ok(UploadOutcome::Created(upload.clone()))
}

pub(crate) fn get(conn: &Connection, id: UploadId) -> rusqlite::Result<Option<UploadRecord>> {
    conn.prepare_cached(&format!("select {COLUMNS} from upload where upload_id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()
}

pub(crate) fn to_reap(conn: &Connection, before_ms: i64, limit: usize) -> rusqlite::Result<Vec<UploadId>> {
    let mut s =
        conn.prepare_cached("select upload_id from upload where expires_at < ?1 order by expires_at limit ?2")?;
    let rows = s.query_map(params![before_ms, limit as i64], |r| {
        let id: String = r.get(0)?;
        id.parse()
            .map_err(|_| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, "invalid id".into()))
    })?;
    rows.collect()
}

pub(crate) fn delete_in_tx(ctx: &WriteCtx<'_>, id: UploadId) -> Result<()> {
    ctx.conn
        .prepare_cached("delete from upload where upload_id = ?1")
        .and_then(|mut s| s.execute([id.to_string()]))
        .map(|_| ())
        .map_err(map_err)
}
