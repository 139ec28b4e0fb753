-- PostgreSQL dialect of ../0006_hosts.sql: the same tables (BIGINT for INTEGER, BYTEA for BLOB,
-- identity columns for AUTOINCREMENT, byte-order collation so text sorts as in SQLite).
-- The physical host inventory (several hosts): nodes that joined with a one-time token and
-- report by heartbeat, and which instance runs on which node. Instances without a row in
-- instance_hosts run on the control's own machine (the single-host shape).
CREATE TABLE hosts (
    name            TEXT COLLATE "C" PRIMARY KEY,
    state           TEXT COLLATE "C" NOT NULL,             -- pending (token issued) | up | down
    drained         BIGINT NOT NULL DEFAULT 0,-- 1: takes no new instances
    token_sha256    TEXT COLLATE "C",                      -- the one-time join token's hash, until used
    token_expires   TEXT COLLATE "C",
    dn              TEXT COLLATE "C",                      -- its certificate's subject, once joined
    cert_serial     TEXT COLLATE "C",
    url             TEXT COLLATE "C",                      -- where its node API answers
    cpus            BIGINT NOT NULL DEFAULT 0,
    memory_mib      BIGINT NOT NULL DEFAULT 0,
    disk_mib        BIGINT NOT NULL DEFAULT 0,
    features        TEXT COLLATE "C" NOT NULL DEFAULT '[]',-- JSON: drivers and capabilities
    running         BIGINT NOT NULL DEFAULT 0,-- instances it last reported running
    created         TEXT COLLATE "C" NOT NULL,
    joined          TEXT COLLATE "C",
    last_heartbeat  TEXT COLLATE "C"
);
CREATE TABLE instance_hosts (
    instance_id TEXT COLLATE "C" PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    host        TEXT COLLATE "C" NOT NULL REFERENCES hosts(name),
    cpus_milli  BIGINT NOT NULL,              -- promised on that host (placement's accounting)
    memory_mib  BIGINT NOT NULL
);
CREATE INDEX instance_hosts_host ON instance_hosts(host);
