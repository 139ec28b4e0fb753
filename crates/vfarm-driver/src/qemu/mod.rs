//! The `qemu` driver: an instance is a full VM run by QEMU in the fast profile (microvm,
//! direct kernel boot with vfarm-qemu's busybox initramfs, qemu-ga as the guest's PID 1, a
//! qcow2 overlay on the image's disk), under KVM when it really works and TCG otherwise.
//!
//! # Layout (under the data dir)
//!
//! ```text
//! qemu/probe/                       the KVM probe's verdict cache (per host boot)
//! qemu/initramfs/                   fast-boot initramfs archives, one per kernel version
//! qemu/instances/<id>/runtime.json  the runtime record (see `Record`)
//!                     disk.qcow2    overlay on the image's disk, holding the snapshots
//!                     console.log   the serial console (appended across boots)
//!                     qemu.pid      QEMU's pidfile while it runs
//!                     qmp.sock qga.sock   (or in a short directory under the system temp
//!                                   dir when the instance dir's path is too long for a
//!                                   unix socket address, 108 bytes)
//!                     lock          held by mutating operations
//! ```
//!
//! # Process model
//!
//! QEMU runs daemonized (its parent is init), so it outlives the CLI or service that started
//! it. The record holds the whole `VmConfig` (so the same VM can be started again or
//! restored from a checkpoint) and the QEMU process; any later process finds QEMU again
//! through the pidfile, checked against `/proc/<pid>/cmdline`, and asks QMP for the run state.
//! The guest's "main process" is the VM itself: commands run through the guest agent
//! (`exec`), and `InstanceSpec::command` must be empty.
//!
//! # Snapshots: internal qcow2 snapshots of the overlay
//!
//! A snapshot of a running VM is `savevm` (guest memory + device state + disk, taken while
//! the guest's file systems are frozen through the agent, so its disk part is also clean on
//! its own); a snapshot of a stopped VM is `qemu-img snapshot -c` (disk only). Reverting a
//! running VM to a snapshot with memory is `loadvm`: the guest continues from the snapshot
//! point without a reboot, and its processes are the snapshot's. Reverting anything else
//! kills QEMU, applies the snapshot with `qemu-img snapshot -a` and, if the VM ran, boots it
//! again. Either way the disk switch is a change of qcow2 metadata (the L1 table and
//! refcounts), so its cost depends on how much the overlay holds, not on the disk size; a
//! memory revert additionally reads the guest RAM that was in use at the snapshot. External
//! overlays were not chosen: a revert would have to re-open the disk chain in a running QEMU
//! (or restart it) and a memory revert would still need a saved state somewhere.
//!
//! # Checkpoints
//!
//! [`QemuDriver::checkpoint`] pauses the CPUs, takes an internal disk snapshot
//! (`blockdev-snapshot-internal-sync`) and writes memory + device state to a file through a
//! migration to `exec:`; [`QemuDriver::restore`] applies that disk snapshot and starts QEMU
//! with `-incoming` from the file, so memory and disk are again the same instant.

mod errors;
mod files;
mod full;
mod migrate;
mod stats;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vfarm_qemu::probe::{choose_accel, ProbeConfig};
use vfarm_qemu::profile::{fast_append, host_tsc_khz};
use vfarm_qemu::qga::{ExecRequest, ExecStatus, ExitKind};
use vfarm_qemu::tools::{Tool, BUSYBOX_STATIC, QEMU_IMG, QEMU_SYSTEM_X86_64};
use vfarm_qemu::{
    build_args, create_overlay, fast_initramfs, fast_vm_config, spawn_daemonized, DiskFormat,
    GuestAgent, InitramfsRequest, KillOnDrop, QemuProcess, Qmp, RunFiles, StaticIp, TapNet,
    UserNet, VmConfig,
};

pub use full::{NetStats, SshInfo};
pub use migrate::{
    Carried, Incoming, IncomingOptions, MigrateOptions, MigrationReport, MigrationSource,
    SendOptions, SendReport, Storage, DEFAULT_BANDWIDTH, SWITCHOVER_TIMEOUT,
};
pub use stats::{BlockStats, VmStats};
/// The accelerator wanted (`Auto`, `Kvm`, `Tcg`) and the one used.
pub use vfarm_qemu::cloudinit::DEFAULT_USER;
pub use vfarm_qemu::{Accel, AccelChoice};

use crate::{
    validate_id, BootProfile, Driver, DriverError, Exec, ExecIo, InstanceSpec, LogFiles, Network,
    Observed, Pausable, ProbeReport, Result, SnapshotInfo, Snapshots, StopMode,
};
use errors::{classify, io_err, not_running, DRIVER};

const RECORD_VERSION: u32 = 1;
/// One QMP exchange (status, stop, cont, quit).
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// One guest agent exchange; the agent of a TCG guest under load can be slow.
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);
/// savevm / loadvm / a checkpoint write or read all of the guest's used RAM.
const STATE_TIMEOUT: Duration = Duration::from_secs(300);
/// From QEMU's start until the guest agent answers. A TCG boot takes seconds; the bound only
/// turns a guest that never comes up into an error.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_MEMORY_MIB: u64 = 512;
/// Below this the image's kernel and the agent do not come up.
const MIN_MEMORY_MIB: u64 = 64;
/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// An environment for commands when the caller gives any variables: the agent replaces its
/// whole environment with the list it is given.
const BASE_ENV: [(&str, &str); 2] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];
/// How long an ended QEMU's disk lock may take to go away.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of a VM ended by SIGKILL (`128 + 9`, like a shell reports it).
const KILLED: i32 = 137;
/// Exit code of a VM ended by QMP `quit` when the guest could not be asked to flush its file
/// systems first (`128 + SIGTERM`: ended from outside, but QEMU itself exited cleanly).
const QUIT_WITHOUT_GUEST: i32 = 143;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapRecord {
    name: String,
    created: u64,
    /// Taken with `savevm` (memory + devices + disk) rather than disk only.
    vm_state: bool,
    /// The guest's file systems were frozen at the snapshot: thaw them after a `loadvm`.
    frozen: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CheckpointRecord {
    path: PathBuf,
    /// The internal disk snapshot holding the disk at the checkpoint's instant.
    disk_snapshot: String,
    created: u64,
}

/// The per-instance runtime record, `qemu/instances/<id>/runtime.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    version: u32,
    driver: String,
    id: String,
    spec: InstanceSpec,
    /// The accelerator chosen at prepare time, and the notice when KVM was wanted but not
    /// usable.
    accel: Accel,
    accel_note: Option<String>,
    /// Everything QEMU is started with; sockets, pidfile, console log and disk paths included.
    vm: VmConfig,
    /// The image's disk the overlay is backed by.
    base: PathBuf,
    /// A directory of its own holding the sockets when the instance dir's path is too long.
    sock_dir: Option<PathBuf>,
    /// Ever started (distinguishes "created" from "lost").
    started: bool,
    process: Option<QemuProcess>,
    /// How the last run ended when the driver ended it.
    exit: Option<i32>,
    /// Length of the console log when the current run started (only later output is
    /// searched for a kernel panic).
    console_offset: u64,
    snapshots: Vec<SnapRecord>,
    checkpoints: Vec<CheckpointRecord>,
    /// Set for the full boot profile (systemd, cloud-init, sshd): its SSH port and login.
    #[serde(default)]
    full: Option<full::FullRecord>,
    /// Set while a live migration moves the instance in or out (see `migrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migration: Option<migrate::MigrationMark>,
}

/// What the CLI shows about a VM instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub accel: Accel,
    /// Set when KVM was wanted but is unusable here, so TCG emulation is used.
    pub accel_note: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    pub qga_socket: Option<PathBuf>,
    pub pid: Option<i32>,
    pub profile: crate::BootProfile,
    /// How to log in (full profile).
    pub ssh: Option<SshInfo>,
}

/// What a VM does once its checkpoint is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCheckpoint {
    /// Keep running (or stay paused, if it was).
    Continue,
    /// End QEMU: the checkpoint is the VM's state from now on.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    /// Bytes of the state file (memory in use + device state).
    pub size: u64,
    /// How long the guest's CPUs were stopped for it.
    pub elapsed: Duration,
}

/// An exclusive per-instance lock held for one mutating operation, so two processes (CLI and
/// service) cannot interleave e.g. a revert and a start.
struct Lock(#[allow(dead_code)] File);

pub struct QemuDriver {
    /// `<data dir>/qemu`.
    root: PathBuf,
    choice: AccelChoice,
    boot_timeout: Duration,
}

impl QemuDriver {
    /// A driver keeping its state under `<data_dir>/qemu`. Nothing is probed yet: the KVM
    /// probe needs a kernel and runs (once per host boot, then cached) at the first `prepare`
    /// or `probe`. A driver made later over the same data dir re-attaches to running VMs.
    pub fn new(data_dir: &Path, accel: AccelChoice) -> QemuDriver {
        QemuDriver {
            root: data_dir.join("qemu"),
            choice: accel,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
        }
    }

    /// How long `start` waits for the guest agent before giving up on the boot.
    pub fn with_boot_timeout(mut self, t: Duration) -> QemuDriver {
        self.boot_timeout = t;
        self
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.root.join("instances").join(id)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("runtime.json")
    }

    /// The record of a normal instance: one under migration answers "migrating".
    fn load(&self, id: &str) -> Result<Record> {
        let rec = self.load_raw(id)?;
        migrate::refuse_migrating(&rec)?;
        Ok(rec)
    }

    fn load_raw(&self, id: &str) -> Result<Record> {
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

    /// The VM's files. Sockets move to a short directory of their own when their path in the
    /// instance dir would not fit a unix socket address.
    fn run_files(&self, id: &str) -> (RunFiles, Option<PathBuf>) {
        let dir = self.instance_dir(id);
        let mut files = RunFiles::in_dir(&dir);
        if files.qga_socket.as_os_str().len() <= MAX_SOCKET_PATH {
            return (files, None);
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        let sock_dir = std::env::temp_dir().join(format!("vfarm-qemu-{:016x}", h.finish()));
        files.qmp_socket = sock_dir.join("qmp.sock");
        files.qga_socket = sock_dir.join("qga.sock");
        (files, Some(sock_dir))
    }

    fn tool(tool: Tool) -> Result<PathBuf> {
        tool.find().map_err(|e| classify("find tools", "-", e))
    }

    fn probe_config(&self, kernel: &Path) -> Result<ProbeConfig> {
        Ok(ProbeConfig {
            qemu: Self::tool(QEMU_SYSTEM_X86_64)?,
            kernel: kernel.to_path_buf(),
            busybox: Self::tool(BUSYBOX_STATIC)?,
            state_dir: self.root.join("probe"),
            timeout: ProbeConfig::DEFAULT_TIMEOUT,
            refresh: false,
            cpu: None,
        })
    }

    /// The QEMU of the record if it runs.
    fn live(&self, rec: &Record) -> Option<QemuProcess> {
        let pidfile = rec.vm.pidfile.as_ref()?;
        // An unreadable pidfile (permissions) is treated as "not ours to drive".
        QemuProcess::from_pidfile(pidfile).ok().flatten()
    }

    fn qmp(&self, rec: &Record, timeout: Duration) -> Result<Qmp> {
        Qmp::connect(&rec.vm.qmp_socket, timeout).map_err(|e| classify("qmp", &rec.id, e))
    }

    fn agent(&self, rec: &Record) -> Result<GuestAgent> {
        let sock = rec
            .vm
            .qga_socket
            .as_ref()
            .ok_or_else(|| DriverError::Backend {
                op: "guest agent",
                id: rec.id.clone(),
                detail: "the VM has no guest agent channel".into(),
                retryable: false,
                source: None,
            })?;
        let mut ga = GuestAgent::connect(sock, AGENT_TIMEOUT)
            .map_err(|e| classify("guest agent", &rec.id, e))?;
        ga.sync(AGENT_TIMEOUT)
            .map_err(|e| classify("guest agent", &rec.id, e))?;
        Ok(ga)
    }

    fn observe_rec(&self, rec: &Record) -> Observed {
        if self.live(rec).is_some() {
            return match Qmp::connect(&rec.vm.qmp_socket, QMP_TIMEOUT)
                .and_then(|mut q| q.query_status())
            {
                Ok(st) if st.running => Observed::Running,
                // paused, restore-vm (a failed loadvm), postmigrate (a checkpoint written),
                // inmigrate (a restore in progress): the guest's CPUs do not run.
                Ok(_) => Observed::Paused,
                // The process is there but its monitor is busy (another client, a long
                // savevm): it runs.
                Err(_) => Observed::Running,
            };
        }
        if let Some(code) = rec.exit {
            return Observed::Exited { code };
        }
        if !rec.started {
            return Observed::Created;
        }
        // QEMU removes its pidfile when it exits by itself; a pidfile left behind means it was
        // killed by someone else and how the guest ended is unknown.
        if rec.vm.pidfile.as_ref().is_some_and(|p| p.exists()) {
            return Observed::Lost;
        }
        // It exited by itself: the guest powered off, or panicked (with `panic=-1` and
        // `-no-reboot` a panic ends QEMU too).
        if self.console_since(rec).contains("Kernel panic") {
            Observed::Exited { code: 1 }
        } else {
            Observed::Exited { code: 0 }
        }
    }

    /// Console output of the current run (at most its last 64 KiB).
    fn console_since(&self, rec: &Record) -> String {
        let Some(log) = &rec.vm.serial_log else {
            return String::new();
        };
        let Ok(mut f) = File::open(log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = rec.console_offset.max(len.saturating_sub(64 << 10));
        use std::io::Seek;
        if f.seek(std::io::SeekFrom::Start(from)).is_err() {
            return String::new();
        }
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The last lines of the current run's console, for error messages.
    fn console_tail(&self, rec: &Record) -> String {
        let text = self.console_since(rec);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        if tail.is_empty() {
            "(no console output)".into()
        } else {
            tail
        }
    }

    /// Sockets are left behind by QEMU; remove them once it is gone.
    fn remove_sockets(&self, rec: &Record) {
        let _ = std::fs::remove_file(&rec.vm.qmp_socket);
        if let Some(s) = &rec.vm.qga_socket {
            let _ = std::fs::remove_file(s);
        }
    }

    fn disk(rec: &Record) -> &Path {
        &rec.vm
            .disk
            .as_ref()
            .expect("a prepared VM always has its overlay disk")
            .path
    }

    /// Launch QEMU with `vm` (the record's config, or it with `-incoming` for a restore),
    /// recording the process. The returned guard kills it unless disarmed.
    fn spawn(&self, rec: &mut Record, vm: &VmConfig) -> Result<(QemuProcess, KillOnDrop)> {
        let qemu = Self::tool(QEMU_SYSTEM_X86_64)?;
        let mut vm = vm.clone();
        let vm = &mut vm;
        self.full_refresh_port(rec, vm)?;
        let pidfile = vm.pidfile.clone().expect("fast profile VMs have a pidfile");
        self.remove_sockets(rec);
        let _ = std::fs::remove_file(&pidfile);
        if let Some(d) = &rec.sock_dir {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| io_err("start", &rec.id, d.display(), e))?;
        }
        let args = build_args(vm).map_err(|e| classify("start", &rec.id, e))?;
        rec.console_offset = vm
            .serial_log
            .as_ref()
            .and_then(|l| std::fs::metadata(l).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let p =
            spawn_daemonized(&qemu, &args, &pidfile).map_err(|e| classify("start", &rec.id, e))?;
        let guard = KillOnDrop::new(&pidfile);
        rec.started = true;
        rec.exit = None;
        rec.process = Some(p.clone());
        self.save(rec)?;
        Ok((p, guard))
    }

    /// Waits until the guest agent answers, failing early when QEMU exits (a guest that
    /// panics ends QEMU).
    fn wait_agent(&self, rec: &Record, p: &QemuProcess) -> Result<()> {
        let sock = rec
            .vm
            .qga_socket
            .as_ref()
            .expect("fast profile VMs have an agent");
        let begun = Instant::now();
        loop {
            if !p.is_alive() {
                return Err(DriverError::Backend {
                    op: "start",
                    id: rec.id.clone(),
                    detail: format!(
                        "QEMU exited while the guest booted; console:\n{}",
                        self.console_tail(rec)
                    ),
                    retryable: false,
                    source: None,
                });
            }
            // Short rounds, so a dead QEMU is noticed; syncs of earlier rounds that the agent
            // answers late carry other ids and are discarded.
            match GuestAgent::wait_ready(sock, Duration::from_secs(2), Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(vfarm_qemu::Error::Timeout { .. }) if begun.elapsed() < self.boot_timeout => {}
                Err(vfarm_qemu::Error::Timeout { .. }) => {
                    return Err(DriverError::Backend {
                        op: "start",
                        id: rec.id.clone(),
                        detail: format!(
                            "the guest agent did not answer within {:?}; console:\n{}",
                            self.boot_timeout,
                            self.console_tail(rec)
                        ),
                        retryable: true,
                        source: None,
                    })
                }
                Err(e) => return Err(classify("start", &rec.id, e)),
            }
        }
    }

    fn start_locked(&self, rec: &mut Record) -> Result<()> {
        if self.live(rec).is_some() {
            return Ok(());
        }
        let vm = rec.vm.clone();
        let (p, guard) = self.spawn(rec, &vm)?;
        let ready = self
            .wait_agent(rec, &p)
            .and_then(|()| self.full_wait_ready(rec, &p));
        if let Err(e) = ready {
            // A VM whose guest never came up is of no use: end it and go back to "created",
            // so the caller can retry or clean up.
            drop(guard);
            let _ = self.wait_disk_released(rec, "start");
            self.remove_sockets(rec);
            rec.started = false;
            rec.process = None;
            self.save(rec)?;
            return Err(e);
        }
        guard.disarm();
        Ok(())
    }

    /// Ask the guest to make its file systems consistent (freeze flushes and commits the
    /// journal, so the next boot needs no recovery), then end QEMU with QMP `quit`, which
    /// flushes QEMU's own disk cache. Returns whether the guest took part.
    fn quit_gracefully(&self, rec: &Record, timeout: Duration) -> Result<bool> {
        if rec.full.is_some() {
            return self.full_powerdown(rec, timeout);
        }
        let t = timeout.min(QMP_TIMEOUT).max(Duration::from_millis(100));
        let mut qmp =
            Qmp::connect(&rec.vm.qmp_socket, t).map_err(|e| classify("stop", &rec.id, e))?;
        let st = qmp
            .query_status()
            .map_err(|e| classify("stop", &rec.id, e))?;
        if !st.running {
            // A paused guest cannot answer the agent.
            let _ = qmp.cont();
        }
        // The fast profile's guest has no ACPI listener (qemu-ga is PID 1): a power button
        // would be ignored, so the agent is the guest's only way to take part. It gets half
        // the time; QEMU's exit the rest.
        let agent_time = (timeout / 2).max(Duration::from_millis(100));
        let guest = rec.vm.qga_socket.as_ref().is_some_and(|sock| {
            GuestAgent::connect(sock, agent_time)
                .and_then(|mut ga| {
                    ga.sync(agent_time)?;
                    ga.fsfreeze_freeze()
                })
                .is_ok()
        });
        qmp.quit().map_err(|e| classify("stop", &rec.id, e))?;
        Ok(guest)
    }

    fn stop_locked(&self, rec: &mut Record, mode: StopMode) -> Result<Observed> {
        let Some(p) = self.live(rec) else {
            return Ok(self.observe_rec(rec));
        };
        let code = match mode {
            StopMode::Graceful { timeout } => {
                let begun = Instant::now();
                let ended = self
                    .quit_gracefully(rec, timeout)
                    .ok()
                    .filter(|_| p.wait_gone(timeout.saturating_sub(begun.elapsed())).is_ok());
                match ended {
                    Some(true) => 0,
                    Some(false) => QUIT_WITHOUT_GUEST,
                    None => {
                        p.kill().map_err(|e| classify("stop", &rec.id, e))?;
                        KILLED
                    }
                }
            }
            StopMode::Kill => {
                p.kill().map_err(|e| classify("stop", &rec.id, e))?;
                KILLED
            }
        };
        p.remove_pidfile()
            .map_err(|e| classify("stop", &rec.id, e))?;
        self.wait_disk_released(rec, "stop")?;
        self.remove_sockets(rec);
        rec.exit = Some(code);
        rec.process = None;
        self.save(rec)?;
        Ok(Observed::Exited { code })
    }

    /// Waits (bounded) until no process holds the overlay's image lock. A killed QEMU counts
    /// as gone (vfarm-qemu treats its zombie as exited) a moment before the kernel has
    /// released all of its files, the image lock among them; a `qemu-img` or a new QEMU on the
    /// disk in that moment fails with "Failed to get write lock". So a stop returns only once
    /// the disk is free. `qemu-img info` without `-U` takes the lock a writer conflicts with.
    fn wait_disk_released(&self, rec: &Record, op: &'static str) -> Result<()> {
        let Ok(qemu_img) = QEMU_IMG.find() else {
            // Nothing to check with; the next disk operation reports the missing tool.
            return Ok(());
        };
        let begun = Instant::now();
        loop {
            let out = Command::new(&qemu_img)
                .args(["info", "--output=json"])
                .arg(Self::disk(rec))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| io_err(op, &rec.id, "qemu-img info", e))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Any other failure is for the next operation on the disk to report.
            if out.status.success() || !stderr.contains("lock") {
                return Ok(());
            }
            if begun.elapsed() > KILL_TIMEOUT {
                return Err(DriverError::Backend {
                    op,
                    id: rec.id.clone(),
                    detail: format!(
                        "the disk is still locked {KILL_TIMEOUT:?} after QEMU ended: {}",
                        stderr.trim()
                    ),
                    retryable: true,
                    source: None,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn qemu_img(&self, rec: &Record, op: &'static str, args: &[&str]) -> Result<String> {
        let qemu_img = Self::tool(QEMU_IMG)?;
        let out = Command::new(&qemu_img)
            .args(args)
            .arg(Self::disk(rec))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                classify(
                    op,
                    &rec.id,
                    vfarm_qemu::Error::Spawn {
                        program: qemu_img.display().to_string(),
                        source: e,
                    },
                )
            })?;
        if !out.status.success() {
            return Err(DriverError::Backend {
                op,
                id: rec.id.clone(),
                detail: format!(
                    "qemu-img {} failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                retryable: false,
                source: None,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// vm-state sizes of the overlay's internal snapshots, by name.
    fn snapshot_sizes(&self, rec: &Record) -> Vec<(String, u64)> {
        // -U: readable while QEMU has the disk open.
        let Ok(text) = self.qemu_img(rec, "snapshot list", &["info", "--output=json", "-U"]) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["snapshots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some((
                            s["name"].as_str()?.to_string(),
                            s["vm-state-size"].as_u64().unwrap_or(0),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The instance's files and record, in its fresh directory.
    fn make_instance(
        &self,
        spec: &InstanceSpec,
        shape: &Shape,
        accel: Accel,
        accel_note: Option<String>,
        initrd: &Path,
    ) -> Result<()> {
        let id = &spec.id;
        let qemu_img = Self::tool(QEMU_IMG)?;
        let _l = self.lock(id)?;
        let (files, sock_dir) = self.run_files(id);
        let net = match spec.network {
            Network::None | Network::Attached(_) => None,
            // A VM cannot share the host's network stack; user-mode networking (NAT through
            // QEMU, no host configuration) is the nearest: the guest reaches what the host
            // reaches.
            Network::Host => Some(UserNet::default()),
        };
        let site = spec.network.attachment().map(static_ip);
        let (mut vm, full) = match spec.vm.profile {
            BootProfile::Fast => {
                let mut vm = fast_vm_config(id, accel, &shape.kernel, initrd, &files, net);
                if let Some(k) = vm.kernel.as_mut() {
                    k.append = fast_append(
                        accel,
                        host_tsc_khz(),
                        Some(&spec.hostname),
                        spec.network == Network::Host,
                        site.as_ref(),
                    );
                }
                (vm, None)
            }
            BootProfile::Full => {
                let (vm, full) =
                    full::make(spec, accel, &shape.kernel, &files, &self.instance_dir(id))?;
                (vm, Some(full))
            }
        };
        vm.cpus = shape.vcpus;
        vm.memory_mib = shape.memory_mib;
        vm.tap = spec.network.attachment().map(|a| TapNet {
            ifname: a.link.clone(),
            mac: a.mac.clone(),
        });
        // Everything QEMU will be given is checked now, not at start.
        build_args(&vm).map_err(|e| classify("prepare", id, e))?;
        create_overlay(
            &qemu_img,
            &shape.disk.0,
            shape.disk.1,
            &files.disk,
            spec.disk,
        )
        .map_err(|e| classify("prepare", id, e))?;
        File::create(&files.serial_log)
            .map_err(|e| io_err("prepare", id, files.serial_log.display(), e))?;
        // The record goes last: its presence means "prepared". Cleanup does not need it.
        self.save(&Record {
            version: RECORD_VERSION,
            driver: DRIVER.into(),
            id: id.clone(),
            spec: spec.clone(),
            accel,
            accel_note,
            vm,
            base: shape.disk.0.clone(),
            sock_dir,
            started: false,
            process: None,
            exit: None,
            console_offset: 0,
            snapshots: Vec::new(),
            checkpoints: Vec::new(),
            full,
            migration: None,
        })
    }

    /// Information for display (accelerator, sizes, sockets, QEMU's pid).
    pub fn info(&self, id: &str) -> Result<VmInfo> {
        let rec = self.load(id)?;
        Ok(VmInfo {
            accel: rec.accel,
            accel_note: rec.accel_note.clone(),
            vcpus: rec.vm.cpus,
            memory_mib: rec.vm.memory_mib,
            disk: Self::disk(&rec).to_path_buf(),
            console_log: rec.vm.serial_log.clone().unwrap_or_default(),
            qmp_socket: rec.vm.qmp_socket.clone(),
            qga_socket: rec.vm.qga_socket.clone(),
            pid: self.live(&rec).map(|p| p.pid),
            profile: rec.spec.vm.profile,
            ssh: rec.full.as_ref().map(|f| full::ssh_info_of(&rec.id, f)),
        })
    }

    /// Measured resource use of a running (or paused) VM.
    pub fn vm_stats(&self, id: &str) -> Result<VmStats> {
        let rec = self.load(id)?;
        let Some(p) = self.live(&rec) else {
            return Err(not_running("stats", id, self.observe_rec(&rec)));
        };
        let read = |what: &str| {
            std::fs::read_to_string(format!("/proc/{}/{what}", p.pid))
                .map_err(|e| io_err("stats", id, format!("/proc/{}/{what}", p.pid), e))
        };
        let unparsable = |what: &str| DriverError::Backend {
            op: "stats",
            id: id.to_string(),
            detail: format!("cannot parse /proc/{}/{what}", p.pid),
            retryable: false,
            source: None,
        };
        let (cpu_time, started) =
            stats::parse_stat(&read("stat")?).ok_or_else(|| unparsable("stat"))?;
        let rss_bytes = stats::parse_rss(&read("status")?).ok_or_else(|| unparsable("status"))?;
        let uptime = stats::host_uptime()
            .map(|u| u.saturating_sub(started))
            .unwrap_or_default();
        let mut qmp = self.qmp(&rec, QMP_TIMEOUT)?;
        let status = qmp
            .query_status()
            .map_err(|e| classify("stats", id, e))?
            .status;
        let block = qmp
            .query_blockstats()
            .map_err(|e| classify("stats", id, e))?;
        // The guest's counters need a running guest (a paused one cannot answer); a guest
        // that does not answer costs only them, not the host-side figures.
        let net = if status == "running" {
            self.net_stats(&rec, &mut qmp).ok().flatten()
        } else {
            None
        };
        Ok(VmStats {
            pid: p.pid,
            status,
            cpu_time,
            rss_bytes,
            uptime,
            block,
            net,
        })
    }

    /// Writes the VM's memory and device state to `file` and keeps the disk of that instant
    /// as an internal snapshot of the overlay, so [`restore`](Self::restore) brings the whole
    /// VM back to it. `file` must not exist; it is the caller's to keep or remove (cleanup
    /// removes only what lives in the instance dir).
    pub fn checkpoint(
        &self,
        id: &str,
        file: &Path,
        after: AfterCheckpoint,
    ) -> Result<CheckpointInfo> {
        let (_l, mut rec) = self.locked(id)?;
        let Some(p) = self.live(&rec) else {
            return Err(not_running("checkpoint", id, self.observe_rec(&rec)));
        };
        let file = absolute_new_file(id, file)?;
        let disk_snapshot = format!(
            "vfarm-ckpt-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let tmp = file.with_extension(format!("partial-{}", std::process::id()));
        let mut qmp = self.qmp(&rec, STATE_TIMEOUT)?;
        let ck = |e: vfarm_qemu::Error| classify("checkpoint", id, e);
        let was_running = qmp.query_status().map_err(ck)?.running;
        let begun = Instant::now();
        if was_running {
            qmp.stop().map_err(ck)?;
        }
        let result = (|| {
            // With the CPUs stopped, the disk snapshot and the state below are one instant.
            qmp.execute(
                "blockdev-snapshot-internal-sync",
                Some(json!({ "device": "disk0", "name": disk_snapshot })),
            )?;
            qmp.migrate(&format!("exec:cat > {}", sh_quote(&tmp)))?;
            qmp.wait_migration(STATE_TIMEOUT).map(drop)
        })();
        let elapsed = begun.elapsed();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            let _ = qmp.execute(
                "blockdev-snapshot-delete-internal-sync",
                Some(json!({ "device": "disk0", "name": disk_snapshot })),
            );
            if was_running {
                let _ = qmp.cont();
            }
            return Err(ck(e));
        }
        std::fs::rename(&tmp, &file).map_err(|e| io_err("checkpoint", id, file.display(), e))?;
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        rec.checkpoints.push(CheckpointRecord {
            path: file.clone(),
            disk_snapshot,
            created: now_secs(),
        });
        self.save(&rec)?;
        match after {
            AfterCheckpoint::Continue => {
                // After a completed migration QEMU has handed its disks over; `cont` takes
                // them back (and is the only command that does). A VM that was paused is
                // paused again right away.
                qmp.cont().map_err(ck)?;
                if !was_running {
                    qmp.stop().map_err(ck)?;
                }
            }
            AfterCheckpoint::Stop => {
                qmp.quit().map_err(ck)?;
                if p.wait_gone(QMP_TIMEOUT).is_err() {
                    p.kill().map_err(ck)?;
                }
                p.remove_pidfile().map_err(ck)?;
                self.wait_disk_released(&rec, "checkpoint")?;
                self.remove_sockets(&rec);
                rec.exit = Some(0);
                rec.process = None;
                self.save(&rec)?;
            }
        }
        Ok(CheckpointInfo {
            path: file,
            size,
            elapsed,
        })
    }

    /// Brings the VM back to a checkpoint made by [`checkpoint`](Self::checkpoint): a running
    /// VM is killed, the disk goes back to the checkpoint's instant and a new QEMU loads the
    /// memory and device state. The VM runs afterwards.
    pub fn restore(&self, id: &str, file: &Path) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        let want = std::fs::canonicalize(file).map_err(|_| DriverError::NotFound {
            kind: "checkpoint",
            id: format!("{id}:{}", file.display()),
        })?;
        let ckpt = rec
            .checkpoints
            .iter()
            .find(|c| c.path == want)
            .cloned()
            .ok_or_else(|| DriverError::NotFound {
                kind: "checkpoint",
                id: format!("{id}:{}", file.display()),
            })?;
        if self.live(&rec).is_some() {
            self.stop_locked(&mut rec, StopMode::Kill)?;
        }
        self.qemu_img(&rec, "restore", &["snapshot", "-a", &ckpt.disk_snapshot])?;
        let mut vm = rec.vm.clone();
        vm.incoming = Some(format!("exec:cat {}", sh_quote(&ckpt.path)));
        let (_p, guard) = self.spawn(&mut rec, &vm)?;
        if let Err(e) = self.wait_restored(&rec, &ckpt.path) {
            // The half-loaded VM is of no use: end it and say so in the record.
            drop(guard);
            let _ = self.wait_disk_released(&rec, "restore");
            self.remove_sockets(&rec);
            rec.exit = Some(KILLED);
            rec.process = None;
            self.save(&rec)?;
            return Err(e);
        }
        guard.disarm();
        Ok(())
    }

    /// The checkpoint files this instance can be restored from, oldest first.
    pub fn checkpoints(&self, id: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .load(id)?
            .checkpoints
            .into_iter()
            .map(|c| c.path)
            .collect())
    }

    /// Drops a checkpoint: its disk snapshot is deleted from the overlay (the state file is
    /// the caller's to remove). Without this, each checkpoint keeps the disk blocks of its
    /// instant alive until cleanup.
    pub fn forget_checkpoint(&self, id: &str, file: &Path) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let Some(pos) = rec.checkpoints.iter().position(|c| c.path == want) else {
            return Err(DriverError::NotFound {
                kind: "checkpoint",
                id: format!("{id}:{}", file.display()),
            });
        };
        let snap = rec.checkpoints[pos].disk_snapshot.clone();
        if self.live(&rec).is_some() {
            self.qmp(&rec, STATE_TIMEOUT)?
                .execute(
                    "blockdev-snapshot-delete-internal-sync",
                    Some(json!({ "device": "disk0", "name": snap })),
                )
                .map_err(|e| classify("forget checkpoint", id, e))?;
        } else {
            self.qemu_img(&rec, "forget checkpoint", &["snapshot", "-d", &snap])?;
        }
        rec.checkpoints.remove(pos);
        self.save(&rec)
    }

    /// Waits until an incoming QEMU has loaded its checkpoint and runs.
    fn wait_restored(&self, rec: &Record, path: &Path) -> Result<()> {
        let id = &rec.id;
        let ck = |e: vfarm_qemu::Error| classify("restore", id, e);
        let mut qmp =
            Qmp::connect_retry(&rec.vm.qmp_socket, QMP_TIMEOUT, STATE_TIMEOUT).map_err(ck)?;
        let begun = Instant::now();
        loop {
            let st = qmp.query_status().map_err(ck)?;
            if st.running {
                return Ok(());
            }
            if st.status != "inmigrate" {
                // The incoming side ends paused when the checkpoint was taken from a stopped
                // CPU state (as checkpoint does), or when loading failed.
                let m = qmp.query_migrate().map_err(ck)?;
                match m.status.as_deref() {
                    Some("completed") => return qmp.cont().map_err(ck),
                    Some("failed" | "cancelled") => {
                        return Err(DriverError::Backend {
                            op: "restore",
                            id: id.clone(),
                            detail: format!(
                                "loading {} failed: {}",
                                path.display(),
                                m.error_desc.unwrap_or_default()
                            ),
                            retryable: false,
                            source: None,
                        })
                    }
                    _ => {}
                }
            }
            if begun.elapsed() > STATE_TIMEOUT {
                return Err(ck(vfarm_qemu::Error::Timeout {
                    what: format!("loading {}", path.display()),
                    after: STATE_TIMEOUT,
                }));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a guest-exec to completion. The agent connection is taken per exchange and
    /// released in between, so another caller (a second exec, a stop) can use the agent while
    /// a long command runs: QEMU serves one client per socket at a time.
    fn guest_exec(&self, rec: &Record, req: &ExecRequest) -> Result<vfarm_qemu::ExecOutput> {
        let pid = self
            .agent(rec)?
            .exec_start(req)
            .map_err(|e| classify("exec", &rec.id, e))?;
        // One connection for the whole poll. The interval stays short: under TCG each status
        // round trip costs a few ms, and a long interval (it was 250 ms) is pure waiting added
        // to every short command.
        let mut agent = self.agent(rec)?;
        let mut pause = Duration::from_millis(2);
        loop {
            let st = agent
                .exec_status(pid)
                .map_err(|e| classify("exec", &rec.id, e))?;
            if let ExecStatus::Exited(out) = st {
                return Ok(out);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// `file` made absolute (so the record and QEMU's `exec:` agree), refusing an existing one.
fn absolute_new_file(id: &str, file: &Path) -> Result<PathBuf> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file.file_name().ok_or_else(|| DriverError::InvalidSpec {
        field: "checkpoint file",
        reason: format!("{} names no file", file.display()),
    })?;
    let parent =
        std::fs::canonicalize(parent).map_err(|e| io_err("checkpoint", id, parent.display(), e))?;
    let abs = parent.join(name);
    if abs.exists() {
        return Err(DriverError::InvalidSpec {
            field: "checkpoint file",
            reason: format!("{} exists already", abs.display()),
        });
    }
    Ok(abs)
}

/// QEMU's stderr in a probe verdict spans lines; a notice is one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Quotes a path for the shell QEMU runs `exec:` migrations with.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn snapshot_name_ok(name: &str) -> Result<()> {
    // HMP takes the name unquoted on its command line; keep it to plain characters.
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || name.starts_with("vfarm-ckpt-")
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(DriverError::InvalidSpec {
            field: "snapshot name",
            reason: format!(
                "`{name}` must be 1-64 characters of A-Z a-z 0-9 . - _, not starting with a dot \
                 or vfarm-ckpt-"
            ),
        });
    }
    Ok(())
}

/// The VM's shape from the spec, before anything is created.
struct Shape {
    vcpus: u32,
    memory_mib: u64,
    kernel: PathBuf,
    disk: (PathBuf, DiskFormat),
    rootfs: PathBuf,
}

fn shape(spec: &InstanceSpec) -> Result<Shape> {
    crate::oci::validate_hostname(&spec.hostname)?;
    if !spec.command.is_empty() {
        return Err(DriverError::InvalidSpec {
            field: "command",
            reason: "a qemu instance's main process is the VM itself (the guest agent is its \
                     init); run commands in it with exec"
                .into(),
        });
    }
    let vcpus = match spec.cpus {
        None => 1,
        Some(c) if c.is_finite() && c > 0.0 && c <= 255.0 => c.ceil() as u32,
        Some(c) => {
            return Err(DriverError::InvalidSpec {
                field: "cpus",
                reason: format!("{c} is not a vCPU count between 1 and 255"),
            })
        }
    };
    let memory_mib = spec
        .memory
        .map(|b| b.div_ceil(1 << 20))
        .unwrap_or(DEFAULT_MEMORY_MIB);
    if memory_mib < MIN_MEMORY_MIB {
        return Err(DriverError::InvalidSpec {
            field: "memory",
            reason: format!("{memory_mib} MiB is too little for a VM (at least {MIN_MEMORY_MIB})"),
        });
    }
    let image = &spec.image;
    let kernel = image
        .kernel
        .clone()
        .ok_or_else(|| DriverError::InvalidSpec {
            field: "image",
            reason: format!(
                "image {} has no kernel; build it with --boot vm for the qemu driver",
                image.id
            ),
        })?;
    let find = |f: vfarm_core::Format| image.files.iter().find(|x| x.format == f);
    let disk = find(vfarm_core::Format::Qcow2)
        .map(|f| (f.path.clone(), DiskFormat::Qcow2))
        .or_else(|| find(vfarm_core::Format::Raw).map(|f| (f.path.clone(), DiskFormat::Raw)))
        .ok_or_else(|| DriverError::InvalidSpec {
            field: "image",
            reason: format!(
                "image {} has no qcow2 or raw disk; build it with --format qcow2",
                image.id
            ),
        })?;
    // The fast initramfs takes the kernel's virtio modules from the image's rootfs.
    let rootfs = find(vfarm_core::Format::Tar)
        .map(|f| f.path.clone())
        .ok_or_else(|| DriverError::InvalidSpec {
            field: "image",
            reason: format!(
                "image {} has no rootfs tar to take the kernel modules from",
                image.id
            ),
        })?;
    Ok(Shape {
        vcpus,
        memory_mib,
        kernel,
        disk,
        rootfs,
    })
}

/// Feeds a caller's stdin to a guest-exec. The agent takes a command's input up front, so
/// it is read to its end first; a terminal gives no input (it would never end).
fn read_input(id: &str, stdin: Stdio) -> Result<Option<Vec<u8>>> {
    // Stdio cannot be read in-process; a helper process reads it for us.
    let out = Command::new("sh")
        .args(["-c", "[ -t 0 ] || exec cat"])
        .stdin(stdin)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| io_err("exec", id, "reading stdin through sh", e))?;
    Ok(Some(out.stdout).filter(|b| !b.is_empty()))
}

/// Writes a guest command's output to the caller's stdout or stderr.
fn write_output(id: &str, to: Stdio, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    // Stdio cannot be written in-process either: `cat` passes the bytes on.
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(to)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io_err("exec", id, "writing output through cat", e))?;
    let written = child.stdin.take().expect("stdin is piped").write_all(data);
    let status = child
        .wait()
        .map_err(|e| io_err("exec", id, "writing output through cat", e))?;
    written.map_err(|e| io_err("exec", id, "writing output through cat", e))?;
    if !status.success() {
        return Err(io_err(
            "exec",
            id,
            format!("cat passing the output on failed ({status})"),
            std::io::Error::other("output not delivered"),
        ));
    }
    Ok(())
}

impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        DRIVER
    }

    fn probe(&self) -> Result<ProbeReport> {
        let mut notes = Vec::new();
        let mut usable = true;
        for tool in [QEMU_SYSTEM_X86_64, QEMU_IMG, BUSYBOX_STATIC] {
            match tool.find() {
                Ok(p) => notes.push(format!("{}: {}", tool.name, p.display())),
                Err(e) => {
                    usable = false;
                    notes.push(e.to_string());
                }
            }
        }
        let backend = Command::new(QEMU_SYSTEM_X86_64.name)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // The KVM probe boots a kernel; the host's own will do (its test guest needs no
        // modules). Without one, prepare probes with the image's kernel.
        let kernel = host_kernel();
        match (usable, kernel) {
            (true, Some(k)) => match choose_accel(self.choice, &self.probe_config(&k)?) {
                Ok(d) => {
                    notes.push(format!("accelerator: {}", d.accel.as_str()));
                    notes.extend(d.fallback_note().map(|n| one_line(&n)));
                }
                Err(e) => {
                    usable = false;
                    notes.push(one_line(&e.to_string()));
                }
            },
            (true, None) => notes.push(
                "KVM not probed yet: no host kernel in /boot; the first prepare probes with the \
                 image's kernel"
                    .into(),
            ),
            (false, _) => {}
        }
        Ok(ProbeReport {
            driver: DRIVER,
            usable,
            backend,
            notes,
        })
    }

    fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        validate_id(&spec.id)?;
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
        let shape = shape(spec)?;
        if spec.vm.profile == BootProfile::Full {
            full::check_image(spec)?;
        }
        Self::tool(QEMU_IMG)?;
        let busybox = Self::tool(BUSYBOX_STATIC)?;
        // The accelerator first: a forced KVM that does not work fails before anything is
        // made (the probe's verdict is cached for the host boot).
        let decision = choose_accel(self.choice, &self.probe_config(&shape.kernel)?)
            .map_err(|e| classify("prepare", id, e))?;
        // Kept in the record for `info` (the CLI prints it once); `probe` reports it too.
        let accel_note = decision.fallback_note().map(|n| one_line(&n));
        let initrd = match spec.vm.profile {
            BootProfile::Fast => {
                fast_initramfs(&InitramfsRequest {
                    rootfs: shape.rootfs.clone(),
                    kernel_version: None,
                    busybox,
                    cache_dir: self.root.join("initramfs"),
                })
                .map_err(|e| classify("prepare", id, e))?
                .path
            }
            // The image's own initramfs (check_image made sure there is one).
            BootProfile::Full => spec.image.initrd.clone().unwrap_or_default(),
        };

        let dir = self.instance_dir(id);
        // Leftovers of a prepare that died half-way (there is no record): start over.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("prepare", id, dir.display(), e))?;
        let made = self.make_instance(spec, &shape, decision.accel, accel_note, &initrd);
        if made.is_err() {
            // Nothing half-made stays behind (cleanup would also cope with it).
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    fn start(&self, id: &str) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        self.start_locked(&mut rec)
    }

    fn stop(&self, id: &str, mode: StopMode) -> Result<Observed> {
        let (_l, mut rec) = self.locked(id)?;
        self.stop_locked(&mut rec, mode)
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
        let (files, sock_dir) = self.run_files(id);
        let rec = self.load(id).ok();
        // The record's pidfile and the default one (a start that died before recording).
        let pidfiles = rec
            .as_ref()
            .and_then(|r| r.vm.pidfile.clone())
            .into_iter()
            .chain(std::iter::once(files.pidfile.clone()));
        for pidfile in pidfiles {
            if let Some(p) =
                QemuProcess::from_pidfile(&pidfile).map_err(|e| classify("destroy", id, e))?
            {
                p.kill().map_err(|e| classify("destroy", id, e))?;
            }
        }
        let dirs = rec
            .as_ref()
            .and_then(|r| r.sock_dir.clone())
            .into_iter()
            .chain(sock_dir)
            .chain(std::iter::once(dir));
        for d in dirs {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("destroy", id, d.display(), e)),
            }
        }
        Ok(())
    }

    fn logs(&self, id: &str) -> Result<LogFiles> {
        let rec = self.load(id)?;
        // A VM has one console (the serial port) for both streams.
        let console = rec
            .vm
            .serial_log
            .clone()
            .unwrap_or_else(|| self.instance_dir(id).join("console.log"));
        Ok(LogFiles {
            stdout: console.clone(),
            stderr: console,
        })
    }

    fn list(&self) -> Result<Vec<String>> {
        let dir = self.root.join("instances");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", "*", dir.display(), e)),
        };
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| self.load(id).is_ok_and(|r| r.driver == DRIVER))
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
    fn files(&self) -> Option<&dyn crate::Files> {
        Some(self)
    }
    fn stats(&self) -> Option<&dyn crate::Stats> {
        Some(self)
    }
}

impl crate::Stats for QemuDriver {
    fn usage(&self, id: &str) -> Result<crate::Usage> {
        let s = self.vm_stats(id)?;
        let rec = self.load(id)?;
        Ok(crate::Usage {
            cpu_time: s.cpu_time,
            cpus: f64::from(rec.vm.cpus),
            memory_bytes: s.rss_bytes,
            memory_limit_bytes: Some(rec.vm.memory_mib << 20),
            disk_read_bytes: s.block.iter().map(|b| b.rd_bytes).sum(),
            disk_write_bytes: s.block.iter().map(|b| b.wr_bytes).sum(),
            net_rx_bytes: s.net.as_ref().map(|n| n.rx_bytes),
            net_tx_bytes: s.net.as_ref().map(|n| n.tx_bytes),
        })
    }
}

/// The newest `/boot/vmlinuz-*` of the host, for the KVM probe.
pub fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

impl Pausable for QemuDriver {
    fn pause(&self, id: &str) -> Result<()> {
        let (_l, rec) = self.locked(id)?;
        match self.observe_rec(&rec) {
            Observed::Paused => return Ok(()),
            Observed::Running => {}
            o => return Err(not_running("pause", id, o)),
        }
        self.qmp(&rec, QMP_TIMEOUT)?
            .stop()
            .map_err(|e| classify("pause", id, e))
    }

    fn resume(&self, id: &str) -> Result<()> {
        let (_l, rec) = self.locked(id)?;
        match self.observe_rec(&rec) {
            Observed::Running => return Ok(()),
            Observed::Paused => {}
            o => return Err(not_running("resume", id, o)),
        }
        self.qmp(&rec, QMP_TIMEOUT)?
            .cont()
            .map_err(|e| classify("resume", id, e))
    }
}

impl Exec for QemuDriver {
    /// Runs `argv` through the guest agent. Its output is collected by the agent and passed
    /// on when the command ends (not streamed); stdin is read to its end before the command
    /// starts (a terminal gives none). The agent cannot kill a command.
    fn exec(&self, id: &str, argv: &[String], env: &[(String, String)], io: ExecIo) -> Result<i32> {
        let rec = self.load(id)?;
        match self.observe_rec(&rec) {
            Observed::Running => {}
            o => return Err(not_running("exec", id, o)),
        }
        let Some((path, args)) = argv.split_first() else {
            return Err(DriverError::InvalidSpec {
                field: "command",
                reason: "exec needs a command".into(),
            });
        };
        let env: Vec<String> = if rec.spec.env.is_empty() && env.is_empty() {
            Vec::new()
        } else {
            let mut merged: Vec<(String, String)> = BASE_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for (k, v) in rec.spec.env.iter().chain(env) {
                merged.retain(|(mk, _)| mk != k);
                merged.push((k.clone(), v.clone()));
            }
            merged
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        };
        let req = ExecRequest {
            path: path.clone(),
            args: args.to_vec(),
            env,
            stdin: read_input(id, io.stdin)?,
        };
        let out = self.guest_exec(&rec, &req)?;
        write_output(id, io.stdout, &out.stdout)?;
        write_output(id, io.stderr, &out.stderr)?;
        Ok(match out.exit {
            ExitKind::Code(c) => c as i32,
            ExitKind::Signal(s) => 128 + s as i32,
        })
    }
}

impl Snapshots for QemuDriver {
    fn create(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        snapshot_name_ok(name)?;
        let (_l, mut rec) = self.locked(id)?;
        if rec.snapshots.iter().any(|s| s.name == name) {
            return Err(DriverError::InvalidSpec {
                field: "snapshot name",
                reason: format!("instance `{id}` already has a snapshot `{name}`"),
            });
        }
        let (vm_state, frozen) = match self.observe_rec(&rec) {
            o @ (Observed::Running | Observed::Paused) => {
                // Frozen file systems make the disk part clean on its own (for a revert of a
                // stopped VM); a paused guest cannot freeze, its snapshot is still whole with
                // its memory.
                let frozen = o == Observed::Running
                    && self
                        .agent(&rec)
                        .and_then(|mut ga| {
                            ga.fsfreeze_freeze()
                                .map_err(|e| classify("snapshot", id, e))
                        })
                        .is_ok();
                let saved = self
                    .qmp(&rec, STATE_TIMEOUT)?
                    .hmp_silent(&format!("savevm {name}"))
                    .map_err(|e| classify("snapshot", id, e));
                if frozen {
                    self.agent(&rec)?
                        .fsfreeze_thaw()
                        .map_err(|e| classify("snapshot", id, e))?;
                }
                saved?;
                (true, frozen)
            }
            _ => {
                self.qemu_img(&rec, "snapshot", &["snapshot", "-c", name])?;
                (false, false)
            }
        };
        rec.snapshots.push(SnapRecord {
            name: name.to_string(),
            created: now_secs(),
            vm_state,
            frozen,
        });
        self.save(&rec)?;
        let size = self
            .snapshot_sizes(&rec)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .unwrap_or(0);
        Ok(SnapshotInfo {
            name: name.to_string(),
            size,
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
        let live = self.live(&rec).is_some();
        if live && snap.vm_state {
            let mut qmp = self.qmp(&rec, STATE_TIMEOUT)?;
            if let Err(e) = qmp.hmp_silent(&format!("loadvm {name}")) {
                // A failed loadvm leaves the VM stopped; let it carry on as it was.
                let _ = qmp.cont();
                return Err(classify("revert", id, e));
            }
            // loadvm restores the run state of the snapshot; a reverted instance runs.
            if !qmp
                .query_status()
                .map_err(|e| classify("revert", id, e))?
                .running
            {
                qmp.cont().map_err(|e| classify("revert", id, e))?;
            }
            drop(qmp);
            if snap.frozen {
                self.agent(&rec)?
                    .fsfreeze_thaw()
                    .map_err(|e| classify("revert", id, e))?;
            }
            return Ok(());
        }
        // Processes are discarded with the files they wrote: kill, don't wait.
        if live {
            self.stop_locked(&mut rec, StopMode::Kill)?;
        }
        self.qemu_img(&rec, "revert", &["snapshot", "-a", name])?;
        if live {
            self.start_locked(&mut rec)?;
        }
        Ok(())
    }

    fn remove(&self, id: &str, name: &str) -> Result<()> {
        let (_l, mut rec) = self.locked(id)?;
        if !rec.snapshots.iter().any(|s| s.name == name) {
            return Err(DriverError::NotFound {
                kind: "snapshot",
                id: format!("{id}/{name}"),
            });
        }
        if self.live(&rec).is_some() {
            self.qmp(&rec, STATE_TIMEOUT)?
                .hmp_silent(&format!("delvm {name}"))
                .map_err(|e| classify("remove snapshot", id, e))?;
        } else {
            self.qemu_img(&rec, "remove snapshot", &["snapshot", "-d", name])?;
        }
        rec.snapshots.retain(|s| s.name != name);
        self.save(&rec)
    }

    fn list(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        let rec = self.load(id)?;
        let sizes = self.snapshot_sizes(&rec);
        Ok(rec
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                // The saved memory; the disk part shares clusters with the overlay and has
                // no size of its own to report.
                size: sizes
                    .iter()
                    .find(|(n, _)| *n == s.name)
                    .map(|(_, b)| *b)
                    .unwrap_or(0),
            })
            .collect())
    }
}

/// A site network attachment as the guest's boot configures it.
pub(crate) fn static_ip(a: &crate::Attachment) -> StaticIp {
    StaticIp {
        address: a.address,
        prefix: a.prefix,
        gateway: a.gateway,
        nameservers: a.nameservers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(sh_quote(Path::new("/a'b")), r"'/a'\''b'");
    }

    #[test]
    fn snapshot_names() {
        assert!(snapshot_name_ok("s1.ok-_").is_ok());
        for bad in ["", ".x", "a b", "a;b", "vfarm-ckpt-1"] {
            assert!(snapshot_name_ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_instance_dirs_put_sockets_elsewhere() {
        let short = QemuDriver::new(Path::new("/d"), AccelChoice::Tcg);
        let (f, sd) = short.run_files("vm");
        assert_eq!(sd, None);
        assert_eq!(f.qmp_socket, Path::new("/d/qemu/instances/vm/qmp.sock"));
        let long = QemuDriver::new(&Path::new("/").join("x".repeat(80)), AccelChoice::Tcg);
        let (f, sd) = long.run_files("vm");
        let sd = sd.expect("a socket dir of its own");
        assert!(f.qga_socket.starts_with(&sd));
        assert!(f.qga_socket.as_os_str().len() <= MAX_SOCKET_PATH);
        // The disk and console stay in the instance dir.
        assert!(f.disk.starts_with(long.instance_dir("vm")));
    }
}
