//! API keys, accounts and the credit ledger.
//!
//! Every balance change is one statement that updates `account` and appends its
//! `ledger_entry` row together (a data-modifying CTE), so the balance always equals the
//! ledger's sum, with no window in which another node could see one without the other.

use deadpool_postgres::{GenericClient, Object};
use domain::{AccountId, ApiKeyId, ApiKeyStatus, KeyDigest};
use store::{Account, ApiKeyRecord, LedgerEntry, NewApiKey, Result, StoreError};

use crate::rows::{self, account_columns, key_columns, key_from, key_join, ledger_columns};
use crate::{db_err, Param};

/// Adds `amount` credits with a `grant` ledger row; `None` if the account does not exist.
pub(crate) async fn grant(
    client: &impl GenericClient,
    id: AccountId,
    amount: i64,
    note: Option<&str>,
    now_ms: i64,
) -> Result<Option<Account>> {
    const SQL: &str = concat!(
        "with credited as (
             update account set credits = credits + $2, updated_at = $3 where account_id = $1
             returning ",
        account_columns!(),
        "), entry as (
             insert into ledger_entry (account_id, kind, amount, note, created_at)
             select account_id, 'grant', $2, $4, $3 from credited
         )
         select ",
        account_columns!(),
        " from credited"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 4] = [&id.0, &amount, &now_ms, &note];
    client.query_opt(&stmt, &params).await.map_err(db_err)?.as_ref().map(rows::account).transpose()
}

pub(crate) async fn create_api_key(
    client: &mut Object,
    new: NewApiKey,
    now_ms: i64,
) -> Result<(Account, ApiKeyRecord)> {
    let tx = client.transaction().await.map_err(db_err)?;
    let created = create_api_key_in(&tx, new, now_ms).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(created)
}

/// Creates a key (and its account when `new.account_id` is `None`) inside the caller's
/// transaction `tx`, which commits it.
pub(crate) async fn create_api_key_in(
    tx: &impl GenericClient,
    new: NewApiKey,
    now_ms: i64,
) -> Result<(Account, ApiKeyRecord)> {
    let account_id = match new.account_id {
        Some(id) => {
            // `for share` keeps the account from disappearing before the key row is in
            // (nothing deletes accounts today, but the foreign key would catch it anyway).
            let stmt =
                tx.prepare_cached("select 1 from account where account_id = $1 for share").await.map_err(db_err)?;
            if tx.query_opt(&stmt, &[&id.0]).await.map_err(db_err)?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")));
            }
            id
        }
        None => {
            let id = AccountId::new();
            let stmt = tx
                .prepare_cached(
                    "insert into account (account_id, name, credits, plan, max_concurrent_jobs, created_at, updated_at)
                     values ($1, $2, 0, $3, $4, $5, $5)",
                )
                .await
                .map_err(db_err)?;
            let max_concurrent_jobs = i32::try_from(new.max_concurrent_jobs)
                .map_err(|_| StoreError::Conflict("max_concurrent_jobs is too large".into()))?;
            let params: [Param<'_>; 5] = [&id.0, &new.name, &new.plan, &max_concurrent_jobs, &now_ms];
            tx.execute(&stmt, &params).await.map_err(db_err)?;
            id
        }
    };
    // As on SQLite, initial credits are granted whether the account is new or not.
    if new.initial_credits > 0 {
        grant(tx, account_id, new.initial_credits, Some("initial credits"), now_ms).await?;
    }
    // The account row was written (or locked) by an earlier statement of this
    // transaction, so the join finds it.
    const INSERT_KEY: &str = concat!(
        "with k as (
             insert into api_key (api_key_id, account_id, name, email, prefix, key_digest, status, created_at,
                                  updated_at)
             values ($1, $2, $3, $4, $5, $6, 'active', $7, $7)
             returning *
         )
         select ",
        key_columns!(),
        " from k",
        key_join!()
    );
    let stmt = tx.prepare_cached(INSERT_KEY).await.map_err(db_err)?;
    let digest: &[u8] = &new.digest.0;
    let params: [Param<'_>; 7] =
        [&ApiKeyId::new().0, &account_id.0, &new.name, &new.email, &new.prefix, &digest, &now_ms];
    let key = rows::api_key(&tx.query_one(&stmt, &params).await.map_err(db_err)?)?;
    let account =
        load_account(tx, account_id).await?.ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
    Ok((account, key))
}

pub(crate) async fn list_api_keys(client: &Object, account_id: Option<AccountId>) -> Result<Vec<ApiKeyRecord>> {
    const SQL: &str = concat!(
        "select ",
        key_columns!(),
        key_from!(),
        " where $1::uuid is null or k.account_id = $1::uuid order by k.created_at, k.api_key_id"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query(&stmt, &[&account_id.map(|a| a.0)]).await.map_err(db_err)?.iter().map(rows::api_key).collect()
}

/// A key by id, with its account's flag; `lock` takes the key row `for update`.
pub(crate) async fn load_api_key(
    client: &impl GenericClient,
    id: ApiKeyId,
    lock: bool,
) -> Result<Option<ApiKeyRecord>> {
    const SQL: &str = concat!("select ", key_columns!(), key_from!(), " where k.api_key_id = $1");
    const LOCKED: &str = concat!("select ", key_columns!(), key_from!(), " where k.api_key_id = $1 for update of k");
    let stmt = client.prepare_cached(if lock { LOCKED } else { SQL }).await.map_err(db_err)?;
    client.query_opt(&stmt, &[&id.0]).await.map_err(db_err)?.as_ref().map(rows::api_key).transpose()
}

pub(crate) async fn set_api_key_status(
    client: &impl GenericClient,
    id: ApiKeyId,
    status: ApiKeyStatus,
    now_ms: i64,
) -> Result<ApiKeyRecord> {
    // One conditional update: the rule "revoked is final" is part of its WHERE, so two
    // nodes changing the same key cannot both pass a check made beforehand.
    const SQL: &str = concat!(
        "with k as (
             update api_key set status = $2, updated_at = $3
             where api_key_id = $1 and (status <> 'revoked' or $2 = 'revoked')
             returning *
         )
         select ",
        key_columns!(),
        " from k",
        key_join!()
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 3] = [&id.0, &status.as_str(), &now_ms];
    if let Some(row) = client.query_opt(&stmt, &params).await.map_err(db_err)? {
        return rows::api_key(&row);
    }
    // Refused: tell a missing key from a revoked one.
    let stmt = client.prepare_cached("select 1 from api_key where api_key_id = $1").await.map_err(db_err)?;
    match client.query_opt(&stmt, &[&id.0]).await.map_err(db_err)? {
        None => Err(StoreError::NotFound(format!("API key {id}"))),
        Some(_) => Err(StoreError::Conflict(format!("API key {id} is revoked for good"))),
    }
}

pub(crate) async fn find_api_key(client: &Object, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>> {
    const SQL: &str = concat!("select ", key_columns!(), key_from!(), " where k.key_digest = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let bytes: &[u8] = &digest.0;
    let found = client.query_opt(&stmt, &[&bytes]).await.map_err(db_err)?.as_ref().map(rows::api_key).transpose()?;
    // The index found the row by digest; confirm in constant time before trusting it.
    Ok(found.filter(|k| k.digest.ct_eq(digest)))
}

pub(crate) async fn load_account(client: &impl GenericClient, id: AccountId) -> Result<Option<Account>> {
    const SQL: &str = concat!("select ", account_columns!(), " from account where account_id = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query_opt(&stmt, &[&id.0]).await.map_err(db_err)?.as_ref().map(rows::account).transpose()
}

pub(crate) async fn get_account(client: &Object, id: AccountId) -> Result<Option<Account>> {
    load_account(client, id).await
}

pub(crate) async fn grant_credits(
    client: &Object,
    id: AccountId,
    amount: i64,
    note: Option<&str>,
    now_ms: i64,
) -> Result<Account> {
    grant(client, id, amount, note, now_ms).await?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))
}

pub(crate) async fn ledger(client: &Object, id: AccountId) -> Result<Vec<LedgerEntry>> {
    const SQL: &str =
        concat!("select ", ledger_columns!(), " from ledger_entry where account_id = $1 order by ledger_entry_id");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query(&stmt, &[&id.0]).await.map_err(db_err)?.iter().map(rows::ledger_entry).collect()
}

pub(crate) async fn ledger_sum(client: &Object, id: AccountId) -> Result<i64> {
    // sum(bigint) is numeric in PostgreSQL; the cast brings it back to i64.
    let stmt = client
        .prepare_cached("select coalesce(sum(amount), 0)::bigint from ledger_entry where account_id = $1")
        .await
        .map_err(db_err)?;
    crate::rows::get(&client.query_one(&stmt, &[&id.0]).await.map_err(db_err)?, 0)
}

/// Gives a job's cost back: the balance and a `refund` ledger row in one statement. The
/// unique index on refunds per job turns a second refund into a conflict, which rolls
/// the caller's transaction back.
pub(crate) async fn refund(
    client: &impl GenericClient,
    account: AccountId,
    job: domain::JobId,
    amount: i64,
    note: &str,
    now_ms: i64,
) -> Result<()> {
    const SQL: &str = "with credited as (
                           update account set credits = credits + $3, updated_at = $4 where account_id = $1
                           returning account_id
                       )
                       insert into ledger_entry (account_id, kind, amount, job_id, note, created_at)
                       select account_id, 'refund', $3, $2, $5, $4 from credited";
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 5] = [&account.0, &job.0, &amount, &now_ms, &note];
    let written = client.execute(&stmt, &params).await.map_err(db_err)?;
    if written != 1 {
        return Err(StoreError::Internal(format!("refund of job {job}: account {account} not found")));
    }
    Ok(())
}
