-- `emails` is rebuilt smaller, and the message bytes move to a table of
-- their own. Run with foreign keys off (the runner does that for this
-- migration), as SQLite's procedure for changing a table asks.
--
-- * The message bytes go to `email_raw`. A 2 KB message made each `emails`
--   row fill a 4 KB page alone, so every claim and every recorded attempt
--   rewrote a whole page per email (and the checkpoint copied it again),
--   inside the one write lock the applications' enqueues wait on. The
--   bytes are written once, at enqueue, and only read after that; the row
--   that claims and records update is now about 400 bytes, several to a
--   page.
-- * `seq`, an INTEGER PRIMARY KEY (the rowid, kept by VACUUM), keys
--   `email_raw`: its rows need no index of their own.
-- * The idempotency key's unique index holds only the emails that have a
--   key. As a column constraint it indexed every NULL too: one more B-tree
--   written by every enqueue.
--
-- Upgrading: this copies both tables once while holding the write lock
-- (seconds for a million emails). Applications and servers built before
-- this migration cannot use the file afterwards.
CREATE TABLE emails_v5 (
    seq                INTEGER PRIMARY KEY,       -- the rowid; keys email_raw
    id                 TEXT NOT NULL UNIQUE,      -- UUIDv7, time-ordered
    idempotency_key    TEXT,                      -- same key again => same email (index below)
    state              TEXT NOT NULL,             -- scheduled queued sending deferred sent failed expired cancelled
    priority           INTEGER NOT NULL DEFAULT 0,-- higher is claimed first among due emails
    created_at         INTEGER NOT NULL,
    due_at             INTEGER NOT NULL,          -- the schedule; max-time counts from here
    next_at            INTEGER NOT NULL,          -- earliest next claim (due_at, then retry times)
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_fails          INTEGER,                   -- per-email overrides of the server's
    max_time_ms        INTEGER,                   --   max-fails and max-time (NULL = config)
    lease_owner        TEXT,                      -- who holds the 'sending' claim
    lease_until        INTEGER,                   -- after this the claim may be taken over
    lease_token        INTEGER NOT NULL DEFAULT 0,-- fences completion against a newer claim
    mail_from          TEXT NOT NULL,
    recipients         TEXT NOT NULL,             -- JSON array: the whole envelope
    pending            TEXT NOT NULL,             -- JSON array: recipients not yet accepted
    subject            TEXT,
    message_id         TEXT,
    last_reason        TEXT,
    finished_at        INTEGER,                   -- when a terminal state was reached
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    tags               TEXT                       -- JSON, free-form
);
INSERT INTO emails_v5 (id, idempotency_key, state, priority, created_at, due_at, next_at,
                       attempts, max_fails, max_time_ms, lease_owner, lease_until, lease_token,
                       mail_from, recipients, pending, subject, message_id, last_reason,
                       finished_at, possible_duplicate, tags)
    SELECT id, idempotency_key, state, priority, created_at, due_at, next_at,
           attempts, max_fails, max_time_ms, lease_owner, lease_until, lease_token,
           mail_from, recipients, pending, subject, message_id, last_reason,
           finished_at, possible_duplicate, tags
      FROM emails ORDER BY rowid;

CREATE TABLE email_raw (
    seq  INTEGER PRIMARY KEY REFERENCES emails_v5 (seq),
    raw  BLOB NOT NULL                            -- RFC 5322 bytes, rendered once
);
INSERT INTO email_raw (seq, raw)
    SELECT n.seq, o.raw FROM emails AS o JOIN emails_v5 AS n ON n.id = o.id ORDER BY n.seq;

DROP TABLE emails;
ALTER TABLE emails_v5 RENAME TO emails;

CREATE UNIQUE INDEX emails_idempotency ON emails (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX emails_sending ON emails (lease_until)
    WHERE state = 'sending';
CREATE INDEX emails_unfinished_due ON emails (due_at)
    WHERE state IN ('scheduled', 'queued', 'deferred', 'sending');
CREATE INDEX emails_claim ON emails (priority, next_at)
    WHERE state IN ('scheduled', 'queued', 'deferred');
