-- A first sync (a computation with no state yet) writes a row only once the destination
-- acknowledges it, so a window of its users cannot be found in `memberships` while it is being
-- sent: `users` lists them with the value sent, as a JSON array of [user_id, value JSON text]
-- pairs, and `changed_at` is the time their values were decided (their updated_at). A window
-- still here at the start of a pass gives each of its users the state does not hold a pending
-- row with that value, marked first_sent_at: the diff then re-sends it (with the same
-- updated_at, so the same messageId) or tells a user who left `false`.
-- Both are NULL for windows over rows already in the state.
ALTER TABLE sending_windows ADD COLUMN users TEXT;
ALTER TABLE sending_windows ADD COLUMN changed_at TEXT;
