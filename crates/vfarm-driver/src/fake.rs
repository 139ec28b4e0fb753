//! An in-memory driver for in-process tests of everything above the drivers (the service,
//! the HTTP routes): instances are entries in a map, snapshots are names, files are bytes.
//! Exec runs the command on the host with the caller's pipes, so output and exit statuses
//! are real; nothing is isolated, so it is for tests only (feature `fake`).
//!
//! Clones share their state: each `Drivers` made per request sees the same instances.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    Driver, DriverError, Exec, ExecIo, ExecStop, Files, InstanceSpec, LogFiles, Observed, Pausable,
    ProbeReport, Result, SnapshotInfo, Snapshots, StopMode,
};

#[derive(Debug, Default)]
struct Instance {
    observed: Option<Observed>,
    snapshots: Vec<String>,
    files: HashMap<String, Vec<u8>>,
}

/// The fake driver; `kind` is the driver name it stands in for (`oci`, `qemu`).
#[derive(Debug, Clone)]
pub struct FakeDriver {
    kind: &'static str,
    logs: PathBuf,
    state: Arc<Mutex<HashMap<String, Instance>>>,
}

impl FakeDriver {
    /// A fake standing in for `kind`, writing (empty) log files under `logs`.
    pub fn new(kind: &'static str, logs: impl Into<PathBuf>) -> FakeDriver {
        FakeDriver {
            kind,
            logs: logs.into(),
            state: Arc::default(),
        }
    }

    /// The same instances under another kind's name (one fake for oci and qemu).
    pub fn as_kind(&self, kind: &'static str) -> FakeDriver {
        FakeDriver {
            kind,
            ..self.clone()
        }
    }

    /// What the fake holds for `id` (tests assert on it).
    pub fn observed_now(&self, id: &str) -> Option<Observed> {
        self.lock().get(id).and_then(|i| i.observed)
    }

    /// Make `id`'s main process end with `code`, as if it exited while nobody watched.
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(i) = self.lock().get_mut(id) {
            i.observed = Some(Observed::Exited { code });
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Instance>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Instance) -> Result<T>) -> Result<T> {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(i) if i.observed.is_some() => f(i),
            _ => Err(DriverError::NotFound {
                kind: "instance",
                id: id.to_string(),
            }),
        }
    }

    fn set(&self, id: &str, from: &[Observed], to: Observed) -> Result<()> {
        self.with(id, |i| {
            let now = i.observed.unwrap_or(Observed::Lost);
            if !from.contains(&now) {
                return Err(DriverError::Backend {
                    op: "fake",
                    id: id.to_string(),
                    detail: format!("{id} is {now}, not one of {from:?}"),
                    retryable: false,
                    source: None,
                });
            }
            i.observed = Some(to);
            Ok(())
        })
    }
}

impl Driver for FakeDriver {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn probe(&self) -> Result<ProbeReport> {
        Ok(ProbeReport {
            driver: self.kind,
            usable: true,
            backend: "fake".into(),
            notes: vec!["in-memory test driver".into()],
        })
    }

    fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        let mut map = self.lock();
        let i = map.entry(spec.id.clone()).or_default();
        i.observed = Some(Observed::Created);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<()> {
        self.set(
            id,
            &[Observed::Created, Observed::Exited { code: 0 }],
            Observed::Running,
        )
        .or_else(|_| {
            // Any stopped instance may start again.
            self.with(id, |i| match i.observed {
                Some(Observed::Exited { .. }) => {
                    i.observed = Some(Observed::Running);
                    Ok(())
                }
                other => Err(DriverError::Backend {
                    op: "start",
                    id: id.to_string(),
                    detail: format!("{id} is {other:?}"),
                    retryable: false,
                    source: None,
                }),
            })
        })
    }

    fn stop(&self, id: &str, mode: StopMode) -> Result<Observed> {
        let code = match mode {
            StopMode::Graceful { .. } => 0,
            StopMode::Kill => 137,
        };
        self.with(id, |i| {
            if matches!(i.observed, Some(Observed::Running | Observed::Paused)) {
                i.observed = Some(Observed::Exited { code });
            }
            Ok(i.observed.unwrap_or(Observed::Lost))
        })
    }

    fn observe(&self, id: &str) -> Result<Observed> {
        self.with(id, |i| Ok(i.observed.unwrap_or(Observed::Lost)))
    }

    fn cleanup(&self, id: &str) -> Result<()> {
        self.lock().remove(id);
        Ok(())
    }

    fn logs(&self, id: &str) -> Result<LogFiles> {
        let dir = self.logs.join(id);
        let io = |e: std::io::Error| DriverError::Backend {
            op: "logs",
            id: id.to_string(),
            detail: e.to_string(),
            retryable: false,
            source: None,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let out = dir.join("console.log");
        if !out.exists() {
            std::fs::write(&out, format!("fake console of {id}\n")).map_err(io)?;
        }
        Ok(LogFiles {
            stdout: out.clone(),
            stderr: out,
        })
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn pausable(&self) -> Option<&dyn Pausable> {
        Some(self)
    }

    fn exec(&self) -> Option<&dyn Exec> {
        Some(self)
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn files(&self) -> Option<&dyn Files> {
        Some(self)
    }
}

impl Pausable for FakeDriver {
    fn pause(&self, id: &str) -> Result<()> {
        self.set(id, &[Observed::Running], Observed::Paused)
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.set(id, &[Observed::Paused], Observed::Running)
    }
}

impl Exec for FakeDriver {
    fn exec(&self, id: &str, argv: &[String], env: &[(String, String)], io: ExecIo) -> Result<i32> {
        self.exec_until(id, argv, env, io, &ExecStop::default())
            .map(|c| c.unwrap_or(137))
    }

    fn exec_until(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        io: ExecIo,
        stop: &ExecStop,
    ) -> Result<Option<i32>> {
        self.with(id, |i| match i.observed {
            Some(Observed::Running) => Ok(()),
            other => Err(DriverError::Backend {
                op: "exec",
                id: id.to_string(),
                detail: format!("{id} is not running ({other:?})"),
                retryable: false,
                source: None,
            }),
        })?;
        let fail = |e: std::io::Error| DriverError::Backend {
            op: "exec",
            id: id.to_string(),
            detail: format!("{}: {e}", argv.first().map(String::as_str).unwrap_or("")),
            retryable: false,
            source: None,
        };
        let mut child = std::process::Command::new(argv.first().map(String::as_str).unwrap_or(""))
            .args(argv.iter().skip(1))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .spawn()
            .map_err(fail)?;
        let mut backoff = crate::Backoff::default();
        loop {
            if let Some(status) = child.try_wait().map_err(fail)? {
                use std::os::unix::process::ExitStatusExt;
                return Ok(Some(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                ));
            }
            if stop.reached() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            backoff.sleep();
        }
    }
}

impl Snapshots for FakeDriver {
    fn create(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        self.with(id, |i| {
            i.snapshots.push(name.to_string());
            Ok(SnapshotInfo {
                name: name.to_string(),
                size: 0,
            })
        })
    }

    fn revert(&self, id: &str, name: &str) -> Result<()> {
        self.with(id, |i| {
            if i.snapshots.iter().any(|s| s == name) {
                Ok(())
            } else {
                Err(DriverError::NotFound {
                    kind: "instance",
                    id: format!("{id}/{name}"),
                })
            }
        })
    }

    fn remove(&self, id: &str, name: &str) -> Result<()> {
        self.with(id, |i| {
            i.snapshots.retain(|s| s != name);
            Ok(())
        })
    }

    fn list(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        self.with(id, |i| {
            Ok(i.snapshots
                .iter()
                .map(|s| SnapshotInfo {
                    name: s.clone(),
                    size: 0,
                })
                .collect())
        })
    }
}

impl Files for FakeDriver {
    fn copy_in(&self, id: &str, src: &std::path::Path, dst: &str) -> Result<()> {
        crate::validate_instance_path("destination", dst)?;
        let bytes = std::fs::read(src).map_err(|e| DriverError::InvalidSpec {
            field: "source",
            reason: format!("{}: {e}", src.display()),
        })?;
        self.with(id, |i| {
            i.files.insert(dst.to_string(), bytes);
            Ok(())
        })
    }

    fn copy_out(&self, id: &str, src: &str, dst: &std::path::Path) -> Result<()> {
        crate::validate_instance_path("source", src)?;
        let bytes = self.with(id, |i| {
            i.files
                .get(src)
                .cloned()
                .ok_or_else(|| DriverError::NotFound {
                    kind: "instance",
                    id: format!("{id}:{src}"),
                })
        })?;
        std::fs::write(dst, bytes).map_err(|e| DriverError::InvalidSpec {
            field: "destination",
            reason: format!("{}: {e}", dst.display()),
        })
    }
}
