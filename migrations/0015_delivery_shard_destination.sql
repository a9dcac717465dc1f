-- The destination a delivery in shards goes to (issue 17, review): a worker whose config names
-- another destination must not deliver its shards. Its type and address (never a secret).
ALTER TABLE delivery_shards ADD COLUMN destination TEXT;
