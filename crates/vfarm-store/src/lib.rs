//! vfarm's persistent state: one SQLite database (WAL mode) in the data directory.
//!
//! Migrations are numbered SQL files applied in order and tracked in `PRAGMA user_version`.
//! Each capability keeps its tables in its own migration and its queries in its own module
//! (`images`, …); the `events` table is append-only and shared by all of them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction};

pub mod auth;
pub mod imagelists;
pub mod images;
pub mod instances;
pub mod jobs;

pub use rusqlite;

/// Migrations in order; index + 1 is the schema version after applying it.
/// Numbers are reserved per capability: 1 images, 2 instances, 3 image lists, 4 jobs, 5 auth.
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
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path} has schema version {found}, newer than this vfarm ({known}); upgrade vfarm")]
    TooNew {
        path: PathBuf,
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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the state database. Cheap to share behind an `Arc`; calls serialise on one
/// connection, which is plenty for a control plane and keeps SQLite's locking simple.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path.to_path_buf())
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    fn init(conn: Connection, path: PathBuf) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let known = MIGRATIONS.len() as i64;
        // BEGIN IMMEDIATE: two processes opening a fresh store at once must not both migrate.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (_, sql) in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for modules' queries. Hold it briefly.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` in one IMMEDIATE transaction: all or nothing, and no other writer in between.
    pub fn tx<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
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
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT seq, at, actor, kind, object, detail FROM
               (SELECT * FROM events ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(Event {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                kind: r.get(3)?,
                object: r.get(4)?,
                detail: r.get::<_, String>(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Append an event inside an existing transaction or connection.
pub fn append_event(
    conn: &Connection,
    actor: &str,
    kind: &str,
    object: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    conn.execute(
        "INSERT INTO events(at, actor, kind, object, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![now(), actor, kind, object, detail.to_string()],
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

/// Timestamps are RFC 3339 UTC with milliseconds, so they sort as text.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `query_row` that maps "no rows" to `None`.
pub(crate) fn optional<T>(r: rusqlite::Result<T>) -> Result<Option<T>> {
    Ok(r.optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let s = Store::open(&p).unwrap();
            s.event("root", "test", "x", &serde_json::json!({"a": 1}))
                .unwrap();
        }
        let s = Store::open(&p).unwrap();
        let ev = s.events(10).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "test");
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        drop(Store::open(&p).unwrap());
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&p),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
