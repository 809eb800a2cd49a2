//! The PostgreSQL side of `reelgate bench --database-url`: a throwaway schema for the
//! run, and the database baseline the front door is compared with.
//!
//! The baseline is what the database alone can do for a submission: one statement that
//! debits an account and inserts a job row into the real tables, sent straight from the
//! bench over as many connections as the server's pool holds, in closed loops, without
//! HTTP and without reelgate's store code. It is the yardstick for the front
//! door on PostgreSQL: the real route should keep up with it. It runs right before and
//! right after the front door is measured, and counts as both runs together, so load
//! from outside the bench that comes or goes during the run weighs on both sides.
//!
//! This module must not share code with `store-postgres`: a baseline written with the
//! store's own statements or pool would move whenever the store does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use domain::{AccountId, ApiKeyId, JobId};
use tokio_postgres::{Client, NoTls};

use crate::load::{percentile_ms, LoadPlan, Measurement, Window};

/// The baseline's row in the report.
pub(super) const STATEMENT_BASELINE: &str = "SQL debit+insert";

/// A schema created for one bench run; the server and the baseline work inside it.
pub(super) struct BenchSchema {
    /// The URL as given, to connect for dropping the schema.
    base_url: String,
    name: String,
    /// The URL with `search_path` set to the schema.
    pub(super) url: String,
}

impl BenchSchema {
    /// Creates `bench_<random>` in the database at `base_url` (a `postgres://` URL).
    pub(super) async fn create(base_url: &str) -> anyhow::Result<Self> {
        ensure!(
            base_url.starts_with("postgres://") || base_url.starts_with("postgresql://"),
            "--database-url must be a postgres:// or postgresql:// URL"
        );
        let client = connect(base_url).await.context("cannot connect to PostgreSQL")?;
        let name = format!("bench_{}", JobId::new().0.simple());
        client.batch_execute(&format!("create schema {name}")).await.context("cannot create the bench schema")?;
        // `options=-c search_path=<schema>`, percent-encoded, reaches every connection
        // made from this URL: the server's pool and the baseline's connections alike.
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-csearch_path%3D{name}");
        Ok(Self { base_url: base_url.to_owned(), name, url })
    }

    /// The schema's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Drops the schema and everything the run wrote into it.
    pub(super) async fn drop_schema(self) -> anyhow::Result<()> {
        let client = connect(&self.base_url).await.context("cannot connect to PostgreSQL")?;
        client
            .batch_execute(&format!("drop schema if exists {} cascade", self.name))
            .await
            .with_context(|| format!("cannot drop the bench schema {}", self.name))
    }
}

/// One plain connection, its driver task spawned on this runtime.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let config: tokio_postgres::Config = url.parse().context("invalid PostgreSQL URL")?;
    let (client, connection) = config.connect(NoTls).await?;
    // The task ends when the client is dropped.
    tokio::spawn(connection);
    Ok(client)
}

/// The baseline statement: the balance check and debit, then the job row built from the
/// debit's result, as one statement (one round trip, one commit). The real front door
/// also writes a ledger row (and an idempotency key when given), so the baseline is the
/// lighter of the two.
const DEBIT_AND_INSERT: &str = "with debit as (
         update account set credits = credits - $2::bigint, updated_at = $3::bigint
         where account_id = $1::uuid and credits >= $2::bigint
         returning account_id
     )
     insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost, input,
                      created_at, updated_at)
     select $4::uuid, account_id, $5::uuid, 'hailuo-2.3', 'QUEUED', 0, $2::bigint, $6::text, $3::bigint, $3::bigint
     from debit";

/// What each baseline statement charges and stores.
pub(super) struct StatementShape {
    /// The bench's accounts and their keys; connection `i` uses pair `i % len`, as HTTP
    /// client `i` uses key `i % len`.
    pub(super) accounts: Vec<(AccountId, ApiKeyId)>,
    /// Credits per job.
    pub(super) cost: i64,
    /// A job input of the size the real route stores.
    pub(super) input: String,
}

/// The statement baseline's samples so far: it runs once before and once after the
/// front door, and the report gives both runs together.
#[derive(Default)]
pub(super) struct StatementSamples {
    latencies_us: Vec<u32>,
    /// Debits that found the balance spent.
    refused: u64,
    measured: Duration,
}

impl StatementSamples {
    /// Both runs as one measurement: statements over the total measured time, and
    /// percentiles over every statement.
    pub(super) fn into_measurement(mut self) -> Measurement {
        self.latencies_us.sort_unstable();
        let seconds = self.measured.as_secs_f64();
        Measurement {
            endpoint: STATEMENT_BASELINE,
            requests: self.latencies_us.len(),
            rps: if seconds > 0.0 { self.latencies_us.len() as f64 / seconds } else { 0.0 },
            p50_ms: percentile_ms(&self.latencies_us, 0.50),
            p99_ms: percentile_ms(&self.latencies_us, 0.99),
            errors: self.refused,
            first_error: (self.refused > 0).then(|| (0, "a debit found the balance spent".to_owned())),
        }
    }
}

/// Runs [`DEBIT_AND_INSERT`] in closed loops on `connections` connections to `url`,
/// with the same warmup and window as the HTTP endpoints, and adds what it measured to
/// `samples`.
pub(super) async fn measure_statement_baseline(
    url: &str,
    connections: usize,
    shape: &Arc<StatementShape>,
    plan: &LoadPlan,
    samples: &mut StatementSamples,
) -> anyhow::Result<()> {
    eprintln!(
        "bench: {STATEMENT_BASELINE}: {connections} connections, {} s warmup + {} s",
        plan.warmup.as_secs(),
        plan.measure.as_secs()
    );
    ensure!(!shape.accounts.is_empty(), "the statement baseline needs an account");
    // Connected and prepared before the clock starts, as the HTTP clients connect first.
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = connect(url).await.context("cannot connect for the statement baseline")?;
        let statement = client.prepare(DEBIT_AND_INSERT).await.context("cannot prepare the baseline statement")?;
        clients.push((client, statement));
    }
    let from = Instant::now() + plan.warmup;
    let window = Window { from, until: from + plan.measure };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (client, statement))| {
            let shape = shape.clone();
            tokio::spawn(async move {
                let (account, key) = shape.accounts[i % shape.accounts.len()];
                let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 14);
                let mut refused = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= window.until {
                        return anyhow::Ok((latencies_us, refused));
                    }
                    let now_ms = unix_ms();
                    let job = JobId::new();
                    let written = client
                        .execute(&statement, &[&account.0, &shape.cost, &now_ms, &job.0, &key.0, &shape.input])
                        .await
                        .context("the baseline statement failed")?;
                    let answered = Instant::now();
                    if written != 1 {
                        // The balance ran out: the debit matched no row. Counted as an
                        // error, as an HTTP refusal would be.
                        refused += 1;
                    } else if sent >= window.from && answered <= window.until {
                        let micros = answered.duration_since(sent).as_micros();
                        latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let (mine, refused) = task.await.context("a baseline connection panicked")??;
        samples.latencies_us.extend_from_slice(&mine);
        samples.refused += refused;
    }
    samples.measured += plan.measure;
    Ok(())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d: Duration| d.as_millis() as i64)
        .unwrap_or(0)
}
