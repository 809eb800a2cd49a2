-- The front door: accounts, API keys, the credit ledger, jobs and idempotency keys.
-- The same tables and rules as migrations/sqlite/0001_front_door.sql, in PostgreSQL's types:
-- ids are uuid (they sort like their canonical text, so orderings match SQLite's),
-- times are UTC unix milliseconds in bigint, and JSON the API hands back verbatim
-- (a job's input) is text, because jsonb would reorder keys and drop whitespace.

create table account (
    account_id          uuid primary key,
    name                text not null,
    -- Kept equal to sum(ledger_entry.amount) by writing both in one transaction.
    credits             bigint not null check (credits >= 0),
    plan                text not null,
    max_concurrent_jobs integer not null check (max_concurrent_jobs > 0),
    created_at          bigint not null,
    updated_at          bigint not null
);

create table api_key (
    api_key_id  uuid primary key,
    account_id  uuid not null references account (account_id),
    name        text not null,
    email       text not null,
    prefix      text not null,
    -- SHA-256 of the key; the plaintext is never stored.
    key_digest  bytea not null unique check (octet_length(key_digest) = 32),
    status      text not null check (status in ('active', 'disabled', 'revoked')),
    created_at  bigint not null,
    updated_at  bigint not null
);
create index api_key_account on api_key (account_id);

-- Append-only: every credit movement is one row, never updated or deleted.
create table ledger_entry (
    ledger_entry_id bigint generated always as identity primary key,
    account_id      uuid not null references account (account_id),
    kind            text not null check (kind in ('grant', 'charge', 'refund')),
    amount          bigint not null,
    job_id          uuid,
    note            text,
    created_at      bigint not null,
    check ((kind = 'grant') = (job_id is null)),
    check ((kind = 'charge' and amount <= 0) or (kind <> 'charge' and amount >= 0))
);
-- As on SQLite, no index on account_id: the hot path never reads the ledger by account.
-- A job is charged at most once and refunded at most once.
create unique index ledger_entry_one_charge on ledger_entry (job_id) where kind = 'charge';
create unique index ledger_entry_one_refund on ledger_entry (job_id) where kind = 'refund';

-- The error is raised in SQLSTATE class 23 (integrity constraint violation), so the store
-- reports it as a conflict, as SQLite's raise(abort) is.
create function ledger_entry_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'ledger_entry is append-only' using errcode = 'integrity_constraint_violation';
end;
$$;
create trigger ledger_entry_no_update before update on ledger_entry
    for each row execute function ledger_entry_append_only();
create trigger ledger_entry_no_delete before delete on ledger_entry
    for each row execute function ledger_entry_append_only();
-- Row triggers do not see TRUNCATE, so refuse it separately.
create trigger ledger_entry_no_truncate before truncate on ledger_entry
    for each statement execute function ledger_entry_append_only();

create table job (
    job_id          uuid primary key,
    account_id      uuid not null references account (account_id),
    api_key_id      uuid not null references api_key (api_key_id),
    model           text not null,
    status          text not null check (status in ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    progress        bigint check (progress between 0 and 100),
    -- The result object as JSON text, exactly as written.
    result          text,
    error           text,
    credit_cost     bigint not null check (credit_cost >= 0),
    webhook_url     text,
    -- Subscribed events, comma-separated wire names; null means the default set.
    webhook_events  text,
    webhook_status  text check (webhook_status in ('pending', 'delivered', 'failed')),
    -- The request as submitted, byte for byte.
    input           text not null,
    created_at      bigint not null,
    completed_at    bigint,
    expired         boolean not null default false,
    updated_at      bigint not null
);
-- Serves GET /v2/jobs: newest first within an account, keyset-paged.
create index job_account_created on job (account_id, created_at desc, job_id desc);

create table idempotency_key (
    account_id      uuid not null references account (account_id),
    idempotency_key text not null,
    fingerprint     bytea not null,
    job_id          uuid not null references job (job_id),
    created_at      bigint not null,
    primary key (account_id, idempotency_key)
);
-- Lets the periodic purge drop keys older than the replay window without a scan.
create index idempotency_key_created on idempotency_key (created_at);
