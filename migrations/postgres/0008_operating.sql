-- Operating reelgate: admin tokens and the audit log, account e-mail and disabling,
-- operator deductions and idempotent adjustments in the ledger, each job's stage
-- changes for the admin timeline, and MiniMax accounts held out of rotation by hand.

alter table account add column email text;
-- true: the account's keys are refused with 403 (its queued jobs still run).
alter table account add column disabled boolean not null default false;

-- Admin tokens (`rga_...`): only the SHA-256 is kept. Revoked tokens stay, for the audit.
create table admin_token (
    admin_token_id uuid primary key,
    name           text not null,
    prefix         text not null,
    token_digest   bytea not null unique check (octet_length(token_digest) = 32),
    created_at     bigint not null,
    revoked_at     bigint
);

-- Append-only: every admin change, written in the same transaction as the change.
create table audit_log (
    audit_log_id   bigint generated always as identity primary key,
    -- Null when the change came from the command line on the server's machine.
    admin_token_id uuid,
    actor          text not null,
    action         text not null,
    target         text not null,
    before         jsonb,
    after          jsonb,
    request_id     text,
    created_at     bigint not null
);
create function audit_log_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only' using errcode = 'integrity_constraint_violation';
end;
$$;
create trigger audit_log_no_update before update on audit_log
    for each row execute function audit_log_append_only();
create trigger audit_log_no_delete before delete on audit_log
    for each row execute function audit_log_append_only();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_append_only();

-- The ledger gains the `deduct` kind (an operator taking credits away) and the billing
-- system's Idempotency-Key for operator adjustments.
alter table ledger_entry drop constraint ledger_entry_kind_check;
alter table ledger_entry drop constraint ledger_entry_check;
alter table ledger_entry drop constraint ledger_entry_check1;
alter table ledger_entry add constraint ledger_entry_kind_check
    check (kind in ('grant', 'charge', 'refund', 'deduct'));
alter table ledger_entry add constraint ledger_entry_job_check
    check ((kind in ('grant', 'deduct')) = (job_id is null));
alter table ledger_entry add constraint ledger_entry_sign_check
    check ((kind in ('charge', 'deduct') and amount <= 0) or (kind not in ('charge', 'deduct') and amount >= 0));
alter table ledger_entry add column idempotency_key text;
-- A billing system's retry with the same key applies once.
create unique index ledger_entry_idempotency on ledger_entry (account_id, idempotency_key)
    where idempotency_key is not null;

-- Every stage change of a job after its creation (the creation is the job's created_at),
-- written with the change. Read only by the admin timeline.
create table job_stage_change (
    job_stage_change_id bigint generated always as identity primary key,
    job_id              uuid not null,
    from_stage          text not null,
    to_stage            text not null,
    note                text,
    at                  bigint not null
);
create index job_stage_change_job on job_stage_change (job_id, job_stage_change_id);

-- Cross-account job listings and usage reports by submission time.
create index job_created on job (created_at, job_id);

-- MiniMax accounts held out of rotation by an operator, for every node on the store.
create table upstream_hold (
    upstream_account text primary key,
    until_at         bigint not null,
    reason           text not null,
    created_at       bigint not null
);
