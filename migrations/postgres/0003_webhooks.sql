-- Client webhooks: the outbox of events and the record of every delivery attempt.
-- Mirrors migrations/sqlite/0003_webhooks.sql.

-- One row per event a job raised for its client. Written in the same transaction as the
-- job transition that raised it, so no event is lost to a crash; the payload is fixed
-- then, so every attempt sends the same bytes. `webhook_event_id` is the Standard
-- Webhooks message id: stable across retries so receivers can deduplicate. It sorts
-- bytewise ("C"), as on SQLite, whatever the database's default collation.
create table webhook_event (
    webhook_event_id text collate "C" primary key,
    job_id           uuid not null references job (job_id),
    event            text not null check (event in ('progress', 'completed', 'failed')),
    url              text not null,
    payload          text not null,
    status           text not null check (status in ('pending', 'delivered', 'failed')),
    attempts         integer not null default 0,
    -- When the next attempt is due (also a lease while one runs); null once settled.
    next_attempt_at  bigint,
    created_at       bigint not null,
    updated_at       bigint not null
);
-- The delivery worker's schedule.
create index webhook_event_due on webhook_event (next_attempt_at) where status = 'pending';
create index webhook_event_job on webhook_event (job_id, created_at);

-- Every attempt, for `GET /v2/jobs/{id}/webhooks`.
create table webhook_attempt (
    webhook_attempt_id bigint generated always as identity primary key,
    webhook_event_id   text collate "C" not null references webhook_event (webhook_event_id),
    attempted_at       bigint not null,
    status_code        integer,
    duration_ms        bigint not null,
    error              text,
    -- The first KiB of the receiver's answer.
    response_body      text
);
create index webhook_attempt_event on webhook_attempt (webhook_event_id, webhook_attempt_id);
