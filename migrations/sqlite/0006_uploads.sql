-- Files uploaded with POST /v2/uploads. The bytes live in the result store under the
-- upload id; this row says whose they are, what they are and until when they are kept.
-- The URL token is an HMAC of the id under the server secret, so no token is stored.
create table upload (
    upload_id       text primary key,
    account_id      text not null references account (account_id),
    content_type    text not null,
    byte_size       integer not null check (byte_size > 0),
    -- SHA-256 of the bytes: an Idempotency-Key retry must send the same file.
    sha256          blob not null check (length(sha256) = 32),
    -- Cleared when an expired upload's key is taken over by a new upload.
    idempotency_key text,
    created_at      integer not null,
    expires_at      integer not null,
    unique (account_id, idempotency_key)
);
-- The reaper's scan, soonest expiry first.
create index upload_expiry on upload (expires_at);
