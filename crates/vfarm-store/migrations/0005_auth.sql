-- Identity and access (migration 5): bearer tokens, hostname leases, quota reservations and
-- the audit log. Secrets are never stored: a token row keeps only the SHA-256 of its secret.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,          -- public part of `vft_<id>_<secret>`
    user        TEXT NOT NULL,             -- the identity the token stands for
    name        TEXT,                      -- a label for `token ls`
    secret_hash TEXT NOT NULL,             -- hex SHA-256 of the secret
    created     TEXT NOT NULL,
    expires     TEXT,                      -- refused after this time (NULL: never)
    revoked     TEXT,                      -- refused from this time on
    last_used   TEXT
);
CREATE INDEX tokens_user ON tokens(user);

-- A row is a name held by a live instance: the primary key is what guarantees that no name
-- is ever held twice; `holder` is UNIQUE so an instance holds at most one pool name.
-- Releasing a name deletes its row. The pool itself (names, addresses) is configuration.
CREATE TABLE hostname_leases (
    name        TEXT PRIMARY KEY,
    address     TEXT,
    holder      TEXT NOT NULL UNIQUE,      -- instance id (or reservation id)
    owner       TEXT NOT NULL,
    allocated   TEXT NOT NULL
);

-- Resources held against an owner's quota; deleted on release.
CREATE TABLE quota_reservations (
    holder      TEXT PRIMARY KEY,          -- instance id (or reservation id)
    owner       TEXT NOT NULL,
    cpus_milli  INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created     TEXT NOT NULL
);
CREATE INDEX quota_reservations_owner ON quota_reservations(owner);

-- Who did what to which object, when, and how it ended. Append-only.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,             -- user name / DN
    method      TEXT NOT NULL,             -- client-cert | token | unix-peer | local
    action      TEXT NOT NULL,             -- e.g. token.create, instance.destroy
    object      TEXT NOT NULL,
    outcome     TEXT NOT NULL,             -- ok | denied | failed:<code>
    detail      TEXT NOT NULL              -- JSON
);
CREATE INDEX audit_actor ON audit(actor, seq);
