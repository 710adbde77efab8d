-- Claims take due emails highest priority first. With only the `next_at`
-- index, each claim read every due email to sort them by priority, so
-- draining a backlog of N due emails cost O(N^2) row reads (a 20,000-email
-- backlog: ~0.2 s per claim). With (priority, next_at) a claim seeks to
-- each distinct priority's due emails and reads only what it takes.
CREATE INDEX IF NOT EXISTS emails_claim ON emails (priority, next_at)
    WHERE state IN ('scheduled', 'queued', 'deferred');
