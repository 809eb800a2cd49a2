-- Secrets every reelgate process sharing this database must agree on (the key that
-- signs result URLs and MiniMax callback URLs). Written once by whichever process
-- starts first; never changed by reelgate afterwards.
create table server_secret (
    name       text primary key,
    secret     blob not null,
    created_at integer not null
);
