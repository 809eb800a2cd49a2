-- Operating reelgate: admin tokens and the audit log, account e-mail and disabling,
-- operator deductions and idempotent adjustments in the ledger, each job's stage
-- changes for the admin timeline, and MiniMax accounts held out of rotation by hand.

alter table account add column email text;
-- 1: the account's keys are refused with 403 (its queued jobs still run).
alter table account add column disabled integer not null default 0 check (disabled = 0 or disabled = 1);

-- Admin tokens (`rga_...`): only the SHA-256 is kept. Revoked tokens stay, for the audit.
create table admin_token (
    admin_token_id text primary key,
    name           text not null,
    prefix         text not null,
    token_digest   blob not null unique check (length(token_digest) = 32),
    created_at     integer not null,
    revoked_at     integer
);

-- Append-only: every admin change, written in the same transaction as the change.
create table audit_log (
    audit_log_id   integer primary key autoincrement,
    -- Null when the change came from the command line on the server's machine.
    admin_token_id text,
    actor          text not null,
    action         text not null,
    target         text not null,
    before         text,
    after          text,
    request_id     text,
    created_at     integer not null
);
create trigger audit_log_no_update before update on audit_log
begin
    select raise(abort, 'audit_log is append-only');
end;
create trigger audit_log_no_delete before delete on audit_log
begin
    select raise(abort, 'audit_log is append-only');
end;

-- The ledger gains the `deduct` kind (an operator taking credits away) and the billing
-- system's Idempotency-Key for operator adjustments. SQLite cannot change a check
-- constraint in place, so the table is rebuilt with the same ids.
drop trigger ledger_entry_no_update;
drop trigger ledger_entry_no_delete;
create table ledger_entry_next (
    ledger_entry_id integer primary key autoincrement,
    account_id      text not null references account (account_id),
    kind            text not null check (kind = 'grant' or kind = 'charge' or kind = 'refund' or kind = 'deduct'),
    amount          integer not null,
    job_id          text,
    note            text,
    idempotency_key text,
    created_at      integer not null,
    check ((kind = 'grant' or kind = 'deduct') = (job_id is null)),
    check (((kind = 'charge' or kind = 'deduct') and amount <= 0)
           or (kind <> 'charge' and kind <> 'deduct' and amount >= 0))
);
insert into ledger_entry_next (ledger_entry_id, account_id, kind, amount, job_id, note, created_at)
    select ledger_entry_id, account_id, kind, amount, job_id, note, created_at from ledger_entry;
drop table ledger_entry;
alter table ledger_entry_next rename to ledger_entry;
create unique index ledger_entry_one_charge on ledger_entry (job_id) where kind = 'charge';
create unique index ledger_entry_one_refund on ledger_entry (job_id) where kind = 'refund';
-- A billing system's retry with the same key applies once.
create unique index ledger_entry_idempotency on ledger_entry (account_id, idempotency_key)
    where idempotency_key is not null;
create trigger ledger_entry_no_update before update on ledger_entry
begin
    select raise(abort, 'ledger_entry is append-only');
end;
create trigger ledger_entry_no_delete before delete on ledger_entry
begin
    select raise(abort, 'ledger_entry is append-only');
end;

-- Every stage change of a job after its creation (the creation is the job's created_at),
-- written with the change. Read only by the admin timeline.
create table job_stage_change (
    job_stage_change_id integer primary key autoincrement,
    job_id              text not null,
    from_stage          text not null,
    to_stage            text not null,
    note                text,
    at                  integer not null
);
create index job_stage_change_job on job_stage_change (job_id, job_stage_change_id);

-- Cross-account job listings and usage reports by submission time.
create index job_created on job (created_at, job_id);

-- MiniMax accounts held out of rotation by an operator, for every node on the store.
create table upstream_hold (
    upstream_account text primary key,
    until_at         integer not null,
    reason           text not null,
    created_at       integer not null
);
