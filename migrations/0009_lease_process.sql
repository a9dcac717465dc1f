-- Who holds a lease, precisely enough to tell "that process is gone" from "I cannot see it":
-- boot id, PID namespace and the process's start time (see src/state/leases.rs). A lease
-- without it (written by an older version) is only taken over once it expires.
ALTER TABLE leases ADD COLUMN process TEXT;
