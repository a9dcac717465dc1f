-- The destination this state is synced to (DESIGN §10: one state serves one destination). A
-- pass whose config names another destination is refused before it sends or records anything:
-- its deltas would reach a destination that never had the rest, and a worker pointed elsewhere
-- could take over another's pass and mark its rows synced there. Its type and address, and for
-- Segment a fingerprint of the write key (never a secret). One row; none until the first pass.
CREATE TABLE state_destination (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    identity    TEXT NOT NULL,
    recorded_at TEXT NOT NULL   -- when this state was first synced to it, or moved to it by `resync`
);
