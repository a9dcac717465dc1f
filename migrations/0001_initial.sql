-- The state of audience-sync (DESIGN §8). Operators read these tables and views with sqlite3;
-- their names and columns are a contract: add, never rename.

-- One row per computation (audience or computed trait) ever configured.
CREATE TABLE computations (
    key                  TEXT PRIMARY KEY NOT NULL,   -- the trait key sent to the destination
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('audience', 'computed_trait')),
    created_at           TEXT NOT NULL,               -- RFC 3339, UTC
    initial_sync_done_at TEXT                         -- first pass that left nothing pending
);

-- Per (computation, user): the value we want the destination to hold and the value it
-- acknowledged. Both are JSON text: true, false, 420.5, "gold", null. synced is NULL until the
-- destination first acknowledged a value; a row is pending while desired IS NOT synced.
CREATE TABLE memberships (
    computation_key TEXT NOT NULL REFERENCES computations (key),
    user_id         TEXT NOT NULL,
    desired         TEXT NOT NULL,
    synced          TEXT,
    updated_at      TEXT NOT NULL,                    -- when desired last changed
    synced_at       TEXT,                             -- when synced was last acknowledged
    attempts        INTEGER NOT NULL DEFAULT 0,       -- failed deliveries of the pending value
    last_error      TEXT,                             -- why the last delivery failed
    PRIMARY KEY (computation_key, user_id)
) WITHOUT ROWID;

-- Delivery walks pending rows user by user across computations; this partial index holds only
-- pending rows, so it stays small once a pass has delivered.
CREATE INDEX memberships_pending ON memberships (user_id, computation_key) WHERE desired IS NOT synced;

-- One row per pass of one computation.
CREATE TABLE sync_runs (
    id              INTEGER PRIMARY KEY,
    computation_key TEXT NOT NULL REFERENCES computations (key),
    trigger         TEXT NOT NULL,                    -- manual | schedule
    mode            TEXT NOT NULL CHECK (mode IN ('initial', 'delta', 'resync')),
    status          TEXT NOT NULL,                    -- running | ok | incomplete | failed | interrupted
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    snapshot_rows   INTEGER,
    entered         INTEGER NOT NULL DEFAULT 0,
    exited          INTEGER NOT NULL DEFAULT 0,
    changed         INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX sync_runs_by_computation ON sync_runs (computation_key, id);

-- Changes not yet acknowledged by the destination.
CREATE VIEW pending AS
SELECT computation_key, user_id, desired, synced, attempts, last_error, updated_at, synced_at
FROM memberships
WHERE desired IS NOT synced;

-- One row per computation: its size, what is left to deliver, and its last pass.
CREATE VIEW computation_status AS
SELECT
    c.key,
    c.name,
    c.kind,
    (SELECT count(*) FROM memberships m
      WHERE m.computation_key = c.key
        AND CASE c.kind WHEN 'audience' THEN m.desired = 'true' ELSE m.desired <> 'null' END) AS members,
    (SELECT count(*) FROM pending p WHERE p.computation_key = c.key) AS pending,
    (SELECT count(*) FROM pending p WHERE p.computation_key = c.key AND p.attempts > 0) AS failed,
    c.initial_sync_done_at,
    r.id          AS last_run_id,
    r.mode        AS last_mode,
    r.status      AS last_status,
    r.started_at  AS last_started_at,
    r.finished_at AS last_finished_at,
    r.error       AS last_error
FROM computations c
LEFT JOIN sync_runs r ON r.id = (SELECT max(id) FROM sync_runs WHERE computation_key = c.key);
