-- PostgreSQL dialect of ../0013_grids.sql (byte-order collation, BIGINT for INTEGER).
-- Virtual grids (issue 19): several instances in roles from one grid file, up and down
-- together. The grid row is written before its first member and removed after its last, so
-- a service killed in between finds it (`creating` or `deleting`) and settles it at start.
CREATE TABLE IF NOT EXISTS grids (
    name     TEXT COLLATE "C" PRIMARY KEY,
    owner    TEXT COLLATE "C" NOT NULL,
    state    TEXT COLLATE "C" NOT NULL,
    network  TEXT COLLATE "C",
    expires  TEXT COLLATE "C",
    file     TEXT NOT NULL,
    origin   TEXT COLLATE "C",
    created  TEXT COLLATE "C" NOT NULL,
    updated  TEXT COLLATE "C" NOT NULL,
    error    TEXT
);
CREATE TABLE IF NOT EXISTS grid_members (
    grid        TEXT COLLATE "C" NOT NULL REFERENCES grids(name) ON DELETE CASCADE,
    role        TEXT COLLATE "C" NOT NULL,
    idx         BIGINT NOT NULL,
    instance_id TEXT COLLATE "C" NOT NULL UNIQUE,
    PRIMARY KEY (grid, role, idx)
);
CREATE INDEX IF NOT EXISTS grids_expires ON grids(expires) WHERE expires IS NOT NULL;
