-- Client webhooks: the outbox of events and the record of every delivery attempt.

-- One row per event a job raised for its client. Written in the same transaction as the
-- job transition that raised it, so no event is lost to a crash; the payload is fixed
-- then, so every attempt sends the same bytes. `webhook_event_id` is the Standard
-- Webhooks message id: stable across retries so receivers can deduplicate.
create table webhook_event (
    webhook_event_id text primary key,
    job_id           text not null references job (job_id),
    event            text not null check (event = 'progress' or event = 'completed' or event = 'failed'),
    url              text not null,
    payload          text not null,
    status           text not null check (status = 'pending' or status = 'delivered' or status = 'failed'),
    attempts         integer not null default 0,
    -- When the next attempt is due (also a lease while one runs); null once settled.
    next_attempt_at  integer,
    created_at       integer not null,
    updated_at       integer not null
);
-- The delivery worker's schedule.
create index webhook_event_due on webhook_event (next_attempt_at) where status = 'pending';
create index webhook_event_job on webhook_event (job_id, created_at);

-- Every attempt, for `GET /v2/jobs/{id}/webhooks`.
create table webhook_attempt (
    webhook_attempt_id integer primary key autoincrement,
    webhook_event_id   text not null references webhook_event (webhook_event_id),
    attempted_at       integer not null,
    status_code        integer,
    duration_ms        integer not null,
    error              text,
    -- The first KiB of the receiver's answer.
    response_body      text
);
create index webhook_attempt_event on webhook_attempt (webhook_event_id, webhook_attempt_id);
