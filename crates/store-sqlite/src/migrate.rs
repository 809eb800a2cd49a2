//! Embedded schema migrations for SQLite.
//!
//! Each file under `migrations/sqlite/` is compiled in and applied once, in name order,
//! inside its own transaction together with its `schema_migration` row, so a crash
//! mid-migration leaves the database at the previous version. Applied files are never
//! edited; a change is a new file.

use rusqlite::{params, Connection, OptionalExtension};
use store::Result;

use crate::db::map_err;

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_front_door", include_str!("../../../migrations/sqlite/0001_front_door.sql")),
    ("0002_job_engine", include_str!("../../../migrations/sqlite/0002_job_engine.sql")),
    ("0003_webhooks", include_str!("../../../migrations/sqlite/0003_webhooks.sql")),
    ("0004_server_secret", include_str!("../../../migrations/sqlite/0004_server_secret.sql")),
    ("0005_accepted_write", include_str!("../../../migrations/sqlite/0005_accepted_write.sql")),
    ("0006_uploads", include_str!("../../../migrations/sqlite/0006_uploads.sql")),
    ("0007_drop_accepted_write", include_str!("../../../migrations/sqlite/0007_drop_accepted_write.sql")),
    ("0008_operating", include_str!("../../../migrations/sqlite/0008_operating.sql")),
];

/// Applies pending migrations; returns the names applied now.
pub(crate) fn apply(conn: &mut Connection) -> Result<Vec<String>> {
    conn.execute_batch(
        "create table if not exists schema_migration (name text primary key, applied_at integer not null)",
    )
    .map_err(map_err)?;
    let mut applied_now = Vec::new();
    for (name, sql) in MIGRATIONS {
        // `begin immediate` takes the write lock first, so two processes starting together
        // cannot both decide a migration is pending.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(map_err)?;
        let done: Option<String> = tx
            .query_row("select name from schema_migration where name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(map_err)?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(map_err)?;
            tx.execute(
                "insert into schema_migration (name, applied_at) values (?1, ?2)",
                params![name, crate::db::wall_clock_ms()],
            )
            .map_err(map_err)?;
            applied_now.push(name.to_string());
        }
        tx.commit().map_err(map_err)?;
    }
    Ok(applied_now)
}
