-- Scheduling: what a job needs to be rebuilt from SQLite alone (reconciliation after
-- Redis lost it), per-user GPU-time accounting, and small persisted service state.

-- The job's routing extras (img2img source and strength) and, while it is queued after
-- a preemption, its saved denoising state.
ALTER TABLE jobs ADD COLUMN meta_json TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN checkpoint BLOB;

-- Measured device seconds per user and calendar month (UTC, 'YYYY-MM'); the fast
-- column is what the tier's monthly fast budget is checked against.
CREATE TABLE usage (
    user_id      INTEGER NOT NULL REFERENCES users (id),
    month        TEXT    NOT NULL,
    fast_gpu_s   REAL    NOT NULL DEFAULT 0,
    relax_gpu_s  REAL    NOT NULL DEFAULT 0,
    jobs         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, month)
);

-- Settings the service changes at run time and must keep across restarts (the
-- degradation override), as JSON under a key.
CREATE TABLE service_state (
    key            TEXT    PRIMARY KEY,
    value_json     TEXT    NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
