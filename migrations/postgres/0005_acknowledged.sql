-- The table of SQLite's migration 0017, so that both backends hold the same tables: there, a
-- delta's acknowledgements wait in it for the computation's next diff, which writes every page
-- of `member_rows` they touch anyway. PostgreSQL writes a new version of a row on every update
-- whatever the page, so here answers are recorded in `member_rows` directly and this table
-- stays empty; the views read `member_rows` alone.
CREATE TABLE acknowledged (
    computation_id INTEGER NOT NULL,          -- computations.id
    user_id        TEXT COLLATE "C" NOT NULL,
    synced         TEXT NOT NULL,             -- JSON text: the value acknowledged
    synced_at      BIGINT NOT NULL,           -- milliseconds since 1970-01-01 UTC
    PRIMARY KEY (computation_id, user_id)
);
