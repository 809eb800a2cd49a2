//! Embedded schema migrations for PostgreSQL.
//!
//! Each file under `migrations/postgres/` is compiled in and applied once, in name order,
//! inside its own transaction together with its `schema_migration` row: DDL is
//! transactional in PostgreSQL, so a failed migration leaves the database at the
//! previous version. Applied files are never edited; a change is a new file, with the
//! same name in `migrations/sqlite/`.
//!
//! Several nodes may start at once. Each transaction first takes an advisory lock (see
//! [`crate::locks`]), so one node applies a migration while the others wait and then
//! find it recorded. The lock is keyed by the current schema, so separate schemas (the
//! tests use one each) migrate independently.

use store::Result;

use crate::{db_err, locks};

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_front_door", include_str!("../../../migrations/postgres/0001_front_door.sql")),
    ("0002_job_engine", include_str!("../../../migrations/postgres/0002_job_engine.sql")),
    ("0003_webhooks", include_str!("../../../migrations/postgres/0003_webhooks.sql")),
    ("0004_server_secret", include_str!("../../../migrations/postgres/0004_server_secret.sql")),
    ("0006_uploads", include_str!("../../../migrations/postgres/0006_uploads.sql")),
    ("0007_drop_accepted_write", include_str!("../../../migrations/postgres/0007_drop_accepted_write.sql")),
    ("0008_operating", include_str!("../../../migrations/postgres/0008_operating.sql")),
];

/// Applies pending migrations; returns the names applied now.
pub(crate) async fn apply(client: &mut tokio_postgres::Client, now_ms: i64) -> Result<Vec<String>> {
    let mut applied_now = Vec::new();
    for (name, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(locks::TAKE_SQL, &[&locks::MIGRATIONS, &""]).await.map_err(db_err)?;
        // Created under the lock: `create table if not exists` alone is not safe against
        // a concurrent creation of the same table.
        tx.batch_execute(
            "create table if not exists schema_migration (name text primary key, applied_at bigint not null)",
        )
        .await
        .map_err(db_err)?;
        let done = tx.query_opt("select 1 from schema_migration where name = $1", &[name]).await.map_err(db_err)?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(db_err)?;
            tx.execute("insert into schema_migration (name, applied_at) values ($1, $2)", &[name, &now_ms])
                .await
                .map_err(db_err)?;
            applied_now.push(name.to_string());
        }
        tx.commit().await.map_err(db_err)?;
    }
    Ok(applied_now)
}
