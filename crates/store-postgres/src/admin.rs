//! The operator's interface on PostgreSQL: admin writes with their audit rows, admin
//! tokens, and the console's cross-account reads (accounts, ledger and audit pages, jobs,
//! timelines, usage, upstream activity and holds, the overview).
//!
//! Each [`write`] is one transaction holding the change and its `audit_log` row, so the
//! log cannot miss a change nor record one that rolled back. A write that changes nothing
//! (a refused deduction, a replayed grant, a job no longer queued) is rolled back and
//! leaves no audit row. What a write must hold across nodes is held by row locks on the
//! row it changes (`for update`), taken before anything is checked: two operators (or a
//! billing system's retries) on one account take turns, and the second reads what the
//! first committed. Announcements (a cancelled job, replayed webhooks) are the caller's,
//! after the commit.
//!
//! The reads ask the database every time, like the rest of this backend, and each is one
//! statement (the overview is three): usage is grouped by the database, not in Rust.

use deadpool_postgres::{GenericClient, Object};
use domain::{AccountId, ApiKeyStatus, JobId, JobStatus, KeyDigest, Stage};
use serde_json::{json, Value};
use store::{
    snapshot, Account, AccountPatch, AccountQuery, AdminJobQuery, AdminToken, AdminWrite, AdminWritten, AuditContext,
    AuditRecord, CancelOutcome, CreditAdjustment, CreditOutcome, JobRecord, LedgerEntry, LedgerKind, NewAccount,
    Overview, Result, StageChange, StoreError, UpstreamActivity, UpstreamHold, UsageGroup, UsageQuery, UsageRow,
};
use uuid::Uuid;

use crate::rows::{
    self, account_columns, admin_token_columns, audit_columns, hold_columns, job_columns, ledger_columns,
    LEDGER_COLUMNS,
};
use crate::{db_err, Param};

/// What an admin write changed, for its audit row.
struct Audited {
    action: &'static str,
    target: String,
    before: Option<Value>,
    after: Option<Value>,
}

impl Audited {
    fn new(action: &'static str, target: String, before: Option<Value>, after: Option<Value>) -> Self {
        Self { action, target, before, after }
    }
}

/// Applies `write` and its audit row in one transaction; a write that changed nothing is
/// rolled back and leaves no row.
pub(crate) async fn write(
    client: &mut Object,
    write: AdminWrite,
    audit: &AuditContext,
    now_ms: i64,
) -> Result<AdminWritten> {
    // Checked before anything is written: a bad token id is a caller's bug, and it would
    // otherwise surface only after the change was made.
    let token_id = audit
        .token_id
        .as_deref()
        .map(|id| Uuid::parse_str(id).map_err(|_| StoreError::Internal(format!("admin token id {id:?} is not a UUID"))))
        .transpose()?;
    let tx = client.transaction().await.map_err(db_err)?;
    let (written, audited) = apply(&tx, write, now_ms).await?;
    if let Some(a) = audited {
        const SQL: &str = "insert into audit_log (admin_token_id, actor, action, target, before, after, request_id,
                                                  created_at)
                           values ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb, $7, $8)";
        let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
        let before = a.before.map(|v| v.to_string());
        let after = a.after.map(|v| v.to_string());
        let params: [Param<'_>; 8] =
            [&token_id, &audit.actor, &a.action, &a.target, &before, &after, &audit.request_id, &now_ms];
        tx.execute(&stmt, &params).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
    }
    // Otherwise nothing changed: dropping the transaction rolls back what was read under lock.
    Ok(written)
}

/// The change itself, inside `tx`; `None` for the audit when nothing changed.
async fn apply(tx: &impl GenericClient, write: AdminWrite, now_ms: i64) -> Result<(AdminWritten, Option<Audited>)> {
    Ok(match write {
        AdminWrite::CreateToken { name, prefix, digest } => {
            const SQL: &str = concat!(
                "insert into admin_token (admin_token_id, name, prefix, token_digest, created_at)
                 values ($1, $2, $3, $4, $5) returning ",
                admin_token_columns!()
            );
            let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
            let digest: &[u8] = &digest.0;
            let params: [Param<'_>; 5] = [&Uuid::new_v4(), &name, &prefix, &digest, &now_ms];
            let token = rows::admin_token(&tx.query_one(&stmt, &params).await.map_err(db_err)?)?;
            let audited =
                Audited::new("token.create", format!("token:{}", token.id), None, Some(snapshot::token(&token)));
            (AdminWritten::Token(token), Some(audited))
        }
        AdminWrite::RevokeToken { id } => {
            let token = revoke_token(tx, &id, now_ms).await?;
            let (before, after) = token;
            let audited = Audited::new(
                "token.revoke",
                format!("token:{}", after.id),
                Some(snapshot::token(&before)),
                Some(snapshot::token(&after)),
            );
            (AdminWritten::Token(after), Some(audited))
        }
        AdminWrite::CreateAccount(new) => {
            let account = create_account(tx, &new, now_ms).await?;
            let audited = Audited::new(
                "account.create",
                format!("account:{}", account.id),
                None,
                Some(snapshot::account(&account)),
            );
            (AdminWritten::Account(account), Some(audited))
        }
        AdminWrite::UpdateAccount { id, patch } => {
            let (before, after) = update_account(tx, id, &patch, now_ms).await?;
            let audited = Audited::new(
                "account.update",
                format!("account:{id}"),
                Some(snapshot::account(&before)),
                Some(snapshot::account(&after)),
            );
            (AdminWritten::Account(after), Some(audited))
        }
        AdminWrite::CreateKey(new) => {
            let (account, key) = crate::accounts::create_api_key_in(tx, new, now_ms).await?;
            let audited = Audited::new("key.create", format!("key:{}", key.id), None, Some(snapshot::key(&key)));
            (AdminWritten::Key(account, key), Some(audited))
        }
        AdminWrite::SetKeyStatus { id, status } => {
            // Locked first, so the audit's `before` is the state this change replaced.
            let before = crate::accounts::load_api_key(tx, id, true)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("API key {id}")))?;
            let after = crate::accounts::set_api_key_status(tx, id, status, now_ms).await?;
            let account = load_account(tx, after.account_id, false)
                .await?
                .ok_or_else(|| StoreError::Internal(format!("API key {id} has no account")))?;
            let action = match status {
                ApiKeyStatus::Active => "key.enable",
                ApiKeyStatus::Disabled => "key.disable",
                ApiKeyStatus::Revoked => "key.revoke",
            };
            let audited =
                Audited::new(action, format!("key:{id}"), Some(snapshot::key(&before)), Some(snapshot::key(&after)));
            (AdminWritten::Key(account, after), Some(audited))
        }
        AdminWrite::AdjustCredits(adjustment) => {
            let (outcome, audited) = adjust_credits(tx, &adjustment, now_ms).await?;
            (AdminWritten::Credits(outcome), audited)
        }
        AdminWrite::CancelJob { id } => {
            let (outcome, cost) = crate::jobs::cancel_in(tx, None, id, now_ms).await?;
            let audited = match &outcome {
                CancelOutcome::Cancelled(job) => Some(Audited::new(
                    "job.cancel",
                    format!("job:{id}"),
                    Some(snapshot::job(JobStatus::Queued, cost)),
                    Some(snapshot::job(job.status, job.credit_cost)),
                )),
                CancelOutcome::NotCancellable(_) | CancelOutcome::NotFound => None,
            };
            (AdminWritten::Cancel(outcome), audited)
        }
        AdminWrite::ReplayWebhooks { id } => {
            let events = crate::webhooks::replay_in(tx, id, now_ms).await?;
            let audited = (events > 0).then(|| {
                Audited::new("job.webhooks.replay", format!("job:{id}"), None, Some(json!({"events": events})))
            });
            (AdminWritten::Replayed(events), audited)
        }
        AdminWrite::HoldUpstream(hold) => {
            let (before, after) = hold_upstream(tx, &hold).await?;
            let audited = Audited::new(
                "upstream.hold",
                format!("upstream:{}", after.name),
                before.as_ref().map(snapshot::hold),
                Some(snapshot::hold(&after)),
            );
            (AdminWritten::Upstream(Some(after)), Some(audited))
        }
        AdminWrite::ReleaseUpstream { name } => {
            const SQL: &str =
                concat!("delete from upstream_hold where upstream_account = $1 returning ", hold_columns!());
            let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
            let released = tx.query_opt(&stmt, &[&name]).await.map_err(db_err)?.as_ref().map(rows::hold).transpose()?;
            // A hold that ran out held nothing: its row goes, unaudited.
            let released = released.filter(|h| h.until_ms > now_ms);
            let audited = released
                .as_ref()
                .map(|h| Audited::new("upstream.release", format!("upstream:{name}"), Some(snapshot::hold(h)), None));
            (AdminWritten::Upstream(released), audited)
        }
    })
}

/// Revokes a token; returns it before and after.
async fn revoke_token(tx: &impl GenericClient, id: &str, now_ms: i64) -> Result<(AdminToken, AdminToken)> {
    // Token ids are UUIDs: anything else names no token.
    let Ok(uuid) = Uuid::parse_str(id) else {
        return Err(StoreError::NotFound(format!("admin token {id}")));
    };
    const LOCK: &str =
        concat!("select ", admin_token_columns!(), " from admin_token where admin_token_id = $1 for update");
    let stmt = tx.prepare_cached(LOCK).await.map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&uuid]).await.map_err(db_err)? else {
        return Err(StoreError::NotFound(format!("admin token {id}")));
    };
    let before = rows::admin_token(&row)?;
    if before.revoked_at_ms.is_some() {
        return Err(StoreError::Conflict(format!("admin token {id} is already revoked")));
    }
    const REVOKE: &str =
        concat!("update admin_token set revoked_at = $2 where admin_token_id = $1 returning ", admin_token_columns!());
    let stmt = tx.prepare_cached(REVOKE).await.map_err(db_err)?;
    let after = rows::admin_token(&tx.query_one(&stmt, &[&uuid, &now_ms]).await.map_err(db_err)?)?;
    Ok((before, after))
}

/// A concurrency cap as stored: at least 1 (the schema's check says so too, but this
/// names the field).
fn cap(max_concurrent_jobs: u32) -> Result<i32> {
    if max_concurrent_jobs == 0 {
        return Err(StoreError::Conflict("max_concurrent_jobs must be at least 1".into()));
    }
    i32::try_from(max_concurrent_jobs).map_err(|_| StoreError::Conflict("max_concurrent_jobs is too large".into()))
}

async fn create_account(tx: &impl GenericClient, new: &NewAccount, now_ms: i64) -> Result<Account> {
    let max_concurrent_jobs = cap(new.max_concurrent_jobs)?;
    let id = AccountId::new();
    let stmt = tx
        .prepare_cached(
            "insert into account (account_id, name, email, credits, plan, max_concurrent_jobs, created_at, updated_at)
             values ($1, $2, $3, 0, $4, $5, $6, $6)",
        )
        .await
        .map_err(db_err)?;
    let params: [Param<'_>; 6] = [&id.0, &new.name, &new.email, &new.plan, &max_concurrent_jobs, &now_ms];
    tx.execute(&stmt, &params).await.map_err(db_err)?;
    // As create_api_key does: only a positive amount is granted, as one ledger row.
    if new.initial_credits > 0 {
        crate::accounts::grant(tx, id, new.initial_credits, Some("initial credits"), now_ms).await?;
    }
    load_account(tx, id, false).await?.ok_or_else(|| StoreError::Internal(format!("account {id} vanished")))
}

/// An account, locked `for update` when `lock` (to change it).
async fn load_account(tx: &impl GenericClient, id: AccountId, lock: bool) -> Result<Option<Account>> {
    if !lock {
        return crate::accounts::load_account(tx, id).await;
    }
    const SQL: &str = concat!("select ", account_columns!(), " from account where account_id = $1 for update");
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    tx.query_opt(&stmt, &[&id.0]).await.map_err(db_err)?.as_ref().map(rows::account).transpose()
}

/// Changes an account; returns it before and after.
async fn update_account(
    tx: &impl GenericClient,
    id: AccountId,
    patch: &AccountPatch,
    now_ms: i64,
) -> Result<(Account, Account)> {
    let max_concurrent_jobs = patch.max_concurrent_jobs.map(cap).transpose()?;
    let before = load_account(tx, id, true).await?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
    // A NULL parameter leaves its column alone; the e-mail, which can be cleared, says
    // whether it changes in a flag of its own.
    const SQL: &str = concat!(
        "update account set name = coalesce($2::text, name),
                            email = case when $3::boolean then $4::text else email end,
                            plan = coalesce($5::text, plan),
                            max_concurrent_jobs = coalesce($6::integer, max_concurrent_jobs),
                            disabled = coalesce($7::boolean, disabled),
                            updated_at = $8
         where account_id = $1
         returning ",
        account_columns!()
    );
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    let email = patch.email.clone().flatten();
    let params: [Param<'_>; 8] = [
        &id.0,
        &patch.name,
        &patch.email.is_some(),
        &email,
        &patch.plan,
        &max_concurrent_jobs,
        &patch.disabled,
        &now_ms,
    ];
    let after = rows::account(&tx.query_one(&stmt, &params).await.map_err(db_err)?)?;
    Ok((before, after))
}

/// A credit adjustment. The account row is locked before the idempotency key is looked
/// up, so two requests with one key take turns and the second finds the first's row; the
/// unique index `ledger_entry_idempotency` (and `on conflict do nothing`) stays the last
/// word should anything insert a key without that lock.
async fn adjust_credits(
    tx: &impl GenericClient,
    adjustment: &CreditAdjustment,
    now_ms: i64,
) -> Result<(CreditOutcome, Option<Audited>)> {
    let CreditAdjustment { account_id: id, amount, note, idempotency_key } = adjustment;
    let (id, amount) = (*id, *amount);
    if amount == 0 {
        return Err(StoreError::Conflict("a credit adjustment cannot be 0".into()));
    }
    let before = load_account(tx, id, true).await?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
    if let Some(key) = idempotency_key {
        if let Some(outcome) = earlier_adjustment(tx, &before, adjustment, key).await? {
            return Ok((outcome, None));
        }
    }
    if amount < 0 && before.credits + amount < 0 {
        return Ok((CreditOutcome::Insufficient { available: before.credits }, None));
    }
    let kind = if amount > 0 { LedgerKind::Grant } else { LedgerKind::Deduct };
    // The balance moves only if the row went in; both come back in one row, the ledger
    // columns first.
    const SQL: &str = concat!(
        "with entry as (
             insert into ledger_entry (account_id, kind, amount, note, idempotency_key, created_at)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (account_id, idempotency_key) where idempotency_key is not null do nothing
             returning ",
        ledger_columns!(),
        "), credited as (
             update account set credits = credits + $3, updated_at = $6
             where account_id = $1 and exists (select 1 from entry)
             returning ",
        account_columns!(),
        ") select entry.*, credited.* from entry cross join credited"
    );
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 6] = [&id.0, &kind.as_str(), &amount, note, idempotency_key, &now_ms];
    let Some(row) = tx.query_opt(&stmt, &params).await.map_err(db_err)? else {
        // The key went in meanwhile, without this account's lock.
        let key = idempotency_key.as_deref().unwrap_or_default();
        return match earlier_adjustment(tx, &before, adjustment, key).await? {
            Some(outcome) => Ok((outcome, None)),
            None => Err(StoreError::Internal(format!("credit adjustment of account {id} was not written"))),
        };
    };
    let entry = rows::ledger_entry(&row)?;
    let after = rows::account_at(&row, LEDGER_COLUMNS)?;
    let audited = Audited::new(
        "credits.adjust",
        format!("account:{id}"),
        Some(snapshot::account(&before)),
        Some(snapshot::account(&after)),
    );
    Ok((CreditOutcome::Applied(after, entry), Some(audited)))
}

/// What an adjustment whose key was used before comes to: `None` if it was not used.
async fn earlier_adjustment(
    tx: &impl GenericClient,
    account: &Account,
    adjustment: &CreditAdjustment,
    key: &str,
) -> Result<Option<CreditOutcome>> {
    const SQL: &str =
        concat!("select ", ledger_columns!(), " from ledger_entry where account_id = $1 and idempotency_key = $2");
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&account.id.0, &key]).await.map_err(db_err)? else {
        return Ok(None);
    };
    let entry = rows::ledger_entry(&row)?;
    Ok(Some(if entry.amount == adjustment.amount && entry.note == adjustment.note {
        CreditOutcome::Replayed(account.clone(), entry)
    } else {
        CreditOutcome::IdempotencyMismatch
    }))
}

/// Makes or replaces a hold; returns the one replaced, if any, and the one made.
async fn hold_upstream(tx: &impl GenericClient, hold: &UpstreamHold) -> Result<(Option<UpstreamHold>, UpstreamHold)> {
    const LOCK: &str =
        concat!("select ", hold_columns!(), " from upstream_hold where upstream_account = $1 for update");
    let stmt = tx.prepare_cached(LOCK).await.map_err(db_err)?;
    let before = tx.query_opt(&stmt, &[&hold.name]).await.map_err(db_err)?.as_ref().map(rows::hold).transpose()?;
    // An upsert: a hold made by another operator since the read above is replaced too.
    const UPSERT: &str = concat!(
        "insert into upstream_hold (upstream_account, until_at, reason, created_at) values ($1, $2, $3, $4)
         on conflict (upstream_account) do update
             set until_at = excluded.until_at, reason = excluded.reason, created_at = excluded.created_at
         returning ",
        hold_columns!()
    );
    let stmt = tx.prepare_cached(UPSERT).await.map_err(db_err)?;
    let params: [Param<'_>; 4] = [&hold.name, &hold.until_ms, &hold.reason, &hold.created_at_ms];
    let after = rows::hold(&tx.query_one(&stmt, &params).await.map_err(db_err)?)?;
    Ok((before, after))
}

pub(crate) async fn find_admin_token(client: &Object, digest: &KeyDigest) -> Result<Option<AdminToken>> {
    const SQL: &str = concat!("select ", admin_token_columns!(), " from admin_token where token_digest = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let bytes: &[u8] = &digest.0;
    let found =
        client.query_opt(&stmt, &[&bytes]).await.map_err(db_err)?.as_ref().map(rows::admin_token).transpose()?;
    // As for API keys: the index found the row by digest; confirm in constant time.
    Ok(found.filter(|t| t.digest.ct_eq(digest)))
}

pub(crate) async fn list_admin_tokens(client: &Object) -> Result<Vec<AdminToken>> {
    const SQL: &str =
        concat!("select ", admin_token_columns!(), " from admin_token order by created_at, admin_token_id");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query(&stmt, &[]).await.map_err(db_err)?.iter().map(rows::admin_token).collect()
}

/// `limit + 1`, as the database wants it.
fn page_size(limit: u32) -> i64 {
    i64::from(limit) + 1
}

pub(crate) async fn audit_log(client: &Object, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
    const SQL: &str = concat!(
        "select ",
        audit_columns!(),
        " from audit_log where $1::bigint is null or audit_log_id < $1::bigint
          order by audit_log_id desc limit $2"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client
        .query(&stmt, &[&before_id, &page_size(limit)])
        .await
        .map_err(db_err)?
        .iter()
        .map(rows::audit_record)
        .collect()
}

pub(crate) async fn ledger_page(
    client: &Object,
    id: AccountId,
    before_id: Option<i64>,
    limit: u32,
) -> Result<Vec<LedgerEntry>> {
    const SQL: &str = concat!(
        "select ",
        ledger_columns!(),
        " from ledger_entry where account_id = $1 and ($2::bigint is null or ledger_entry_id < $2::bigint)
          order by ledger_entry_id desc limit $3"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 3] = [&id.0, &before_id, &page_size(limit)];
    client.query(&stmt, &params).await.map_err(db_err)?.iter().map(rows::ledger_entry).collect()
}

pub(crate) async fn list_accounts(client: &Object, q: &AccountQuery) -> Result<Vec<Account>> {
    // A search that is a UUID names one account; any other is a case-insensitive
    // substring of the name or the e-mail (strpos, so `%` and `_` are plain characters).
    macro_rules! accounts_sql {
        ($keyset:literal) => {
            concat!(
                "select ",
                account_columns!(),
                " from account
                 where ($1::uuid is null or account_id = $1::uuid)
                   and ($2::text is null or strpos(lower(name), lower($2::text)) > 0
                        or strpos(lower(coalesce(email, '')), lower($2::text)) > 0) ",
                $keyset,
                " order by created_at desc, account_id desc limit $5"
            )
        };
    }
    const FIRST_PAGE: &str = accounts_sql!("and $3::bigint is null and $4::uuid is null");
    const NEXT_PAGE: &str = accounts_sql!("and (created_at, account_id) < ($3::bigint, $4::uuid)");
    // Surrounding blanks are not part of a search, and a blank search is none (as on SQLite).
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let exact = search.and_then(|s| Uuid::parse_str(s).ok());
    let text = if exact.is_some() { None } else { search };
    let stmt = client.prepare_cached(if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE }).await.map_err(db_err)?;
    let params: [Param<'_>; 5] =
        [&exact, &text, &q.after.map(|(at, _)| at), &q.after.map(|(_, id)| id.0), &page_size(q.limit)];
    client.query(&stmt, &params).await.map_err(db_err)?.iter().map(rows::account).collect()
}

pub(crate) async fn admin_jobs(client: &Object, q: &AdminJobQuery) -> Result<Vec<JobRecord>> {
    // As list_jobs, across accounts: a NULL parameter disables its filter. The time range
    // is always bounded (an open end is the widest bigint) and the keyset condition is a
    // row comparison, so both bound a backward range scan of `job_created`.
    macro_rules! jobs_sql {
        ($keyset:literal) => {
            concat!(
                "select ",
                job_columns!(),
                " from job
                 where ($1::uuid is null or account_id = $1::uuid)
                   and ($2::uuid is null or api_key_id = $2::uuid)
                   and ($3::text is null or status = $3::text)
                   and ($4::text is null or model = $4::text)
                   and created_at >= $5::bigint and created_at < $6::bigint ",
                $keyset,
                " order by created_at desc, job_id desc limit $9::bigint"
            )
        };
    }
    const FIRST_PAGE: &str = jobs_sql!("and $7::bigint is null and $8::uuid is null");
    const NEXT_PAGE: &str = jobs_sql!("and (created_at, job_id) < ($7::bigint, $8::uuid)");
    let stmt = client.prepare_cached(if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE }).await.map_err(db_err)?;
    let params: [Param<'_>; 9] = [
        &q.account_id.map(|a| a.0),
        &q.api_key_id.map(|k| k.0),
        &q.status.map(|s| s.as_str()),
        &q.model,
        &q.from_ms.unwrap_or(i64::MIN),
        &q.to_ms.unwrap_or(i64::MAX),
        &q.after.map(|a| a.created_at_ms),
        &q.after.map(|a| a.id.0),
        &page_size(q.limit),
    ];
    client.query(&stmt, &params).await.map_err(db_err)?.iter().map(rows::job).collect()
}

pub(crate) async fn job_timeline(client: &Object, id: JobId) -> Result<Vec<StageChange>> {
    // The creation comes from the job row (it is not logged); no job, no timeline.
    let stmt = client
        .prepare_cached(
            "select null::text, 'queued'::text, null::text, created_at, 0::bigint from job where job_id = $1
             union all
             select from_stage, to_stage, note, at, job_stage_change_id from job_stage_change
             where job_id = $1 and exists (select 1 from job where job_id = $1)
             order by 5",
        )
        .await
        .map_err(db_err)?;
    let stage = |s: &str| Stage::parse(s).ok_or_else(|| StoreError::Internal(format!("unreadable stage {s:?}")));
    let rows = client.query(&stmt, &[&id.0]).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(StageChange {
                at_ms: rows::get(row, 3)?,
                from: rows::get::<Option<&str>>(row, 0)?.map(stage).transpose()?,
                to: stage(rows::get(row, 1)?)?,
                note: rows::get(row, 2)?,
            })
        })
        .collect()
}

pub(crate) async fn usage(client: &Object, q: &UsageQuery) -> Result<Vec<UsageRow>> {
    // Jobs count in the bucket of their submission; their charge and refund rows (at most
    // one of each, by the unique indexes) are joined on the job. Groups sort by byte
    // order, as on SQLite.
    const SQL: &str = "select (case $4::text when 'account' then j.account_id::text
                                           when 'key' then j.api_key_id::text
                                           else j.model end) collate \"C\",
                              (j.created_at / $5::bigint) * $5::bigint,
                              count(*),
                              count(*) filter (where j.status = 'COMPLETED'),
                              count(*) filter (where j.status = 'FAILED'),
                              count(*) filter (where j.status = 'CANCELLED'),
                              coalesce(sum(-c.amount), 0)::bigint,
                              coalesce(sum(r.amount), 0)::bigint
                       from job j
                       left join ledger_entry c on c.job_id = j.job_id and c.kind = 'charge'
                       left join ledger_entry r on r.job_id = j.job_id and r.kind = 'refund'
                       where j.created_at >= $1::bigint and j.created_at < $2::bigint
                         and ($3::uuid is null or j.account_id = $3::uuid)
                       group by 1, 2
                       order by 2, 1";
    let group = match q.group_by {
        UsageGroup::Account => "account",
        UsageGroup::Key => "key",
        UsageGroup::Model => "model",
    };
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 5] = [&q.from_ms, &q.to_ms, &q.account_id.map(|a| a.0), &group, &q.bucket.millis()];
    let rows = client.query(&stmt, &params).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(UsageRow {
                group: rows::get(row, 0)?,
                bucket_start_ms: rows::get(row, 1)?,
                submitted: rows::get(row, 2)?,
                completed: rows::get(row, 3)?,
                failed: rows::get(row, 4)?,
                cancelled: rows::get(row, 5)?,
                credits_charged: rows::get(row, 6)?,
                credits_refunded: rows::get(row, 7)?,
            })
        })
        .collect()
}

pub(crate) async fn upstream_activity(client: &Object, now_ms: i64, window_ms: i64) -> Result<Vec<UpstreamActivity>> {
    const SQL: &str = "with calls as (
                           select upstream_account as name, count(*) as n from upstream_call
                           where called_at > $1 group by 1
                       ), flight as (
                           select upstream_account as name, count(*) as n from job
                           where stage in ('submitting', 'running', 'downloading') and upstream_account is not null
                           group by 1
                       )
                       select coalesce(c.name, f.name) collate \"C\", coalesce(c.n, 0), coalesce(f.n, 0)
                       from calls c full join flight f on f.name = c.name
                       order by 1";
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let rows = client.query(&stmt, &[&(now_ms - window_ms)]).await.map_err(db_err)?;
    let count = |row: &tokio_postgres::Row, idx: usize| -> Result<u32> {
        let n: i64 = rows::get(row, idx)?;
        u32::try_from(n).map_err(|_| StoreError::Internal(format!("count {n} out of range")))
    };
    rows.iter()
        .map(|row| {
            Ok(UpstreamActivity {
                name: rows::get(row, 0)?,
                creates_in_window: count(row, 1)?,
                in_flight: count(row, 2)?,
            })
        })
        .collect()
}

pub(crate) async fn upstream_holds(client: &Object, now_ms: i64) -> Result<Vec<UpstreamHold>> {
    const SQL: &str = concat!(
        "select ",
        hold_columns!(),
        " from upstream_hold where until_at > $1 order by upstream_account collate \"C\""
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query(&stmt, &[&now_ms]).await.map_err(db_err)?.iter().map(rows::hold).collect()
}

/// A minute, in milliseconds.
const MINUTE_MS: i64 = 60_000;
/// A day, in milliseconds (UTC days have no leap seconds in unix time).
const DAY_MS: i64 = 86_400_000;

pub(crate) async fn overview(client: &Object, now_ms: i64) -> Result<Overview> {
    let midnight = now_ms - now_ms.rem_euclid(DAY_MS);
    let stmt = client
        .prepare_cached(
            "select (select min(created_at) from job where stage = 'queued'),
                    (select coalesce(sum(-amount), 0)::bigint from ledger_entry
                     where kind = 'charge' and created_at >= $1),
                    (select coalesce(sum(amount), 0)::bigint from ledger_entry
                     where kind = 'refund' and created_at >= $1)",
        )
        .await
        .map_err(db_err)?;
    let row = client.query_one(&stmt, &[&midnight]).await.map_err(db_err)?;
    let mut overview = Overview {
        by_status: Vec::with_capacity(JobStatus::ALL.len()),
        oldest_queued_at_ms: rows::get(&row, 0)?,
        per_minute: Vec::new(),
        charged_today: rows::get(&row, 1)?,
        refunded_today: rows::get(&row, 2)?,
    };

    let stmt = client.prepare_cached("select status, count(*) from job group by status").await.map_err(db_err)?;
    let counted = client.query(&stmt, &[]).await.map_err(db_err)?;
    for status in JobStatus::ALL {
        let mut n = 0;
        for row in &counted {
            if rows::get::<&str>(row, 0)? == status.as_str() {
                n = rows::get(row, 1)?;
            }
        }
        overview.by_status.push((status, n));
    }

    let stmt = client
        .prepare_cached(
            "select (completed_at / $3::bigint) * $3::bigint,
                    count(*) filter (where status = 'COMPLETED'), count(*) filter (where status = 'FAILED')
             from job
             where completed_at > $1 and completed_at <= $2 and status in ('COMPLETED', 'FAILED')
             group by 1 order by 1",
        )
        .await
        .map_err(db_err)?;
    let params: [Param<'_>; 3] = [&(now_ms - 60 * MINUTE_MS), &now_ms, &MINUTE_MS];
    for row in client.query(&stmt, &params).await.map_err(db_err)? {
        overview.per_minute.push((rows::get(&row, 0)?, rows::get(&row, 1)?, rows::get(&row, 2)?));
    }
    Ok(overview)
}
