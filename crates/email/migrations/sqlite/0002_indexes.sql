-- With an index on `state` alone, SQLite's planner preferred it to the
-- partial `next_at` index for claims, and so scanned every scheduled email
-- on each claim: with a million future emails, claims slowed a hundredfold.
DROP INDEX IF EXISTS emails_state;

-- The expiry sweep looks only at unfinished emails already due.
CREATE INDEX IF NOT EXISTS emails_unfinished_due ON emails (due_at)
    WHERE state IN ('scheduled', 'queued', 'deferred', 'sending');
