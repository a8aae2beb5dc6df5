-- The worker's ledger: which attempt holds each job, how far it got, and which calls of
-- each attempt were applied, so that a repeated call changes nothing and a stale
-- attempt's late call is ignored.

-- The attempt that last claimed the job: the queue's attempt number and the lease token
-- (the number alone repeats after the queue loses a job and it is re-enqueued from
-- SQLite; the token never does). NULL until a worker first claims the job.
ALTER TABLE jobs ADD COLUMN attempt_number INTEGER;
ALTER TABLE jobs ADD COLUMN attempt_token TEXT;

-- Denoising progress of the current attempt, as last recorded (0 of 0: none yet).
ALTER TABLE jobs ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN total_steps INTEGER NOT NULL DEFAULT 0;

-- One row per ledger call that took effect, written in the effect's transaction.
CREATE TABLE ledger_entries (
    job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    token          TEXT    NOT NULL,  -- the attempt's lease token
    attempt        INTEGER NOT NULL,  -- the attempt's number, for the record
    entry          TEXT    NOT NULL
                   CHECK (entry IN ('claimed', 'requeued', 'succeeded', 'failed', 'cancelled')),
    applied_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (job_id, token, entry)
);
