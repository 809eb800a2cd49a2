-- The job engine: internal stages behind the public status, upstream bookkeeping,
-- leases and due times, and the log of create calls that enforces MiniMax budgets.
-- Mirrors migrations/sqlite/0002_job_engine.sql.

-- Where the engine is with the job (domain::Stage). `status` stays the public status
-- the API filters and shows; every engine write sets both in one statement.
alter table job add column stage text not null default 'queued'
    check (stage in ('queued', 'submitting', 'running', 'downloading', 'completed', 'failed', 'cancelled'));
-- The configured MiniMax account the job was handed to, and MiniMax's ids for it.
alter table job add column upstream_account text;
alter table job add column upstream_task_id text;
alter table job add column upstream_file_id text;
-- Create calls made for this job (a retry after a transient error is a second call).
alter table job add column attempts integer not null default 0;
-- When the engine must look at the job next: a queued job's back-off, a submit or
-- download lease, or a running job's next poll. Null when nothing is scheduled. A
-- claim moves it forward, so a crashed node's job becomes due again by itself and any
-- node picks it up.
alter table job add column due_at bigint;
-- When the engine first took the job; the running deadline counts from here.
alter table job add column started_at bigint;
-- Bytes of the stored result video.
alter table job add column result_bytes bigint;

update job set stage = 'cancelled' where status = 'CANCELLED';

-- The dispatcher's queue: per account, oldest first. Partial, so it only ever holds
-- waiting jobs; it also lets a claim find the accounts with queued work by skipping
-- from one account id to the next.
create index job_queued on job (account_id, created_at, job_id, due_at) where stage = 'queued';
-- Jobs the engine is working on, counted per account (maxConcurrentJobs) and per
-- upstream account (its in-flight cap).
create index job_active on job (account_id, upstream_account)
    where stage in ('submitting', 'running', 'downloading');
-- The poller's schedule: due work in time order, without a timer per job.
create index job_due on job (due_at) where stage in ('submitting', 'running', 'downloading');
-- The reaper's view: completed jobs whose video is still kept.
create index job_completed on job (completed_at) where stage = 'completed' and not expired;

-- One row per create call sent (or about to be sent) to a MiniMax account. A
-- reservation takes a per-upstream advisory lock, then counts the rows of the window
-- and adds one, so the per-minute budget holds across every node.
create table upstream_call (
    upstream_call_id bigint generated always as identity primary key,
    upstream_account text not null,
    job_id           uuid not null,
    called_at        bigint not null
);
create index upstream_call_account on upstream_call (upstream_account, called_at);
