-- Half the state (issue 14): the rows of `memberships` move to `member_rows`, which stores the
-- same facts in fewer bytes: the computation as a small integer (`computations.id`) instead of
-- its key repeated on every row, true and false as the integers 1 and 0 (every other value
-- stays its JSON text), and times as milliseconds since 1970 instead of 24 characters.
-- `memberships`, `pending` and `quarantined` become views with the same names, columns, meanings
-- and value formats as before, so operators' queries do not change. audience-sync itself reads
-- and writes `member_rows`.

ALTER TABLE computations ADD COLUMN id INTEGER;
UPDATE computations SET id = rowid;
CREATE UNIQUE INDEX computations_by_id ON computations (id);
-- Every computation gets the next number, however it is inserted.
CREATE TRIGGER computations_numbered AFTER INSERT ON computations WHEN NEW.id IS NULL
BEGIN
    UPDATE computations SET id = (SELECT coalesce(max(id), 0) + 1 FROM computations) WHERE key = NEW.key;
END;

-- desired and synced: declared without a type, so that 1 and 0 stay integers and '1' (a
-- computed trait's JSON number) stays text.
CREATE TABLE member_rows (
    computation_id INTEGER NOT NULL,                  -- computations.id
    user_id        TEXT NOT NULL,
    desired        NOT NULL,                          -- 1 (true), 0 (false), or JSON text
    synced,                                           -- as desired; NULL until acknowledged
    updated_at     INTEGER NOT NULL,                  -- milliseconds since 1970-01-01 UTC
    synced_at      INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    quarantined_at INTEGER,
    first_sent_at  INTEGER,
    PRIMARY KEY (computation_id, user_id)
) WITHOUT ROWID;

INSERT INTO member_rows
SELECT c.id, m.user_id,
       CASE m.desired WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE m.desired END,
       CASE m.synced WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE m.synced END,
       CAST(round((julianday(m.updated_at) - 2440587.5) * 86400000) AS INTEGER),
       CAST(round((julianday(m.synced_at) - 2440587.5) * 86400000) AS INTEGER),
       m.attempts, m.last_error,
       CAST(round((julianday(m.quarantined_at) - 2440587.5) * 86400000) AS INTEGER),
       CAST(round((julianday(m.first_sent_at) - 2440587.5) * 86400000) AS INTEGER)
FROM memberships m JOIN computations c ON c.key = m.computation_key
ORDER BY c.id, m.user_id;

DROP VIEW computation_status;
DROP VIEW pending;
DROP VIEW quarantined;
DROP INDEX memberships_pending;
DROP TABLE memberships;

-- Delivery walks pending rows user by user across computations; this partial index holds only
-- pending rows, so it stays small once a pass has delivered.
CREATE INDEX member_rows_pending ON member_rows (user_id, computation_id) WHERE desired IS NOT synced;

-- Per (computation, user): the value we want the destination to hold and the value it
-- acknowledged, as JSON text (true, false, 420.5, "gold", null); times RFC 3339 UTC with
-- milliseconds. A row is pending while desired IS NOT synced.
CREATE VIEW memberships AS
SELECT c.key AS computation_key,
       m.user_id,
       iif(typeof(m.desired) = 'integer', iif(m.desired, 'true', 'false'), m.desired) AS desired,
       iif(typeof(m.synced) = 'integer', iif(m.synced, 'true', 'false'), m.synced) AS synced,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.updated_at / 1000.0, 'unixepoch') AS updated_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.synced_at / 1000.0, 'unixepoch') AS synced_at,
       m.attempts,
       m.last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.quarantined_at / 1000.0, 'unixepoch') AS quarantined_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.first_sent_at / 1000.0, 'unixepoch') AS first_sent_at
FROM member_rows m JOIN computations c ON c.id = m.computation_id;

-- Pending rows (read through the pending index), and the members of a running first sync not
-- answered yet.
CREATE VIEW pending AS
SELECT c.key AS computation_key,
       m.user_id,
       iif(typeof(m.desired) = 'integer', iif(m.desired, 'true', 'false'), m.desired) AS desired,
       iif(typeof(m.synced) = 'integer', iif(m.synced, 'true', 'false'), m.synced) AS synced,
       m.attempts,
       m.last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.updated_at / 1000.0, 'unixepoch') AS updated_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.synced_at / 1000.0, 'unixepoch') AS synced_at
FROM member_rows m JOIN computations c ON c.id = m.computation_id
WHERE m.desired IS NOT m.synced
UNION ALL
SELECT q.computation_key, u.value ->> 0, u.value ->> 1, NULL, 0, NULL, q.changed_at, NULL
FROM first_sync_queue q JOIN computations c ON c.key = q.computation_key, json_each(q.users) u
WHERE NOT EXISTS (SELECT 1 FROM member_rows m WHERE m.computation_id = c.id AND m.user_id = u.value ->> 0);

-- Pending rows set aside after repeated permanent failures.
CREATE VIEW quarantined AS
SELECT c.key AS computation_key,
       m.user_id,
       iif(typeof(m.desired) = 'integer', iif(m.desired, 'true', 'false'), m.desired) AS desired,
       iif(typeof(m.synced) = 'integer', iif(m.synced, 'true', 'false'), m.synced) AS synced,
       m.attempts,
       m.last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.quarantined_at / 1000.0, 'unixepoch') AS quarantined_at
FROM member_rows m JOIN computations c ON c.id = m.computation_id
WHERE m.quarantined_at IS NOT NULL AND m.desired IS NOT m.synced;

-- A first sync's members not answered yet are counted from its queue's sizes (during a first
-- sync every row of the computation in `member_rows` is an answered member), not by reading
-- the queue.
CREATE VIEW computation_status AS
SELECT
    c.key,
    c.name,
    c.kind,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id
        AND CASE c.kind WHEN 'audience' THEN m.desired IS 1 ELSE m.desired IS NOT 'null' END) AS members,
    (SELECT count(*) FROM member_rows m WHERE m.computation_id = c.id AND m.desired IS NOT m.synced)
      + coalesce((SELECT max(0, sum(q.entries) - (SELECT count(*) FROM member_rows m WHERE m.computation_id = c.id))
                  FROM first_sync_queue q WHERE q.computation_key = c.key HAVING count(*) > 0), 0) AS pending,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id AND m.desired IS NOT m.synced AND m.attempts > 0) AS failed,
    c.initial_sync_done_at,
    r.id          AS last_run_id,
    r.mode        AS last_mode,
    r.status      AS last_status,
    r.started_at  AS last_started_at,
    r.finished_at AS last_finished_at,
    r.error       AS last_error,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id AND m.quarantined_at IS NOT NULL AND m.desired IS NOT m.synced) AS quarantined
FROM computations c
LEFT JOIN sync_runs r ON r.id = (SELECT max(id) FROM sync_runs WHERE computation_key = c.key);
