-- What was sent, and when (opt-in: `[state] keep_history_days`). One row per delivery answered:
-- acknowledged (the destination answered 2xx, or the file destination wrote it) or failed, written
-- in the transaction that records the answer, and deleted once older than keep_history_days.
-- Nothing is written here while keep_history_days is unset.
CREATE TABLE delivery_history (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER,                          -- the pass (sync_runs.id) that sent it
    computation_key TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    value           TEXT NOT NULL,                    -- the JSON text sent
    answered_at     TEXT NOT NULL,                    -- when the answer was recorded, RFC 3339 UTC
    http_status     INTEGER,                          -- a refusal's HTTP status; NULL when acknowledged
                                                      -- (any 2xx) or when no HTTP answer came
    error           TEXT,                             -- why it failed (last_error); NULL when acknowledged
    acknowledged    INTEGER GENERATED ALWAYS AS (error IS NULL) VIRTUAL
);
-- Pruning deletes the oldest rows; `explain` reads a user's latest; an operator lists one pass's.
CREATE INDEX delivery_history_by_time ON delivery_history (answered_at);
CREATE INDEX delivery_history_by_user ON delivery_history (user_id, computation_key);
CREATE INDEX delivery_history_by_run ON delivery_history (run_id);
