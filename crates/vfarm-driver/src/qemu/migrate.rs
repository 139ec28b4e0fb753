//! Live migration of a running VM to another [`QemuDriver`]: another data dir on this machine,
//! or another node, where each side is driven by its own process.
//!
//! # Steps
//!
//! The migration is split into steps that each run on one side and exchange only serde
//! values (JSON over the node API; in memory for [`QemuDriver::migrate`]):
//!
//! 1. source [`QemuDriver::migration_source`]: checks, and a [`MigrationSource`] holding the
//!    instance's runtime record and the contents of the small files the destination cannot
//!    read on another machine (vfarm's own initramfs, a read-only seed disk, the console log
//!    tail, the SSH `known_hosts`);
//! 2. destination [`QemuDriver::prepare_incoming`]: its own instance dir and disk, QEMU
//!    started with the source's configuration (its own sockets, pidfile, console log and disk
//!    path) and `-incoming defer`, the NBD export and `migrate-incoming` on `tcp:<listen>:<free
//!    port>`; returns [`Incoming`] (where to send). QEMU outlives the call; until
//!    [`QemuDriver::finish_incoming`] the record is marked incoming and every normal operation
//!    answers "migrating";
//! 3. source [`QemuDriver::send_migration`]: the disk copy and the RAM migration, returning
//!    when the source reports `completed` (source QEMU paused in postmigrate, still there);
//!    a failure recovers the source before returning;
//! 4. destination [`QemuDriver::finish_incoming`] (waits for the run state, ends the NBD
//!    export, clears the mark) or [`QemuDriver::abort_incoming`] (kills and removes it all);
//! 5. source [`QemuDriver::complete_outgoing`] (QEMU quits, files go) or
//!    [`QemuDriver::abort_outgoing`] (the source runs on as before).
//!
//! The order matters: the source only goes once the destination runs, and on a failure the
//! destination is aborted before the source resumes, so the guest never runs twice.
//! RAM and device state go with `migrate` (pre-copy: RAM is copied while the guest runs,
//! then the guest is paused for the last dirty pages, which is the downtime QEMU reports).
//!
//! # Storage
//!
//! - **Copied** (default), as libvirt does it: the destination makes a new overlay on the
//!   same base image (its own copy of it, or the source's file on one machine) and exports it
//!   writable over NBD (`nbd-server-start` + `block-export-add`); the source mirrors its
//!   overlay into it (`drive-mirror`, `sync: top`: only what the overlay holds, the base is
//!   the same on both sides; `copy-mode: write-blocking`, so once the mirror is ready every
//!   guest write reaches both disks before it completes). The RAM migration starts only when
//!   the mirror is ready and runs with `pause-before-switchover`: with the guest paused, the
//!   mirror is ended (`block-job-cancel` of a ready mirror leaves the target a point-in-time
//!   copy of that instant) and then the switchover continues. The block-migration flag of
//!   `migrate` (`blk`/`inc`) would also do it in QEMU 7.2, but it is deprecated and copies
//!   the disk through the RAM stream; the NBD route is the maintained one. Internal snapshots
//!   are not carried: a mirror copies the guest-visible disk only, not the overlay's qcow2
//!   snapshot tables. A VM with snapshots or checkpoints is therefore refused (with their
//!   names) instead of losing them silently; use shared storage to keep them.
//! - **Shared**: both QEMUs open the same overlay file, which the destination must be able
//!   to read under the source's path (one machine, or a shared file system). The
//!   destination's instance dir gets a hard link to it (same inode, so QEMU's image locks
//!   hand over exactly as on shared storage: the incoming side keeps the image inactive until
//!   the switchover); removing the source's instance dir then leaves the file to the
//!   destination. Checkpoint files in the source's dir are linked the same way. Snapshots
//!   and checkpoints stay in the overlay and move with the record. Without a hard link
//!   (another file system) shared storage is refused: the disk lives in the source's instance
//!   dir, which goes when the migration completes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vfarm_qemu::{create_overlay, DiskFormat, MigrationInfo, Qmp};

use super::errors::{classify, io_err, not_running};
use super::{QemuDriver, Record, QMP_TIMEOUT, STATE_TIMEOUT};
use crate::{validate_id, DriverError, ImageInput, InstanceSpec, Observed, Result};

/// Migration bandwidth cap. QEMU 7.2's default (32 MiB/s) is meant for shared networks; the
/// destination here is local (or on a cluster network), where the copy should be limited by
/// CPU, not by a throttle that stretches the pre-copy phase.
pub const DEFAULT_BANDWIDTH: u64 = 1 << 30;
/// The id of the disk mirror job and of the destination's NBD export.
const MIRROR_JOB: &str = "vfarm-migrate-disk0";
/// How long the destination may take to switch from `inmigrate` to its run state after the
/// source reported completion.
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The console log's tail that goes with the VM (the boot log; older output stays behind).
const CONSOLE_CARRIED: u64 = 1 << 20;
/// Files carried inside a [`MigrationSource`] are small (a seed disk, an initramfs); a bigger
/// one means something unexpected is in the record.
const MAX_CARRIED: u64 = 64 << 20;

/// Where the destination's disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Everything the destination needs from the source, from
/// [`QemuDriver::migration_source`]. Paths in it are the source's; the destination reads
/// none of them except a shared disk, the source's image files when it has no copy of its own
/// (same machine), and files outside the source's data dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationSource {
    pub id: String,
    pub storage: Storage,
    /// Whether the guest ran (rather than being paused) when this was made.
    pub was_running: bool,
    /// The overlay's virtual size (copied storage: the new overlay gets the same).
    pub disk_size: Option<u64>,
    /// The format of the overlay's backing file (copied storage without a destination image).
    pub backing_format: Option<DiskFormat>,
    /// The source's instance dir and initramfs cache: files under them are carried in
    /// `files` (or, for a shared writable disk and checkpoints, hard-linked).
    pub source_dir: PathBuf,
    pub source_initramfs_dir: PathBuf,
    /// Contents of carried files, by their path on the source.
    pub files: BTreeMap<PathBuf, Carried>,
    /// The source's runtime record (QEMU configuration, spec, snapshots, checkpoints).
    record: Record,
}

impl MigrationSource {
    /// The instance's spec on the source (its image id tells which image the destination
    /// needs its own copy of).
    pub fn spec(&self) -> &InstanceSpec {
        &self.record.spec
    }
}

/// A carried file's bytes (base64 in JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried(#[serde(with = "b64")] pub Vec<u8>);

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Carried({} bytes)", self.0.len())
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// How the destination takes the VM in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingOptions {
    /// Must be the storage the [`MigrationSource`] was checked for.
    pub storage: Storage,
    /// The destination's own copy of the instance's image; `None`: the source's image files,
    /// which must be readable here (same machine).
    pub dest_image: Option<ImageInput>,
    /// The address of this host the source sends to (QEMU's NBD export and migration
    /// listener bind free ports on it).
    pub listen: IpAddr,
}

/// Where the source sends to, from [`QemuDriver::prepare_incoming`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub id: String,
    /// The writable NBD export `disk0` (copied storage).
    pub nbd: Option<SocketAddr>,
    /// QEMU's incoming migration listener.
    pub ram: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOptions {
    /// Bytes per second for the RAM (and device state) stream.
    pub max_bandwidth: u64,
    /// Bound on the disk mirror and the RAM migration together.
    pub timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            max_bandwidth: DEFAULT_BANDWIDTH,
            timeout: STATE_TIMEOUT,
        }
    }
}

/// What [`QemuDriver::send_migration`] measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReport {
    pub storage: Storage,
    /// Whether the guest ran when it was sent: the run state the destination must reach
    /// ([`QemuDriver::finish_incoming`]).
    pub was_running: bool,
    /// How long the guest was paused (QEMU's `downtime`, including, for copied storage,
    /// ending the disk mirror at the switchover).
    pub downtime_ms: u64,
    /// The RAM migration from `migrate` to completion (QEMU's `total-time`).
    pub ram_migration_ms: u64,
    /// The whole send: disk copy, RAM migration and switchover.
    pub send_ms: u64,
    /// Bytes of the RAM and device stream (`ram.transferred`).
    pub ram_bytes: u64,
    /// Bytes of disk the mirror copied (0 for shared storage).
    pub disk_bytes: u64,
}

/// The mark a record carries while its instance is being migrated: the instance is neither
/// a normal one here nor gone, so `load` answers "migrating".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub(super) enum MigrationMark {
    /// On the destination, from `prepare_incoming` to `finish_incoming`.
    Incoming { nbd: bool },
    /// On the source, from `send_migration` until `complete_outgoing`/`abort_outgoing`
    /// (`sent`: the source reported completion; the guest may run on the destination).
    Outgoing { was_running: bool, sent: bool },
}

/// `load`'s answer for a record under migration.
pub(super) fn refuse_migrating(rec: &Record) -> Result<()> {
    let what = match &rec.migration {
        None => return Ok(()),
        Some(MigrationMark::Incoming { .. }) => {
            "being migrated in to this host (incoming, not finished); it runs here once the \
             migration finishes, or goes when it is aborted"
        }
        Some(MigrationMark::Outgoing { sent: false, .. }) => {
            "being migrated to another host (sending)"
        }
        Some(MigrationMark::Outgoing { sent: true, .. }) => {
            "migrating: it was sent to another host and is paused here until the migration \
             is completed or aborted"
        }
    };
    Err(DriverError::Backend {
        op: "migrating",
        id: rec.id.clone(),
        detail: format!("instance is {what}"),
        retryable: true,
        source: None,
    })
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
    /// source runs as before and the destination has nothing of it. The steps of a migration
    /// between nodes, run here in one process with the destination listening on 127.0.0.1.
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
        let src = self.migration_source(id, opts.storage)?;
        let incoming = dest.prepare_incoming(
            &src,
            &IncomingOptions {
                storage: opts.storage,
                dest_image: opts.dest_image.clone(),
                listen: Ipv4Addr::LOCALHOST.into(),
            },
        )?;
        let send = SendOptions {
            max_bandwidth: opts.max_bandwidth,
            timeout: opts.timeout,
        };
        let sent = match self.send_migration(id, &incoming, &send) {
            Ok(s) => s,
            Err(e) => {
                // The source has recovered; the destination never ran.
                let _ = dest.abort_incoming(id);
                return Err(e);
            }
        };
        if let Err(e) = dest.finish_incoming(id, sent.was_running, SWITCHOVER_TIMEOUT) {
            // The destination goes first, so the source never runs beside a live copy.
            let _ = dest.abort_incoming(id);
            let _ = self.abort_outgoing(id);
            return Err(e);
        }
        // The point of no return: the guest runs on the destination only. What cannot be
        // tidied up on the source is reported as a warning.
        let warnings = self
            .complete_outgoing(id)
            .unwrap_or_else(|e| vec![e.to_string()]);
        Ok(MigrationReport {
            storage: sent.storage,
            downtime_ms: sent.downtime_ms,
            ram_migration_ms: sent.ram_migration_ms,
            total_ms: begun.elapsed().as_millis() as u64,
            ram_bytes: sent.ram_bytes,
            disk_bytes: sent.disk_bytes,
            destination: dest.instance_dir(id),
            warnings,
        })
    }

    /// Source, step 1: checks that the running (or paused) VM `id` can migrate with `storage`
    /// and returns what the destination needs. Changes nothing.
    pub fn migration_source(&self, id: &str, storage: Storage) -> Result<MigrationSource> {
        let (_l, rec) = self.locked(id)?;
        let was_running = match self.observe_rec(&rec) {
            Observed::Running => true,
            Observed::Paused => false,
            o => return Err(not_running("migrate", id, o)),
        };
        let dir = self.instance_dir(id);
        check_source(&rec, storage, &dir)?;
        let (mut disk_size, mut backing_format) = (None, None);
        if storage == Storage::Copied {
            let info = self.qemu_img(&rec, "migrate", &["info", "--output=json", "-U"])?;
            let v: serde_json::Value =
                serde_json::from_str(&info).map_err(|e| DriverError::Backend {
                    op: "migrate",
                    id: id.to_string(),
                    detail: format!("qemu-img info of the source disk: {e}"),
                    retryable: false,
                    source: None,
                })?;
            disk_size = v["virtual-size"].as_u64();
            backing_format = Some(match v["backing-filename-format"].as_str() {
                Some("raw") => DiskFormat::Raw,
                _ => DiskFormat::Qcow2,
            });
        }
        let initramfs_dir = self.root.join("initramfs");
        let mut files = BTreeMap::new();
        let mut carry = |path: &Path, tail: Option<u64>| -> Result<()> {
            let data =
                read_carried(path, tail).map_err(|e| io_err("migrate", id, path.display(), e))?;
            files.insert(path.to_path_buf(), Carried(data));
            Ok(())
        };
        for d in rec.vm.extra_disks.iter().filter(|d| d.read_only) {
            if d.path.starts_with(&dir) {
                carry(&d.path, None)?;
            }
        }
        if let Some(initrd) = rec.vm.kernel.as_ref().and_then(|k| k.initrd.as_ref()) {
            if initrd.starts_with(&initramfs_dir) {
                carry(initrd, None)?;
            }
        }
        if let Some(log) = rec.vm.serial_log.as_ref().filter(|l| l.is_file()) {
            carry(log, Some(CONSOLE_CARRIED))?;
        }
        if let Some(kh) = rec.full.as_ref().map(|f| &f.known_hosts) {
            if kh.is_file() && kh.starts_with(&dir) {
                carry(kh, None)?;
            }
        }
        Ok(MigrationSource {
            id: id.to_string(),
            storage,
            was_running,
            disk_size,
            backing_format,
            source_dir: dir,
            source_initramfs_dir: initramfs_dir,
            files,
            record: rec,
        })
    }

    /// Destination, step 2: makes the instance dir and disk and starts QEMU waiting for the
    /// migration on `opts.listen`. QEMU outlives this call; the instance is marked incoming
    /// until [`QemuDriver::finish_incoming`] or [`QemuDriver::abort_incoming`]. On failure
    /// nothing of the instance is left here.
    pub fn prepare_incoming(
        &self,
        src: &MigrationSource,
        opts: &IncomingOptions,
    ) -> Result<Incoming> {
        let id = src.id.as_str();
        validate_id(id)?;
        if src.record.id != src.id {
            return Err(DriverError::InvalidSpec {
                field: "source.id",
                reason: format!(
                    "the source names instance `{}` but carries the record of `{}`",
                    src.id, src.record.id
                ),
            });
        }
        if opts.storage != src.storage {
            return Err(DriverError::InvalidSpec {
                field: "storage",
                reason: format!(
                    "the source was checked for {} storage, not {}",
                    storage_name(src.storage),
                    storage_name(opts.storage)
                ),
            });
        }
        check_listen(opts.listen)?;
        let ddir = self.instance_dir(id);
        if same_dir(&ddir, &src.source_dir) {
            return Err(DriverError::InvalidSpec {
                field: "destination",
                reason: format!(
                    "{} is this instance's own data dir; migrate to another one",
                    self.root.parent().unwrap_or(&self.root).display()
                ),
            });
        }
        match self.load_raw(id) {
            Err(DriverError::NotFound { .. }) => {}
            there => {
                let what = match there {
                    Ok(r) if matches!(r.migration, Some(MigrationMark::Incoming { .. })) => {
                        " (an unfinished incoming migration: abort it first)"
                    }
                    _ => "",
                };
                return Err(DriverError::InvalidSpec {
                    field: "destination",
                    reason: format!(
                        "the destination already has an instance `{id}` ({}){what}",
                        ddir.display()
                    ),
                });
            }
        }
        if ddir.exists() {
            // A leftover of a destination that died half-way (no record): start over.
            std::fs::remove_dir_all(&ddir).map_err(|e| io_err("migrate", id, ddir.display(), e))?;
        }
        std::fs::create_dir_all(&ddir).map_err(|e| io_err("migrate", id, ddir.display(), e))?;
        let out = self.lock(id).and_then(|_l| self.incoming_into(src, opts));
        if out.is_err() {
            self.forget_half_migrated(id);
        }
        out
    }

    fn incoming_into(&self, src: &MigrationSource, opts: &IncomingOptions) -> Result<Incoming> {
        let id = src.id.as_str();
        let mut drec = self.record_for(src, opts)?;
        drec.migration = Some(MigrationMark::Incoming {
            nbd: opts.storage == Storage::Copied,
        });
        let mut incoming = drec.vm.clone();
        incoming.incoming = Some("defer".into());
        let (_dproc, dguard) = self.spawn(&mut drec, &incoming)?;
        let dck = |e: vfarm_qemu::Error| classify("migrate (destination)", id, e);
        let mut dqmp =
            Qmp::connect_retry(&drec.vm.qmp_socket, QMP_TIMEOUT, QMP_TIMEOUT).map_err(dck)?;
        let nbd = if opts.storage == Storage::Copied {
            let node = dqmp.block_node_name("disk0").map_err(dck)?;
            let addr = free_addr(id, opts.listen)?;
            dqmp.execute(
                "nbd-server-start",
                Some(json!({ "addr": { "type": "inet",
                    "data": { "host": addr.ip().to_string(), "port": addr.port().to_string() } } })),
            )
            .map_err(dck)?;
            dqmp.execute(
                "block-export-add",
                Some(json!({ "type": "nbd", "id": MIRROR_JOB, "node-name": node,
                    "name": "disk0", "writable": true })),
            )
            .map_err(dck)?;
            Some(addr)
        } else {
            None
        };
        let ram = free_addr(id, opts.listen)?;
        dqmp.migrate_incoming(&format!("tcp:{ram}")).map_err(dck)?;
        // QEMU waits for the source from here, past this call.
        dguard.disarm();
        Ok(Incoming {
            id: id.to_string(),
            nbd,
            ram,
        })
    }

    /// Source, step 3: sends the VM to the destination prepared by
    /// [`QemuDriver::prepare_incoming`]. Returns once the source reports the migration
    /// completed: the source QEMU is paused (postmigrate) and still there, and the instance
    /// answers "migrating" until [`QemuDriver::complete_outgoing`] or
    /// [`QemuDriver::abort_outgoing`]. On failure the source runs (or stays paused) as before.
    pub fn send_migration(
        &self,
        id: &str,
        to: &Incoming,
        opts: &SendOptions,
    ) -> Result<SendReport> {
        let begun = Instant::now();
        validate_id(id)?;
        if to.id != id {
            return Err(DriverError::InvalidSpec {
                field: "incoming.id",
                reason: format!("the destination prepared instance `{}`, not `{id}`", to.id),
            });
        }
        let l = self.lock(id)?;
        let mut rec = self.load(id)?;
        let was_running = match self.observe_rec(&rec) {
            Observed::Running => true,
            Observed::Paused => false,
            o => return Err(not_running("migrate", id, o)),
        };
        let storage = if to.nbd.is_some() {
            Storage::Copied
        } else {
            Storage::Shared
        };
        check_source(&rec, storage, &self.instance_dir(id))?;
        let mut qmp = self.qmp(&rec, QMP_TIMEOUT)?;
        rec.migration = Some(MigrationMark::Outgoing {
            was_running,
            sent: false,
        });
        self.save(&rec)?;
        let mut progress = SourceProgress::default();
        let sent = send(&mut qmp, &mut progress, to, opts, id);
        let (info, disk_bytes) = match sent {
            Ok(s) => s,
            Err(e) => {
                match self.recover_source(&mut qmp, &progress, was_running) {
                    // It went through after all (completed while failing, e.g. at the
                    // deadline): the guest may run on the destination, so the source stays
                    // paused and the send counts.
                    Some(info) => (info, 0),
                    None => {
                        rec.migration = None;
                        let _ = self.save(&rec);
                        return Err(e);
                    }
                }
            }
        };
        rec.migration = Some(MigrationMark::Outgoing {
            was_running,
            sent: true,
        });
        self.save(&rec)?;
        drop(l);
        Ok(SendReport {
            storage,
            was_running,
            downtime_ms: info.downtime.unwrap_or(0),
            ram_migration_ms: info.total_time.unwrap_or(0),
            send_ms: begun.elapsed().as_millis() as u64,
            ram_bytes: info.ram.map(|r| r.transferred).unwrap_or(0),
            disk_bytes,
        })
    }

    /// Destination, step 4: waits until the guest is in its run state here (`running`, or
    /// `paused` when it was paused on the source), ends the NBD export and makes the instance
    /// a normal one. On failure QEMU is left as it is: call [`QemuDriver::abort_incoming`].
    pub fn finish_incoming(&self, id: &str, was_running: bool, timeout: Duration) -> Result<()> {
        let (_l, mut rec) = self.locked_raw(id)?;
        let Some(MigrationMark::Incoming { nbd }) = rec.migration else {
            return Err(DriverError::InvalidSpec {
                field: "instance",
                reason: format!("instance `{id}` is not an incoming migration here"),
            });
        };
        let dck = |e: vfarm_qemu::Error| classify("migrate (destination)", id, e);
        if self.live(&rec).is_none() {
            return Err(DriverError::Backend {
                op: "migrate (destination)",
                id: id.to_string(),
                detail: format!(
                    "the destination QEMU has ended; console:\n{}",
                    self.console_tail(&rec)
                ),
                retryable: false,
                source: None,
            });
        }
        let mut qmp = self.qmp(&rec, QMP_TIMEOUT)?;
        let want = if was_running { "running" } else { "paused" };
        qmp.wait_status(want, timeout).map_err(dck)?;
        if nbd {
            // Nothing writes to the export any more; a failure here leaves an idle NBD server
            // in a running VM, not worth undoing the migration for.
            let _ = qmp.execute("nbd-server-stop", None);
        }
        rec.migration = None;
        self.save(&rec)
    }

    /// Destination: kills the incoming QEMU and removes everything of the instance here.
    /// Refuses an instance that is not an unfinished incoming migration; nothing there is
    /// not an error (a repeated abort).
    pub fn abort_incoming(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        if !self.instance_dir(id).is_dir() {
            return Ok(());
        }
        let l = self.lock(id)?;
        match self.load_raw(id) {
            Ok(rec) if !matches!(rec.migration, Some(MigrationMark::Incoming { .. })) => {
                return Err(DriverError::InvalidSpec {
                    field: "instance",
                    reason: format!(
                        "instance `{id}` is not an incoming migration here; destroy it instead"
                    ),
                })
            }
            // Incoming, or a half-made dir without a record.
            Ok(_) | Err(DriverError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.forget_half_migrated(id);
        drop(l);
        Ok(())
    }

    /// Source, step 5 after the destination finished: the paused source QEMU quits and the
    /// instance's files here go. Returns what could not be tidied up (the VM runs on the
    /// destination either way). Refuses an instance that was not sent.
    pub fn complete_outgoing(&self, id: &str) -> Result<Vec<String>> {
        let (_l, rec) = self.locked_raw(id)?;
        if !matches!(
            rec.migration,
            Some(MigrationMark::Outgoing { sent: true, .. })
        ) {
            return Err(DriverError::InvalidSpec {
                field: "instance",
                reason: format!(
                    "instance `{id}` has not been sent to another host; completing would end \
                     its only copy"
                ),
            });
        }
        let mut warnings = Vec::new();
        if let Some(p) = self.live(&rec) {
            match self.qmp(&rec, QMP_TIMEOUT) {
                Ok(mut qmp) => {
                    if qmp.query_status().is_ok_and(|s| s.running) {
                        return Err(DriverError::InvalidSpec {
                            field: "instance",
                            reason: format!(
                                "instance `{id}` runs here again (resumed after it was sent); \
                                 abort the migration on the destination instead"
                            ),
                        });
                    }
                    let _ = qmp.quit();
                }
                Err(e) => warnings.push(format!("the source QEMU's monitor: {e}")),
            }
            if p.wait_gone(QMP_TIMEOUT).is_err() {
                if let Err(e) = p.kill() {
                    warnings.push(format!(
                        "the source QEMU (pid {}) could not be ended: {e}",
                        p.pid
                    ));
                }
            }
            let _ = p.remove_pidfile();
        }
        warnings.extend(self.remove_instance_files(&rec));
        Ok(warnings)
    }

    /// Source, after a failed migration whose destination was aborted: no migration, no
    /// mirror, no pause; the VM runs on here as before. Nothing to undo is not an error.
    pub fn abort_outgoing(&self, id: &str) -> Result<()> {
        let (_l, mut rec) = self.locked_raw(id)?;
        let Some(MigrationMark::Outgoing { was_running, .. }) = rec.migration else {
            return Ok(());
        };
        if self.live(&rec).is_some() {
            let mut qmp = self.qmp(&rec, QMP_TIMEOUT)?;
            let all = SourceProgress {
                caps_set: true,
                mirror_started: true,
                migrate_started: true,
            };
            self.recover_source(&mut qmp, &all, was_running);
            if was_running && qmp.query_status().is_ok_and(|s| !s.running) {
                // A completed migration ends in postmigrate; the destination is gone.
                qmp.cont().map_err(|e| classify("migrate", id, e))?;
            }
        }
        rec.migration = None;
        self.save(&rec)
    }

    /// Lock the instance, then read its record whatever its migration mark.
    fn locked_raw(&self, id: &str) -> Result<(super::Lock, Record)> {
        validate_id(id)?;
        let l = self.lock(id)?;
        Ok((l, self.load_raw(id)?))
    }

    /// The destination's record: the source's, with this driver's paths, the carried files
    /// written here, a disk of its own (copied) or a link to the same file (shared), and
    /// fresh host ports for forwards.
    fn record_for(&self, src: &MigrationSource, opts: &IncomingOptions) -> Result<Record> {
        let rec = &src.record;
        let id = &rec.id;
        let dir = self.instance_dir(id);
        let carried = |path: &Path| -> Result<&[u8]> {
            src.files
                .get(path)
                .map(|c| c.0.as_slice())
                .ok_or_else(|| DriverError::InvalidSpec {
                    field: "source.files",
                    reason: format!("the source did not carry {}", path.display()),
                })
        };
        let write = |to: &Path, data: &[u8]| {
            std::fs::write(to, data).map_err(|e| io_err("migrate", id, to.display(), e))
        };
        let (files, sock_dir) = self.run_files(id);
        let mut drec = rec.clone();
        drec.migration = None;
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
            write(
                &files.serial_log,
                src.files.get(log).map_or(&[][..], |c| &c.0),
            )?;
            drec.vm.serial_log = Some(files.serial_log.clone());
        }
        match &opts.dest_image {
            Some(img) => {
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
            None => {
                // The source's image files serve: they must be readable here.
                let k = drec.vm.kernel.as_ref();
                let needed = k
                    .map(|k| &k.kernel)
                    .into_iter()
                    .chain(k.and_then(|k| k.initrd.as_ref()))
                    .filter(|p| !p.starts_with(&src.source_initramfs_dir))
                    .chain((opts.storage == Storage::Copied).then_some(&rec.base));
                for p in needed {
                    if !p.is_file() {
                        return Err(DriverError::InvalidSpec {
                            field: "dest_image",
                            reason: format!(
                                "the source's image file {} is not readable on this host; \
                                 give the destination its own copy of image {}",
                                p.display(),
                                rec.spec.image.id
                            ),
                        });
                    }
                }
            }
        }
        // Other disks of the instance (the full profile's cloud-init seed) live in its dir:
        // the destination gets its own copy of a read-only one and shares a writable one;
        // only the main disk is mirrored, so a writable extra disk cannot be copied.
        for d in drec.vm.extra_disks.iter_mut() {
            let Ok(rel) = d.path.strip_prefix(&src.source_dir) else {
                continue;
            };
            let to = dir.join(rel);
            match (d.read_only, opts.storage) {
                (true, _) => write(&to, carried(&d.path)?)?,
                (false, Storage::Shared) => link_shared(id, &d.path, &to)?,
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
            }
            d.path = to;
        }
        if let Some(full) = drec.full.as_mut() {
            if let Ok(rel) = full.seed.strip_prefix(&src.source_dir) {
                full.seed = dir.join(rel);
            }
            if let Ok(rel) = full.known_hosts.strip_prefix(&src.source_dir) {
                let to = dir.join(rel);
                if let Some(c) = src.files.get(&full.known_hosts) {
                    write(&to, &c.0)?;
                }
                full.known_hosts = to;
            }
        }
        // The initramfs is vfarm's own (made from the image): the destination keeps a copy
        // in its cache, so the VM can boot again here once the source's is gone.
        if let Some(k) = drec.vm.kernel.as_mut() {
            if let Some(initrd) = k.initrd.as_mut() {
                if initrd.starts_with(&src.source_initramfs_dir) {
                    let data = carried(initrd)?;
                    *initrd = self.store_initramfs(id, initrd, data)?;
                }
            }
        }
        // A forwarded host port is held by the source until it ends: the destination listens
        // on new ones (on a remote node the same port would do; here it cannot).
        if let Some(net) = drec.vm.net.as_mut() {
            for f in &mut net.hostfwd {
                f.host_port = free_addr(id, f.host_addr.into())?.port();
                if f.guest_port == 22 {
                    if let Some(full) = drec.full.as_mut() {
                        full.ssh_port = f.host_port;
                    }
                }
            }
        }
        let src_disk = Self::disk(rec).to_path_buf();
        match opts.storage {
            Storage::Shared => {
                // The shared overlay names its backing file by the source's path.
                if !rec.base.is_file() {
                    return Err(DriverError::InvalidSpec {
                        field: "storage",
                        reason: format!(
                            "the shared overlay is backed by {}, which is not readable on this \
                             host; shared storage needs the image at the same path here",
                            rec.base.display()
                        ),
                    });
                }
                link_shared(id, &src_disk, &files.disk)?;
                // Checkpoint files in the source's dir stay with the instance.
                for c in drec.checkpoints.iter_mut() {
                    if let Ok(rel) = c.path.strip_prefix(&src.source_dir) {
                        let to = dir.join(rel);
                        link_shared(id, &c.path, &to)?;
                        c.path = to;
                    }
                }
            }
            Storage::Copied => {
                let (base, format) = match &opts.dest_image {
                    Some(img) => dest_base(img)?,
                    None => (
                        rec.base.clone(),
                        src.backing_format.unwrap_or(DiskFormat::Qcow2),
                    ),
                };
                let qemu_img = Self::tool(vfarm_qemu::tools::QEMU_IMG)?;
                create_overlay(&qemu_img, &base, format, &files.disk, src.disk_size)
                    .map_err(|e| classify("migrate", id, e))?;
                drec.base = base;
            }
        }
        if let Some(d) = drec.vm.disk.as_mut() {
            d.path = files.disk.clone();
        }
        Ok(drec)
    }

    /// Writes an initramfs into this driver's cache under the same name (it is named by the
    /// kernel version it was made for), atomically.
    fn store_initramfs(&self, id: &str, from: &Path, data: &[u8]) -> Result<PathBuf> {
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
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, &to))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_err("migrate", id, to.display(), e)
            })?;
        Ok(to)
    }

    /// Undo what a failed migration did to the source: no migration, no mirror, no pause.
    /// Returns the migration's info instead when it turns out to have completed (the guest
    /// may run on the destination: the source must stay paused).
    fn recover_source(
        &self,
        qmp: &mut Qmp,
        progress: &SourceProgress,
        was_running: bool,
    ) -> Option<MigrationInfo> {
        let mut completed = None;
        if progress.migrate_started {
            let _ = qmp.migrate_cancel();
            // Cancelling takes a moment.
            let deadline = Instant::now() + QMP_TIMEOUT;
            while Instant::now() < deadline {
                match qmp.query_migrate() {
                    Ok(m) if m.status.as_deref() == Some("completed") => {
                        completed = Some(m);
                        break;
                    }
                    Ok(m) if matches!(m.status.as_deref(), None | Some("cancelled" | "failed")) => {
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
        if completed.is_none() && was_running && qmp.query_status().is_ok_and(|s| !s.running) {
            let _ = qmp.cont();
        }
        completed
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

/// What a source must satisfy for `storage`: a copied disk carries neither the overlay's
/// internal snapshots nor a second writable disk in the instance dir.
fn check_source(rec: &Record, storage: Storage, dir: &Path) -> Result<()> {
    if storage == Storage::Shared {
        return Ok(());
    }
    refuse_snapshots(rec)?;
    if let Some(d) = rec
        .vm
        .extra_disks
        .iter()
        .find(|d| !d.read_only && d.path.starts_with(dir))
    {
        return Err(DriverError::InvalidSpec {
            field: "storage",
            reason: format!(
                "instance `{}` has a second writable disk ({}), which a copied migration does \
                 not carry; migrate with shared storage",
                rec.id,
                d.path.display()
            ),
        });
    }
    Ok(())
}

/// Starts the disk mirror (copied storage) and the RAM migration on the source and waits
/// until both are done. Returns QEMU's final migration info and the disk bytes copied.
fn send(
    qmp: &mut Qmp,
    progress: &mut SourceProgress,
    to: &Incoming,
    opts: &SendOptions,
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
    if let Some(nbd) = to.nbd {
        progress.caps_set = true;
        qmp.migrate_set_capabilities(&[("pause-before-switchover", true)])
            .map_err(ck)?;
        qmp.execute(
            "drive-mirror",
            Some(json!({
                "device": "disk0",
                "job-id": MIRROR_JOB,
                "target": nbd_target(nbd),
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
    qmp.migrate(&format!("tcp:{}", to.ram)).map_err(ck)?;
    progress.migrate_started = true;
    let mut info = wait_migration_state(qmp, to.nbd.is_some(), deadline, id, opts.timeout)?;
    if to.nbd.is_some() {
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

/// The `drive-mirror` target for an NBD export named `disk0` (an IPv6 address needs the URI
/// form, whose brackets the legacy `nbd:HOST:PORT` syntax cannot hold).
fn nbd_target(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("nbd:{}:{}:exportname=disk0", a.ip(), a.port()),
        SocketAddr::V6(_) => format!("nbd://{addr}/disk0"),
    }
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
    let id = &rec.id;
    let (mut names, mut removals): (Vec<String>, Vec<String>) = rec
        .snapshots
        .iter()
        .map(|s| {
            (
                format!("snapshot {}", s.name),
                format!("vfarm snapshot rm {id} {}", s.name),
            )
        })
        .unzip();
    for c in &rec.checkpoints {
        names.push(format!("checkpoint {}", c.path.display()));
        removals.push(format!("vfarm checkpoint rm {id} {}", c.path.display()));
    }
    if names.is_empty() {
        return Ok(());
    }
    Err(DriverError::InvalidSpec {
        field: "storage",
        reason: format!(
            "instance `{id}` has {}: a copied disk carries only what the guest sees, not the \
             overlay's internal snapshots; migrate with --shared-storage (a destination on \
             the same filesystem), which keeps them, or remove them first: {}",
            names.join(", "),
            removals.join("; ")
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
            field: "dest_image",
            reason: format!(
                "the destination's image {} has no qcow2 or raw disk",
                img.id
            ),
        })
}

/// A shared file (the overlay, a writable extra disk, a checkpoint) in the destination's dir:
/// a hard link, so removing the source's dir leaves it to the destination.
fn link_shared(id: &str, from: &Path, to: &Path) -> Result<()> {
    std::fs::hard_link(from, to).map_err(|e| match e.raw_os_error() {
        // ENOENT
        Some(2) => DriverError::InvalidSpec {
            field: "storage",
            reason: format!(
                "{} is not readable on this host: shared storage needs the source's files at \
                 the same path here (a shared file system); migrate with copied storage",
                from.display()
            ),
        },
        // EXDEV
        Some(18) => DriverError::InvalidSpec {
            field: "storage",
            reason: format!(
                "shared storage needs the destination's data dir on the same file system as \
                 the source's ({} and {} are not); migrate with copied storage instead",
                from.display(),
                to.display()
            ),
        },
        _ => io_err("migrate", id, to.display(), e),
    })
}

/// `listen` must be an address the source can reach: not a wildcard or multicast address.
fn check_listen(ip: IpAddr) -> Result<()> {
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(DriverError::InvalidSpec {
            field: "listen",
            reason: format!(
                "{ip} is not an address the source can send to; give one of this host's \
                 addresses"
            ),
        });
    }
    Ok(())
}

/// A free TCP port on `ip`. QEMU binds it a moment later; a race with another process taking
/// it in between fails the migration cleanly.
fn free_addr(id: &str, ip: IpAddr) -> Result<SocketAddr> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                DriverError::InvalidSpec {
                    field: "listen",
                    reason: format!("{ip} is not an address of this host"),
                }
            } else {
                io_err("migrate", id, format!("finding a free port on {ip}"), e)
            }
        })
}

/// A file's bytes, or its last `tail` bytes, refusing files too large to carry.
fn read_carried(path: &Path, tail: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let from = tail.map_or(0, |t| len.saturating_sub(t));
    if len - from > MAX_CARRIED {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {MAX_CARRIED} a migration carries"
        )));
    }
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut data = Vec::with_capacity((len - from) as usize);
    f.read_to_end(&mut data)?;
    Ok(data)
}

fn storage_name(s: Storage) -> &'static str {
    match s {
        Storage::Copied => "copied",
        Storage::Shared => "shared",
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Network, VmSetup};
    use vfarm_qemu::{Accel, Disk, Machine, VmConfig};

    #[test]
    fn free_addrs_are_on_the_listen_address() {
        let a = free_addr("x", Ipv4Addr::LOCALHOST.into()).unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(a.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        // Nothing listens there now, so it can be bound.
        TcpListener::bind(a).unwrap();
    }

    #[test]
    fn same_data_dir_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let a = QemuDriver::new(dir.path(), vfarm_qemu::AccelChoice::Tcg);
        let b = QemuDriver::new(&dir.path().join("."), vfarm_qemu::AccelChoice::Tcg);
        let e = a
            .migrate("vm1", &b, &MigrateOptions::default())
            .unwrap_err();
        assert_eq!(e.code().as_str(), "invalid_spec", "{e}");
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
        assert_eq!(e.code().as_str(), "not_found", "{e}");
        // The destination was not touched.
        assert!(!dir.path().join("b").exists());
    }

    /// A record as `prepare` writes it, with files under `dir` (nothing runs).
    fn record(d: &QemuDriver, id: &str) -> Record {
        let dir = d.instance_dir(id);
        let mut vm = VmConfig::new(id, Machine::Microvm, Accel::Tcg, dir.join("qmp.sock"));
        vm.disk = Some(Disk {
            path: dir.join("disk.qcow2"),
            format: DiskFormat::Qcow2,
            read_only: false,
        });
        vm.extra_disks = vec![Disk {
            path: dir.join("seed.img"),
            format: DiskFormat::Raw,
            read_only: true,
        }];
        vm.pidfile = Some(dir.join("qemu.pid"));
        vm.serial_log = Some(dir.join("console.log"));
        Record {
            version: super::super::RECORD_VERSION,
            driver: "qemu".into(),
            id: id.into(),
            spec: InstanceSpec {
                id: id.into(),
                image: ImageInput {
                    id: "img".into(),
                    files: vec![],
                    kernel: Some("/images/img/vmlinuz".into()),
                    initrd: None,
                },
                hostname: "h".into(),
                cpus: None,
                memory: None,
                pids: None,
                disk: None,
                env: vec![],
                command: vec![],
                network: Network::None,
                user_namespace: false,
                id_base: 0,
                volatile: false,
                vm: VmSetup::default(),
            },
            accel: Accel::Tcg,
            accel_note: None,
            vm,
            base: "/images/img/disk.qcow2".into(),
            sock_dir: None,
            started: true,
            process: None,
            exit: None,
            console_offset: 0,
            snapshots: vec![],
            checkpoints: vec![],
            full: None,
            migration: None,
        }
    }

    fn source(d: &QemuDriver, id: &str) -> MigrationSource {
        let rec = record(d, id);
        let mut files = BTreeMap::new();
        files.insert(
            rec.vm.extra_disks[0].path.clone(),
            Carried(vec![0, 1, 2, 255, b'x']),
        );
        MigrationSource {
            id: id.into(),
            storage: Storage::Copied,
            was_running: true,
            disk_size: Some(2 << 30),
            backing_format: Some(DiskFormat::Qcow2),
            source_dir: d.instance_dir(id),
            source_initramfs_dir: d.root.join("initramfs"),
            files,
            record: rec,
        }
    }

    #[test]
    fn migration_values_survive_json() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(dir.path(), vfarm_qemu::AccelChoice::Tcg);
        let src = source(&d, "vm1");
        let text = serde_json::to_string(&src).unwrap();
        // Binary contents travel as base64 text.
        assert!(text.contains("\"AAEC/3g=\""), "{text}");
        let back: MigrationSource = serde_json::from_str(&text).unwrap();
        assert_eq!(back, src);
        assert_eq!(back.spec().image.id, "img");

        let inc = Incoming {
            id: "vm1".into(),
            nbd: Some("127.0.0.1:10809".parse().unwrap()),
            ram: "[::1]:4444".parse().unwrap(),
        };
        let back: Incoming = serde_json::from_str(&serde_json::to_string(&inc).unwrap()).unwrap();
        assert_eq!(back, inc);
        let opts = IncomingOptions {
            storage: Storage::Shared,
            dest_image: None,
            listen: "10.1.2.3".parse().unwrap(),
        };
        let text = serde_json::to_string(&opts).unwrap();
        assert!(text.contains("\"shared\""), "{text}");
        assert_eq!(
            serde_json::from_str::<IncomingOptions>(&text).unwrap(),
            opts
        );
        let send = SendOptions::default();
        assert_eq!(
            serde_json::from_str::<SendOptions>(&serde_json::to_string(&send).unwrap()).unwrap(),
            send
        );
        let bad = text.replace("\"shared\"", "\"mirrored\"");
        let e = serde_json::from_str::<IncomingOptions>(&bad).unwrap_err();
        assert!(e.to_string().contains("mirrored"), "{e}");
    }

    #[test]
    fn nbd_targets_for_both_address_families() {
        assert_eq!(
            nbd_target("127.0.0.1:10809".parse().unwrap()),
            "nbd:127.0.0.1:10809:exportname=disk0"
        );
        assert_eq!(
            nbd_target("[fd00::2]:10809".parse().unwrap()),
            "nbd://[fd00::2]:10809/disk0"
        );
    }

    /// Bad incoming options are refused naming the field, and the destination stays empty.
    #[test]
    fn incoming_refusals_name_the_field_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = QemuDriver::new(&dir.path().join("a"), vfarm_qemu::AccelChoice::Tcg);
        let b = QemuDriver::new(&dir.path().join("b"), vfarm_qemu::AccelChoice::Tcg);
        let src = source(&a, "vm1");
        let opts = |storage, listen: &str| IncomingOptions {
            storage,
            dest_image: None,
            listen: listen.parse().unwrap(),
        };
        let field = |r: Result<Incoming>| match r {
            Err(DriverError::InvalidSpec { field, reason }) => (field, reason),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let (f, why) = field(b.prepare_incoming(&src, &opts(Storage::Shared, "127.0.0.1")));
        assert_eq!(f, "storage", "{why}");
        assert!(why.contains("copied"), "{why}");
        let (f, why) = field(b.prepare_incoming(&src, &opts(Storage::Copied, "0.0.0.0")));
        assert_eq!(f, "listen", "{why}");
        let (f, why) = field(b.prepare_incoming(&src, &opts(Storage::Copied, "::")));
        assert_eq!(f, "listen", "{why}");
        // The source's own data dir.
        let (f, why) = field(a.prepare_incoming(&src, &opts(Storage::Copied, "127.0.0.1")));
        assert_eq!(f, "destination", "{why}");
        let mut wrong = src.clone();
        wrong.id = "vm2".into();
        let (f, _) = field(b.prepare_incoming(&wrong, &opts(Storage::Copied, "127.0.0.1")));
        assert_eq!(f, "source.id");
        assert!(!dir.path().join("b").exists());

        // An instance of that id already there is never replaced.
        let mut there = record(&b, "vm1");
        there.started = false;
        std::fs::create_dir_all(b.instance_dir("vm1")).unwrap();
        b.save(&there).unwrap();
        let (f, why) = field(b.prepare_incoming(&src, &opts(Storage::Copied, "127.0.0.1")));
        assert_eq!(f, "destination", "{why}");
        assert_eq!(b.load("vm1").unwrap(), there);
        // Nor aborted as if it were an incoming migration.
        let e = b.abort_incoming("vm1").unwrap_err();
        assert_eq!(e.code().as_str(), "invalid_spec", "{e}");
        assert!(b.instance_dir("vm1").join("runtime.json").is_file());
    }

    #[test]
    fn an_unfinished_migration_is_not_a_normal_instance() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(dir.path(), vfarm_qemu::AccelChoice::Tcg);
        std::fs::create_dir_all(d.instance_dir("vm1")).unwrap();
        let mut rec = record(&d, "vm1");
        rec.migration = Some(MigrationMark::Incoming { nbd: true });
        d.save(&rec).unwrap();
        use crate::Driver;
        let e = d.observe("vm1").unwrap_err();
        assert!(e.to_string().contains("migrated in"), "{e}");
        assert!(e.is_retryable(), "{e}");
        assert!(d.list().unwrap().is_empty());
        // Not sent: completing would end the only copy.
        rec.migration = Some(MigrationMark::Outgoing {
            was_running: true,
            sent: false,
        });
        d.save(&rec).unwrap();
        let e = d.complete_outgoing("vm1").unwrap_err();
        assert_eq!(e.code().as_str(), "invalid_spec", "{e}");
        assert!(e.to_string().contains("only copy"), "{e}");
        assert!(d.instance_dir("vm1").is_dir());
        // An abort with no QEMU there just clears the mark.
        d.abort_outgoing("vm1").unwrap();
        assert_eq!(d.load("vm1").unwrap().migration, None);
        // A normal instance: send needs the destination for that id.
        let inc = Incoming {
            id: "vm2".into(),
            nbd: None,
            ram: "127.0.0.1:1".parse().unwrap(),
        };
        let e = d
            .send_migration("vm1", &inc, &SendOptions::default())
            .unwrap_err();
        assert!(
            matches!(
                e,
                DriverError::InvalidSpec {
                    field: "incoming.id",
                    ..
                }
            ),
            "{e}"
        );
        // A missing incoming instance aborts as a no-op.
        d.abort_incoming("vm9").unwrap();
    }

    #[test]
    fn copied_storage_refuses_snapshots_and_writable_extra_disks() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(dir.path(), vfarm_qemu::AccelChoice::Tcg);
        let idir = d.instance_dir("vm1");
        let mut rec = record(&d, "vm1");
        check_source(&rec, Storage::Copied, &idir).unwrap();
        rec.snapshots.push(super::super::SnapRecord {
            name: "s1".into(),
            created: 0,
            vm_state: true,
            frozen: false,
        });
        let e = check_source(&rec, Storage::Copied, &idir).unwrap_err();
        assert!(
            matches!(&e, DriverError::InvalidSpec { field: "storage", reason } if reason.contains("snapshot s1")),
            "{e}"
        );
        check_source(&rec, Storage::Shared, &idir).unwrap();
        rec.snapshots.clear();
        rec.vm.extra_disks[0].read_only = false;
        let e = check_source(&rec, Storage::Copied, &idir).unwrap_err();
        assert!(
            matches!(&e, DriverError::InvalidSpec { field: "storage", reason } if reason.contains("seed.img")),
            "{e}"
        );
    }

    #[test]
    fn carried_files_are_bounded_and_tails_are_tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_carried(&p, Some(4)).unwrap(), b"6789");
        assert_eq!(read_carried(&p, None).unwrap(), b"0123456789");
        let big = dir.path().join("big");
        File::create(&big)
            .unwrap()
            .set_len(MAX_CARRIED + 1)
            .unwrap();
        let e = read_carried(&big, None).unwrap_err();
        assert!(e.to_string().contains("carries"), "{e}");
    }
}
