//! Copies the WAL back into the database file on a thread of its own.
//!
//! SQLite checkpoints by itself once the WAL passes 1,000 pages, inside whichever commit
//! crosses that line: on the writer thread, which then spends milliseconds copying pages
//! and syncing the database file while every submission waits behind it. Here a thread
//! with its own connection runs a passive checkpoint every [`INTERVAL`] instead. A
//! passive checkpoint never blocks the writer (it copies only frames no reader still
//! needs), and the writer's own automatic checkpoint stays as a backstop at a much
//! larger size ([`WRITER_AUTOCHECKPOINT_PAGES`]).

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use store::Result;

/// How often the WAL is copied back.
const INTERVAL: Duration = Duration::from_millis(100);
/// The writer checkpoints by itself only if the WAL grows past this many pages (about
/// 32 MiB), which means this thread has fallen far behind.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 8_000;

/// The checkpoint thread; stopped when dropped.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(db_path: &Path) -> Result<Self> {
        let conn = crate::db::open_connection(db_path, false)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    let done = conn.query_row("pragma wal_checkpoint(passive)", [], |_| Ok(()));
                    if let Err(e) = done {
                        // Busy or locked by another process's checkpoint: the next round retries.
                        tracing::debug!(error = %e, "passive checkpoint did not run");
                    }
                }
            })
            .expect("spawning the checkpoint thread only fails when the OS is out of threads");
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
