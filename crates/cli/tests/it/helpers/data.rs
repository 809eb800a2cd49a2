//! Where a test's reelgate keeps its state: [`TestData`], a temporary data directory and,
//! when the suite runs on PostgreSQL, a fresh schema of its own ([`TestDb`]).
//!
//! The backend is chosen once per run by the environment: with `REELGATE_TEST_DATABASE_URL`
//! set (`postgres://...`), every test gets a new schema `it_<uuid>` on that database and
//! reaches it through a URL whose startup `options` put the schema first on the
//! `search_path`, so migrations and queries land there alone. Unset, the state is SQLite in
//! the data directory, exactly as a user's default install. The data directory exists on
//! both backends because result files live there.
//!
//! A set variable with an unreachable database fails the test rather than falling back to
//! SQLite: a PostgreSQL run that quietly tested SQLite would prove nothing.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use service::config::DatabaseUrl;
use service::Config;
use tempfile::TempDir;
use tokio_postgres::NoTls;

/// The variable that switches the suite to PostgreSQL.
pub const DATABASE_VAR: &str = "REELGATE_TEST_DATABASE_URL";

/// The database URL the suite runs on, when it runs on PostgreSQL.
fn base_url() -> Option<String> {
    std::env::var(DATABASE_VAR).ok().filter(|url| !url.is_empty())
}

/// The PostgreSQL that tests only PostgreSQL can run use whatever the suite runs on: the
/// suite's database when it runs on PostgreSQL, else PostgreSQL on loopback, as CI has it.
pub fn postgres_base_url() -> String {
    base_url().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A schema made for one test, dropped when this is dropped (best effort).
pub struct TestDb {
    base_url: String,
    schema: String,
    url: String,
}

impl TestDb {
    /// A new, empty schema, or `None` when the suite runs on SQLite.
    ///
    /// Synchronous so that plain `#[test]`s and async tests alike can call it; see
    /// [`block_on_side`] for why that is safe inside a runtime.
    pub fn fresh() -> Option<TestDb> {
        let base_url = base_url()?;
        match Self::create(base_url, "it", "") {
            Ok(db) => Some(db),
            Err(e) => panic!(
                "{DATABASE_VAR} is set but the test schema could not be created there: {e}. \
                 Start PostgreSQL (scripts/test does), or unset {DATABASE_VAR} to test on SQLite"
            ),
        }
    }

    /// A new schema for a test only PostgreSQL can run (several nodes on one database),
    /// on [`postgres_base_url`] whatever the suite runs on. Its sessions commit without
    /// waiting for the disk: such a test kills nodes, not PostgreSQL, and on a small CI
    /// machine the disk is the slowest part of the run. An unreachable database fails
    /// the test, unless `REELGATE_SKIP_POSTGRES=1`: then it prints SKIP and gives `None`.
    pub fn fresh_on_postgres(test: &str) -> Option<TestDb> {
        let base_url = postgres_base_url();
        match Self::create(base_url.clone(), "multinode", "%20-csynchronous_commit%3Doff") {
            Ok(db) => Some(db),
            Err(e) if std::env::var("REELGATE_SKIP_POSTGRES").as_deref() == Ok("1") => {
                eprintln!("SKIP {test}: PostgreSQL at {base_url} is unreachable ({e}) and REELGATE_SKIP_POSTGRES=1");
                None
            }
            Err(e) => panic!("{test} needs PostgreSQL at {base_url}: {e} (REELGATE_SKIP_POSTGRES=1 skips it)"),
        }
    }

    /// Creates the schema `<prefix>_<uuid>`; `extra_options` are appended, encoded, to
    /// the URL's startup options.
    fn create(base_url: String, prefix: &str, extra_options: &str) -> Result<TestDb, tokio_postgres::Error> {
        let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        block_on_side(async {
            let client = connect(&base_url).await?;
            client.batch_execute(&format!("create schema {schema}")).await
        })?;
        let url = schema_url(&base_url, &schema, extra_options);
        Ok(TestDb { base_url, schema, url })
    }

    /// The URL reelgate connects with: the test database, this schema first on the search path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether any row of any table in the schema contains `needle` in its text form.
    ///
    /// The PostgreSQL counterpart of grepping the SQLite file: a whole-row cast to text
    /// covers every column without naming them, so a column added later is checked too.
    pub fn any_row_contains(&self, needle: &str) -> bool {
        block_on_side(self.search(needle))
    }

    async fn search(&self, needle: &str) -> bool {
        let client = connect(&self.base_url).await.expect("connect to the test database");
        let tables = client
            .query(
                "select table_name::text from information_schema.tables \
                 where table_schema = $1 and table_type = 'BASE TABLE'",
                &[&self.schema],
            )
            .await
            .expect("list the schema's tables");
        assert!(!tables.is_empty(), "the schema {} has no tables", self.schema);
        for table in tables {
            let table: String = table.get(0);
            let sql =
                format!("select exists (select 1 from {}.\"{table}\" t where strpos(t::text, $1) > 0)", self.schema);
            let row = client.query_one(&sql, &[&needle]).await.expect("search a table");
            if row.get::<_, bool>(0) {
                return true;
            }
        }
        false
    }

    /// Drops the schema now, waiting for it; failures are only reported.
    pub async fn drop_schema(mut self) {
        let schema = std::mem::take(&mut self.schema);
        drop_schema(&self.base_url, &schema).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Emptied by `drop_schema`, which already did the work.
        if self.schema.is_empty() {
            return;
        }
        let (base_url, schema) = (self.base_url.clone(), std::mem::take(&mut self.schema));
        block_on_side(async move { drop_schema(&base_url, &schema).await });
    }
}

async fn drop_schema(base_url: &str, schema: &str) {
    let dropped = async {
        let client = connect(base_url).await?;
        // A test that failed may leave its server running (in this process, or a child),
        // in the middle of transactions whose locks `drop schema` would wait for, forever
        // if that server's tasks share the thread blocked here. Its sessions carry the
        // schema's name (see `schema_url`): end them first. The lock timeout is for
        // anything else; a schema left behind is harmless.
        client
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity
                 where application_name = $1 and pid <> pg_backend_pid()",
                &[&schema],
            )
            .await?;
        client.batch_execute(&format!("set lock_timeout = '3s'; drop schema if exists {schema} cascade")).await
    };
    if let Err(e) = dropped.await {
        eprintln!("could not drop the test schema {schema} (left behind): {e}");
    }
}

/// Runs `future` to completion on a thread of its own, with its own runtime.
///
/// Schemas are made and dropped from synchronous code (plain tests, `Drop`), which may
/// itself run inside a test's runtime, where `block_on` panics. A short-lived thread with
/// a current-thread runtime avoids that; blocking the caller for the few milliseconds a
/// `create schema` takes is fine in a test.
fn block_on_side<T: Send>(future: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the test database");
                runtime.block_on(future)
            })
            .join()
            .expect("the test database thread does not panic")
    })
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with `search_path` set to `schema` through the startup `options` (then
/// `extra_options`, already encoded), and the schema's name as `application_name`, which
/// tells its sessions apart in `pg_stat_activity` (for people, and for [`drop_schema`]).
fn schema_url(url: &str, schema: &str, extra_options: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        // `-c search_path=<schema>` with `=` percent-encoded, as a URL query value must be.
        format!("{url}{separator}options=-csearch_path%3D{schema}{extra_options}&application_name={schema}")
    } else {
        panic!("{DATABASE_VAR} must be a postgres:// URL, as reelgate's database_url is")
    }
}

/// One test's state: a temporary data directory, and on PostgreSQL a fresh schema.
pub struct TestData {
    dir: TempDir,
    db: Option<TestDb>,
}

impl TestData {
    /// A new data directory, and a new schema when the suite runs on PostgreSQL.
    pub fn new() -> TestData {
        TestData { dir: tempfile::tempdir().expect("temp dir"), db: TestDb::fresh() }
    }

    /// The data directory (results; the SQLite file when on SQLite).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The schema, when on PostgreSQL.
    pub fn db(&self) -> Option<&TestDb> {
        self.db.as_ref()
    }

    /// The `database_url` to give reelgate: `Some` on PostgreSQL, `None` on SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self.db.as_ref().map(TestDb::url)
    }

    /// Points `config` at this state.
    pub fn apply(&self, config: &mut Config) {
        config.data_dir = self.dir().to_path_buf();
        config.database_url = self.database_url().map(|url| DatabaseUrl::from(url.to_string()));
    }

    /// The built-in defaults pointed at this state: what an admin command would open.
    pub fn config(&self) -> Config {
        let mut config = Config::defaults();
        self.apply(&mut config);
        config
    }

    /// The `reelgate` binary set up to use this state, through the environment
    /// (`REELGATE_DATA_DIR`, `REELGATE_DATABASE_URL`), so it works with any subcommand and
    /// beside `--config` files. On SQLite a `REELGATE_DATABASE_URL` inherited from the
    /// developer's shell is removed: tests never read the developer's environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reelgate"));
        command.env("REELGATE_DATA_DIR", self.dir());
        // As in-process servers (`helpers::no_rate_limits`): many tests submit as fast as
        // they can from one key.
        command.env("REELGATE_RATE_LIMITS__GENERATE_PER_SEC", "0").env("REELGATE_RATE_LIMITS__READ_PER_SEC", "0");
        // The harness's log switch (see `TestApp`) reaches child processes too.
        if let Ok(filter) = std::env::var("REELGATE_TEST_LOG") {
            command.env("REELGATE_LOG", filter);
        }
        match self.database_url() {
            Some(url) => command.env("REELGATE_DATABASE_URL", url),
            None => command.env_remove("REELGATE_DATABASE_URL"),
        };
        command
    }

    /// Runs `reelgate <args>` on this state and returns (success, stdout, stderr).
    pub fn reelgate(&self, args: &[&str]) -> (bool, String, String) {
        let out: Output = self.command().args(args).output().expect("run reelgate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Drops the schema now (best effort) and removes the data directory.
    pub async fn remove(self) {
        if let Some(db) = self.db {
            db.drop_schema().await;
        }
    }
}
