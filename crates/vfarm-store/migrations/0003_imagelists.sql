-- Signed image lists: subscriptions and their authorised endorsers, every accepted list
-- (raw signed bytes + sha512, the version identity), the images each list defines, the
-- local image cache, and revocations (image, endorser, subscription).
CREATE TABLE imagelist_subscriptions (
    id              TEXT PRIMARY KEY,          -- uuid
    url             TEXT NOT NULL UNIQUE,
    ca_dir          TEXT NOT NULL,             -- IGTF CA dir the lists are verified against
    list_identifier TEXT,                      -- dc:identifier, fixed by the first accepted list
    title           TEXT,
    auto_cache      INTEGER NOT NULL,          -- 1: new images are cached on update
    hook            TEXT,                      -- event command, run with VMCATCHER_EVENT_*
    created         TEXT NOT NULL,
    updated         TEXT,                      -- last accepted list
    checked         TEXT,                      -- last update attempt
    last_error      TEXT,                      -- "<code>: <reason>" of the last refusal
    revoked         TEXT                       -- when revoked; NULL while active
);
CREATE TABLE imagelist_endorsers (
    subscription_id TEXT NOT NULL REFERENCES imagelist_subscriptions(id) ON DELETE CASCADE,
    dn              TEXT NOT NULL,             -- OpenSSL one-line subject
    ca              TEXT,                      -- one-line issuer; NULL = any trusted CA
    PRIMARY KEY (subscription_id, dn)
);
CREATE TABLE imagelist_instances (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES imagelist_subscriptions(id) ON DELETE CASCADE,
    raw             BLOB NOT NULL,             -- the signed message exactly as downloaded
    sha512          TEXT NOT NULL,             -- of raw
    identifier      TEXT NOT NULL,
    version         TEXT NOT NULL,
    created         TEXT NOT NULL,             -- dc:date:created
    expires         TEXT NOT NULL,             -- dc:date:expires
    signer_dn       TEXT NOT NULL,
    signer_ca       TEXT NOT NULL,
    imported        TEXT NOT NULL
);
CREATE INDEX imagelist_instances_sub ON imagelist_instances(subscription_id, id);
CREATE TABLE imagelist_images (
    subscription_id TEXT NOT NULL REFERENCES imagelist_subscriptions(id) ON DELETE CASCADE,
    identifier      TEXT NOT NULL,             -- dc:identifier
    instance_id     INTEGER NOT NULL REFERENCES imagelist_instances(id) ON DELETE CASCADE,
    title           TEXT NOT NULL,
    sha512          TEXT NOT NULL,
    size            INTEGER NOT NULL,
    uri             TEXT NOT NULL,
    version         TEXT NOT NULL,
    os              TEXT NOT NULL,
    os_version      TEXT NOT NULL,
    arch            TEXT NOT NULL,
    hypervisor      TEXT NOT NULL,
    format          TEXT,
    entry           TEXT NOT NULL,             -- the whole hv:image object (JSON)
    state           TEXT NOT NULL,             -- available | expired | revoked
    cache           INTEGER NOT NULL,          -- 1: keep a cached copy
    image_id        TEXT,                      -- repository image made from the cached copy
    PRIMARY KEY (subscription_id, identifier)
);
CREATE TABLE imagelist_cache (
    identifier      TEXT PRIMARY KEY,          -- image dc:identifier = file name in the cache
    subscription_id TEXT,
    file            TEXT NOT NULL,             -- absolute path
    size            INTEGER NOT NULL,
    sha512          TEXT NOT NULL,
    cached          TEXT NOT NULL,
    image_id        TEXT                       -- repository image it became, if any
);
CREATE TABLE imagelist_revocations (
    kind            TEXT NOT NULL,             -- image | endorser | subscription
    target          TEXT NOT NULL,             -- image identifier / endorser DN / subscription id
    reason          TEXT,
    at              TEXT NOT NULL,
    PRIMARY KEY (kind, target)
);
