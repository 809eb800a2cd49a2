-- The sequence number of the last transaction that wrote accepted submissions into the
-- database (store-sqlite's accepted.rs). The acceptor thread reads it in the same
-- snapshot as the balances it decides against, which tells it exactly which accepted
-- jobs that snapshot already holds.
create table accepted_write (
    only_row integer primary key check (only_row = 1),
    seq      integer not null
);
insert into accepted_write (only_row, seq) values (1, 0);
