//! Live migration of a running VM to another [`QemuDriver`]: another data dir on this machine
//! today, another node once the multi-host work connects drivers over the network.
//!
//! # How
//!
//! The destination prepares an instance dir of its own and starts QEMU with the source's
//! configuration (its own sockets, pidfile, console log and disk path) and `-incoming defer`,
//! then listens with `migrate-incoming` on `tcp:127.0.0.1:<free port>`. The source sends RAM
//! and device state with `migrate` (pre-copy: RAM is copied while the guest runs, then the
//! guest is paused for the last dirty pages, which is the downtime QEMU reports). The guest
//! keeps running throughout; the source QEMU ends, and its instance dir is removed, only after
//! the destination runs. Any failure before that kills the destination, removes its instance
//! dir and lets the source carry on as it was.
//!
//! # Storage
//!
//! - **Copied** (default), as libvirt does it: the destination makes a new overlay on the
//!   same base image and exports it writable over NBD (`nbd-server-start` +
//!   `block-export-add`); the source mirrors its overlay into it (`drive-mirror`, `sync: top`:
//!   only what the overlay holds, the base is the same on both sides; `copy-mode:
//!   write-blocking`, so once the mirror is ready every guest write reaches both disks before
//!   it completes). The RAM migration starts only when the mirror is ready and runs with
//!   `pause-before-switchover`: with the guest paused, the mirror is ended (`block-job-cancel`
//!   of a ready mirror leaves the target a point-in-time copy of that instant) and then the
//!   switchover continues. The block-migration flag of `migrate` (`blk`/`inc`) would also do
//!   it in QEMU 7.2, but it is deprecated and copies the disk through the RAM stream; the NBD
//!   route is the maintained one. Internal snapshots are not carried: a mirror copies the
//!   guest-visible disk only, not the overlay's qcow2 snapshot tables. A VM with snapshots or
//!   checkpoints is therefore refused (with their names) instead of losing them silently; use
//!   shared storage to keep them.
//! - **Shared**: both QEMUs open the same overlay file. On one machine the destination's
//!   instance dir gets a hard link to the source's overlay (same inode, so QEMU's image locks
//!   hand over exactly as on shared storage: the incoming side keeps the image inactive until
//!   the switchover); removing the source's instance dir then leaves the file to the
//!   destination. Snapshots and checkpoints stay in the overlay and move with the record.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use vfarm_qemu::{create_overlay, DiskFormat, MigrationInfo, Qmp};

use super::errors::{classify, io_err, not_running};
use super::{QemuDriver, Record, QMP_TIMEOUT, STATE_TIMEOUT};
use crate::{validate_id, DriverError, ImageInput, Observed, Result};

/// Migration bandwidth cap. QEMU 7.2's default (32 MiB/s) is meant for shared networks; the
/// destination here is local (or on a cluster network), where the copy should be limited by
/// CPU, not by a throttle that stretches the pre-copy phase.
pub const DEFAULT_BANDWIDTH: u64 = 1 << 30;
/// The id of the disk mirror job and of the destination's NBD export.
const MIRROR_JOB: &str = "vfarm-migrate-disk0";
/// How long the destination may take to switch from `inmigrate` to its run state after the
/// source reported completion.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the destination's disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// The destination gets its own overlay, filled from the source's while the guest runs.
    Copied,
    /// Both sides use the same overlay file.
    Shared,
}

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub storage: Storage,
    /// The destination's own copy of the instance's image (its repository's), for the new
    /// overlay's backing file and the kernel. `None`: the source's files, which the
    /// destination can read because it is on the same machine.
    pub dest_image: Option<ImageInput>,
    /// Bytes per second for the RAM (and device state) stream.
    pub max_bandwidth: u64,
    /// Bound on the disk mirror and the RAM migration together.
    pub timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            storage: Storage::Copied,
            dest_image: None,
            max_bandwidth: DEFAULT_BANDWIDTH,
            timeout: STATE_TIMEOUT,
        }
    }
}

/// What a migration measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    pub storage: Storage,
    /// How long the guest was paused (QEMU's `downtime`, which includes, for copied storage,
    /// ending the disk mirror at the switchover).
    pub downtime_ms: u64,
    /// The RAM migration from `migrate` to completion (QEMU's `total-time`).
    pub ram_migration_ms: u64,
    /// Everything, from the start of this call until the source was gone: the destination's
    /// start, the disk copy, the RAM migration and the clean-up.
    pub total_ms: u64,
    /// Bytes of the RAM and device stream (`ram.transferred`).
    pub ram_bytes: u64,
    /// Bytes of disk the mirror copied (0 for shared storage).
    pub disk_bytes: u64,
    /// The instance's directory on the destination.
    pub destination: PathBuf,
    /// What could not be tidied up on the source after the VM had moved (it runs on the
    /// destination either way).
    pub warnings: Vec<String>,
}

/// Where the source stands, so a failure can be undone.
#[derive(Default)]
struct SourceProgress {
    caps_set: bool,
    mirror_started: bool,
    migrate_started: bool,
}

impl QemuDriver {
    /// Moves the running (or paused) VM `id` to `dest`, which gets the instance under the same
    /// id. On success the source's QEMU has ended and its instance dir is gone; on failure the
    /// source runs as before and the destination has nothing of it.
    pub fn migrate(
        &self,
        id: &str,
        dest: &QemuDriver,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport> {
        let begun = Instant::now();
        validate_id(id)?;
        if same_dir(&self.root, &dest.root) {
            return Err(DriverError::InvalidSpec {
                field: "destination",
                reason: format!(
                    "{} is this instance's own data dir; migrate to another one",
                    dest.root.parent().unwrap_or(&dest.root).display()
                ),
            });
        }
        let (_l, rec) = self.locked(id)?;
        let was_running = match self.observe_rec(&rec) {
            Observed::Running => true,
            Observed::Paused => false,
            o => return Err(not_running("migrate", id, o)),
        };
        if opts.storage == Storage::Copied {
            refuse_snapshots(&rec)?;
        }
        match dest.load(id) {
            Err(DriverError::NotFound { .. }) => {}
            Ok(_) | Err(_) => {
                return Err(DriverError::InvalidSpec {
                    field: "destination",
                    reason: format!(
                        "the destination already has an instance `{id}` ({})",
                        dest.instance_dir(id).display()
                    ),
                })
            }
        }
        let ddir = dest.instance_dir(id);
        if ddir.exists() {
            // A leftover of a destination that died half-way (no record): start over.
            std::fs::remove_dir_all(&ddir).map_err(|e| io_err("migrate", id, ddir.display(), e))?;
        }
        std::fs::create_dir_all(&ddir).map_err(|e| io_err("migrate", id, ddir.display(), e))?;
        let out = self.migrate_into(&rec, dest, opts, was_running, begun);
        if out.is_err() {
            dest.forget_half_migrated(id);
        }
        out
    }

    fn migrate_into(
        &self,
        rec: &Record,
        dest: &QemuDriver,
        opts: &MigrateOptions,
        was_running: bool,
        begun: Instant,
    ) -> Result<MigrationReport> {
        let id = &rec.id;
        let _dl = dest.lock(id)?;
        let mut drec = dest.record_for(self, rec, opts)?;
        let mut incoming = drec.vm.clone();
        incoming.incoming = Some("defer".into());
        let (dproc, dguard) = dest.spawn(&mut drec, &incoming)?;
        let dck = |e: vfarm_qemu::Error| classify("migrate (destination)", id, e);
        let mut dqmp =
            Qmp::connect_retry(&drec.vm.qmp_socket, QMP_TIMEOUT, QMP_TIMEOUT).map_err(dck)?;
        let nbd_port = if opts.storage == Storage::Copied {
            let node = dqmp.block_node_name("disk0").map_err(dck)?;
            let port = free_port(id)?;
            dqmp.execute(
                "nbd-server-start",
                Some(json!({ "addr": { "type": "inet",
                    "data": { "host": "127.0.0.1", "port": port.to_string() } } })),
            )
            .map_err(dck)?;
            dqmp.execute(
                "block-export-add",
                Some(json!({ "type": "nbd", "id": MIRROR_JOB, "node-name": node,
                    "name": "disk0", "writable": true })),
            )
            .map_err(dck)?;
            Some(port)
        } else {
            None
        };
        let ram_port = free_port(id)?;
        let uri = format!("tcp:127.0.0.1:{ram_port}");
        dqmp.migrate_incoming(&uri).map_err(dck)?;

        let mut sqmp = self.qmp(rec, QMP_TIMEOUT)?;
        let mut progress = SourceProgress::default();
        let sent = send(&mut sqmp, &mut progress, nbd_port, &uri, opts, id);
        let sent = sent.and_then(|s| {
            // The guest runs on the destination from here (or stays paused, as it was).
            let want = if was_running { "running" } else { "paused" };
            dqmp.wait_status(want, SWITCHOVER_TIMEOUT)
                .map(|_| s)
                .map_err(dck)
        });
        let (info, disk_bytes) = match sent {
            Ok(s) => s,
            Err(e) => {
                // The destination goes first, so the source never runs beside a live copy.
                drop(dqmp);
                drop(dguard);
                let _ = dproc.wait_gone(QMP_TIMEOUT);
                self.recover_source(&mut sqmp, &progress, was_running);
                return Err(e);
            }
        };
        if nbd_port.is_some() {
            // Nothing writes to the export any more; a failure here leaves an idle NBD server
            // in a running VM, not worth undoing the migration for.
            let _ = dqmp.execute("nbd-server-stop", None);
        }
        dguard.disarm();
        drop(dqmp);

        // The point of no return: the guest runs on the destination only. Nothing below may
        // fail the migration (the caller would remove the destination); what cannot be
        // tidied up is reported as a warning.
        let mut warnings = Vec::new();
        // The source's turn to go. It is paused (postmigrate) and its disk was handed over.
        if let Some(p) = self.live(rec) {
            let _ = sqmp.quit();
            if p.wait_gone(QMP_TIMEOUT).is_err() {
                if let Err(e) = p.kill() {
                    warnings.push(format!(
                        "the source QEMU (pid {}) could not be ended: {e}",
                        p.pid
                    ));
                }
            }
            let _ = p.remove_pidfile();
        } else {
            drop(sqmp);
        }
        // Checkpoint files kept in the source's instance dir go with the instance.
        let mut moved = false;
        for c in drec.checkpoints.iter_mut() {
            if !c.path.starts_with(self.instance_dir(id)) {
                continue;
            }
            if let Some(name) = c.path.file_name() {
                let to = dest.instance_dir(id).join(name);
                match move_file(&c.path, &to) {
                    Ok(()) => {
                        c.path = to;
                        moved = true;
                    }
                    Err(e) => warnings.push(format!(
                        "checkpoint {} could not be moved to {}: {e}",
                        c.path.display(),
                        to.display()
                    )),
                }
            }
        }
        if moved {
            if let Err(e) = dest.save(&drec) {
                warnings.push(format!("the destination's record was not updated: {e}"));
            }
        }
        warnings.extend(self.remove_instance_files(rec));
        Ok(MigrationReport {
            storage: opts.storage,
            downtime_ms: info.downtime.unwrap_or(0),
            ram_migration_ms: info.total_time.unwrap_or(0),
            total_ms: begun.elapsed().as_millis() as u64,
            ram_bytes: info.ram.map(|r| r.transferred).unwrap_or(0),
            disk_bytes,
            destination: dest.instance_dir(id),
            warnings,
        })
    }

    /// The destination's record: the source's, with this driver's paths, a disk of its own
    /// (copied) or a link to the same file (shared), and fresh host ports for forwards.
    fn record_for(&self, src: &QemuDriver, rec: &Record, opts: &MigrateOptions) -> Result<Record> {
        let id = &rec.id;
        let (files, sock_dir) = self.run_files(id);
        let mut drec = rec.clone();
        drec.sock_dir = sock_dir;
        drec.process = None;
        drec.exit = None;
        drec.vm.qmp_socket = files.qmp_socket.clone();
        if drec.vm.qga_socket.is_some() {
            drec.vm.qga_socket = Some(files.qga_socket.clone());
        }
        drec.vm.pidfile = Some(files.pidfile.clone());
        // The console log continues where the source's ended: the boot log stays with the VM.
        if let Some(log) = &rec.vm.serial_log {
            match std::fs::copy(log, &files.serial_log) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    File::create(&files.serial_log)
                        .map_err(|e| io_err("migrate", id, files.serial_log.display(), e))?;
                }
                Err(e) => return Err(io_err("migrate", id, files.serial_log.display(), e)),
            }
            drec.vm.serial_log = Some(files.serial_log.clone());
        }
        if let Some(img) = &opts.dest_image {
            // The image's boot files are the destination's copies (the full profile boots
            // the image's own initramfs too).
            if let Some(k) = drec.vm.kernel.as_mut() {
                if let (Some(theirs), Some(ours)) = (&rec.spec.image.kernel, &img.kernel) {
                    if k.kernel == *theirs {
                        k.kernel = ours.clone();
                    }
                }
                if let (Some(theirs), Some(ours)) = (&rec.spec.image.initrd, &img.initrd) {
                    if k.initrd.as_ref() == Some(theirs) {
                        k.initrd = Some(ours.clone());
                    }
                }
            }
            drec.spec.image = img.clone();
        }
        // Other disks of the instance (the full profile's cloud-init seed) live in its dir:
        // the destination gets its own copy of a read-only one and shares a writable one;
        // only the main disk is mirrored, so a writable extra disk cannot be copied.
        for d in drec.vm.extra_disks.iter_mut() {
            let Ok(rel) = d.path.strip_prefix(src.instance_dir(id)) else {
                continue;
            };
            let to = self.instance_dir(id).join(rel);
            let done = match (d.read_only, opts.storage) {
                (true, _) => std::fs::copy(&d.path, &to).map(drop),
                (false, Storage::Shared) => std::fs::hard_link(&d.path, &to),
                (false, Storage::Copied) => {
                    return Err(DriverError::InvalidSpec {
                        field: "storage",
                        reason: format!(
                            "instance `{id}` has a second writable disk ({}), which a copied \
                             migration does not carry; migrate with shared storage",
                            d.path.display()
                        ),
                    })
                }
            };
            done.map_err(|e| io_err("migrate", id, to.display(), e))?;
            d.path = to;
        }
        // The initramfs is vfarm's own (made from the image): the destination keeps a copy
        // in its cache, so the VM can boot again there once the source's data dir is gone.
        if let Some(k) = drec.vm.kernel.as_mut() {
            if let Some(initrd) = k.initrd.as_mut() {
                if initrd.starts_with(src.root.join("initramfs")) {
                    *initrd = self.copy_initramfs(id, initrd)?;
                }
            }
        }
        // A forwarded host port is held by the source until it ends: the destination listens
        // on new ones (on a remote node the same port would do; here it cannot).
        if let Some(net) = drec.vm.net.as_mut() {
            for f in &mut net.hostfwd {
                f.host_port = free_port(id)?;
            }
        }
        let src_disk = Self::disk(rec).to_path_buf();
        match opts.storage {
            Storage::Shared => {
                std::fs::hard_link(&src_disk, &files.disk).map_err(|e| {
                    if e.raw_os_error() == Some(18) {
                        // EXDEV
                        DriverError::InvalidSpec {
                            field: "storage",
                            reason: format!(
                                "shared storage needs the destination's data dir on the same \
                                 file system as the source's ({} and {} are not); migrate with \
                                 copied storage instead",
                                src_disk.display(),
                                files.disk.display()
                            ),
                        }
                    } else {
                        io_err("migrate", id, files.disk.display(), e)
                    }
                })?;
            }
            Storage::Copied => {
                let info = src.qemu_img(rec, "migrate", &["info", "--output=json", "-U"])?;
                let v: serde_json::Value =
                    serde_json::from_str(&info).map_err(|e| DriverError::Backend {
                        op: "migrate",
                        id: id.clone(),
                        detail: format!("qemu-img info of the source disk: {e}"),
                        retryable: false,
                        source: None,
                    })?;
                let size = v["virtual-size"].as_u64();
                let (base, format) = match &opts.dest_image {
                    Some(img) => dest_base(img)?,
                    None => {
                        let format = match v["backing-filename-format"].as_str() {
                            Some("raw") => DiskFormat::Raw,
                            _ => DiskFormat::Qcow2,
                        };
                        (rec.base.clone(), format)
                    }
                };
                let qemu_img = Self::tool(vfarm_qemu::tools::QEMU_IMG)?;
                create_overlay(&qemu_img, &base, format, &files.disk, size)
                    .map_err(|e| classify("migrate", id, e))?;
                drec.base = base;
            }
        }
        if let Some(d) = drec.vm.disk.as_mut() {
            d.path = files.disk.clone();
        }
        Ok(drec)
    }

    /// Copies an initramfs into this driver's cache under the same name (it is named by the
    /// kernel version it was made for), atomically.
    fn copy_initramfs(&self, id: &str, from: &Path) -> Result<PathBuf> {
        let dir = self.root.join("initramfs");
        let name = from.file_name().unwrap_or_default();
        let to = dir.join(name);
        if to.is_file() {
            return Ok(to);
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_err("migrate", id, dir.display(), e))?;
        let tmp = dir.join(format!(
            ".{}.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(from, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &to))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_err("migrate", id, to.display(), e)
            })?;
        Ok(to)
    }

    /// Undo what a failed migration did to the source: no migration, no mirror, no pause.
    fn recover_source(&self, qmp: &mut Qmp, progress: &SourceProgress, was_running: bool) {
        if progress.migrate_started {
            let _ = qmp.migrate_cancel();
            // Cancelling takes a moment; a migration that completed just before (and whose
            // destination then failed) ends in postmigrate, which `cont` below leaves.
            let deadline = Instant::now() + QMP_TIMEOUT;
            while Instant::now() < deadline {
                match qmp.query_migrate().map(|m| m.status) {
                    Ok(Some(s)) if matches!(s.as_str(), "cancelled" | "failed" | "completed") => {
                        break
                    }
                    Err(_) => break,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if progress.mirror_started {
            let _ = qmp.execute(
                "block-job-cancel",
                Some(json!({ "device": MIRROR_JOB, "force": true })),
            );
            let deadline = Instant::now() + QMP_TIMEOUT;
            while Instant::now() < deadline
                && qmp
                    .query_block_jobs()
                    .is_ok_and(|j| j.iter().any(|j| j.device == MIRROR_JOB))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if progress.caps_set {
            // Left on, a later checkpoint (a migration to a file) would stop half-way.
            let _ = qmp.migrate_set_capabilities(&[("pause-before-switchover", false)]);
        }
        if was_running && qmp.query_status().is_ok_and(|s| !s.running) {
            let _ = qmp.cont();
        }
    }

    /// Removes what a failed migration made on this (destination) side.
    fn forget_half_migrated(&self, id: &str) {
        let (files, sock_dir) = self.run_files(id);
        if let Ok(Some(p)) = vfarm_qemu::QemuProcess::from_pidfile(&files.pidfile) {
            let _ = p.kill();
        }
        if let Some(d) = sock_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(self.instance_dir(id));
    }

    /// The source side after a completed migration: everything of the instance goes.
    fn remove_instance_files(&self, rec: &Record) -> Vec<String> {
        self.remove_sockets(rec);
        let dirs = rec
            .sock_dir
            .iter()
            .cloned()
            .chain(std::iter::once(self.instance_dir(&rec.id)));
        dirs.filter_map(|d| match std::fs::remove_dir_all(&d) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot remove {}: {e}", d.display())),
        })
        .collect()
    }
}

/// Starts the disk mirror (copied storage) and the RAM migration on the source and waits
/// until both are done. Returns QEMU's final migration info and the disk bytes copied.
fn send(
    qmp: &mut Qmp,
    progress: &mut SourceProgress,
    nbd_port: Option<u16>,
    uri: &str,
    opts: &MigrateOptions,
    id: &str,
) -> Result<(MigrationInfo, u64)> {
    let ck = |e: vfarm_qemu::Error| classify("migrate", id, e);
    let deadline = Instant::now() + opts.timeout;
    let timed_out = |what: &str| {
        ck(vfarm_qemu::Error::Timeout {
            what: what.to_string(),
            after: opts.timeout,
        })
    };
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": opts.max_bandwidth })),
    )
    .map_err(ck)?;
    let mut disk_bytes = 0;
    if let Some(port) = nbd_port {
        progress.caps_set = true;
        qmp.migrate_set_capabilities(&[("pause-before-switchover", true)])
            .map_err(ck)?;
        qmp.execute(
            "drive-mirror",
            Some(json!({
                "device": "disk0",
                "job-id": MIRROR_JOB,
                "target": format!("nbd:127.0.0.1:{port}:exportname=disk0"),
                "format": "raw",
                "sync": "top",
                "mode": "existing",
                "copy-mode": "write-blocking",
            })),
        )
        .map_err(ck)?;
        progress.mirror_started = true;
        loop {
            let jobs = qmp.query_block_jobs().map_err(ck)?;
            match jobs.iter().find(|j| j.device == MIRROR_JOB) {
                Some(j) if j.ready => break,
                Some(_) => {}
                None => return Err(mirror_ended(qmp, id)),
            }
            if Instant::now() > deadline {
                return Err(timed_out("the disk copy"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    qmp.migrate(uri).map_err(ck)?;
    progress.migrate_started = true;
    let mut info = wait_migration_state(qmp, nbd_port.is_some(), deadline, id, opts.timeout)?;
    if nbd_port.is_some() {
        // Paused before the switchover: end the mirror (a ready mirror's cancel completes the
        // copy up to now), then let the migration finish.
        qmp.execute("block-job-cancel", Some(json!({ "device": MIRROR_JOB })))
            .map_err(ck)?;
        loop {
            let jobs = qmp.query_block_jobs().map_err(ck)?;
            if let Some(j) = jobs.iter().find(|j| j.device == MIRROR_JOB) {
                disk_bytes = j.offset;
            } else {
                break;
            }
            if Instant::now() > deadline {
                return Err(timed_out("ending the disk copy"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for ev in qmp.take_events() {
            if ev.event == "BLOCK_JOB_COMPLETED" && ev.data["device"] == MIRROR_JOB {
                if let Some(err) = ev.data["error"].as_str() {
                    return Err(DriverError::Backend {
                        op: "migrate",
                        id: id.to_string(),
                        detail: format!("the disk copy failed: {err}"),
                        retryable: false,
                        source: None,
                    });
                }
                disk_bytes = ev.data["offset"].as_u64().unwrap_or(disk_bytes);
            }
        }
        qmp.execute(
            "migrate-continue",
            Some(json!({ "state": "pre-switchover" })),
        )
        .map_err(ck)?;
        info = wait_migration_state(qmp, false, deadline, id, opts.timeout)?;
    }
    Ok((info, disk_bytes))
}

/// Polls `query-migrate` until it completed (or, with `pre_switchover`, paused before the
/// switchover).
fn wait_migration_state(
    qmp: &mut Qmp,
    pre_switchover: bool,
    deadline: Instant,
    id: &str,
    limit: Duration,
) -> Result<MigrationInfo> {
    let ck = |e: vfarm_qemu::Error| classify("migrate", id, e);
    loop {
        let info = qmp.query_migrate().map_err(ck)?;
        match info.status.as_deref() {
            Some("completed") => return Ok(info),
            Some("pre-switchover") if pre_switchover => return Ok(info),
            Some(s @ ("failed" | "cancelled")) => {
                return Err(DriverError::Backend {
                    op: "migrate",
                    id: id.to_string(),
                    detail: format!(
                        "the migration {s}: {}",
                        info.error_desc.as_deref().unwrap_or("no reason given")
                    ),
                    retryable: false,
                    source: None,
                })
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(ck(vfarm_qemu::Error::Timeout {
                what: "the migration".into(),
                after: limit,
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The mirror job vanished before it was ready: say why, from its completion event.
fn mirror_ended(qmp: &mut Qmp, id: &str) -> DriverError {
    let why = qmp
        .take_events()
        .into_iter()
        .find(|e| e.event == "BLOCK_JOB_COMPLETED" || e.event == "BLOCK_JOB_CANCELLED")
        .map(|e| e.data["error"].as_str().unwrap_or(&e.event).to_string())
        .unwrap_or_else(|| "it ended without an event".into());
    DriverError::Backend {
        op: "migrate",
        id: id.to_string(),
        detail: format!("the disk copy to the destination stopped before it was in sync: {why}"),
        retryable: false,
        source: None,
    }
}

/// A copied disk would lose the overlay's internal snapshots: refuse, naming them.
fn refuse_snapshots(rec: &Record) -> Result<()> {
    let mut names: Vec<String> = rec
        .snapshots
        .iter()
        .map(|s| format!("snapshot {}", s.name))
        .collect();
    names.extend(
        rec.checkpoints
            .iter()
            .map(|c| format!("checkpoint {}", c.path.display())),
    );
    if names.is_empty() {
        return Ok(());
    }
    Err(DriverError::InvalidSpec {
        field: "storage",
        reason: format!(
            "instance `{}` has {}: a copied disk carries only what the guest sees, not the \
             overlay's internal snapshots; remove them first (vfarm snapshot rm) or migrate \
             with shared storage, which keeps them",
            rec.id,
            names.join(", ")
        ),
    })
}

/// The destination image's disk (qcow2 preferred, as `prepare` does).
fn dest_base(img: &ImageInput) -> Result<(PathBuf, DiskFormat)> {
    let find = |f: vfarm_core::Format| img.files.iter().find(|x| x.format == f);
    find(vfarm_core::Format::Qcow2)
        .map(|f| (f.path.clone(), DiskFormat::Qcow2))
        .or_else(|| find(vfarm_core::Format::Raw).map(|f| (f.path.clone(), DiskFormat::Raw)))
        .ok_or_else(|| DriverError::InvalidSpec {
            field: "image",
            reason: format!(
                "the destination's image {} has no qcow2 or raw disk",
                img.id
            ),
        })
}

/// A TCP port on loopback that nothing listens on right now. QEMU binds it a moment later;
/// a race with another process taking it in between fails the migration cleanly.
fn free_port(id: &str) -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| io_err("migrate", id, "finding a free port on 127.0.0.1", e))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Rename, or copy and remove across file systems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(18) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_loopback_ports() {
        let p = free_port("x").unwrap();
        assert_ne!(p, 0);
        // Nothing listens there now, so it can be bound.
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
    }

    #[test]
    fn same_data_dir_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let a = QemuDriver::new(dir.path(), vfarm_qemu::AccelChoice::Tcg);
        let b = QemuDriver::new(&dir.path().join("."), vfarm_qemu::AccelChoice::Tcg);
        let e = a
            .migrate("vm1", &b, &MigrateOptions::default())
            .unwrap_err();
        assert_eq!(e.code(), "invalid_spec", "{e}");
        assert!(e.to_string().contains("own data dir"), "{e}");
    }

    #[test]
    fn unknown_instance_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let a = QemuDriver::new(&dir.path().join("a"), vfarm_qemu::AccelChoice::Tcg);
        let b = QemuDriver::new(&dir.path().join("b"), vfarm_qemu::AccelChoice::Tcg);
        let e = a
            .migrate("vm1", &b, &MigrateOptions::default())
            .unwrap_err();
        assert_eq!(e.code(), "not_found", "{e}");
        // The destination was not touched.
        assert!(!dir.path().join("b").exists());
    }
}
