//! Stores on both backends for tests (this crate's, and with the `test-util` feature those
//! of crates built on the store).
//!
//! PostgreSQL comes from `VFARM_TEST_POSTGRES` (e.g.
//! `postgres://vfarm:vfarm@127.0.0.1/vfarm_test`, which `scripts/setup.sh` sets up). Unset,
//! every test that asks for PostgreSQL fails naming the variable; `VFARM_TEST_POSTGRES=off`
//! runs SQLite only and says so. Each [`TestDb`] is a fresh SQLite file or a fresh schema
//! `t_<unique>`, removed when it is dropped; [`TestDb::open`] gives another connection on it,
//! so concurrency tests open several stores on one database exactly as processes would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, Store};

/// The environment variable naming the test database.
pub const ENV: &str = "VFARM_TEST_POSTGRES";

enum Place {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

/// One empty database for one test.
pub struct TestDb {
    place: Place,
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{nanos:09}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    /// A fresh SQLite file and, unless `VFARM_TEST_POSTGRES=off`, a fresh PostgreSQL schema.
    pub fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        v.extend(TestDb::postgres());
        v
    }

    /// A fresh SQLite database file in its own temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("vfarm-store-test-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TestDb {
            place: Place::Sqlite(dir),
        }
    }

    /// A fresh schema in the `VFARM_TEST_POSTGRES` database; `None` only when the variable
    /// is `off`. Panics when it is unset: PostgreSQL tests never pass by not running.
    pub fn postgres() -> Option<TestDb> {
        let url = match std::env::var(ENV) {
            Ok(v) if v == "off" => {
                eprintln!("{ENV}=off: skipping the PostgreSQL variant of this test");
                return None;
            }
            Ok(v) if !v.is_empty() => v,
            _ => panic!(
                "{ENV} is not set: the store's tests also run on PostgreSQL. Run scripts/setup.sh \
                 (it starts PostgreSQL and prints the URL) and set \
                 {ENV}=postgres://vfarm:vfarm@127.0.0.1/vfarm_test, or {ENV}=off to run SQLite only"
            ),
        };
        Some(TestDb {
            place: Place::Postgres {
                url,
                schema: format!("t_{}", unique()),
            },
        })
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.place {
            Place::Sqlite(_) => "sqlite",
            Place::Postgres { .. } => "postgres",
        }
    }

    /// A new store (own connection) on this database.
    pub fn try_open(&self) -> Result<Store> {
        match &self.place {
            Place::Sqlite(dir) => Store::open(&dir.join("state.db")),
            Place::Postgres { url, schema } => Store::open_postgres(url, schema),
        }
    }

    /// A new store on this database; panics naming the backend when it cannot be opened.
    pub fn open(&self) -> Store {
        // Shown with a failing test's output, so it is clear which backend failed.
        eprintln!("store backend: {}", self.backend());
        self.try_open()
            .unwrap_or_else(|e| panic!("cannot open the {} test store: {e}", self.backend()))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.place {
            Place::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Place::Postgres { url, schema } => {
                // Best effort: a schema left behind only costs space in a test database.
                if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
                }
            }
        }
    }
}

/// A queued job of `owner` with small made-up figures; its id.
pub fn new_job(store: &Store, owner: &str) -> i64 {
    store
        .insert_job(&crate::jobs::NewJob {
            name: None,
            owner,
            queue: "batch",
            priority: 0,
            backend: "local",
            driver: "oci",
            image_id: "img",
            cpus_milli: 1000,
            memory_mib: 512,
            walltime_secs: 60,
            spec: "{}",
        })
        .unwrap()
}
