-- Leases: at most one process runs a pass of a computation at a time (DESIGN §9.6). A lease
-- whose holder stopped renewing it (killed, say) can be taken over once it expires.
CREATE TABLE leases (
    computation_key TEXT PRIMARY KEY NOT NULL,
    owner           TEXT NOT NULL,                    -- unique per process
    pid             INTEGER NOT NULL,
    host            TEXT NOT NULL,
    acquired_at     TEXT NOT NULL,
    heartbeat_at    TEXT NOT NULL,
    expires_at      TEXT NOT NULL
);
