-- A first sync (a computation with no state yet) writes a member's row only once the destination
-- answers for it. Until then its members are here, so that the state shows what is still to be
-- sent: each row is a run of the first sync's members in user order (users after `after_user`
-- up to `last_user`), as a JSON array of [user_id, value JSON text] pairs, `entries` of them,
-- decided at `changed_at`. Written with the diff, before delivery starts; dropped when the pass
-- ends, and by the next pass if the process died. A member of a run with a row in `memberships`
-- has been answered (acknowledged, or failed and pending there).
CREATE TABLE first_sync_queue (
    computation_key TEXT NOT NULL REFERENCES computations (key),
    after_user      TEXT NOT NULL,
    last_user       TEXT NOT NULL,
    entries         INTEGER NOT NULL,
    users           TEXT NOT NULL,
    changed_at      TEXT NOT NULL,
    PRIMARY KEY (computation_key, last_user)
);
-- "Is user X still to be sent?" looks up the one run that can hold X.
CREATE INDEX first_sync_queue_users ON first_sync_queue (last_user, after_user);

DROP VIEW computation_status;
DROP VIEW pending;

-- Pending rows, and the members of a running first sync not answered yet.
CREATE VIEW pending AS
SELECT computation_key, user_id, desired, synced, attempts, last_error, updated_at, synced_at
FROM memberships
WHERE desired IS NOT synced
UNION ALL
SELECT q.computation_key, u.value ->> 0, u.value ->> 1, NULL, 0, NULL, q.changed_at, NULL
FROM first_sync_queue q, json_each(q.users) u
WHERE NOT EXISTS (
    SELECT 1 FROM memberships m WHERE m.computation_key = q.computation_key AND m.user_id = u.value ->> 0
);

-- A first sync's members not answered yet are counted from its queue's sizes (during a first
-- sync every row of the computation in `memberships` is an answered member), not by reading
-- the queue.
CREATE VIEW computation_status AS
SELECT
    c.key,
    c.name,
    c.kind,
    (SELECT count(*) FROM memberships m
      WHERE m.computation_key = c.key
        AND CASE c.kind WHEN 'audience' THEN m.desired = 'true' ELSE m.desired <> 'null' END) AS members,
    (SELECT count(*) FROM memberships m WHERE m.computation_key = c.key AND m.desired IS NOT synced)
      + coalesce((SELECT max(0, sum(q.entries) - (SELECT count(*) FROM memberships m WHERE m.computation_key = c.key))
                  FROM first_sync_queue q WHERE q.computation_key = c.key HAVING count(*) > 0), 0) AS pending,
    (SELECT count(*) FROM memberships m
      WHERE m.computation_key = c.key AND m.desired IS NOT synced AND m.attempts > 0) AS failed,
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
-- A first sync's window in `sending_windows` no longer carries its users (`users`, `changed_at`
-- stay NULL): they are in this queue, which outlives a kill until the next pass settles it.
