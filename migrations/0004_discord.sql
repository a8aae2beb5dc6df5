-- The Discord front end: where each job's progress message lives and how its result
-- reaches its user, which button clicks were already acted on, notes for users whose
-- direct messages are closed, and which tier assignments an admin made.

-- One row per job the bot follows. The interaction token lets the bot edit the
-- interaction's messages (ephemeral ones included) until it expires; after that the bot
-- posts with its own token. A row with delivered_at_ms NULL is still to be delivered,
-- also after a restart. It is written before its job is submitted (no foreign key), so
-- that a crash in between cannot leave a job nobody delivers.
CREATE TABLE deliveries (
    job_id               TEXT    PRIMARY KEY,
    user_id              INTEGER NOT NULL,
    channel_id           INTEGER,            -- where the progress message is; NULL in DMs
    message_id           INTEGER,            -- the progress message; NULL until posted
    application_id       INTEGER,
    interaction_token    TEXT,
    token_expires_at_ms  INTEGER,
    private              INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
    result_message_id    INTEGER,
    created_at_ms        INTEGER NOT NULL,
    delivered_at_ms      INTEGER
);
CREATE INDEX deliveries_pending ON deliveries (delivered_at_ms);

-- A button click acted on once: the same user pressing the same button of the same job
-- again gets the job the first click made.
CREATE TABLE clicks (
    job_id          TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    user_id         INTEGER NOT NULL,
    derived_job_id  TEXT    NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (job_id, action, user_id)
);

-- What could not reach a user (their direct messages are closed): shown to them, once,
-- at their next command.
CREATE TABLE notes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        INTEGER NOT NULL,
    text           TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    shown_at_ms    INTEGER
);
CREATE INDEX notes_user ON notes (user_id, shown_at_ms);

-- Who assigned the user's tier: NULL while no admin has (the tier then follows the
-- user's Discord roles, else the default tier).
ALTER TABLE users ADD COLUMN tier_set_by INTEGER;
