-- Claims walk the priorities from the highest and take each one's due
-- emails in due order (see store/postgres.rs); this index serves both the
-- max(priority) seeks and the per-priority range, so a claim no longer
-- sorts every due email.
CREATE INDEX IF NOT EXISTS emails_claim ON emails (priority, next_at)
    WHERE state IN ('scheduled', 'queued', 'deferred');
