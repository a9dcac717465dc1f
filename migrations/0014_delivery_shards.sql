-- Delivery shards (issue 17): on PostgreSQL, a big delivery's pending rows are split by a stable
-- hash of `user_id` into shards, and every worker watching the pass claims shards and delivers
-- them. One process delivers everything on SQLite, where this table stays empty; it is here so
-- that both backends have the same tables.
CREATE TABLE delivery_shards (
    round_id   INTEGER NOT NULL,  -- the sync_runs id naming the delivery (the first of its runs)
    shard      INTEGER NOT NULL,  -- 0 .. shards - 1
    shards     INTEGER NOT NULL,
    runs       TEXT NOT NULL,     -- JSON: {"computation key": its running sync_runs id, ...}
    owner      TEXT,              -- the worker that claimed it (leases.owner's form)
    pid        INTEGER,
    host       TEXT,
    expires_at TEXT,              -- the claim lapses then, unless renewed
    done_at    TEXT,              -- delivered (its rows answered, or left pending after failing)
    report     TEXT,              -- JSON: what delivering it did, per computation
    PRIMARY KEY (round_id, shard)
);
