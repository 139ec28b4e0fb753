-- Virtual grids (issue 19): several instances in roles from one grid file, up and down
-- together. The grid row is written before its first member and removed after its last, so
-- a service killed in between finds it (`creating` or `deleting`) and settles it at start.
CREATE TABLE IF NOT EXISTS grids (
    name     TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    state    TEXT NOT NULL,             -- creating | up | deleting | failed
    network  TEXT,                      -- the site network its members are on
    expires  TEXT,                      -- reaped as a whole after this time
    file     TEXT NOT NULL,             -- the grid file as given
    origin   TEXT,                      -- the service whose members these are
    created  TEXT NOT NULL,
    updated  TEXT NOT NULL,
    error    TEXT                       -- why it failed, when it did
);
-- A member is an ordinary instance (quota, hostname, certificate, network are its own); no
-- FK to instances, so an instance destroyed alone leaves its member row to say so.
CREATE TABLE IF NOT EXISTS grid_members (
    grid        TEXT NOT NULL REFERENCES grids(name) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    idx         INTEGER NOT NULL,       -- from 1
    instance_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (grid, role, idx)
);
CREATE INDEX IF NOT EXISTS grids_expires ON grids(expires) WHERE expires IS NOT NULL;
