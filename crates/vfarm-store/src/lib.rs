//! vfarm's persistent state: one SQLite database (WAL mode) in the data directory, or a
//! schema in a PostgreSQL database that several `vfarm serve` processes may share.
//!
//! Migrations are numbered SQL files, one per dialect, applied in order and tracked in
//! `PRAGMA user_version` (SQLite) or the `vfarm_schema_version` table (PostgreSQL). Each
//! capability keeps its tables in its own migration and its queries in its own module
//! (`images`, …); the `events` table is append-only and shared by all of them. Queries are
//! written once, in SQL both backends accept, through the small layer in [`db`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub mod auth;
pub mod db;
pub mod grids;
pub mod hosts;
pub mod imagelists;
pub mod images;
pub mod instances;
pub mod jobs;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use db::{is_unique_violation, Backend, Db, FromValue, Params, Row, Value};

use db::{Conn, PgConn};

/// Migrations in order; index + 1 is the schema version after applying it.
/// Numbers are reserved per capability: 1 images, 2 instances, 3 image lists, 4 jobs, 5 auth,
/// 6 hosts, 7 origins (several services on one database), 8 host checks (doctor verdicts),
/// 9 image owners, 10 owner issuers, 11 list indexes, 12 hostname quarantine, 13 grids. Each has a PostgreSQL twin in
/// [`PG_MIGRATIONS`] under the same name.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_images", include_str!("../migrations/0001_images.sql")),
    (
        "0002_instances",
        include_str!("../migrations/0002_instances.sql"),
    ),
    (
        "0003_imagelists",
        include_str!("../migrations/0003_imagelists.sql"),
    ),
    ("0004_jobs", include_str!("../migrations/0004_jobs.sql")),
    ("0005_auth", include_str!("../migrations/0005_auth.sql")),
    ("0006_hosts", include_str!("../migrations/0006_hosts.sql")),
    (
        "0007_origins",
        include_str!("../migrations/0007_origins.sql"),
    ),
    (
        "0008_host_checks",
        include_str!("../migrations/0008_host_checks.sql"),
    ),
    (
        "0009_image_owners",
        include_str!("../migrations/0009_image_owners.sql"),
    ),
    (
        "0010_owner_issuers",
        include_str!("../migrations/0010_owner_issuers.sql"),
    ),
    (
        "0011_list_indexes",
        include_str!("../migrations/0011_list_indexes.sql"),
    ),
    (
        "0012_hostname_quarantine",
        include_str!("../migrations/0012_hostname_quarantine.sql"),
    ),
    ("0013_grids", include_str!("../migrations/0013_grids.sql")),
];

/// The same migrations in PostgreSQL's dialect (BIGINT, BYTEA, identity columns, byte-order
/// collation on text so it sorts and compares as in SQLite).
const PG_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_images",
        include_str!("../migrations/postgres/0001_images.sql"),
    ),
    (
        "0002_instances",
        include_str!("../migrations/postgres/0002_instances.sql"),
    ),
    (
        "0003_imagelists",
        include_str!("../migrations/postgres/0003_imagelists.sql"),
    ),
    (
        "0004_jobs",
        include_str!("../migrations/postgres/0004_jobs.sql"),
    ),
    (
        "0005_auth",
        include_str!("../migrations/postgres/0005_auth.sql"),
    ),
    (
        "0006_hosts",
        include_str!("../migrations/postgres/0006_hosts.sql"),
    ),
    (
        "0007_origins",
        include_str!("../migrations/postgres/0007_origins.sql"),
    ),
    (
        "0008_host_checks",
        include_str!("../migrations/postgres/0008_host_checks.sql"),
    ),
    (
        "0009_image_owners",
        include_str!("../migrations/postgres/0009_image_owners.sql"),
    ),
    (
        "0010_owner_issuers",
        include_str!("../migrations/postgres/0010_owner_issuers.sql"),
    ),
    (
        "0011_list_indexes",
        include_str!("../migrations/postgres/0011_list_indexes.sql"),
    ),
    (
        "0012_hostname_quarantine",
        include_str!("../migrations/postgres/0012_hostname_quarantine.sql"),
    ),
    (
        "0013_grids",
        include_str!("../migrations/postgres/0013_grids.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state store (PostgreSQL): {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("cannot open state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the state store {path} with mode 0600")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `url` never contains the password.
    #[error("cannot connect to the PostgreSQL state store {url}: {}", pg_message(.source))]
    OpenPostgres {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("state store {location} has schema version {found}, newer than this vfarm ({known}); upgrade vfarm")]
    TooNew {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} `{id}` is ambiguous: matches {matches}")]
    Ambiguous {
        kind: &'static str,
        id: String,
        matches: String,
    },
    #[error("{kind} `{id}` already exists")]
    Conflict { kind: &'static str, id: String },
    #[error("stored {what} is not valid JSON")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("state store: column {index}: {reason}")]
    Column { index: usize, reason: String },
    #[error("state store: parameter {index}: {reason}")]
    Param { index: usize, reason: String },
    #[error("state store: the query returned no row")]
    NoRow,
    #[error("state store: the transaction was aborted by an earlier error and is rolled back")]
    Aborted,
}

/// A PostgreSQL error with the server's message (the plain `Display` says only "db error").
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// A stable code for API answers and exit statuses.
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            StoreError::Sqlite(_) | StoreError::Postgres(_) => vfarm_proto::ErrorCode::StoreError,
            StoreError::Open { .. } | StoreError::File { .. } | StoreError::OpenPostgres { .. } => {
                vfarm_proto::ErrorCode::StoreUnavailable
            }
            StoreError::InvalidConfig { .. } => vfarm_proto::ErrorCode::InvalidConfig,
            StoreError::TooNew { .. } => vfarm_proto::ErrorCode::StoreTooNew,
            StoreError::NotFound { .. } => vfarm_proto::ErrorCode::NotFound,
            StoreError::Ambiguous { .. } => vfarm_proto::ErrorCode::AmbiguousReference,
            StoreError::Conflict { .. } => vfarm_proto::ErrorCode::Conflict,
            StoreError::Corrupt { .. } | StoreError::Column { .. } => {
                vfarm_proto::ErrorCode::StoreCorrupt
            }
            StoreError::Param { .. } | StoreError::NoRow | StoreError::Aborted => {
                vfarm_proto::ErrorCode::StoreError
            }
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the state database. Cheap to share behind an `Arc`; calls serialise on one
/// connection, which is plenty for a control plane and keeps locking simple.
///
/// The PostgreSQL client is synchronous (it runs its own small runtime inside): call the
/// store from plain threads or `spawn_blocking`, never on an async worker thread.
pub struct Store {
    conn: Mutex<Conn>,
    path: PathBuf,
    location: String,
    backend: Backend,
    /// PostgreSQL: the advisory lock every transaction takes first (per schema).
    lock_key: i64,
    /// The service this store speaks for (`<hostname>:<data dir>`), recorded on local
    /// instances, builds, operations and claimed jobs; `None`: every row is this one's.
    origin: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.name())
            .field("location", &self.location)
            .finish()
    }
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        restrict_to_owner(path).map_err(|source| StoreError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = rusqlite::Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init_sqlite(conn, path.to_path_buf())
    }

    /// A private in-memory SQLite database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Self::init_sqlite(
            rusqlite::Connection::open_in_memory()?,
            PathBuf::from(":memory:"),
        )
    }

    fn init_sqlite(conn: rusqlite::Connection, path: PathBuf) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(30))?;
        // Turning a fresh database to WAL needs it to itself, and SQLite answers BUSY at once
        // (no busy handler) while another process opens it too: retry for a while.
        let mut tries = 0;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => break r?,
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Store {
            conn: Mutex::new(Conn::Sqlite(conn)),
            location: path.display().to_string(),
            path,
            backend: Backend::Sqlite,
            lock_key: 0,
            origin: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Open (creating the schema if needed) and migrate the state in `schema` of the
    /// PostgreSQL database at `url` (`postgres://user:password@host/db` or `host=… user=…`).
    /// Several processes may open one schema at once; they serialise their writes.
    pub fn open_postgres(url: &str, schema: &str) -> Result<Store> {
        check_schema_name(schema)?;
        let config: postgres::Config =
            url.parse()
                .map_err(|e: postgres::Error| StoreError::InvalidConfig {
                    field: "database",
                    reason: format!("not a PostgreSQL connection URL: {e}"),
                })?;
        let shown = redacted(&config);
        let conn = PgConn::connect(&config, schema).map_err(|e| match e {
            StoreError::Postgres(source) => StoreError::OpenPostgres {
                url: shown.clone(),
                source,
            },
            other => other,
        })?;
        let location = format!("{shown} (schema {schema})");
        let store = Store {
            conn: Mutex::new(Conn::Postgres(Box::new(conn))),
            path: PathBuf::from(&location),
            location,
            backend: Backend::Postgres,
            lock_key: advisory_key(schema),
            origin: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let db = self.conn();
        match self.backend {
            Backend::Sqlite => {
                // BEGIN IMMEDIATE: two processes opening a fresh store at once must not both migrate.
                db.begin(self.lock_key)?;
                let version: i64 = db.query_row("PRAGMA user_version", params![], |r| r.get(0))?;
                self.check_version(version, known)?;
                for (_, sql) in &MIGRATIONS[version as usize..] {
                    db.execute_batch(sql)?;
                }
                db.execute_batch(&format!("PRAGMA user_version = {known}"))?;
                db.commit()
            }
            Backend::Postgres => {
                if let Some((name, _)) = MIGRATIONS.get(PG_MIGRATIONS.len()) {
                    return Err(StoreError::InvalidConfig {
                        field: "database",
                        reason: format!("migration {name} has no PostgreSQL version in this vfarm"),
                    });
                }
                // The advisory lock comes before anything else, so two processes starting at
                // once on a fresh schema do not both create and migrate it.
                db.begin(self.lock_key)?;
                let schema = db.pg_schema().unwrap_or_default();
                // Created only when missing: a site may give vfarm a schema of its own and
                // no right to create schemas in the database.
                let exists = db
                    .query_opt(
                        "SELECT 1 FROM pg_namespace WHERE nspname = ?1",
                        [&schema],
                        |r| r.get::<_, i64>(0),
                    )?
                    .is_some();
                if !exists {
                    db.execute_batch(&format!("CREATE SCHEMA \"{schema}\""))?;
                }
                db.execute_batch(
                    "CREATE TABLE IF NOT EXISTS vfarm_schema_version (version BIGINT NOT NULL)",
                )?;
                let version: Option<i64> =
                    db.query_opt("SELECT version FROM vfarm_schema_version", params![], |r| {
                        r.get(0)
                    })?;
                let version = version.unwrap_or(0);
                self.check_version(version, known)?;
                for (_, sql) in &PG_MIGRATIONS[version as usize..] {
                    db.execute_batch(sql)?;
                }
                db.execute_batch(&format!(
                    "DELETE FROM vfarm_schema_version; INSERT INTO vfarm_schema_version VALUES ({known})"
                ))?;
                db.commit()
            }
        }
    }

    fn check_version(&self, found: i64, known: i64) -> Result<()> {
        if found > known {
            return Err(StoreError::TooNew {
                location: self.location.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// The SQLite file; for PostgreSQL, [`Store::location`] as a path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the state is, for messages: the SQLite file, or the PostgreSQL URL without
    /// its password and the schema.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Speak for the service `origin` (`<hostname>:<data dir>`): what this store records is
    /// marked as that service's, and what other services sharing the database marked as
    /// theirs is left to them (see [`Store::foreign_origin`]).
    pub fn with_origin(mut self, origin: impl Into<String>) -> Store {
        self.origin = Some(origin.into());
        self
    }

    /// The service this store speaks for, if set.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// SQL and its parameter that hold for rows of this service (or of none): `col IS NULL OR
    /// col = ?n`, or `1 = 1` (and no parameter) when no origin is set. `n` is the parameter's
    /// position.
    pub(crate) fn ours(&self, col: &str, n: usize) -> (String, Option<Value>) {
        match &self.origin {
            Some(o) => (
                format!("({col} IS NULL OR {col} = ?{n})"),
                Some(Value::from(o.as_str())),
            ),
            None => ("1 = 1".into(), None),
        }
    }

    /// "sqlite" or "postgres" (for `vfarm serve`'s start line).
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// The schema version the store is at.
    pub fn schema_version(&self) -> Result<i64> {
        let db = self.conn();
        match self.backend {
            Backend::Sqlite => db.query_row("PRAGMA user_version", params![], |r| r.get(0)),
            Backend::Postgres => {
                db.query_row("SELECT version FROM vfarm_schema_version", params![], |r| {
                    r.get(0)
                })
            }
        }
    }

    /// The connection, for modules' queries. Hold it briefly.
    pub fn conn(&self) -> Db<'_> {
        Db::new(self.conn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Run `f` in one transaction: all or nothing, and no other writer in between (SQLite:
    /// `BEGIN IMMEDIATE`; PostgreSQL: the schema's advisory lock is taken first, so writers
    /// serialise across every process sharing the schema exactly as on SQLite).
    pub fn tx<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let db = self.conn();
        db.begin(self.lock_key)?;
        match f(&db) {
            Ok(out) => {
                db.commit()?;
                Ok(out)
            }
            Err(e) => {
                db.rollback();
                Err(e)
            }
        }
    }

    /// Append to the event log (who did what to which object).
    pub fn event(
        &self,
        actor: &str,
        kind: &str,
        object: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        append_event(&self.conn(), actor, kind, object, detail)
    }

    /// The most recent events, newest last.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>> {
        self.conn().query_map(
            "SELECT seq, at, actor, kind, object, detail FROM
               (SELECT * FROM events ORDER BY seq DESC LIMIT ?1) AS recent ORDER BY seq",
            [limit as i64],
            |r| {
                Ok(Event {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    kind: r.get(3)?,
                    object: r.get(4)?,
                    detail: r.get(5)?,
                })
            },
        )
    }
}

/// PostgreSQL identifiers vfarm creates are plain lower-case names, so they never need
/// escaping inside the SQL text.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok_start = schema
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let ok_rest = schema
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok_start || !ok_rest || schema.len() > 63 {
        return Err(StoreError::InvalidConfig {
            field: "schema",
            reason: format!(
                "`{schema}`: use 1 to 63 lower-case letters, digits and `_`, not starting with a digit"
            ),
        });
    }
    Ok(())
}

/// The connection target without the password: `postgres://user@host:port/db`.
fn redacted(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// The advisory lock key of a schema: stable across processes and versions (FNV-1a).
fn advisory_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("vfarm-store:{schema}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Append an event inside an existing transaction or connection.
pub fn append_event(
    db: &Db<'_>,
    actor: &str,
    kind: &str,
    object: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    db.execute(
        "INSERT INTO events(at, actor, kind, object, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now(), actor, kind, object, detail.to_string()],
    )?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub object: String,
    pub detail: String,
}

/// `query_row` that maps "no rows" to `None`.
pub(crate) fn optional<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NoRow) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the next page of a list starts: just after the row with this sort key and id
/// (keyset paging, so rows inserted meanwhile neither repeat nor shift a page). Clients see
/// it only as an opaque token ([`Cursor::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: String,
    pub id: String,
}

impl Cursor {
    /// Lower-case hex of `key`, a newline and `id`: safe in a URL as it is.
    pub fn encode(&self) -> String {
        format!("{}\n{}", self.key, self.id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `None` for anything [`encode`](Self::encode) did not write.
    pub fn decode(s: &str) -> Option<Cursor> {
        if !s.len().is_multiple_of(2) || s.len() > 1024 {
            return None;
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (key, id) = text.split_once('\n')?;
        (!id.is_empty()).then(|| Cursor {
            key: key.to_string(),
            id: id.to_string(),
        })
    }
}

/// One page of a list and, when more rows follow, where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// A row listed in keyset pages: its `(created, id)`.
pub(crate) trait Keyed {
    fn cursor(&self) -> Cursor;
}

/// One keyset page of `select` (a `SELECT … FROM table`) under `conds` (placeholders
/// numbered after `args`): rows in `(created, id)` order from just after `after`, at most
/// `limit` (`None`: all); the last row's `(created, id)` is the next page's cursor.
pub(crate) fn keyset_page<T: Keyed>(
    db: &Db<'_>,
    select: &str,
    mut conds: Vec<String>,
    mut args: Vec<Value>,
    after: Option<&Cursor>,
    limit: Option<usize>,
    row: impl FnMut(&Row<'_>) -> Result<T>,
) -> Result<Page<T>> {
    if let Some(c) = after {
        args.push(c.key.as_str().into());
        args.push(c.id.as_str().into());
        let n = args.len();
        conds.push(format!("(created, id) > (?{}, ?{n})", n - 1));
    }
    let mut sql = select.to_string();
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY created, id");
    if let Some(n) = limit {
        // One more than asked: whether it comes back says whether a next page exists.
        args.push(Value::Integer(
            n.saturating_add(1).min(i64::MAX as usize) as i64
        ));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut items = db.query_map(&sql, args, row)?;
    let next = match limit {
        Some(n) if items.len() > n => {
            items.truncate(n);
            items.last().map(Keyed::cursor)
        }
        _ => None,
    };
    Ok(Page { items, next })
}

/// `?1,?2,…,?n`: the placeholders of an `IN (…)` list.
pub(crate) fn marks(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Timestamps are RFC 3339 UTC with milliseconds, so they sort as text.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    /// Two services on one database: each sees every record, but another's local instances,
    /// builds, operations and claimed jobs are reported as its, never as this one's to
    /// reconcile. Rows without an origin (older schemas) stay everyone's.
    #[test]
    fn two_origins_on_one_database_keep_to_their_own() {
        use crate::images::tests::build;
        use crate::instances::tests::inst;
        for db in TestDb::all() {
            let a = db.open().with_origin("hostA:/var/lib/vfarm");
            let b = db.open().with_origin("hostB:/srv/vfarm");
            let legacy = db.open();
            a.insert_instance(&inst("a1", None)).unwrap();
            b.insert_instance(&inst("b1", None)).unwrap();
            legacy.insert_instance(&inst("old1", None)).unwrap();
            assert_eq!(a.instances().unwrap().len(), 3, "{}", db.backend());
            assert_eq!(a.foreign_origin("a1").unwrap(), None);
            assert_eq!(
                a.foreign_origin("b1").unwrap().as_deref(),
                Some("hostB:/srv/vfarm")
            );
            assert_eq!(
                b.foreign_origin("a1").unwrap().as_deref(),
                Some("hostA:/var/lib/vfarm")
            );
            assert_eq!(a.foreign_origin("old1").unwrap(), None);
            assert_eq!(legacy.foreign_origin("b1").unwrap(), None);

            a.insert_build(&build("ba", "ffff0a")).unwrap();
            b.insert_build(&build("bb", "ffff0b")).unwrap();
            let ids = |s: &Store| -> Vec<String> {
                s.running_builds()
                    .unwrap()
                    .into_iter()
                    .map(|b| b.id)
                    .collect()
            };
            assert_eq!(ids(&a), ["ba"]);
            assert_eq!(ids(&b), ["bb"]);
            assert_eq!(ids(&legacy).len(), 2);

            a.create_operation("oa", "instance.create", Some("a1"))
                .unwrap();
            b.create_operation("ob", "instance.create", None).unwrap();
            assert_eq!(
                a.running_operations("instance.create").unwrap(),
                [("oa".to_string(), Some("a1".to_string()))]
            );
            // A restarting service fails its own stale operations, not the other's.
            assert_eq!(a.fail_stale_operations("restart").unwrap(), 1);
            assert_eq!(b.operation("ob").unwrap().unwrap().status, "running");
            assert_eq!(a.operation("oa").unwrap().unwrap().status, "failed");

            let (ja, jb) = (
                crate::jobs::tests::new(&a, "alice"),
                crate::jobs::tests::new(&a, "alice"),
            );
            assert!(a.claim_job(ja, &serde_json::json!({})).unwrap());
            assert!(b.claim_job(jb, &serde_json::json!({})).unwrap());
            assert_eq!(
                a.jobs_claimed_elsewhere()
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>(),
                [jb]
            );
            assert_eq!(
                b.jobs_claimed_elsewhere()
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>(),
                [ja]
            );
            assert!(legacy.jobs_claimed_elsewhere().unwrap().is_empty());
        }
    }

    #[test]
    fn migrates_once_and_reopens() {
        for db in TestDb::all() {
            {
                let s = db.open();
                s.event("root", "test", "x", &serde_json::json!({"a": 1}))
                    .unwrap();
            }
            let s = db.open();
            let ev = s.events(10).unwrap();
            assert_eq!(ev.len(), 1, "{}", db.backend());
            assert_eq!(ev[0].kind, "test");
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(s.backend(), db.backend());
        }
    }

    /// Migration 8 (image owners) keeps the images a version-7 store holds, as public.
    #[test]
    fn image_owner_migration_keeps_images_public() {
        for db in TestDb::all() {
            {
                let s = db.open();
                let back = match s.backend {
                    Backend::Sqlite => "ALTER TABLE images DROP COLUMN owner; PRAGMA user_version = 8",
                    Backend::Postgres => {
                        "ALTER TABLE images DROP COLUMN owner; UPDATE vfarm_schema_version SET version = 8"
                    }
                };
                s.conn().execute_batch(back).unwrap();
                s.conn()
                    .execute(
                        "INSERT INTO images(id, name, spec, summary, origin, created)
                         VALUES ('0ld1', 'old', '{}', 's', 'build', '2020-01-01T00:00:00Z')",
                        params![],
                    )
                    .unwrap();
            }
            let s = db.open();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(s.find_image("old").unwrap().id, "0ld1", "{}", db.backend());
            assert_eq!(s.image_owner("0ld1").unwrap(), Some(None));
        }
    }

    /// Migration 10 (owner issuers): certificate owners recorded as a bare DN keep their
    /// records, with the issuer `unknown`; token users and login names are unchanged.
    #[test]
    fn owner_issuer_migration_marks_bare_dns_unknown() {
        for db in TestDb::all() {
            let (alice, bob) = ("/C=XX/O=A/CN=Alice", "bob");
            let job;
            {
                let s = db.open();
                for (id, owner) in [("0ld000000001", alice), ("0ld000000002", bob)] {
                    let mut i = crate::instances::tests::inst(id, None);
                    i.owner = owner.into();
                    s.insert_instance(&i).unwrap();
                }
                job = crate::jobs::tests::new(&s, alice);
                for (id, user) in [("t1", alice), ("t2", bob)] {
                    s.insert_token(&auth::TokenRow {
                        id: id.into(),
                        user: user.into(),
                        name: None,
                        secret_hash: "00".into(),
                        created: now(),
                        expires: None,
                        revoked: None,
                        last_used: None,
                    })
                    .unwrap();
                }
                let back = match s.backend {
                    Backend::Sqlite => "PRAGMA user_version = 9",
                    Backend::Postgres => "UPDATE vfarm_schema_version SET version = 9",
                };
                s.conn().execute_batch(back).unwrap();
            }
            let s = db.open();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            let legacy = "/C=XX/O=A/CN=Alice issuer=unknown";
            let owner = |id: &str| s.instance(id).unwrap().unwrap().owner;
            assert_eq!(owner("0ld000000001"), legacy, "{}", db.backend());
            assert_eq!(owner("0ld000000002"), bob);
            assert_eq!(s.job(job).unwrap().owner, legacy);
            assert_eq!(s.token("t1").unwrap().unwrap().user, legacy);
            assert_eq!(s.token("t2").unwrap().unwrap().user, bob);
            // The legacy owner is found among the owner scope of the same subject.
            let key = "/C=XX/O=A/CN=Alice issuer=/C=XX/O=A/CN=CA A";
            assert_eq!(
                s.find_instance_among("0ld000000001", Some([key, legacy]))
                    .unwrap()
                    .owner,
                legacy
            );
            assert!(s
                .find_instance_among("0ld000000001", Some([key, key]))
                .is_err());
        }
    }

    #[test]
    fn refuses_newer_schema() {
        for db in TestDb::all() {
            let s = db.open();
            match s.backend {
                Backend::Sqlite => s.conn().execute_batch("PRAGMA user_version = 99").unwrap(),
                Backend::Postgres => s
                    .conn()
                    .execute_batch("UPDATE vfarm_schema_version SET version = 99")
                    .unwrap(),
            }
            drop(s);
            match db.try_open() {
                Err(StoreError::TooNew { found: 99, .. }) => {}
                Err(e) => panic!("{}: {e}", db.backend()),
                Ok(_) => panic!("{}: a newer schema was opened", db.backend()),
            }
        }
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        for db in TestDb::all() {
            let s = db.open();
            let r: Result<()> = s.tx(|tx| {
                append_event(tx, "root", "kept?", "x", &serde_json::json!({}))?;
                Err(StoreError::Conflict {
                    kind: "test",
                    id: "x".into(),
                })
            });
            assert!(matches!(r, Err(StoreError::Conflict { .. })));
            // A statement error the closure swallows: PostgreSQL has aborted the transaction,
            // so the commit must not report success; SQLite goes on and commits.
            let r = s.tx(|tx| {
                append_event(tx, "root", "maybe", "x", &serde_json::json!({}))?;
                let _ = tx.execute("INSERT INTO no_such_table VALUES (1)", params![]);
                Ok::<_, StoreError>(())
            });
            let kinds: Vec<String> = s.events(10).unwrap().into_iter().map(|e| e.kind).collect();
            match s.backend {
                Backend::Sqlite => {
                    r.unwrap();
                    assert_eq!(kinds, ["maybe"]);
                }
                Backend::Postgres => {
                    assert!(matches!(r, Err(StoreError::Aborted)), "{r:?}");
                    assert!(kinds.is_empty(), "{kinds:?}");
                }
            }
            // The connection is usable afterwards.
            s.event("root", "after", "x", &serde_json::json!({}))
                .unwrap();
        }
    }

    #[test]
    fn postgres_reconnects_after_losing_its_session() {
        let Some(db) = TestDb::postgres() else { return };
        let s = db.open();
        let other = db.open();
        let pid: i64 = s
            .conn()
            .query_row("SELECT pg_backend_pid()", params![], |r| r.get(0))
            .unwrap();
        let killed: bool = other
            .conn()
            .query_row("SELECT pg_terminate_backend(?1)", [pid], |r| r.get(0))
            .unwrap();
        assert!(killed);
        s.event("root", "after-restart", "x", &serde_json::json!({}))
            .unwrap();
        let new_pid: i64 = s
            .conn()
            .query_row("SELECT pg_backend_pid()", params![], |r| r.get(0))
            .unwrap();
        assert_ne!(pid, new_pid);
        assert_eq!(s.events(1).unwrap()[0].kind, "after-restart");
    }

    /// Processes starting at once on a new PostgreSQL schema: one creates and migrates it,
    /// the others wait on the advisory lock and find it done.
    #[test]
    fn postgres_concurrent_first_opens_migrate_once() {
        let Some(db) = TestDb::postgres() else { return };
        let db = std::sync::Arc::new(db);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    db.try_open().map(|s| s.schema_version().unwrap())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), MIGRATIONS.len() as i64);
        }
    }

    /// `vfarm serve` calls the store from tokio's blocking pool: the sync PostgreSQL
    /// client (a runtime of its own inside) must work there.
    #[test]
    fn postgres_store_works_on_the_blocking_pool() {
        let Some(db) = TestDb::postgres() else { return };
        let s = std::sync::Arc::new(db.open());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let n = rt.block_on(async move {
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || {
                s2.event("api", "from-pool", "x", &serde_json::json!({}))
                    .unwrap();
                s2.events(10).unwrap().len()
            })
            .await
            .unwrap()
        });
        assert_eq!(n, 1);
        // The last handle going away on an async worker closes the connection without panic.
        let s = db.open();
        rt.block_on(async move { drop(s) });
    }

    #[test]
    fn every_migration_has_both_dialects() {
        let names: Vec<_> = MIGRATIONS.iter().map(|(n, _)| n).collect();
        let pg: Vec<_> = PG_MIGRATIONS.iter().map(|(n, _)| n).collect();
        assert_eq!(names, pg);
    }

    /// The PostgreSQL twin of a migration differs only in the spelling of types (and the
    /// quoting of `user`): a change made to one dialect only fails here.
    #[test]
    fn both_dialects_define_the_same_tables() {
        fn norm(sql: &str, pg: bool) -> String {
            let code: Vec<&str> = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect();
            let mut s = code.join(" ");
            if pg {
                for (from, to) in [
                    (
                        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                        "INTEGER PRIMARY KEY AUTOINCREMENT",
                    ),
                    ("BIGINT", "INTEGER"),
                    ("BYTEA", "BLOB"),
                    (" COLLATE \"C\"", ""),
                    ("\"user\"", "user"),
                ] {
                    s = s.replace(from, to);
                }
            }
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        for ((name, lite), (_, pg)) in MIGRATIONS.iter().zip(PG_MIGRATIONS) {
            assert_eq!(norm(lite, false), norm(pg, true), "migration {name}");
        }
    }

    #[test]
    fn bad_schema_and_url_are_refused_by_field() {
        let e = Store::open_postgres("postgres://u@127.0.0.1/x", "Bad-Name").unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidConfig {
                    field: "schema",
                    ..
                }
            ),
            "{e}"
        );
        let e = Store::open_postgres("postgres://u@127.0.0.1:notaport/x", "vfarm").unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidConfig {
                    field: "database",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn connection_errors_never_show_the_password() {
        // Nothing listens on port 1: the connection is refused at once.
        let e =
            Store::open_postgres("postgres://vfarm:s3cret@127.0.0.1:1/vfarm", "vfarm").unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(matches!(e, StoreError::OpenPostgres { .. }), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("postgres://vfarm@127.0.0.1:1/vfarm"),
            "{text}"
        );
    }

    #[test]
    fn advisory_keys_differ_per_schema() {
        assert_eq!(advisory_key("vfarm"), advisory_key("vfarm"));
        assert_ne!(advisory_key("vfarm"), advisory_key("other"));
    }
}

/// The database holds instances' environment values (secrets) and token hashes: it is the
/// service user's alone (0600). A new file is made so before SQLite opens it (its WAL and
/// shared-memory files take the same mode); an older, wider one is narrowed.
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Only a file that does not exist yet is opened here: closing any descriptor of a
    // database file drops the POSIX locks that SQLite connections of this process hold on it.
    if !path.exists() {
        match std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    for p in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod file_mode_tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Issue 15, finding 12: the state (instance environments, token hashes) is the service
    /// user's alone, also when an older release left it world-readable.
    #[test]
    fn the_state_database_and_its_wal_are_0600() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("state.db");
        let s = super::Store::open(&db).unwrap();
        drop(s);
        assert_eq!(mode(&db), 0o600);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = super::Store::open(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = d.path().join("state.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
        drop(s);
    }
}
