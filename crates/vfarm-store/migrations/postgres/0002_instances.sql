-- PostgreSQL dialect of ../0002_instances.sql: the same tables (BIGINT for INTEGER, BYTEA for BLOB,
-- identity columns for AUTOINCREMENT, byte-order collation so text sorts as in SQLite).
-- Instances (virtual nodes) and their snapshots. A destroyed instance's row is deleted; its
-- history stays in the events table. Runtime details (pids, mounts, layers) live in the
-- driver's per-instance runtime record on disk, not here.
CREATE TABLE instances (
    id          TEXT COLLATE "C" PRIMARY KEY,          -- 12 hex digits, also the driver's instance id
    name        TEXT COLLATE "C" UNIQUE,               -- optional alias
    image_id    TEXT COLLATE "C" NOT NULL,             -- no FK: the instance outlives a removed image record
    driver      TEXT COLLATE "C" NOT NULL,             -- oci | qemu
    owner       TEXT COLLATE "C" NOT NULL,
    state       TEXT COLLATE "C" NOT NULL,             -- vfarm_core::instance::State
    exit_code   BIGINT,                   -- of the main process, once it ended
    hostname    TEXT COLLATE "C" NOT NULL,
    spec        TEXT COLLATE "C" NOT NULL,             -- JSON: the driver's InstanceSpec
    created     TEXT COLLATE "C" NOT NULL,
    started     TEXT COLLATE "C",                      -- last start
    expires     TEXT COLLATE "C",                      -- reaped after this time
    updated     TEXT COLLATE "C" NOT NULL,
    error       TEXT COLLATE "C"                       -- why it failed, when it did
);
CREATE INDEX instances_expires ON instances(expires) WHERE expires IS NOT NULL;
CREATE TABLE snapshots (
    instance_id TEXT COLLATE "C" NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    created     TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,          -- bytes the snapshot adds
    PRIMARY KEY (instance_id, name)
);
