-- Retries, quarantine and attribute creation (issue: delivery that survives real networks).

-- A row whose delivery failed permanently on `quarantine_after` passes is set aside: it is not
-- sent again until its value changes or an operator resyncs it.
ALTER TABLE memberships ADD COLUMN quarantined_at TEXT;

-- Per pass: requests retried within the pass, and rows quarantined by it.
ALTER TABLE sync_runs ADD COLUMN retried INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_runs ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;

-- Attribute keys known to exist in the destination (Contentstack custom attributes), so that
-- they are listed and created only once.
CREATE TABLE destination_attributes (
    key        TEXT PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL,
    created_by_us INTEGER NOT NULL DEFAULT 0
);

-- Pending rows set aside after repeated permanent failures.
CREATE VIEW quarantined AS
SELECT computation_key, user_id, desired, synced, attempts, last_error, quarantined_at
FROM memberships
WHERE quarantined_at IS NOT NULL AND desired IS NOT synced;

DROP VIEW computation_status;
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
    r.error       AS last_error,
    (SELECT count(*) FROM quarantined q WHERE q.computation_key = c.key) AS quarantined
FROM computations c
LEFT JOIN sync_runs r ON r.id = (SELECT max(id) FROM sync_runs WHERE computation_key = c.key);
