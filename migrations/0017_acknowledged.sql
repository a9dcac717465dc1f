-- Acknowledgements apart (issue 14): an answer is recorded here, not in `member_rows`, and the
-- computation's next diff folds it into `member_rows` in the transaction that writes its own
-- changes. A change spread over ten million users touches nearly every page of `member_rows`;
-- written by the diff and again by the acknowledgements, every page went to the log twice a
-- pass. Now the acknowledgements write a small table, and `member_rows` is written once a pass.
--
-- A row here supersedes its `member_rows` row as the acknowledgement did before: `synced` is
-- the value acknowledged at `synced_at`, and the row's failures, quarantine and
-- `first_sent_at` are cleared. The views show the two together, with the same columns and
-- meanings as before. PostgreSQL records answers in `member_rows` directly: there this table
-- stays empty.
CREATE TABLE acknowledged (
    computation_id INTEGER NOT NULL,   -- computations.id
    user_id        TEXT NOT NULL,
    synced         NOT NULL,           -- the value acknowledged, as member_rows.synced
    synced_at      INTEGER NOT NULL,   -- milliseconds since 1970-01-01 UTC
    PRIMARY KEY (computation_id, user_id)
) WITHOUT ROWID;

DROP VIEW memberships;
DROP VIEW pending;
DROP VIEW quarantined;
DROP VIEW computation_status;

-- Per (computation, user): the value we want the destination to hold and the value it
-- acknowledged, as JSON text (true, false, 420.5, "gold", null); times RFC 3339 UTC with
-- milliseconds. A row is pending while desired IS NOT synced.
CREATE VIEW memberships AS
SELECT c.key AS computation_key,
       m.user_id,
       iif(typeof(m.desired) = 'integer', iif(m.desired, 'true', 'false'), m.desired) AS desired,
       iif(a.user_id IS NULL, iif(typeof(m.synced) = 'integer', iif(m.synced, 'true', 'false'), m.synced),
           iif(typeof(a.synced) = 'integer', iif(a.synced, 'true', 'false'), a.synced)) AS synced,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.updated_at / 1000.0, 'unixepoch') AS updated_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(a.synced_at, m.synced_at) / 1000.0, 'unixepoch') AS synced_at,
       iif(a.user_id IS NULL, m.attempts, 0) AS attempts,
       iif(a.user_id IS NULL, m.last_error, NULL) AS last_error,
       iif(a.user_id IS NULL, strftime('%Y-%m-%dT%H:%M:%fZ', m.quarantined_at / 1000.0, 'unixepoch'), NULL) AS quarantined_at,
       iif(a.user_id IS NULL, strftime('%Y-%m-%dT%H:%M:%fZ', m.first_sent_at / 1000.0, 'unixepoch'), NULL) AS first_sent_at
FROM member_rows m JOIN computations c ON c.id = m.computation_id
LEFT JOIN acknowledged a ON a.computation_id = m.computation_id AND a.user_id = m.user_id;

-- Pending rows (read through the pending index, less those acknowledged since), and the members
-- of a running first sync not answered yet.
CREATE VIEW pending AS
SELECT c.key AS computation_key,
       m.user_id,
       iif(typeof(m.desired) = 'integer', iif(m.desired, 'true', 'false'), m.desired) AS desired,
       iif(a.user_id IS NULL, iif(typeof(m.synced) = 'integer', iif(m.synced, 'true', 'false'), m.synced),
           iif(typeof(a.synced) = 'integer', iif(a.synced, 'true', 'false'), a.synced)) AS synced,
       iif(a.user_id IS NULL, m.attempts, 0) AS attempts,
       iif(a.user_id IS NULL, m.last_error, NULL) AS last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.updated_at / 1000.0, 'unixepoch') AS updated_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(a.synced_at, m.synced_at) / 1000.0, 'unixepoch') AS synced_at
FROM member_rows m JOIN computations c ON c.id = m.computation_id
LEFT JOIN acknowledged a ON a.computation_id = m.computation_id AND a.user_id = m.user_id
WHERE m.desired IS NOT m.synced AND (a.user_id IS NULL OR m.desired IS NOT a.synced)
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
WHERE m.quarantined_at IS NOT NULL AND m.desired IS NOT m.synced
  AND NOT EXISTS (SELECT 1 FROM acknowledged a WHERE a.computation_id = m.computation_id AND a.user_id = m.user_id);

-- Pending, failed and quarantined rows are counted on `member_rows`, less the few acknowledged
-- since (reading every pending row with a lookup in `acknowledged` would cost more). A first
-- sync's members not answered yet are counted from its queue's sizes (during a first sync every
-- row of the computation in `member_rows` is an answered member), not by reading the queue.
CREATE VIEW computation_status AS
SELECT
    c.key,
    c.name,
    c.kind,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id
        AND CASE c.kind WHEN 'audience' THEN m.desired IS 1 ELSE m.desired IS NOT 'null' END) AS members,
    (SELECT count(*) FROM member_rows m WHERE m.computation_id = c.id AND m.desired IS NOT m.synced)
      - (SELECT count(*) FROM acknowledged a JOIN member_rows m ON m.computation_id = a.computation_id AND m.user_id = a.user_id
          WHERE a.computation_id = c.id AND m.desired IS NOT m.synced AND m.desired IS a.synced)
      + coalesce((SELECT max(0, sum(q.entries) - (SELECT count(*) FROM member_rows m WHERE m.computation_id = c.id))
                  FROM first_sync_queue q WHERE q.computation_key = c.key HAVING count(*) > 0), 0) AS pending,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id AND m.desired IS NOT m.synced AND m.attempts > 0
        AND NOT EXISTS (SELECT 1 FROM acknowledged a WHERE a.computation_id = m.computation_id AND a.user_id = m.user_id)) AS failed,
    c.initial_sync_done_at,
    r.id          AS last_run_id,
    r.mode        AS last_mode,
    r.status      AS last_status,
    r.started_at  AS last_started_at,
    r.finished_at AS last_finished_at,
    r.error       AS last_error,
    (SELECT count(*) FROM member_rows m
      WHERE m.computation_id = c.id AND m.quarantined_at IS NOT NULL AND m.desired IS NOT m.synced
        AND NOT EXISTS (SELECT 1 FROM acknowledged a WHERE a.computation_id = m.computation_id AND a.user_id = m.user_id)) AS quarantined
FROM computations c
LEFT JOIN sync_runs r ON r.id = (SELECT max(id) FROM sync_runs WHERE computation_key = c.key);
