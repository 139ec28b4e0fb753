-- Instances (virtual nodes) and their snapshots. A destroyed instance's row is deleted; its
-- history stays in the events table. Runtime details (pids, mounts, layers) live in the
-- driver's per-instance runtime record on disk, not here.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,          -- 12 hex digits, also the driver's instance id
    name        TEXT UNIQUE,               -- optional alias
    image_id    TEXT NOT NULL,             -- no FK: the instance outlives a removed image record
    driver      TEXT NOT NULL,             -- oci | qemu
    owner       TEXT NOT NULL,
    state       TEXT NOT NULL,             -- vfarm_core::instance::State
    exit_code   INTEGER,                   -- of the main process, once it ended
    hostname    TEXT NOT NULL,
    spec        TEXT NOT NULL,             -- JSON: the driver's InstanceSpec
    created     TEXT NOT NULL,
    started     TEXT,                      -- last start
    expires     TEXT,                      -- reaped after this time
    updated     TEXT NOT NULL,
    error       TEXT                       -- why it failed, when it did
);
CREATE INDEX instances_expires ON instances(expires) WHERE expires IS NOT NULL;
CREATE TABLE snapshots (
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created     TEXT NOT NULL,
    size        INTEGER NOT NULL,          -- bytes the snapshot adds
    PRIMARY KEY (instance_id, name)
);
