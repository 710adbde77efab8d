-- The PostgreSQL store: the same tables, columns and meaning as the SQLite
-- schema (crates/email/migrations/sqlite/0001_init.sql), so one conformance
-- suite holds for both. Times are Unix milliseconds (BIGINT), as there.
--
-- JSON columns are TEXT, not JSONB: JSONB would re-format the arrays
-- (`["a", "b"]`), and both backends must return the very text that was
-- written; the store decodes and validates it in Rust either way.
--
-- Applied by store/postgres/migrate.rs inside one transaction that holds an
-- advisory lock, so servers starting at once do not race.
CREATE TABLE IF NOT EXISTS emails (
    -- UUIDv7, time-ordered; "C" collation sorts it bytewise, as SQLite does.
    id                 TEXT COLLATE "C" PRIMARY KEY,
    idempotency_key    TEXT UNIQUE,               -- same key again => same email
    state              TEXT NOT NULL,             -- scheduled queued sending deferred sent failed expired cancelled
    priority           BIGINT NOT NULL DEFAULT 0, -- higher is claimed first among due emails
    created_at         BIGINT NOT NULL,
    due_at             BIGINT NOT NULL,           -- the schedule; max-time counts from here
    next_at            BIGINT NOT NULL,           -- earliest next claim (due_at, then retry times)
    attempts           BIGINT NOT NULL DEFAULT 0,
    max_fails          BIGINT,                    -- per-email overrides of the server's
    max_time_ms        BIGINT,                    --   max-fails and max-time (NULL = config)
    lease_owner        TEXT,                      -- who holds the 'sending' claim
    lease_until        BIGINT,                    -- after this the claim may be taken over
    lease_token        BIGINT NOT NULL DEFAULT 0, -- fences completion against a newer claim
    mail_from          TEXT NOT NULL,
    recipients         TEXT NOT NULL,             -- JSON array: the whole envelope
    pending            TEXT NOT NULL,             -- JSON array: recipients not yet accepted
    subject            TEXT,
    message_id         TEXT,
    raw                BYTEA NOT NULL,            -- RFC 5322 bytes, rendered once
    last_reason        TEXT,
    finished_at        BIGINT,                    -- when a terminal state was reached
    possible_duplicate BOOLEAN NOT NULL DEFAULT FALSE,
    tags               TEXT                       -- JSON, free-form
);

-- Only unfinished emails are in the claim indexes, so a large history or a
-- million future emails do not slow the claim of the due ones.
CREATE INDEX IF NOT EXISTS emails_next ON emails (next_at)
    WHERE state IN ('scheduled', 'queued', 'deferred');
CREATE INDEX IF NOT EXISTS emails_sending ON emails (lease_until)
    WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS emails_state ON emails (state);

CREATE TABLE IF NOT EXISTS attempts (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_id           TEXT COLLATE "C" NOT NULL REFERENCES emails (id),
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT NOT NULL,
    relay              TEXT,
    outcome            TEXT NOT NULL,             -- sent deferred failed expired
    smtp_code          BIGINT,
    enhanced_code      TEXT,
    reply              TEXT,
    possible_duplicate BOOLEAN NOT NULL DEFAULT FALSE,
    recipients         TEXT                       -- JSON: [{address, code, enhanced, reply}]
);
CREATE INDEX IF NOT EXISTS attempts_email ON attempts (email_id);
