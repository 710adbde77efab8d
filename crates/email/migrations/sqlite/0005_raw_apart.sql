-- The message bytes move out of `emails` into a table of their own.
--
-- A 2 KB message made each `emails` row fill a 4 KB page alone, so every
-- claim and every recorded attempt rewrote a whole page per email (and the
-- checkpoint copied it again), inside the one write lock the applications'
-- enqueues wait on. The bytes are written once, at enqueue, and only read
-- after that; the row that claims and records update is now about 400
-- bytes, several to a page.
--
-- Upgrading: the copy and the column drop rewrite both tables once, holding
-- the write lock (seconds for a million emails). Applications and servers
-- built before this migration cannot use the file afterwards.
CREATE TABLE IF NOT EXISTS email_raw (
    id   TEXT PRIMARY KEY REFERENCES emails (id),
    raw  BLOB NOT NULL                               -- RFC 5322 bytes, rendered once
);
INSERT INTO email_raw (id, raw) SELECT id, raw FROM emails WHERE true
    ON CONFLICT DO NOTHING;
ALTER TABLE emails DROP COLUMN raw;
