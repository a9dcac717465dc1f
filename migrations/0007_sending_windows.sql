-- Windows of users whose requests may be in flight: noted before delivery sends a window,
-- removed in the transaction that records the window's last answer. A window still here at the
-- start of a pass was left by a process that died mid-delivery: its never-acknowledged rows are
-- then marked first_sent_at (they may have reached the destination) and the window dropped.
-- One row per window and computation replaces a first_sent_at write on every row sent.
CREATE TABLE sending_windows (
    id              INTEGER PRIMARY KEY,
    computation_key TEXT NOT NULL REFERENCES computations (key),
    after_user      TEXT NOT NULL,                    -- users after this one (exclusive) ...
    last_user       TEXT NOT NULL,                    -- ... up to this one (inclusive)
    noted_at        TEXT NOT NULL
);
