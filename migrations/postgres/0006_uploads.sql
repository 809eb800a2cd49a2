-- Files uploaded with POST /v2/uploads. The bytes live in the result store under the
-- upload id; this row says whose they are, what they are and until when they are kept.
-- The URL token is an HMAC of the id under the server secret, so no token is stored.
-- (0005 exists for SQLite only; the number is skipped here so both folders share names.)
create table upload (
    upload_id       uuid primary key,
    account_id      uuid not null references account (account_id),
    content_type    text not null,
    byte_size       bigint not null check (byte_size > 0),
    -- SHA-256 of the bytes: an Idempotency-Key retry must send the same file.
    sha256          bytea not null check (length(sha256) = 32),
    -- Cleared when an expired upload's key is taken over by a new upload.
    idempotency_key text,
    created_at      bigint not null,
    expires_at      bigint not null,
    unique (account_id, idempotency_key)
);
-- The reaper's scan, soonest expiry first.
create index upload_expiry on upload (expires_at);
