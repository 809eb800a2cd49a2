//! Submissions on SQLite: gathers a batch's inputs inside the writer's transaction,
//! lets [`domain::submission::decide`] decide, and writes the outcome.
//!
//! The writer thread is the only writer of this process and `begin immediate` holds
//! SQLite's write lock against every other process, so the balances and keys read here
//! are exactly what the commit will hold: no other locking is needed. The rule itself
//! (replays, key conflicts, the balance left) is not written here; this module only
//! reads what the rule needs and writes what it decided.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use domain::submission::{self, Decision, StoredKey};
use domain::{AccountId, JobStatus};
use rusqlite::{params, Connection, OptionalExtension};
use store::{LedgerKind, NewJob, Result, StoreError, SubmitOutcome};

use crate::db::{insert_ledger, map_err};
use crate::writer::WriteCtx;

/// Decides `jobs` (one batch, in arrival order) and writes the accepted ones: one debit
/// per account, each job with its charge and key. The writer's [`crate::writer::Decide`].
pub(crate) fn decide_in_tx(ctx: &WriteCtx<'_>, jobs: &[Arc<NewJob>]) -> Result<Vec<Result<SubmitOutcome>>> {
    let conn = ctx.conn;
    // A job naming an API key that does not exist is refused before the rule: the job's
    // foreign key would fail the whole batch's write.
    let mut keys_known: HashMap<domain::ApiKeyId, bool> = HashMap::new();
    let mut refused: Vec<Option<StoreError>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let known = match keys_known.get(&job.api_key_id) {
            Some(known) => *known,
            None => {
                let known = api_key_exists(conn, job).map_err(map_err)?;
                keys_known.insert(job.api_key_id, known);
                known
            }
        };
        refused.push((!known).then(|| StoreError::Conflict(format!("API key {} does not exist", job.api_key_id))));
    }
    let considered: Vec<&NewJob> =
        jobs.iter().zip(&refused).filter(|(_, r)| r.is_none()).map(|(j, _)| j.as_ref()).collect();

    let mut balances: HashMap<AccountId, i64> = HashMap::new();
    let mut stored: HashMap<(AccountId, String), StoredKey> = HashMap::new();
    for job in &considered {
        if let Entry::Vacant(slot) = balances.entry(job.account_id) {
            if let Some(credits) = balance(conn, job.account_id).map_err(map_err)? {
                slot.insert(credits);
            }
        }
        if let Some(claim) = &job.idempotency {
            if let Entry::Vacant(slot) = stored.entry((job.account_id, claim.key.clone())) {
                if let Some(key) = stored_key(conn, job.account_id, &claim.key)? {
                    slot.insert(key);
                }
            }
        }
    }

    let batch: Vec<submission::Submission<'_>> = considered.iter().map(|j| j.submission()).collect();
    let decisions = submission::decide(&batch, &balances, &stored);
    for (account, total) in submission::debits(&batch, &decisions) {
        debit(conn, account, total, ctx.now_ms)?;
    }
    for (job, decision) in considered.iter().zip(&decisions) {
        if *decision == Decision::Accept {
            insert_rows(conn, job, ctx.now_ms)?;
        }
    }

    let mut decided = considered.iter().zip(decisions);
    Ok(refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(e) => Err(e),
            None => {
                let (job, decision) = decided.next().expect("one decision per job considered");
                SubmitOutcome::decided(decision, job)
            }
        })
        .collect())
}

fn api_key_exists(conn: &Connection, job: &NewJob) -> rusqlite::Result<bool> {
    conn.prepare_cached("select exists (select 1 from api_key where api_key_id = ?1)")?
        .query_row([job.api_key_id.to_string()], |r| r.get(0))
}

fn balance(conn: &Connection, account: AccountId) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("select credits from account where account_id = ?1")?
        .query_row([account.to_string()], |r| r.get(0))
        .optional()
}

/// A stored idempotency key with its job's status.
fn stored_key(conn: &Connection, account: AccountId, key: &str) -> Result<Option<StoredKey>> {
    let row: Option<(Vec<u8>, String, i64, String)> = conn
        .prepare_cached(
            "select k.fingerprint, k.job_id, k.created_at, j.status
             from idempotency_key k join job j on j.job_id = k.job_id
             where k.account_id = ?1 and k.idempotency_key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![account.to_string(), key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
        })
        .map_err(map_err)?;
    let Some((fingerprint, job_id, created_at_ms, status)) = row else { return Ok(None) };
    Ok(Some(StoredKey {
        job_id: job_id.parse().map_err(|_| StoreError::Internal(format!("bad job id {job_id}")))?,
        fingerprint,
        created_at_ms,
        status: JobStatus::parse(&status).ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?,
    }))
}

/// Takes `amount` from the account's balance; the decision made sure it is there.
fn debit(conn: &Connection, account: AccountId, amount: i64, now_ms: i64) -> Result<()> {
    let debited = conn
        .prepare_cached(
            "update account set credits = credits - ?1, updated_at = ?2 where account_id = ?3 and credits >= ?1",
        )
        .and_then(|mut s| s.execute(params![amount, now_ms, account.to_string()]))
        .map_err(map_err)?;
    if debited != 1 {
        // The balance was read in this very transaction.
        return Err(StoreError::Internal(format!("account {account} cannot pay {amount} credits for accepted jobs")));
    }
    Ok(())
}

/// The job row (QUEUED), its charge and its idempotency key.
fn insert_rows(conn: &Connection, job: &NewJob, now_ms: i64) -> Result<()> {
    let events = job.webhook_events.as_ref().map(|e| e.join(","));
    let webhook_status = job.webhook_url.as_ref().map(|_| "pending");
    conn.prepare_cached(
        "insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost, webhook_url,
                          webhook_events, webhook_status, input, created_at, updated_at)
         values (?1, ?2, ?3, ?4, 'QUEUED', 0, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job.id.to_string(),
            job.account_id.to_string(),
            job.api_key_id.to_string(),
            job.model.as_str(),
            job.cost,
            job.webhook_url,
            events,
            webhook_status,
            job.input_json,
            now_ms
        ])
    })
    .map_err(map_err)?;
    insert_ledger(conn, job.account_id, LedgerKind::Charge, -job.cost, Some(job.id), None, now_ms).map_err(map_err)?;
    if let Some(claim) = &job.idempotency {
        // A key still stored here was past its replay window: the decision said so.
        conn.prepare_cached(
            "insert into idempotency_key (account_id, idempotency_key, fingerprint, job_id, created_at)
             values (?1, ?2, ?3, ?4, ?5)
             on conflict (account_id, idempotency_key) do update
                 set fingerprint = excluded.fingerprint, job_id = excluded.job_id, created_at = excluded.created_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                job.account_id.to_string(),
                claim.key,
                &claim.fingerprint[..],
                job.id.to_string(),
                now_ms
            ])
        })
        .map_err(map_err)?;
    }
    Ok(())
}
