-- Initial schema. The runner wraps this file in one transaction and sets user_version;
-- do not add BEGIN, COMMIT or PRAGMA user_version here. Times are epoch milliseconds.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,  -- Discord user id
    tier           TEXT    NOT NULL DEFAULT 'free',
    banned         INTEGER NOT NULL DEFAULT 0 CHECK (banned IN (0, 1)),
    ban_reason     TEXT,
    settings_json  TEXT    NOT NULL DEFAULT '{}',
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE guilds (
    id             INTEGER PRIMARY KEY,  -- Discord guild id
    settings_json  TEXT    NOT NULL DEFAULT '{}',
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL DEFAULT 'imagine'
                     CHECK (kind IN ('imagine', 'variation', 'upscale', 'reroll')),
    parent_job_id    TEXT    REFERENCES jobs (id),
    user_id          INTEGER NOT NULL REFERENCES users (id),
    guild_id         INTEGER REFERENCES guilds (id),  -- NULL in direct messages
    channel_id       INTEGER,
    spec_json        TEXT    NOT NULL,  -- the validated spec, as the backend serialised it
    lane             TEXT    NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('submitted', 'queued', 'running',
                                      'succeeded', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    submitted_at_ms  INTEGER NOT NULL,
    queued_at_ms     INTEGER,
    started_at_ms    INTEGER,
    finished_at_ms   INTEGER,
    delivered_at_ms  INTEGER
);

-- Recovery and dashboards scan by state; /history pages a user's newest jobs.
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_user_submitted ON jobs (user_id, submitted_at_ms);
-- Without it, deleting a job scans the table to check the parent_job_id key.
CREATE INDEX jobs_parent ON jobs (parent_job_id);

CREATE TABLE images (
    job_id  TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,  -- -1 is the grid, 0.. the samples
    path    TEXT    NOT NULL,
    sha256  TEXT    NOT NULL,
    width   INTEGER NOT NULL,
    height  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE banned_words (
    word         TEXT    PRIMARY KEY COLLATE NOCASE,
    added_by     INTEGER,  -- Discord user id of the admin; NULL when seeded from config
    added_at_ms  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms        INTEGER NOT NULL,
    actor_id     INTEGER NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT,
    detail_json  TEXT    NOT NULL DEFAULT '{}'
);
