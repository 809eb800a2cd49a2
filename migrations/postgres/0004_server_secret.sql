-- Secrets every reelgate node sharing this database must agree on (the key that signs
-- result URLs and MiniMax callback URLs). Written once by whichever node starts first;
-- never changed by reelgate afterwards.
create table server_secret (
    name       text primary key,
    secret     bytea not null,
    created_at bigint not null
);
