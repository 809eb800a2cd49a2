-- Submissions are decided and written inside the writer's group-commit transaction
-- (store-sqlite's submit.rs), so nothing is accepted ahead of SQLite any more and the
-- sequence number of 0005_accepted_write has no reader.
drop table accepted_write;
