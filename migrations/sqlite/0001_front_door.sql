-- The front door: accounts, API keys, the credit ledger, jobs and idempotency keys.
-- Times are UTC unix milliseconds; ids are canonical UUID text.
-- Enumerations are checked with `=`/`or` rather than `in (...)`: SQLite builds a
-- throwaway lookup table for an IN list on every insert, which measurably slowed the
-- job insert path.

create table account (
    account_id          text primary key,
    name                text not null,
    -- Kept equal to sum(ledger_entry.amount) by writing both in one transaction.
    credits             integer not null check (credits >= 0),
    plan                text not null,
    max_concurrent_jobs integer not null check (max_concurrent_jobs > 0),
    created_at          integer not null,
    updated_at          integer not null
);

create table api_key (
    api_key_id  text primary key,
    account_id  text not null references account (account_id),
    name        text not null,
    email       text not null,
    prefix      text not null,
    -- SHA-256 of the key; the plaintext is never stored.
    key_digest  blob not null unique check (length(key_digest) = 32),
    status      text not null check (status = 'active' or status = 'disabled' or status = 'revoked'),
    created_at  integer not null,
    updated_at  integer not null
);
create index api_key_account on api_key (account_id);

-- Append-only: every credit movement is one row, never updated or deleted.
create table ledger_entry (
    ledger_entry_id integer primary key autoincrement,
    account_id      text not null references account (account_id),
    kind            text not null check (kind = 'grant' or kind = 'charge' or kind = 'refund'),
    amount          integer not null,
    job_id          text,
    note            text,
    created_at      integer not null,
    check ((kind = 'grant') = (job_id is null)),
    check ((kind = 'charge' and amount <= 0) or (kind <> 'charge' and amount >= 0))
);
-- No index on account_id: every job insert would dirty one more page per account in
-- each group commit (measured: 12% fewer jobs per second with it). Nothing on the hot
-- path reads the ledger by account (the balance lives in account.credits); audits
-- (`reelgate credits show`, the tests) scan it, which stays cheap for any realistic size.
-- A job is charged at most once and refunded at most once.
create unique index ledger_entry_one_charge on ledger_entry (job_id) where kind = 'charge';
create unique index ledger_entry_one_refund on ledger_entry (job_id) where kind = 'refund';

create trigger ledger_entry_no_update before update on ledger_entry
begin
    select raise(abort, 'ledger_entry is append-only');
end;
create trigger ledger_entry_no_delete before delete on ledger_entry
begin
    select raise(abort, 'ledger_entry is append-only');
end;

create table job (
    job_id          text primary key,
    account_id      text not null references account (account_id),
    api_key_id      text not null references api_key (api_key_id),
    model           text not null,
    status          text not null check (status = 'QUEUED' or status = 'PROCESSING' or status = 'COMPLETED' or status = 'FAILED' or status = 'CANCELLED'),
    progress        integer check (progress between 0 and 100),
    result          text,
    error           text,
    credit_cost     integer not null check (credit_cost >= 0),
    webhook_url     text,
    webhook_events  text,
    webhook_status  text check (webhook_status = 'pending' or webhook_status = 'delivered' or webhook_status = 'failed'),
    input           text not null,
    created_at      integer not null,
    completed_at    integer,
    expired         integer not null default 0,
    updated_at      integer not null
);
-- Serves GET /v2/jobs: newest first within an account, keyset-paged.
create index job_account_created on job (account_id, created_at desc, job_id desc);

create table idempotency_key (
    account_id      text not null references account (account_id),
    idempotency_key text not null,
    fingerprint     blob not null,
    job_id          text not null references job (job_id),
    created_at      integer not null,
    primary key (account_id, idempotency_key)
);
-- Lets the periodic purge drop keys older than the replay window without a scan.
create index idempotency_key_created on idempotency_key (created_at);
