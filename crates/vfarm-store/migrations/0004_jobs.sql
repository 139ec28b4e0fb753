-- Batch jobs and their event history. A job row is never deleted by vfarm; its final state
-- is final (see vfarm_jobs::state). Every state change is compare-and-set on `state`.
CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT,
    owner          TEXT NOT NULL,
    queue          TEXT NOT NULL,              -- the execution queue (after routing)
    priority       INTEGER NOT NULL,
    state          TEXT NOT NULL,              -- vfarm_jobs::JobState
    reason         TEXT,                       -- vfarm_jobs::EndReason, once final
    backend        TEXT NOT NULL,              -- local | slurm
    driver         TEXT NOT NULL,              -- oci | qemu
    image_id       TEXT NOT NULL,
    cpus_milli     INTEGER NOT NULL,
    memory_mib     INTEGER NOT NULL,
    walltime_secs  INTEGER NOT NULL,
    spec           TEXT NOT NULL,              -- JSON: vfarm_jobs::JobSpec
    submitted      TEXT NOT NULL,
    claimed        TEXT,                       -- a dispatcher took it (capacity held from here)
    started        TEXT,                       -- the command was started
    ended          TEXT,                       -- capacity released
    exit_code      INTEGER,
    error          TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runner_pid     INTEGER,                    -- the `vfarm job run-one` process …
    runner_start   INTEGER,                    -- … and its start time (/proc stat), against pid reuse
    payload_pid    INTEGER,                    -- the `vfarm run` it spawned
    payload_start  INTEGER,
    instance_id    TEXT,                       -- instance kept on failure
    slurm_id       INTEGER,
    updated        TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_ended ON jobs(ended) WHERE ended IS NOT NULL;  -- fair-share history
CREATE TABLE job_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL REFERENCES jobs(id),
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,                     -- submit, claim, runner, start, end, cancel-request
    detail  TEXT NOT NULL                      -- JSON
);
CREATE INDEX job_events_job ON job_events(job_id, seq);
