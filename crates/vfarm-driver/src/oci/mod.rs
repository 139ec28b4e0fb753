//! The `oci` driver: an instance is an OCI container run by a real runtime (runc or crun).
//!
//! # Layout (under the data dir)
//!
//! ```text
//! rootfs/<image id>/              the image's rootfs tar unpacked once; never written to
//! oci/state/                      the runtime's --root (its per-container state)
//! oci/probe/                      runtime probe verdicts and scratch bundles
//! instances/<id>/runtime.json     the runtime record (see `Record`)
//!                bundle/config.json, bundle/rootfs (overlay mount point)
//!                upper/ work/     the overlay's writable layer
//!                layers/<layer>/  read-only layers made by snapshots
//!                run/             supervisor.pid, container.pid, exit, paused
//!                stdout.log stderr.log
//! ```
//!
//! # Process model
//!
//! `start` launches, in a new session, a tiny shell supervisor that runs the runtime's `run`
//! in the foreground and writes its exit status to `run/exit` when it returns. The runtime
//! passes its stdout/stderr (appended log files) to the container. Because the supervisor
//! belongs to no vfarm process, killing the CLI or the service leaves instances running and
//! their exit status still gets recorded; any later process reads the record, checks the
//! supervisor (pid + start time), the exit file and the runtime's state, and knows the truth.
//!
//! # Snapshots: stacked read-only layers
//!
//! The instance's root is `overlay(lower = layers… + image rootfs, upper)`. A snapshot of a
//! stopped instance *renames* `upper` into a new read-only layer and starts an empty upper:
//! O(1). A snapshot of a running instance freezes it and copies `upper` into a new layer
//! (`cp --reflink=auto`; O(change set), the instance keeps running). A snapshot is the list
//! of layers it consists of. Revert moves the current upper aside (deleted in the background),
//! makes an empty upper and sets the lower stack to the snapshot's layers: its cost does not
//! depend on the size of the image or of the change set. Layers are shared between snapshots
//! and removed when no snapshot and no instance stack uses them.

mod bundle;
mod files;
mod hostfs;
mod runtime;
mod usage;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use bundle::{render as render_config, validate_hostname, IDLE_INIT};
pub use runtime::{select as select_runtime, Runtime, RuntimeChoice};

use crate::{
    validate_id, Driver, DriverError, Exec, ExecIo, ExecStop, Files, InstanceSpec, LogFiles,
    Observed, Pausable, ProbeReport, Result, SnapshotInfo, Snapshots, StopMode,
};
use hostfs::io_err;

const RECORD_VERSION: u32 = 1;
/// How long `start` waits for the runtime to report the container started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a kill may take to show up as an exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The shell supervisor. Positional args: $1 run dir, $2 runtime, $3 runtime root,
/// $4 bundle, $5 container id, $6 stdout log, $7 stderr log. The exit file is written in one
/// small write; readers treat an empty file as "not yet".
const SUPERVISOR: &str = r#"echo $$ > "$1/supervisor.pid"
"$2" --root "$3" run --bundle "$4" --pid-file "$1/container.pid" "$5" </dev/null >>"$6" 2>>"$7"
echo $? > "$1/exit""#;

/// The supervisor, as recorded once it ran: pid plus start time survive pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Proc {
    pid: u32,
    start_time: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SnapRecord {
    name: String,
    /// Layers making up the snapshot, top-most first (the image rootfs is implied below).
    chain: Vec<String>,
    created: u64,
}

/// The per-instance runtime record, `instances/<id>/runtime.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    version: u32,
    driver: String,
    id: String,
    spec: InstanceSpec,
    runtime: Runtime,
    /// The image's unpacked rootfs: the bottom read-only layer.
    rootfs: PathBuf,
    /// The instance's current read-only layers above the rootfs, top-most first.
    layers: Vec<String>,
    snapshots: Vec<SnapRecord>,
    /// Ever started (distinguishes "created" from "lost").
    started: bool,
    supervisor: Option<Proc>,
}

/// An exclusive per-instance lock, held for the duration of one mutating operation so two
/// processes (CLI and service) cannot interleave e.g. a revert and a start.
struct Lock(#[allow(dead_code)] File);

pub struct OciDriver {
    data_dir: PathBuf,
    runtime: Runtime,
    choice: RuntimeChoice,
    notes: Vec<String>,
}

impl OciDriver {
    /// Choose and probe the runtime (cached verdicts are reused; see [`runtime`]).
    pub fn new(data_dir: &Path, choice: RuntimeChoice) -> Result<OciDriver> {
        let mut notes = Vec::new();
        let probe_dir = data_dir.join("oci/probe");
        let runtime = runtime::select(&choice, &probe_dir, &mut notes, false)?;
        Ok(OciDriver {
            data_dir: data_dir.to_path_buf(),
            runtime,
            choice,
            notes,
        })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Where an image's rootfs is unpacked (shared by all its instances).
    pub fn rootfs_dir(&self, image_id: &str) -> PathBuf {
        self.data_dir.join("rootfs").join(image_id)
    }

    /// The runtime's state directory (`--root`), for inspection and tests.
    pub fn runtime_root(&self) -> PathBuf {
        self.data_dir.join("oci/state")
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("instances").join(id)
    }

    /// The image's rootfs with its owners shifted into the id range starting at `base`.
    fn shifted_rootfs_dir(&self, image_id: &str, base: u32) -> PathBuf {
        self.data_dir
            .join("rootfs")
            .join(format!("{image_id}.u{base}"))
    }

    /// The image's unpacked rootfs (and its shifted copies) can be removed when the image
    /// is; instances still using it keep working only while their overlay is mounted, so
    /// callers check first.
    pub fn remove_rootfs(&self, image_id: &str) -> Result<()> {
        let mut doomed = vec![self.rootfs_dir(image_id)];
        let prefix = format!("{image_id}.u");
        if let Ok(rd) = std::fs::read_dir(self.data_dir.join("rootfs")) {
            doomed.extend(
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path()),
            );
        }
        for d in doomed {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("remove rootfs", image_id, d.display(), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The runtime reaches the instance's root from inside its user namespace, as host id
    /// `base`: every directory above `instances/` must let others through (x). A data dir
    /// below a 0700 directory (`/root`, pytest's temporary dirs) would fail in the runtime
    /// with EACCES; say so before anything is made.
    fn check_traversable(&self, id: &str, base: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        for a in dir.ancestors() {
            let Ok(m) = std::fs::metadata(a) else {
                continue;
            };
            if m.permissions().mode() & 0o001 == 0 {
                return Err(DriverError::HostNotReady {
                    driver: "oci",
                    reason: format!(
                        "instance {id}: its root runs as the unprivileged host id {base}, which \
                         cannot pass through {} (mode {:o}) to reach the data dir {}; put the \
                         data dir below world-traversable directories (e.g. /var/lib/vfarm), or \
                         run the instance privileged (admins only)",
                        a.display(),
                        m.permissions().mode() & 0o777,
                        dir.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Give the instance's own directory and its writable layer to the instance's root
    /// (host id `base`): the runtime reaches the rootfs from inside the user namespace, and
    /// nobody else on the host gets into the directory (0700).
    fn own_instance_dirs(&self, rec_spec: &InstanceSpec, rootfs: &Path) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let id = &rec_spec.id;
        let dir = self.instance_dir(id);
        let base = if rec_spec.user_namespace {
            rec_spec.id_base
        } else {
            0
        };
        std::os::unix::fs::chown(&dir, Some(base), Some(base))
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| io_err("prepare", id, dir.display(), e))?;
        // The upper dir's owner and mode are those of the instance's `/`.
        let upper = dir.join("upper");
        let root_meta =
            std::fs::metadata(rootfs).map_err(|e| io_err("prepare", id, rootfs.display(), e))?;
        std::os::unix::fs::chown(&upper, Some(root_meta.uid()), Some(root_meta.gid()))
            .and_then(|_| {
                std::fs::set_permissions(
                    &upper,
                    std::fs::Permissions::from_mode(root_meta.mode() & 0o7777),
                )
            })
            .map_err(|e| io_err("prepare", id, upper.display(), e))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("runtime.json")
    }

    fn load(&self, id: &str) -> Result<Record> {
        crate::record::load(&self.record_path(id), id)
    }

    fn save(&self, rec: &Record) -> Result<()> {
        crate::record::save(&self.record_path(&rec.id), &rec.id, rec)
    }

    fn lock(&self, id: &str) -> Result<Lock> {
        let p = self.instance_dir(id).join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DriverError::NotFound {
                    kind: "instance",
                    id: id.to_string(),
                },
                _ => io_err("lock", id, p.display(), e),
            })?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", id, p.display(), e.into()))?;
        Ok(Lock(f))
    }

    /// Lock the instance, then read its record (in that order, so the record is current).
    fn locked(&self, id: &str) -> Result<(Lock, Record)> {
        validate_id(id)?;
        let l = self.lock(id)?;
        Ok((l, self.load(id)?))
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("run")
    }

    fn runtime_has(&self, id: &str) -> bool {
        // runc and crun both keep one directory per container under --root.
        self.runtime_root().join(id).exists()
    }

    /// The runtime's own view: `running`, `paused`, `created`, `stopped`, or `None` if it has
    /// no such container.
    fn runtime_status(&self, rt: &Runtime, id: &str) -> Option<String> {
        let out = rt
            .command(&self.runtime_root())
            .args(["state", id])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    fn exit_code(&self, id: &str) -> Option<i32> {
        let s = std::fs::read_to_string(self.run_dir(id).join("exit")).ok()?;
        s.trim().parse().ok()
    }

    fn supervisor_alive(&self, rec: &Record) -> bool {
        if let Some(p) = rec.supervisor {
            return crate::process::start_time(p.pid) == Some(p.start_time);
        }
        // The process that started it died before recording it: trust the pid file alone.
        std::fs::read_to_string(self.run_dir(&rec.id).join("supervisor.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|pid| crate::process::start_time(pid).is_some())
    }

    fn observe_rec(&self, rec: &Record) -> Observed {
        let id = &rec.id;
        let paused_marker = self.run_dir(id).join("paused").exists();
        if self.supervisor_alive(rec) {
            if paused_marker {
                // Someone may have resumed it behind our back; the runtime knows.
                return match self.runtime_status(&rec.runtime, id).as_deref() {
                    Some("paused") => Observed::Paused,
                    _ => Observed::Running,
                };
            }
            return Observed::Running;
        }
        // The supervisor is gone. A container may still run if only the runtime process was
        // killed; the runtime's state decides.
        if self.runtime_has(id) {
            match self.runtime_status(&rec.runtime, id).as_deref() {
                Some("running") => return Observed::Running,
                Some("paused") => return Observed::Paused,
                _ => {}
            }
        }
        if let Some(code) = self.exit_code(id) {
            return Observed::Exited { code };
        }
        let ever_started = rec.started || self.run_dir(id).join("supervisor.pid").exists();
        if ever_started {
            Observed::Lost
        } else {
            Observed::Created
        }
    }

    fn lowers(&self, rec: &Record) -> Vec<PathBuf> {
        let layers = self.instance_dir(&rec.id).join("layers");
        rec.layers
            .iter()
            .map(|l| layers.join(l))
            .chain(std::iter::once(rec.rootfs.clone()))
            .collect()
    }

    fn ensure_mounted(&self, rec: &Record) -> Result<()> {
        let dir = self.instance_dir(&rec.id);
        let target = dir.join("bundle/rootfs");
        if hostfs::is_mounted(&target) {
            return Ok(());
        }
        let work = dir.join("work");
        if rec.spec.volatile && work.join("work/incompat/volatile").exists() {
            // A volatile overlay that was never unmounted (host crash): the kernel refuses
            // it until the marker is gone. Its upper dir is kept as it is; a disposable
            // instance promised no more.
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir(&work).map_err(|e| io_err("mount", &rec.id, work.display(), e))?;
        }
        hostfs::mount_overlay(
            &rec.id,
            &self.lowers(rec),
            &dir.join("upper"),
            &work,
            &target,
            rec.spec.volatile,
        )
    }

    fn unmount_rootfs(&self, id: &str) -> Result<()> {
        hostfs::unmount_all(id, &self.instance_dir(id).join("bundle/rootfs"))
    }

    fn start_locked(&self, rec: &mut Record) -> Result<()> {
        let id = rec.id.clone();
        if matches!(self.observe_rec(rec), Observed::Running | Observed::Paused) {
            return Ok(());
        }
        if self.runtime_has(&id) {
            // Left by a runtime that was killed: its container is gone (checked above).
            let _ = rec
                .runtime
                .call(&self.runtime_root(), "start", &id, &["delete", "-f", &id]);
        }
        self.ensure_mounted(rec)?;
        let run = self.run_dir(&id);
        for f in ["exit", "container.pid", "supervisor.pid", "paused"] {
            let _ = std::fs::remove_file(run.join(f));
        }
        rec.supervisor = None;
        rec.started = true;
        self.save(rec)?;
        let dir = self.instance_dir(&id);
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", SUPERVISOR, "vfarm-supervisor"])
            .arg(&run)
            .arg(&rec.runtime.path)
            .arg(self.runtime_root())
            .arg(dir.join("bundle"))
            .arg(&id)
            .arg(dir.join("stdout.log"))
            .arg(dir.join("stderr.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| DriverError::HostNotReady {
                driver: "oci",
                reason: format!(
                    "cannot run setsid (util-linux) to detach the instance supervisor: {e}"
                ),
            })?;
        if !status.success() {
            return Err(DriverError::Backend {
                op: "start",
                id,
                detail: format!("setsid failed ({status})"),
                retryable: true,
                source: None,
            });
        }
        let mut backoff = crate::Backoff::default();
        loop {
            let started = run.join("container.pid").exists();
            if started || self.exit_code(&id).is_some() {
                if !started {
                    return Err(DriverError::Backend {
                        op: "start",
                        id: id.clone(),
                        detail: format!(
                            "the runtime could not start the container: {}",
                            self.stderr_tail(&id)
                        ),
                        retryable: false,
                        source: None,
                    });
                }
                break;
            }
            if backoff.elapsed() > START_TIMEOUT {
                return Err(DriverError::Backend {
                    op: "start",
                    id: id.clone(),
                    detail: format!(
                        "container not started after {START_TIMEOUT:?}: {}",
                        self.stderr_tail(&id)
                    ),
                    retryable: true,
                    source: None,
                });
            }
            backoff.sleep();
        }
        if let Some(pid) = std::fs::read_to_string(run.join("supervisor.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if let Some(start_time) = crate::process::start_time(pid) {
                rec.supervisor = Some(Proc { pid, start_time });
            }
        }
        self.save(rec)
    }

    /// The last line the runtime (or the command) wrote to stderr, for error messages.
    fn stderr_tail(&self, id: &str) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.instance_dir(id).join("stderr.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no output)")
            .trim()
            .to_string()
    }

    fn signal(&self, rt: &Runtime, id: &str, sig: &str) {
        // Signal the container's init directly when we can prove the pid is still it (it sits
        // in the instance's cgroup): a runtime `kill` costs a process start of the runtime,
        // which is most of a revert's stop. Otherwise let the runtime do it.
        let signal = match sig {
            "KILL" => Some(rustix::process::Signal::KILL),
            "TERM" => Some(rustix::process::Signal::TERM),
            _ => None,
        };
        let pid = std::fs::read_to_string(self.run_dir(id).join("container.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|cg| cg.lines().any(|l| l.ends_with(&format!("/vfarm/{id}"))))
            })
            .and_then(rustix::process::Pid::from_raw);
        if let (Some(pid), Some(signal)) = (pid, signal) {
            if rustix::process::kill_process(pid, signal).is_ok() {
                return;
            }
        }
        // "container not running" races are fine: we wait for the exit either way.
        let _ = rt.call(&self.runtime_root(), "stop", id, &["kill", id, sig]);
    }

    /// Whether the container's init has a SIGTERM handler (true when unknown).
    fn init_catches_term(&self, id: &str) -> bool {
        let Some(pid) = std::fs::read_to_string(self.run_dir(id).join("container.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return true;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return true;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_none_or(|mask| mask & (1 << (15 - 1)) != 0)
    }

    fn wait_exit(&self, rec: &Record, timeout: Duration) -> Observed {
        let mut backoff = crate::Backoff::default();
        loop {
            let o = self.observe_rec(rec);
            if !matches!(o, Observed::Running | Observed::Paused) || backoff.elapsed() >= timeout {
                return o;
            }
            backoff.sleep();
        }
    }

    fn stop_locked(&self, rec: &Record, mode: StopMode) -> Result<Observed> {
        let id = &rec.id;
        let o = self.observe_rec(rec);
        if !matches!(o, Observed::Running | Observed::Paused) {
            return Ok(o);
        }
        let paused = o == Observed::Paused;
        let (sig, timeout) = match mode {
            // An init that does not catch SIGTERM never sees it (the kernel drops signals to a
            // pid namespace's init that has no handler): waiting would only waste the timeout.
            StopMode::Graceful { .. } if !self.init_catches_term(id) => ("KILL", KILL_TIMEOUT),
            StopMode::Graceful { timeout } => ("TERM", timeout),
            StopMode::Kill => ("KILL", KILL_TIMEOUT),
        };
        self.signal(&rec.runtime, id, sig);
        if paused {
            // A frozen process only acts on the signal once thawed.
            let _ = rec
                .runtime
                .call(&self.runtime_root(), "stop", id, &["resume", id]);
        }
        let _ = std::fs::remove_file(self.run_dir(id).join("paused"));
        let mut o = self.wait_exit(rec, timeout);
        if matches!(o, Observed::Running | Observed::Paused) && sig != "KILL" {
            self.signal(&rec.runtime, id, "KILL");
            o = self.wait_exit(rec, KILL_TIMEOUT);
        }
        if matches!(o, Observed::Running | Observed::Paused) {
            return Err(DriverError::Backend {
                op: "stop",
                id: id.clone(),
                detail: format!("still running {KILL_TIMEOUT:?} after SIGKILL"),
                retryable: true,
                source: None,
            });
        }
        Ok(o)
    }

    fn snapshot_names_ok(name: &str) -> Result<()> {
        if name.is_empty()
            || name.len() > 64
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(DriverError::InvalidSpec {
                field: "snapshot name",
                reason: format!("`{name}` must be 1-64 characters of A-Z a-z 0-9 . - _, not starting with a dot"),
            });
        }
        Ok(())
    }

    /// Move `upper` and `work` aside and make empty ones; the old ones are deleted in the
    /// background. Returns the directory they were moved to (already scheduled for removal).
    fn fresh_upper(&self, rec: &Record, keep_upper_as: Option<&Path>) -> Result<()> {
        let id = rec.id.as_str();
        let dir = self.instance_dir(id);
        let trash = dir
            .join("trash")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&trash).map_err(|e| io_err("snapshot", id, trash.display(), e))?;
        let upper = dir.join("upper");
        let dest = keep_upper_as
            .map(Path::to_path_buf)
            .unwrap_or_else(|| trash.join("upper"));
        std::fs::rename(&upper, &dest).map_err(|e| io_err("snapshot", id, upper.display(), e))?;
        std::fs::rename(dir.join("work"), trash.join("work"))
            .map_err(|e| io_err("snapshot", id, "work dir", e))?;
        std::fs::create_dir(&upper).map_err(|e| io_err("snapshot", id, upper.display(), e))?;
        std::fs::create_dir(dir.join("work")).map_err(|e| io_err("snapshot", id, "work dir", e))?;
        self.own_instance_dirs(&rec.spec, &rec.rootfs)?;
        // Ours and any left by an interrupted earlier deletion, in one background process.
        if let Ok(rd) = std::fs::read_dir(&trash) {
            let doomed: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            hostfs::remove_in_background(&doomed);
        }
        Ok(())
    }

    fn gc_layers(&self, rec: &Record) {
        let layers = self.instance_dir(&rec.id).join("layers");
        let Ok(rd) = std::fs::read_dir(&layers) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let used =
                rec.layers.contains(&name) || rec.snapshots.iter().any(|s| s.chain.contains(&name));
            if !used {
                hostfs::remove_in_background(&[e.path()]);
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Driver for OciDriver {
    fn kind(&self) -> &'static str {
        "oci"
    }

    fn probe(&self) -> Result<ProbeReport> {
        let mut notes = Vec::new();
        let r = runtime::select(
            &self.choice,
            &self.data_dir.join("oci/probe"),
            &mut notes,
            true,
        );
        Ok(ProbeReport {
            driver: "oci",
            usable: r.is_ok(),
            backend: r.map(|r| r.version).unwrap_or_default(),
            notes: if notes.is_empty() {
                self.notes.clone()
            } else {
                notes
            },
        })
    }

    fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        let config = bundle::render(spec)?;
        let tar = spec
            .image
            .files
            .iter()
            .find(|f| f.format == vfarm_core::Format::Tar)
            .ok_or_else(|| DriverError::InvalidSpec {
                field: "image",
                reason: format!(
                    "image {} has no tar (rootfs) artifact; the oci driver runs rootfs trees",
                    spec.image.id
                ),
            })?;
        let id = &spec.id;
        match self.load(id) {
            Ok(rec) if rec.spec == *spec => return Ok(()),
            Ok(_) => {
                return Err(DriverError::InvalidSpec {
                    field: "id",
                    reason: format!("instance `{id}` is already prepared with a different spec"),
                })
            }
            Err(DriverError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // The image id names a directory: plain characters only.
        let iid = &spec.image.id;
        if iid.is_empty()
            || iid.len() > 128
            || !iid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(DriverError::InvalidSpec {
                field: "image",
                reason: format!("image id `{iid}` is not a plain name"),
            });
        }
        // Unpacked images carry the distribution's set-uid-root files: the host's other
        // users have no business below `rootfs/` (0700); `instances/` is traversable only
        // (0711), each instance's own directory being 0700.
        for (d, mode) in [("rootfs", 0o700), ("instances", 0o711)] {
            let p = self.data_dir.join(d);
            std::fs::create_dir_all(&p)
                .and_then(|_| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| io_err("prepare", id, p.display(), e))?;
        }
        if spec.user_namespace && spec.id_base != 0 {
            self.check_traversable(id, spec.id_base)?;
        }
        let plain = self.rootfs_dir(&spec.image.id);
        hostfs::unpack_rootfs(&tar.path, &plain, &spec.image.id)?;
        let rootfs = if spec.user_namespace && spec.id_base != 0 {
            let shifted = self.shifted_rootfs_dir(&spec.image.id, spec.id_base);
            hostfs::shift_rootfs(&plain, &shifted, spec.id_base, &spec.image.id)?;
            shifted
        } else {
            plain
        };
        let dir = self.instance_dir(id);
        for d in ["bundle/rootfs", "upper", "work", "layers", "run", "trash"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| io_err("prepare", id, p.display(), e))?;
        }
        self.own_instance_dirs(spec, &rootfs)?;
        std::fs::create_dir_all(self.runtime_root())
            .map_err(|e| io_err("prepare", id, "runtime root", e))?;
        config
            .save(dir.join("bundle/config.json"))
            .map_err(|e| DriverError::Backend {
                op: "prepare",
                id: id.clone(),
                detail: format!("cannot write config.json: {e}"),
                retryable: false,
                source: None,
            })?;
        for log in ["stdout.log", "stderr.log"] {
            File::create(dir.join(log)).map_err(|e| io_err("prepare", id, log, e))?;
        }
        // The record goes last: its presence means "prepared". Cleanup does not need it.
        self.save(&Record {
            version: RECORD_VERSION,
            driver: "oci".into(),
            id: id.clone(),
            spec: spec.clone(),
            runtime: self.runtime.clone(),
            rootfs,
            layers: Vec::new(),
            snapshots: Vec::new(),
            started: false,
            supervisor: None,
        })
    }

    fn start(&self, id: &str) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        self.start_locked(&mut rec)
    }

    fn stop(&self, id: &str, mode: StopMode) -> Result<Observed> {
        let (_l, rec) = self.locked(id)?;
        self.stop_locked(&rec, mode)
    }

    fn observe(&self, id: &str) -> Result<Observed> {
        let rec = self.load(id)?;
        Ok(self.observe_rec(&rec))
    }

    fn cleanup(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let dir = self.instance_dir(id);
        let _l = if dir.is_dir() {
            Some(self.lock(id)?)
        } else {
            None
        };
        // The runtime that made the container, if the record survived.
        let rt = self
            .load(id)
            .map(|r| r.runtime)
            .unwrap_or_else(|_| self.runtime.clone());
        if self.runtime_has(id) {
            // Kills whatever still runs and removes the runtime's state and cgroups.
            let _ = rt.call(&self.runtime_root(), "destroy", id, &["delete", "-f", id]);
        }
        // Let the supervisor see its runtime return, so nothing writes into the instance dir
        // while it is removed.
        if let Ok(rec) = self.load(id) {
            let begun = Instant::now();
            while self.supervisor_alive(&rec) && begun.elapsed() < KILL_TIMEOUT {
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Some(p) = rec.supervisor.filter(|_| self.supervisor_alive(&rec)) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(p.pid as i32).expect("recorded pid is positive"),
                    rustix::process::Signal::KILL,
                );
            }
        }
        if self.runtime_has(id) {
            rt.call(&self.runtime_root(), "destroy", id, &["delete", "-f", id])?;
        }
        hostfs::unmount_all(id, &dir)?;
        // Move the directory out of the way (instant) and delete it in the background: the
        // deletion of a large upper dir must not hold up the caller. Leftovers of an
        // interrupted deletion are retried by the next cleanup.
        let trash = self.data_dir.join("oci/trash");
        let _ = std::fs::create_dir_all(&trash);
        let doomed = trash.join(format!("{id}-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                // Another file system, say: delete in place.
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| io_err("destroy", id, dir.display(), e))?;
            }
        }
        // Ours and any left by an interrupted earlier deletion, in one background process.
        if let Ok(rd) = std::fs::read_dir(&trash) {
            let doomed: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            hostfs::remove_in_background(&doomed);
        }
        // A runtime killed between creating cgroups and recording the container leaves empty
        // cgroup directories that no `delete` knows about.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in rd.flatten() {
                let _ = std::fs::remove_dir(ctl.path().join("vfarm").join(id));
            }
        }
        Ok(())
    }

    fn logs(&self, id: &str) -> Result<LogFiles> {
        self.load(id)?;
        let dir = self.instance_dir(id);
        Ok(LogFiles {
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
        })
    }

    fn list(&self) -> Result<Vec<String>> {
        let dir = self.data_dir.join("instances");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", "*", dir.display(), e)),
        };
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| self.load(id).is_ok_and(|r| r.driver == "oci"))
            .collect();
        ids.sort();
        Ok(ids)
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
    fn stats(&self) -> Option<&dyn crate::Stats> {
        Some(self)
    }
}

impl crate::Stats for OciDriver {
    fn usage(&self, id: &str) -> Result<crate::Usage> {
        validate_id(id)?;
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let Some(mut u) = usage::cgroup_usage(Path::new("/sys/fs/cgroup"), id, host_cpus) else {
            let rec = self.load(id)?;
            return Err(not_running("stats", id, self.observe_rec(&rec)));
        };
        let pid = std::fs::read_to_string(self.run_dir(id).join("container.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some((rx, tx)) = pid.and_then(usage::net_of) {
            (u.net_rx_bytes, u.net_tx_bytes) = (Some(rx), Some(tx));
        }
        Ok(u)
    }
}

impl Files for OciDriver {
    fn copy_in(&self, id: &str, src: &Path, dst: &str) -> Result<()> {
        crate::validate_instance_path("destination", dst)?;
        let (_l, rec) = self.locked(id)?;
        // The overlay is mounted from prepare until cleanup (also after the main process
        // ended), but a host reboot unmounts it: mount again if needed.
        self.ensure_mounted(&rec)?;
        // Copied files belong to the instance's root, as if it had written them.
        let owner = (rec.spec.user_namespace && rec.spec.id_base != 0).then_some(rec.spec.id_base);
        files::copy_in(
            id,
            &self.instance_dir(id).join("bundle/rootfs"),
            src,
            dst,
            owner,
        )
    }

    fn copy_out(&self, id: &str, src: &str, dst: &Path) -> Result<()> {
        crate::validate_instance_path("source", src)?;
        let (_l, rec) = self.locked(id)?;
        self.ensure_mounted(&rec)?;
        files::copy_out(id, &self.instance_dir(id).join("bundle/rootfs"), src, dst)
    }
}

fn not_running(op: &'static str, id: &str, o: Observed) -> DriverError {
    DriverError::Backend {
        op,
        id: id.to_string(),
        detail: format!("instance is {o}, not running"),
        retryable: false,
        source: None,
    }
}

impl Pausable for OciDriver {
    fn pause(&self, id: &str) -> Result<()> {
        let (_l, rec) = self.locked(id)?;
        match self.observe_rec(&rec) {
            Observed::Paused => return Ok(()),
            Observed::Running => {}
            o => return Err(not_running("pause", id, o)),
        }
        rec.runtime
            .call(&self.runtime_root(), "pause", id, &["pause", id])?;
        File::create(self.run_dir(id).join("paused"))
            .map_err(|e| io_err("pause", id, "paused marker", e))?;
        Ok(())
    }

    fn resume(&self, id: &str) -> Result<()> {
        let (_l, rec) = self.locked(id)?;
        match self.observe_rec(&rec) {
            Observed::Running => return Ok(()),
            Observed::Paused => {}
            o => return Err(not_running("resume", id, o)),
        }
        rec.runtime
            .call(&self.runtime_root(), "resume", id, &["resume", id])?;
        let _ = std::fs::remove_file(self.run_dir(id).join("paused"));
        Ok(())
    }
}

impl OciDriver {
    /// `runc exec` for `argv`, ready to spawn or run.
    fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        io: ExecIo,
        pid_file: Option<&Path>,
    ) -> Result<(Command, PathBuf)> {
        let rec = self.load(id)?;
        match self.observe_rec(&rec) {
            Observed::Running => {}
            o => return Err(not_running("exec", id, o)),
        }
        if argv.is_empty() {
            return Err(DriverError::InvalidSpec {
                field: "command",
                reason: "exec needs a command".into(),
            });
        }
        let mut c = rec.runtime.command(&self.runtime_root());
        c.arg("exec");
        if let Some(p) = pid_file {
            c.arg("--pid-file").arg(p);
        }
        for (k, v) in env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg(id)
            .args(argv)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr);
        Ok((c, rec.runtime.path.clone()))
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Exec for OciDriver {
    fn exec(&self, id: &str, argv: &[String], env: &[(String, String)], io: ExecIo) -> Result<i32> {
        let (mut c, runtime) = self.exec_command(id, argv, env, io, None)?;
        let status = c.status().map_err(|e| DriverError::HostNotReady {
            driver: "oci",
            reason: format!("cannot run {}: {e}", runtime.display()),
        })?;
        Ok(exit_code(status))
    }

    /// The exec'd process is killed (SIGKILL, by the pid runc records) when `stop` is
    /// reached: killing `runc exec` alone would leave it running in the container.
    fn exec_until(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        io: ExecIo,
        stop: &ExecStop,
    ) -> Result<Option<i32>> {
        let pid_file = self
            .instance_dir(id)
            .join(format!("exec-{}.pid", uuid::Uuid::new_v4().simple()));
        let (mut c, runtime) = self.exec_command(id, argv, env, io, Some(&pid_file))?;
        let mut child = c.spawn().map_err(|e| DriverError::HostNotReady {
            driver: "oci",
            reason: format!("cannot run {}: {e}", runtime.display()),
        })?;
        // The command holds the other ends of the caller's pipes: close them here, so
        // readers see the end of output when the process ends.
        drop(c);
        let result = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(Some(exit_code(status))),
                Ok(None) => {}
                Err(e) => {
                    break Err(DriverError::Backend {
                        op: "exec",
                        id: id.to_string(),
                        detail: format!("cannot wait for {}: {e}", runtime.display()),
                        retryable: false,
                        source: Some(e),
                    })
                }
            }
            if stop.reached() {
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = std::fs::remove_file(&pid_file);
        result
    }
}

impl Snapshots for OciDriver {
    fn create(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        Self::snapshot_names_ok(name)?;
        let (_l, mut rec) = self.locked(id)?;
        if rec.snapshots.iter().any(|s| s.name == name) {
            return Err(DriverError::InvalidSpec {
                field: "snapshot name",
                reason: format!("instance `{id}` already has a snapshot `{name}`"),
            });
        }
        let dir = self.instance_dir(id);
        let layer = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let layer_dir = dir.join("layers").join(&layer);
        let chain = match self.observe_rec(&rec) {
            o @ (Observed::Running | Observed::Paused) => {
                // Freeze so the copy is one consistent point in time.
                let we_paused = o == Observed::Running;
                if we_paused {
                    rec.runtime
                        .call(&self.runtime_root(), "snapshot", id, &["pause", id])?;
                }
                let tmp = dir.join("layers").join(format!(".{layer}"));
                let out = Command::new("cp")
                    .args(["-a", "--reflink=auto"])
                    .arg(dir.join("upper"))
                    .arg(&tmp)
                    .stdin(Stdio::null())
                    .output();
                if we_paused {
                    rec.runtime
                        .call(&self.runtime_root(), "snapshot", id, &["resume", id])?;
                }
                let out = out.map_err(|e| io_err("snapshot", id, "cp", e))?;
                if !out.status.success() {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(DriverError::Backend {
                        op: "snapshot",
                        id: id.to_string(),
                        detail: format!(
                            "copying the upper dir failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                        retryable: false,
                        source: None,
                    });
                }
                std::fs::rename(&tmp, &layer_dir)
                    .map_err(|e| io_err("snapshot", id, layer_dir.display(), e))?;
                std::iter::once(layer.clone())
                    .chain(rec.layers.iter().cloned())
                    .collect::<Vec<_>>()
            }
            _ => {
                // Stopped: the upper dir itself becomes the layer, and both the instance and
                // the snapshot stack on it.
                self.unmount_rootfs(id)?;
                self.fresh_upper(&rec, Some(&layer_dir))?;
                rec.layers.insert(0, layer.clone());
                rec.layers.clone()
            }
        };
        rec.snapshots.push(SnapRecord {
            name: name.to_string(),
            chain,
            created: now_secs(),
        });
        self.save(&rec)?;
        Ok(SnapshotInfo {
            name: name.to_string(),
            size: hostfs::tree_size(&layer_dir),
        })
    }

    fn revert(&self, id: &str, name: &str) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        let snap = rec
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| DriverError::NotFound {
                kind: "snapshot",
                id: format!("{id}/{name}"),
            })?;
        // Processes are discarded with the files they wrote: kill, don't wait.
        let was_running = matches!(self.observe_rec(&rec), Observed::Running | Observed::Paused);
        if was_running {
            self.stop_locked(&rec, StopMode::Kill)?;
        }
        self.unmount_rootfs(id)?;
        self.fresh_upper(&rec, None)?;
        rec.layers = snap.chain;
        self.save(&rec)?;
        self.gc_layers(&rec);
        if was_running {
            self.start_locked(&mut rec)?;
        }
        Ok(())
    }

    fn remove(&self, id: &str, name: &str) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        let before = rec.snapshots.len();
        rec.snapshots.retain(|s| s.name != name);
        if rec.snapshots.len() == before {
            return Err(DriverError::NotFound {
                kind: "snapshot",
                id: format!("{id}/{name}"),
            });
        }
        self.save(&rec)?;
        self.gc_layers(&rec);
        Ok(())
    }

    fn list(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        let rec = self.load(id)?;
        let layers = self.instance_dir(id).join("layers");
        Ok(rec
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                size: s
                    .chain
                    .first()
                    .map(|l| hostfs::tree_size(&layers.join(l)))
                    .unwrap_or(0),
            })
            .collect())
    }
}
