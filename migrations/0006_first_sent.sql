-- When a value was first about to be sent for a row the destination had never acknowledged.
-- A request in flight at a kill may have landed without being recorded; a user who then leaves
-- must still be sent `false` (or `null`), not forgotten.
ALTER TABLE memberships ADD COLUMN first_sent_at TEXT;
