-- The embedded engine's file: the queue and the store are one SQLite
-- database, so "intake" is the insert itself. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS emails (
    id                 TEXT PRIMARY KEY,          -- UUIDv7, time-ordered
    idempotency_key    TEXT UNIQUE,               -- same key again => same email
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
    raw                BLOB NOT NULL,             -- RFC 5322 bytes, rendered once
    last_reason        TEXT,
    finished_at        INTEGER,                   -- when a terminal state was reached
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    tags               TEXT                       -- JSON, free-form
);

-- Only unfinished emails are in the claim index, so a large history or a
-- million future emails do not slow the claim of the due ones.
CREATE INDEX IF NOT EXISTS emails_next ON emails (next_at)
    WHERE state IN ('scheduled', 'queued', 'deferred');
CREATE INDEX IF NOT EXISTS emails_sending ON emails (lease_until)
    WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS emails_state ON emails (state);

CREATE TABLE IF NOT EXISTS attempts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    email_id           TEXT NOT NULL REFERENCES emails (id),
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER NOT NULL,
    relay              TEXT,
    outcome            TEXT NOT NULL,             -- sent deferred failed expired
    smtp_code          INTEGER,
    enhanced_code      TEXT,
    reply              TEXT,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    recipients         TEXT                       -- JSON: [{address, code, enhanced, reply}]
);
CREATE INDEX IF NOT EXISTS attempts_email ON attempts (email_id);
