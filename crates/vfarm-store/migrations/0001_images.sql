-- Image farm: images, their artifacts, builds (with logs), long operations, and the
-- append-only event log every later capability writes to.
CREATE TABLE images (
    id          TEXT PRIMARY KEY,          -- sha256 of the canonical spec
    name        TEXT UNIQUE,               -- optional alias
    spec        TEXT NOT NULL,             -- canonical spec JSON
    summary     TEXT NOT NULL,
    origin      TEXT NOT NULL,             -- build | import | imagelist
    created     TEXT NOT NULL,
    os          TEXT,                      -- e.g. LINUX, for routing jobs by OS
    os_version  TEXT,
    arch        TEXT,
    kernel      TEXT,                      -- relative path of the kernel, for bootable images
    initrd      TEXT
);
CREATE TABLE artifacts (
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    format      TEXT NOT NULL,
    file        TEXT NOT NULL,             -- path relative to the image directory
    size        INTEGER NOT NULL,
    sha512      TEXT NOT NULL,
    disk_size   INTEGER,                   -- virtual size of disk formats
    PRIMARY KEY (image_id, format)
);
CREATE TABLE builds (
    id          TEXT PRIMARY KEY,
    image_id    TEXT NOT NULL,             -- no FK: failed builds have no image
    spec        TEXT NOT NULL,
    started     TEXT NOT NULL,
    ended       TEXT,
    status      TEXT NOT NULL,             -- running | succeeded | failed | interrupted | cached
    error       TEXT,
    log         TEXT NOT NULL              -- absolute path of the build log
);
CREATE INDEX builds_image ON builds(image_id, started);
CREATE TABLE operations (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,             -- running | succeeded | failed
    target      TEXT,                      -- e.g. the image id
    error       TEXT,
    result      TEXT,                      -- JSON
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    object      TEXT NOT NULL,
    detail      TEXT NOT NULL
);
