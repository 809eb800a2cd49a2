//! Locks a process holds for as long as it runs: [`SessionLock`], a session-level advisory
//! lock on a connection of its own, outside the pool.
//!
//! PostgreSQL releases a session lock when its session ends, whether the process let go,
//! exited or was killed (the kernel closes the socket and the server ends the session), so a
//! crashed holder never keeps one. Like the transaction locks in `locks`, a name is hashed
//! with the current schema: deployments (or test runs) in different schemas of one database
//! do not contend.

use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use store::Result;

use crate::{connect_err, db_err, locks, parse_url};

/// Tries to take `$1` (namespace), `$2` (name) for the session; true if taken.
const TRY_SQL: &str = "select pg_try_advisory_lock($1::integer, hashtext(current_schema() || '/' || $2::text))";

/// A held session lock; dropping it ends the session and so releases the lock.
pub struct SessionLock {
    /// Kept only to keep the session open.
    _client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl SessionLock {
    /// Takes the lock `name` on the database at `url` if no other session holds it:
    /// `Ok(None)` when another does.
    pub async fn try_take(url: &str, name: &str) -> Result<Option<SessionLock>> {
        let config = parse_url(url)?;
        let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
        let lock_name = name.to_owned();
        let driver = tokio::spawn(async move {
            // A clean end (the client dropped) is Ok; anything else lost the lock while held.
            if let Err(e) = connection.await {
                tracing::error!(lock = %lock_name, error = %e, "the database session holding a lock ended; the lock is released");
            }
        });
        let row = client.query_one(TRY_SQL, &[&locks::SESSION, &name]).await.map_err(db_err)?;
        if row.get::<_, bool>(0) {
            Ok(Some(SessionLock { _client: client, driver }))
        } else {
            // Dropping the client closes the session.
            drop(client);
            let _ = driver.await;
            Ok(None)
        }
    }

    /// Whether the session holding the lock is still open (false once the connection broke).
    pub fn is_held(&self) -> bool {
        !self.driver.is_finished()
    }
}
