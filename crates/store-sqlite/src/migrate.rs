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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ledger row as (id, kind, amount), by id.
    fn ledger_rows(conn: &Connection) -> Vec<(i64, String, i64)> {
        conn.prepare("select ledger_entry_id, kind, amount from ledger_entry order by 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// 0008 rebuilds `ledger_entry` (SQLite cannot change a check in place): rows keep
    /// their ids, new rows continue after them, and the table stays append-only.
    #[test]
    fn the_ledger_rebuild_keeps_rows_ids_and_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("pragma foreign_keys = on").unwrap();
        let (last, earlier) = MIGRATIONS.split_last().unwrap();
        assert_eq!(last.0, "0008_operating");
        for (_, sql) in earlier {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "insert into account (account_id, name, credits, plan, max_concurrent_jobs, created_at, updated_at)
                 values ('a', 'n', 7, 'p', 1, 1, 1);
             insert into ledger_entry (account_id, kind, amount, note, created_at) values ('a', 'grant', 10, 'x', 1);
             insert into ledger_entry (account_id, kind, amount, job_id, created_at) values ('a', 'charge', -5, 'j', 2);
             insert into ledger_entry (account_id, kind, amount, job_id, created_at) values ('a', 'refund', 2, 'j', 3);
",
        )
        .unwrap();
        let before = ledger_rows(&conn);
        conn.execute_batch(
            "create table schema_migration (name text primary key, applied_at integer not null);
             insert into schema_migration (name, applied_at)
             select column1, 0 from (values ('0001_front_door'), ('0002_job_engine'), ('0003_webhooks'),
                 ('0004_server_secret'), ('0005_accepted_write'), ('0006_uploads'), ('0007_drop_accepted_write'));",
        )
        .unwrap();
        assert_eq!(apply(&mut conn).unwrap(), ["0008_operating"]);
        let after = ledger_rows(&conn);
        assert_eq!(after, before);
        conn.execute(
            "insert into ledger_entry (account_id, kind, amount, created_at) values ('a', 'deduct', -3, 4)",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4, "ids continue after the copied rows");
        assert!(conn.execute("update ledger_entry set amount = 0", []).is_err(), "still append-only");
        assert!(conn.execute("delete from ledger_entry", []).is_err(), "still append-only");
        let second_refund =
            "insert into ledger_entry (account_id, kind, amount, job_id, created_at) values ('a', 'refund', 2, 'j', 5)";
        assert!(conn.execute(second_refund, []).is_err(), "one refund per job");
        let positive_deduct =
            "insert into ledger_entry (account_id, kind, amount, created_at) values ('a', 'deduct', 1, 5)";
        assert!(conn.execute(positive_deduct, []).is_err(), "a deduction is negative");
        let deduct_with_job =
            "insert into ledger_entry (account_id, kind, amount, job_id, created_at) values ('a', 'deduct', -1, 'j', 5)";
        assert!(conn.execute(deduct_with_job, []).is_err(), "a deduction has no job");
        let problems: i64 = conn.query_row("select count(*) from pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(problems, 0);
    }
}
