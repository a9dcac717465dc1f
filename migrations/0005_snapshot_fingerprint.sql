-- The fingerprint of the file snapshot the last recorded diff used: when a new pass finds the
-- same size, modification time and content hash, the snapshot is provably unchanged and the
-- diff is skipped.
ALTER TABLE computations ADD COLUMN snapshot_size INTEGER;
ALTER TABLE computations ADD COLUMN snapshot_sha256 TEXT;
ALTER TABLE computations ADD COLUMN snapshot_rows INTEGER;
