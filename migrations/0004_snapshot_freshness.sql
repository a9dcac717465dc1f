-- When the file snapshot used by the last recorded pass was modified, so that an older file
-- (a stale copy put back, a delayed export) is refused instead of undoing newer changes.
ALTER TABLE computations ADD COLUMN snapshot_modified_at TEXT;
