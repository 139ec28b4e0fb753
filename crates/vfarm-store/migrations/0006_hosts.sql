-- The physical host inventory (several hosts): nodes that joined with a one-time token and
-- report by heartbeat, and which instance runs on which node. Instances without a row in
-- instance_hosts run on the control's own machine (the single-host shape).
CREATE TABLE hosts (
    name            TEXT PRIMARY KEY,
    state           TEXT NOT NULL,             -- pending (token issued) | up | down
    drained         INTEGER NOT NULL DEFAULT 0,-- 1: takes no new instances
    token_sha256    TEXT,                      -- the one-time join token's hash, until used
    token_expires   TEXT,
    dn              TEXT,                      -- its certificate's subject, once joined
    cert_serial     TEXT,
    url             TEXT,                      -- where its node API answers
    cpus            INTEGER NOT NULL DEFAULT 0,
    memory_mib      INTEGER NOT NULL DEFAULT 0,
    disk_mib        INTEGER NOT NULL DEFAULT 0,
    features        TEXT NOT NULL DEFAULT '[]',-- JSON: drivers and capabilities
    running         INTEGER NOT NULL DEFAULT 0,-- instances it last reported running
    created         TEXT NOT NULL,
    joined          TEXT,
    last_heartbeat  TEXT
);
CREATE TABLE instance_hosts (
    instance_id TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    host        TEXT NOT NULL REFERENCES hosts(name),
    cpus_milli  INTEGER NOT NULL,              -- promised on that host (placement's accounting)
    memory_mib  INTEGER NOT NULL
);
CREATE INDEX instance_hosts_host ON instance_hosts(host);
