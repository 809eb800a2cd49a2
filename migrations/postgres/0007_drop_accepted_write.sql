-- Nothing to do on PostgreSQL: accepted_write (0005) only ever existed on SQLite. This
-- file keeps the two folders' names in step.
select 1;
