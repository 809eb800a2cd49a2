//! Online backups: a copy of `reelgate.db` taken with SQLite's own tools while
//! submissions run holds every job acknowledged before the copy began, charged once.
//!
//! This is what operators rely on (docs/OPERATIONS.md, "Backups"): the database is the
//! whole of the store's state, and a submission is answered only after the commit that
//! holds it, so nothing acknowledged lives anywhere a backup of SQLite would miss.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::JobId;
use rusqlite::{Connection, OpenFlags};
use store::{Store, SubmitOutcome};
use store_contract::support;
use store_sqlite::SqliteStore;

/// Submitters running against `store` until `stop`, each acknowledged job appended to
/// `acked` as its answer arrives.
fn submit_until(
    store: &Arc<SqliteStore>,
    key: &store::ApiKeyRecord,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<JobId>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|i| {
            let (store, key, stop, acked) = (store.clone(), key.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let mut job = support::job(&key, 1);
                    if n % 3 == 0 {
                        job = support::with_key(job, &format!("c{i}-{n}"), 1, 0);
                    }
                    n += 1;
                    match store.submit_job(job).await.unwrap() {
                        SubmitOutcome::Created { job_id, .. } => acked.lock().unwrap().push(job_id),
                        other => panic!("only creations expected, got {other:?}"),
                    }
                }
            })
        })
        .collect()
}

/// What a backup file holds for `account`: its job ids, balance and ledger sum.
fn read_backup(path: &Path, account: domain::AccountId) -> (Vec<String>, i64, i64) {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = conn.query_row("pragma integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let mut s = conn.prepare("select job_id from job where account_id = ?1").unwrap();
    let jobs = s.query_map([account.to_string()], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let credits =
        conn.query_row("select credits from account where account_id = ?1", [account.to_string()], |r| r.get(0));
    let ledger = conn.query_row(
        "select coalesce(sum(amount), 0) from ledger_entry where account_id = ?1",
        [account.to_string()],
        |r| r.get(0),
    );
    (jobs, credits.unwrap(), ledger.unwrap())
}

/// Runs one backup `take` in the middle of a stream of submissions and checks the copy.
async fn backup_under_load(name: &str, take: impl FnOnce(&Path, &Path) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reelgate.db");
    let store = Arc::new(SqliteStore::open_serving(&path).unwrap());
    let key = support::account(&*store, 1_000_000, 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let submitters = submit_until(&store, &key, &stop, &acked);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Everything acknowledged up to here must be in the copy.
    let before: Vec<JobId> = acked.lock().unwrap().clone();
    let copy = dir.path().join(format!("{name}.db"));
    let (from, to) = (path.clone(), copy.clone());
    tokio::task::spawn_blocking(move || take(&from, &to)).await.unwrap();
    let during = acked.lock().unwrap().len() - before.len();

    stop.store(true, Ordering::Release);
    for s in submitters {
        s.await.unwrap();
    }
    store.close().await;
    assert!(before.len() > 100, "{name}: submissions were running ({} acknowledged before)", before.len());
    assert!(during > 0, "{name}: submissions went on while the backup ran");

    let (jobs, credits, ledger) = read_backup(&copy, key.account_id);
    let jobs: std::collections::HashSet<String> = jobs.into_iter().collect();
    let missing = before.iter().filter(|id| !jobs.contains(&id.to_string())).count();
    assert_eq!(missing, 0, "{name}: {missing} of {} acknowledged jobs are not in the backup", before.len());
    // A consistent snapshot: each job in the copy charged once, the balance its ledger.
    assert_eq!(credits, ledger, "{name}: the copy's balance is its ledger's sum");
    assert_eq!(credits, 1_000_000 - jobs.len() as i64, "{name}: every job in the copy charged once");
    // The copy is a working database.
    let restored = SqliteStore::open(&copy).unwrap();
    let job = restored.get_job(key.account_id, before[0]).await.unwrap();
    assert!(job.is_some(), "{name}: the restored store reads the job");
    restored.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_holds_every_job_acknowledged_before_it_began() {
    // rusqlite's backup API (what `.backup` uses), copying every page in one step so it
    // reads one snapshot however fast the writer commits.
    backup_under_load("backup_api", |from, to| {
        let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut dst = Connection::open(to).unwrap();
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).unwrap();
        // -1: every page in one step.
        assert_eq!(backup.step(-1).unwrap(), rusqlite::backup::StepResult::Done);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_into_takes_an_online_backup_too() {
    backup_under_load("vacuum_into", |from, to| {
        let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        src.execute("vacuum into ?1", [to.to_str().unwrap()]).unwrap();
    })
    .await;
}

/// The operator's command, `sqlite3 reelgate.db ".backup …"`, when the shell is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite3_shell_backup_command_holds_every_acknowledged_job() {
    if std::process::Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("SKIP: no sqlite3 shell on this machine");
        return;
    }
    backup_under_load("shell", |from, to| {
        let out = std::process::Command::new("sqlite3")
            .arg(from)
            .arg(format!(".backup '{}'", to.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    })
    .await;
}
