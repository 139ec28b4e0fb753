//! The environment every operation runs in: the data dir, its origin, and the lazily opened
//! state store and image repository. Front ends (the CLI, `vfarm serve`) hold one each.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use vfarm_store::Store;

/// The state database: `--database postgres://…` (or `VFARM_DATABASE`); none: SQLite in the
/// data dir. Read from the environment so every part of a process (and the runners it
/// starts) uses the same one.
pub fn database() -> Option<String> {
    std::env::var("VFARM_DATABASE")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// This machine's host name (empty if the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub struct Env {
    pub data_dir: PathBuf,
    store: OnceLock<Arc<Store>>,
    /// In-process tests: every driver kind is this fake.
    #[cfg(feature = "fake")]
    pub fake: Option<vfarm_driver::fake::FakeDriver>,
}

impl Env {
    pub fn new(data_dir: PathBuf) -> Env {
        Env {
            data_dir,
            store: OnceLock::new(),
            #[cfg(feature = "fake")]
            fake: None,
        }
    }

    /// An environment over an already opened store (the HTTP service's).
    pub fn with_store(data_dir: PathBuf, store: Arc<Store>) -> Env {
        let env = Env::new(data_dir);
        let _ = env.store.set(store);
        env
    }

    /// The same data dir (and fake drivers) with a store of its own, for a long-lived part of a
    /// service (the API backend, the watcher): each has its own database connection.
    pub fn fresh(&self) -> Env {
        Env {
            data_dir: self.data_dir.clone(),
            store: OnceLock::new(),
            #[cfg(feature = "fake")]
            fake: self.fake.clone(),
        }
    }

    /// This environment with every driver replaced by `fake` (in-process tests).
    #[cfg(feature = "fake")]
    pub fn with_fake_drivers(mut self, fake: vfarm_driver::fake::FakeDriver) -> Env {
        self.fake = Some(fake);
        self
    }

    /// The state store in the data dir, created and migrated on first use.
    pub fn store(&self) -> Result<Arc<Store>> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        ensure_data_dir(&self.data_dir)?;
        let s = match database() {
            Some(url) => Store::open_postgres(&url, &self.database_schema())?,
            None => Store::open(&self.data_dir.join("state.db"))?,
        };
        let s = Arc::new(s.with_origin(self.origin()?));
        Ok(self.store.get_or_init(|| s).clone())
    }

    /// This data dir's name in a shared database: what it records that only this machine can
    /// act on (local instances, builds, operations, claimed jobs) carries it, and other
    /// services sharing the database leave such rows alone. Made once, as
    /// `<hostname>:<data dir>`, and kept in `<data>/origin`, so a renamed host or a moved data
    /// dir still owns what it made.
    pub fn origin(&self) -> Result<String> {
        let file = self.data_dir.join("origin");
        if let Ok(text) = std::fs::read_to_string(&file) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        let host = hostname();
        let dir = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        let origin = format!("{host}:{}", dir.display());
        // Two first commands at once: one file wins, both use what it says.
        let tmp = self
            .data_dir
            .join(format!(".origin-{}", std::process::id()));
        std::fs::write(&tmp, format!("{origin}\n"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &file);
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = linked {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e).with_context(|| format!("cannot write {}", file.display()));
            }
        }
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim()
            .to_string())
    }

    /// The PostgreSQL schema of this data dir: `VFARM_DATABASE_SCHEMA` (default `vfarm`, the
    /// one several control services share); `per-data-dir` gives every data dir its own,
    /// named from its path (independent installations, the test suite, on one database).
    fn database_schema(&self) -> String {
        let given = std::env::var("VFARM_DATABASE_SCHEMA").unwrap_or_default();
        match given.as_str() {
            "" => "vfarm".into(),
            "per-data-dir" => {
                use sha2::Digest;
                let dir =
                    std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
                let h = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
                format!("d_{}", hex::encode(&h[..8]))
            }
            s => s.to_string(),
        }
    }

    /// The image repository in the data dir.
    pub fn images(&self) -> Result<vfarm_image::Repository> {
        Ok(vfarm_image::Repository::open(
            &self.data_dir,
            self.store()?,
        )?)
    }
}

/// Default data dir: `$VFARM_DATA_DIR`, else `/var/lib/vfarm` for root, else the XDG data home.
/// The data dir is traversable but not listable by others (0711): user-namespaced runtimes
/// reach their own instance's directory (0700, owned by the instance's id range) through it,
/// while no other host user can list what it holds. An existing dir is set so too.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0o011 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot set data dir {} to mode 0711", dir.display()))?;
    }
    Ok(())
}

pub fn default_data_dir() -> PathBuf {
    // SAFETY-free check of the effective uid through libc's safe wrapper in std is not
    // available; `geteuid` has no preconditions.
    if is_root() {
        return PathBuf::from("/var/lib/vfarm");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("vfarm");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/vfarm");
    }
    PathBuf::from(".vfarm")
}

#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
