//! `vfarm instance …`, `vfarm snapshot …` and `vfarm run …`: instances on this host.
//!
//! Every command first reconciles the store with what the driver observes (an instance whose
//! process ended while nobody watched becomes stopped/failed with its exit status), then asks
//! `vfarm_core::instance::next` whether the operation is legal, acts through the driver, and
//! records the transition (compare-and-set, so concurrent actors cannot both win).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use vfarm_core::instance::{
    next, parse_duration, Event, InstanceRequest, State, MAX_DURATION_SECS,
};
use vfarm_core::ByteSize;
use vfarm_driver::oci::{OciDriver, RuntimeChoice};
use vfarm_driver::qemu::{AccelChoice, AfterCheckpoint, QemuDriver};
use vfarm_driver::{
    BootProfile, Driver, DriverError, ExecIo, GuestFile, ImageFile, ImageInput, InstanceSpec,
    Network, Observed, StopMode, VmSetup,
};
use vfarm_proto::ErrorCode;
use vfarm_store::instances::{InstanceRow, SnapshotRow, StateChange};
use vfarm_store::{Store, StoreError};

use vfarm_api::instances::{
    BlockView, InstanceView, NetView, SnapshotView, SshView, StatsView, VmView,
};

use vfarm_auth::config::QuotaConfig;
use vfarm_auth::pool::HostnamePool;
use vfarm_auth::ServeConfig;
use vfarm_store::auth::Resources;

use crate::cmd::image::actor;
use crate::cmd::staging;
use crate::ctx::Ctx;

/// Exit status of `vfarm run` when the command was killed at its `--timeout` (as timeout(1)).
pub const TIMEOUT_EXIT: i32 = 124;
/// Exit status of `vfarm run` when it was interrupted (SIGINT/SIGTERM), as a shell reports.
pub const INTERRUPTED_EXIT: i32 = 130;
/// How long a graceful stop waits before killing.
const STOP_GRACE: &str = "10s";
/// Disposable instances expire after this unless told otherwise, so a `vfarm run` whose CLI
/// was killed is still reaped eventually.
const RUN_DEFAULT_EXPIRY: &str = "1d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetArg {
    /// Own network namespace with only loopback.
    None,
    /// The host's network.
    Host,
}

/// Which driver runs the instance and with what.
#[derive(Args, Debug, Clone)]
pub struct DriverArgs {
    /// Driver: oci (an OCI container, native speed) or qemu (a full VM: KVM when it really
    /// works, TCG emulation otherwise; needs an image built with `--boot vm`).
    #[arg(long, default_value = "oci")]
    pub driver: String,
    /// OCI runtime for the oci driver: auto (probe crun, then runc), runc, crun or a path.
    #[arg(long, env = "VFARM_OCI_RUNTIME", default_value = "auto")]
    pub runtime: String,
    /// Accelerator for the qemu driver: auto (KVM if a test guest really boots, else TCG),
    /// kvm (fail clearly if KVM does not work) or tcg.
    #[arg(long, env = "VFARM_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Boot profile for the qemu driver: full (systemd, cloud-init, sshd; the default of
    /// `instance create`) or fast (a minimal init running only the guest agent; the default
    /// of `run`).
    #[arg(long, value_parser = ["fast", "full"])]
    pub profile: Option<String>,
}

fn accel_choice(s: &str) -> AccelChoice {
    match s {
        "kvm" => AccelChoice::Kvm,
        "tcg" => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}

/// Resources and environment of a new instance.
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// CPUs (fractions allowed: 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 512M, 2G; a process exceeding it is killed inside the instance.
    #[arg(long)]
    pub memory: Option<String>,
    /// Process limit (default 4096), so a fork bomb stays inside.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Host name inside the instance (default: its name, else vf-<id>).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Network: none (loopback only) or host.
    #[arg(long, value_enum, default_value = "none")]
    pub net: NetArg,
    /// Run without a user namespace (oci): root in the instance is then root on the host.
    /// By default an instance's ids 0-65535 map to an unprivileged host id range of its
    /// owner's own.
    #[arg(long)]
    pub privileged: bool,
}

/// The image to instantiate.
#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// Image id, unique id prefix or name.
    #[arg(
        long,
        required_unless_present_any = ["image_spec", "suite"],
        conflicts_with_all = ["image_spec", "suite"]
    )]
    pub image: Option<String>,
    /// An image spec file (TOML, as for `vfarm image build -f`): the image is built first
    /// (or found at once if it exists). The flags below override it.
    #[arg(long, value_name = "SPEC.toml")]
    pub image_spec: Option<PathBuf>,
    /// Build (or find) the image from flags: the suite, e.g. bookworm.
    #[arg(long)]
    pub suite: Option<String>,
    /// With --suite/--image-spec: the bootstrap variant (default minbase).
    #[arg(long)]
    pub variant: Option<String>,
    /// With --suite/--image-spec: an extra package (repeatable).
    #[arg(long = "package", short = 'p')]
    pub packages: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    /// Name (a-z 0-9 -), usable wherever an id is.
    #[arg(long)]
    pub name: Option<String>,
    /// Destroy the instance this long after creation: 90m, 2h, 2d, 1w.
    #[arg(long)]
    pub expiry: Option<String>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    #[command(flatten)]
    pub driver: DriverArgs,
    /// Only prepare; do not start. The instance holds its quota share and pool hostname
    /// until destroyed or expired (a reservation).
    #[arg(long, visible_alias = "reserve")]
    pub no_start: bool,
    /// qemu full profile: an OpenSSH public key file authorised for the login user
    /// (repeatable). A private key beside it (FILE without .pub) is what `instance ssh` uses.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// qemu full profile: the login user made by cloud-init (default vfarm; sudo without
    /// password).
    #[arg(long, value_name = "NAME")]
    pub ssh_user: Option<String>,
    /// qemu full profile: copy a host file into the guest at first boot, e.g. a host
    /// certificate (repeatable; the mode is the host file's).
    #[arg(long = "guest-file", value_name = "SRC:DEST")]
    pub guest_files: Vec<String>,
    /// Several hosts (with --server on a control): run it on this node instead of where
    /// the placement policy puts it.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Main command (default: an idle init that keeps the instance up for exec).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum InstanceCmd {
    /// Create an instance from an image and start it.
    #[command(
        after_help = "Example:\n  vfarm instance create --image minbase --name web --cpus 1 --memory 512M --expiry 2h"
    )]
    Create(Box<CreateArgs>),
    /// Start a created or stopped instance (runs its main command again).
    Start { instance: String },
    /// Stop: SIGTERM, then SIGKILL after 10 s; --force kills at once.
    Stop {
        instance: String,
        #[arg(long)]
        force: bool,
    },
    /// Freeze all processes of the instance.
    Pause { instance: String },
    /// Thaw a paused instance.
    Resume { instance: String },
    /// Remove the instance, its files and snapshots.
    #[command(alias = "rm")]
    Destroy { instance: String },
    /// Run a command inside a running instance; its output and exit status pass through.
    Exec {
        instance: String,
        /// KEY=VALUE for the command (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file into or out of an instance: one side is `INSTANCE:/path`.
    #[command(after_help = "Examples:
  vfarm instance cp ./input.dat web:/scratch/input.dat
  vfarm instance cp web:/var/log/syslog ./syslog")]
    Cp {
        /// A host file, or INSTANCE:/path.
        src: String,
        /// A host file, or INSTANCE:/path (parent directories in the instance are made).
        dst: String,
    },
    /// Print the instance's console output (stdout, then stderr on stderr).
    Logs { instance: String },
    /// Print the console log (qemu: the VM's serial console, boot messages included; oci:
    /// the main process's output).
    Console {
        instance: String,
        /// Keep printing what is added until the instance stops (or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Save a running VM's whole state (memory, devices and the disk of that instant) so
    /// `restore` resumes it from there (qemu driver only).
    #[command(after_help = "Example:
  vfarm instance checkpoint web --to /scratch/web.vmstate --stop
  vfarm instance restore web --from /scratch/web.vmstate")]
    Checkpoint {
        instance: String,
        /// State file to write (must not exist). Default: a new file in the instance's
        /// directory, removed with the instance.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        /// End the VM once the state is saved: the instance is stopped and the checkpoint is
        /// its state from then on.
        #[arg(long)]
        stop: bool,
    },
    /// Bring a VM back to a checkpoint: whatever runs now is replaced, the disk goes back to
    /// the checkpoint's instant and the guest continues from there (qemu driver only).
    Restore {
        instance: String,
        /// The checkpoint's state file. Default: the instance's newest checkpoint.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Move a running VM to another data dir, or (with --server on a control) to another
    /// node, while it keeps running; prints the downtime (qemu driver only).
    #[command(after_help = "Examples:
  vfarm instance migrate web --to /var/lib/vfarm-node2
  vfarm instance migrate web --to /var/lib/vfarm-node2 --shared-storage --output json
  vfarm --server https://control:8750 instance migrate web --to node2")]
    Migrate(crate::cmd::migrate::MigrateArgs),
    /// List instances: state, image, driver, owner, created, uptime, expiry.
    #[command(alias = "list")]
    Ls,
    /// Show one instance.
    Show { instance: String },
    /// Log in to a full-profile VM with the system's ssh client, as the injected user, or
    /// run a command there; the exit status passes through. As with ssh, the command is run
    /// by the user's shell in the guest. Host keys are checked against the keys vfarm read
    /// from the guest (the user's known_hosts is left alone).
    #[command(
        after_help = "Example:\n  vfarm instance ssh web -- id -un\n  vfarm instance ssh web -- 'ps ax | wc -l'"
    )]
    Ssh {
        instance: String,
        /// Private key (default: the one beside the --ssh-key given at create, if any).
        #[arg(short = 'i', long, value_name = "KEY")]
        identity: Option<PathBuf>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Destroy every expired instance now (the service does this by itself).
    Reap,
    /// Move an instance's expiry later (from now if it had none).
    #[command(after_help = "Example:\n  vfarm instance extend web --by 2d")]
    Extend {
        instance: String,
        /// How much later: 90m, 2h, 2d, 1w.
        #[arg(long)]
        by: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot an instance's filesystem (a running instance keeps running).
    Create { instance: String, name: String },
    /// List an instance's snapshots.
    #[command(alias = "list")]
    Ls { instance: String },
    /// Make the instance's files exactly the snapshot's (a running instance is restarted).
    Revert { instance: String, name: String },
    /// Remove a snapshot.
    #[command(alias = "remove")]
    Rm { instance: String, name: String },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub shape: ShapeArgs,
    #[command(flatten)]
    pub driver: DriverArgs,
    /// Kill the command after this long (90s, 5m …) and exit with status 124.
    #[arg(long)]
    pub timeout: Option<String>,
    /// On a non-zero exit (or timeout) keep the instance, stopped, with a snapshot named
    /// `failure`, and print how to get into it.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Expiry of the instance if it is kept (or if this CLI is killed mid-run).
    #[arg(long, default_value = RUN_DEFAULT_EXPIRY)]
    pub expiry: String,
    /// Copy a host file into the instance before the command runs (repeatable). A relative
    /// GUEST path is relative to --workdir.
    #[arg(long = "copy-in", value_name = "HOST:GUEST")]
    pub copy_in: Vec<String>,
    /// Copy a file out of the instance after the command ended, also after a failure
    /// (repeatable). If a copy fails, a successful run exits 1.
    #[arg(long = "copy-out", value_name = "GUEST:HOST")]
    pub copy_out: Vec<String>,
    /// Run the command in this directory of the instance (made if missing).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Save the instance's console log to FILE before the instance goes (qemu: the serial
    /// console, boot messages included; oci: the main process's output).
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// Write how the run ended to FILE as JSON: `{"reason": "exit"|"timeout"|"interrupted"|
    /// "error", "exit_code": N, "error": "…"}`. Unlike the exit status, it tells a command
    /// that exited 124 by itself from one killed at --timeout.
    #[arg(long, value_name = "FILE")]
    pub outcome: Option<PathBuf>,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// How a disposable run ended, as `vfarm run --outcome` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// `exit`, `timeout`, `interrupted` or `error` (vfarm's own failure, not the command's).
    pub reason: String,
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Errors for the exit-code mapping in cmd/mod.rs

/// Stable error code and exit status for errors of these commands, if `err` is one.
/// Exit statuses follow cmd/mod.rs: 2 bad input or illegal now, 3 not found, 4 host not ready.
pub fn classify(err: &anyhow::Error) -> Option<(ErrorCode, Option<&'static str>)> {
    if let Some(e) = err.downcast_ref::<DriverError>() {
        let field = match e {
            DriverError::InvalidSpec { field, .. } => Some(*field),
            _ => None,
        };
        return Some((e.code(), field));
    }
    if err.downcast_ref::<ChangedMeanwhile>().is_some() {
        return Some((ErrorCode::Conflict, None));
    }
    if err.downcast_ref::<Elsewhere>().is_some() || err.downcast_ref::<OnNode>().is_some() {
        return Some((ErrorCode::InstanceElsewhere, None));
    }
    if err.downcast_ref::<ImageRevoked>().is_some() {
        return Some((ErrorCode::ImageRevoked, None));
    }
    if err
        .downcast_ref::<vfarm_core::instance::TransitionError>()
        .is_some()
    {
        return Some((ErrorCode::IllegalState, None));
    }
    if let Some(f) = err.downcast_ref::<vfarm_core::instance::InvalidField>() {
        return Some((ErrorCode::InvalidRequest, Some(f.field)));
    }
    if let Some(e) = err.downcast_ref::<StoreError>() {
        return Some((e.code(), None));
    }
    None
}

// ---------------------------------------------------------------------------------------
// Drivers

fn make_driver(ctx: &Ctx, kind: &str, runtime: &str, accel: &str) -> Result<Box<dyn Driver>> {
    match kind {
        "oci" => Ok(Box::new(OciDriver::new(
            &ctx.data_dir,
            runtime.parse::<RuntimeChoice>().expect("infallible"),
        )?)),
        "qemu" => Ok(Box::new(QemuDriver::new(
            &ctx.data_dir,
            accel_choice(accel),
        ))),
        other => Err(DriverError::Unsupported {
            driver: "vfarm",
            what: format!("driver `{other}` (this build has: oci, qemu)"),
        }
        .into()),
    }
}

/// A VM's main process is the VM itself: commands run in it through the guest agent.
fn runs_commands_by_exec(driver: &dyn Driver) -> bool {
    driver.kind() == "qemu"
}

/// The qemu driver itself, for what only a VM has (checkpoints, measured stats): those are
/// inherent methods, not part of the `Driver` trait. Other drivers get a clear Unsupported
/// (never a silent success).
pub(crate) fn qemu_for(
    drivers: &mut Drivers<'_>,
    row: &InstanceRow,
    what: &str,
) -> Result<QemuDriver> {
    let driver = drivers.get(&row.driver)?;
    if driver.kind() != "qemu" {
        return Err(DriverError::Unsupported {
            driver: driver.kind(),
            what: format!("{what} (only the qemu driver can save a VM's memory state)"),
        }
        .into());
    }
    // Cheap: nothing is probed until a prepare; it re-attaches to the running VM by its record.
    Ok(QemuDriver::new(
        &drivers.ctx.data_dir,
        accel_choice(&drivers.accel),
    ))
}

/// Drivers by kind, made on first use (each probes its backend once per process).
pub(crate) struct Drivers<'a> {
    ctx: &'a Ctx,
    runtime: String,
    accel: String,
    made: HashMap<String, Box<dyn Driver>>,
}

impl<'a> Drivers<'a> {
    pub(crate) fn new(ctx: &'a Ctx) -> Drivers<'a> {
        Drivers {
            ctx,
            runtime: std::env::var("VFARM_OCI_RUNTIME").unwrap_or_else(|_| "auto".into()),
            accel: std::env::var("VFARM_ACCEL").unwrap_or_else(|_| "auto".into()),
            made: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, kind: &str) -> Result<&dyn Driver> {
        if !self.made.contains_key(kind) {
            let d = make_driver(self.ctx, kind, &self.runtime, &self.accel)?;
            self.made.insert(kind.to_string(), d);
        }
        Ok(self.made[kind].as_ref())
    }

    /// The driver that acts on `row` here: refused for an instance placed on a node or made
    /// by another service that shares the database (its drivers are on its machine).
    pub(crate) fn for_row(&mut self, store: &Store, row: &InstanceRow) -> Result<&dyn Driver> {
        here(store, row)?;
        self.get(&row.driver)
    }
}

/// Refuse what this machine's drivers cannot reach: an instance on a node, or one that
/// another service sharing the database runs on its own machine.
pub(crate) fn here(store: &Store, row: &InstanceRow) -> Result<()> {
    if let Some(host) = store.instance_host(&row.id)? {
        return Err(OnNode {
            id: row.id.clone(),
            host,
        }
        .into());
    }
    if let Some(origin) = store.foreign_origin(&row.id)? {
        return Err(Elsewhere {
            id: row.id.clone(),
            origin,
        }
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// State: reconcile, transition

pub(crate) fn state_of(row: &InstanceRow) -> Result<State> {
    row.state.parse::<State>().map_err(|e| anyhow!(e))
}

/// Another actor changed the instance between our reading and our recording.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} changed while this command ran (it is no longer {from}); try again")]
pub struct ChangedMeanwhile {
    pub id: String,
    pub from: State,
}

/// Apply `event` through the state machine and record it. Refuses illegal events before
/// anything is done; fails if another process changed the instance in between.
fn transition(
    store: &Store,
    row: &InstanceRow,
    event: Event,
    change: StateChange<'_>,
) -> Result<State> {
    let from = state_of(row)?;
    let to = next(from, event)?;
    if !store.set_instance_state(&actor(), &row.id, from.as_str(), to.as_str(), &change)? {
        // Someone else (a concurrent `ls` reconciling, say) may have recorded the same thing.
        let now = store.instance(&row.id)?.map(|r| r.state);
        if now.as_deref() != Some(to.as_str()) {
            return Err(ChangedMeanwhile {
                id: row.id.clone(),
                from,
            }
            .into());
        }
    }
    Ok(to)
}

/// Check that `event` is legal now, without recording anything (for operations that keep
/// the state: exec, snapshot).
pub(crate) fn check(row: &InstanceRow, event: Event) -> Result<State> {
    Ok(next(state_of(row)?, event)?)
}

/// The event that explains what the driver observes, given what the store says.
fn explain(stored: State, seen: Observed) -> Option<Event> {
    use Observed as O;
    use State as S;
    match (stored, seen) {
        (S::Running | S::Paused, O::Exited { code }) => Some(Event::Exited { code }),
        (S::Running | S::Paused, O::Lost | O::Created) => Some(Event::Lost),
        (S::Running, O::Paused) => Some(Event::Pause),
        (S::Paused, O::Running) => Some(Event::Resume),
        // A start whose recording was interrupted (killed CLI).
        (S::Created | S::Stopped | S::Failed, O::Running | O::Paused) => Some(Event::Start),
        _ => None,
    }
}

/// Bring the stored state in line with the driver's observation. Returns the fresh row.
pub(crate) fn refresh(
    store: &Store,
    drivers: &mut Drivers<'_>,
    row: InstanceRow,
) -> Result<InstanceRow> {
    let stored = state_of(&row)?;
    if stored == State::Destroyed || stored == State::Lost {
        return Ok(row);
    }
    // An instance on a node is that node's to observe; its heartbeats keep the record. One
    // that another service sharing the database runs is that service's to observe.
    if store.instance_host(&row.id)?.is_some() || store.foreign_origin(&row.id)?.is_some() {
        return Ok(row);
    }
    let driver = drivers.get(&row.driver)?;
    if stored == State::Creating {
        // A create whose process died after the driver prepared (and maybe started) the
        // instance: record what happened. Without a driver record it may still be under way
        // (or died before preparing); destroy removes it either way.
        return match driver.observe(&row.id) {
            Ok(seen) => {
                let _ = transition(store, &row, Event::Prepared, StateChange::default());
                let row = store.instance(&row.id)?.unwrap_or(row);
                if matches!(seen, Observed::Created) {
                    Ok(row)
                } else {
                    refresh(store, drivers, row)
                }
            }
            Err(_) => Ok(row),
        };
    }
    let seen = match driver.observe(&row.id) {
        Ok(o) => o,
        Err(DriverError::NotFound { .. }) if stored.is_active() => Observed::Lost,
        Err(DriverError::NotFound { .. }) => return Ok(row),
        Err(e) => return Err(e.into()),
    };
    let Some(event) = explain(stored, seen) else {
        return Ok(row);
    };
    let (exit_code, error) = match event {
        Event::Exited { code } if code != 0 => (
            Some(code),
            Some(format!("main process exited with status {code}")),
        ),
        Event::Exited { code } => (Some(code), None),
        Event::Lost => (
            None,
            Some("the instance's processes ended without an exit status".to_string()),
        ),
        _ => (None, None),
    };
    let change = StateChange {
        exit_code,
        error: error.as_deref(),
        started: event == Event::Start,
    };
    // A concurrent actor may have recorded the same observation first; either way, reread.
    let _ = transition(store, &row, event, change);
    Ok(store.instance(&row.id)?.unwrap_or(row))
}

pub(crate) fn find(
    store: &Store,
    drivers: &mut Drivers<'_>,
    reference: &str,
) -> Result<InstanceRow> {
    let row = store.find_instance(reference)?;
    refresh(store, drivers, row)
}

// ---------------------------------------------------------------------------------------
// Views

/// What the qemu driver says about a VM instance; `None` for other drivers. A failure to
/// measure is a warning: `show` must still show the rest.
pub(crate) fn vm_view(drivers: &mut Drivers<'_>, row: &InstanceRow) -> Option<VmView> {
    if row.driver != "qemu" {
        return None;
    }
    let q = qemu_for(drivers, row, "vm details").ok()?;
    let info = match q.info(&row.id) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vfarm: warning: no VM details for {}: {e}", row.id);
            return None;
        }
    };
    let active = state_of(row).is_ok_and(State::is_active);
    let stats = match q.stats(&row.id) {
        Ok(s) => Some(StatsView {
            pid: s.pid,
            status: s.status,
            cpu_time_secs: s.cpu_time.as_secs_f64(),
            rss_bytes: s.rss_bytes,
            uptime_secs: s.uptime.as_secs_f64(),
            block: s
                .block
                .into_iter()
                .map(|b| BlockView {
                    device: b.device,
                    rd_bytes: b.rd_bytes,
                    wr_bytes: b.wr_bytes,
                    rd_operations: b.rd_operations,
                    wr_operations: b.wr_operations,
                    flush_operations: b.flush_operations,
                })
                .collect(),
            net: s.net.map(|n| NetView {
                interface: n.interface,
                mac: n.mac,
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
            }),
        }),
        // A stopped VM has nothing to measure; only a live one that cannot be is worth a word.
        Err(e) if active => {
            eprintln!("vfarm: warning: cannot measure {}: {e}", row.id);
            None
        }
        Err(_) => None,
    };
    Some(VmView {
        accel: info.accel.as_str().to_string(),
        accel_note: info.accel_note,
        vcpus: info.vcpus,
        memory_mib: info.memory_mib,
        profile: info.profile.as_str().to_string(),
        ssh: info.ssh.map(|s| SshView {
            host: s.host.to_string(),
            port: s.port,
            user: s.user.clone(),
            command: s.command_line(),
        }),
        stats,
    })
}

/// Looked up once per listing, not once per instance (a service may list 10,000).
#[derive(Default)]
pub(crate) struct ViewCache {
    /// Image id → (name, revoked).
    images: HashMap<String, (Option<String>, bool)>,
    /// Lease holder (instance id) → the pool address of its hostname.
    addresses: Option<HashMap<String, Option<String>>>,
    /// Instance id → the node it was placed on.
    hosts: Option<HashMap<String, String>>,
}

pub(crate) fn view(store: &Store, row: &InstanceRow, detail: bool) -> Result<InstanceView> {
    view_cached(store, row, detail, &mut ViewCache::default())
}

pub(crate) fn view_cached(
    store: &Store,
    row: &InstanceRow,
    detail: bool,
    cache: &mut ViewCache,
) -> Result<InstanceView> {
    let state = state_of(row)?;
    let now = chrono::Utc::now();
    let since = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds())
    };
    let uptime_secs = row
        .started
        .as_deref()
        .filter(|_| state.is_active())
        .and_then(since)
        .map(|s| s.max(0));
    let (image_name, image_revoked) = match cache.images.get(&row.image_id) {
        Some(v) => v.clone(),
        None => {
            let name = store
                .image(&row.image_id)
                .ok()
                .flatten()
                .and_then(|i| i.name);
            let v = (name, store.repository_image_revoked(&row.image_id)?);
            cache.images.insert(row.image_id.clone(), v.clone());
            v
        }
    };
    if cache.addresses.is_none() {
        cache.addresses = Some(
            store
                .hostname_leases()?
                .into_iter()
                .map(|l| (l.holder, l.address))
                .collect(),
        );
    }
    let address = cache
        .addresses
        .as_ref()
        .and_then(|a| a.get(&row.id).cloned().flatten());
    if cache.hosts.is_none() {
        cache.hosts = Some(store.instance_hosts()?);
    }
    let host = cache.hosts.as_ref().and_then(|h| h.get(&row.id).cloned());
    Ok(InstanceView {
        id: row.id.clone(),
        name: row.name.clone(),
        state: row.state.clone(),
        exit_code: row.exit_code,
        error: row.error.clone(),
        image: row.image_id.clone(),
        image_name,
        image_revoked,
        driver: row.driver.clone(),
        owner: row.owner.clone(),
        hostname: row.hostname.clone(),
        placement: match (&host, detail) {
            (Some(_), true) => store.placement_reason(&row.id)?,
            _ => None,
        },
        host,
        address,
        created: row.created.clone(),
        started: row.started.clone(),
        uptime_secs,
        expires: row.expires.clone(),
        expires_in_secs: row.expires.as_deref().and_then(since).map(|s| -s),
        snapshots: if detail {
            Some(
                store
                    .snapshots(&row.id)?
                    .into_iter()
                    .map(snapshot_view)
                    .collect(),
            )
        } else {
            None
        },
        spec: if detail {
            serde_json::from_str(&row.spec).ok().map(redact_guest_files)
        } else {
            None
        },
        vm: None,
    })
}

pub(crate) fn print_snapshots(snaps: &[SnapshotView]) {
    println!("{:<24}  {:<19}  {:>10}", "NAME", "CREATED", "SIZE");
    for s in snaps {
        println!(
            "{:<24}  {:<19}  {:>10}",
            s.name,
            short_time(&s.created),
            ByteSize(s.size).to_string()
        );
    }
}

pub(crate) fn snapshot_view(s: SnapshotRow) -> SnapshotView {
    SnapshotView {
        instance_id: s.instance_id,
        name: s.name,
        created: s.created,
        size: s.size,
    }
}

/// Files injected into a VM (host certificates and their keys) are shown by size, not
/// content.
fn redact_guest_files(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(files) = spec.pointer_mut("/vm/files").and_then(|f| f.as_array_mut()) {
        for f in files {
            let size = f["content"].as_array().map(Vec::len).unwrap_or(0);
            f["content"] = serde_json::json!(format!("({size} bytes)"));
        }
    }
    spec
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

/// Time until the reaper takes the instance: `2h`, `due`, or `-` without an expiry.
fn time_left(v: &InstanceView) -> String {
    match v.expires_in_secs {
        Some(s) if s > 0 => human_secs(s),
        Some(_) => "due".into(),
        None => "-".into(),
    }
}

pub(crate) fn print_table(views: &[InstanceView]) {
    // The HOST column appears once instances run on nodes (several hosts).
    let hosts = views.iter().any(|v| v.host.is_some());
    let host_col = |h: &str| {
        if hosts {
            format!("  {h:<12}")
        } else {
            String::new()
        }
    };
    println!(
        "{:<12}  {:<14}  {:<9}  {:<16}  {:<6}  {:<8}  {:<19}  {:>6}  {:<19}{}",
        "ID",
        "NAME",
        "STATE",
        "IMAGE",
        "DRIVER",
        "OWNER",
        "CREATED",
        "UPTIME",
        "EXPIRES IN",
        host_col("HOST")
    );
    for v in views {
        let state = match (v.state.as_str(), v.exit_code) {
            ("stopped" | "failed", Some(c)) => format!("{}({c})", v.state),
            (s, _) => s.to_string(),
        };
        println!(
            "{:<12}  {:<14}  {:<9}  {:<16}  {:<6}  {:<8}  {:<19}  {:>6}  {:<19}{}",
            v.id,
            v.name.as_deref().unwrap_or("-"),
            state,
            {
                let name = v
                    .image_name
                    .clone()
                    .unwrap_or_else(|| v.image.chars().take(12).collect());
                if v.image_revoked {
                    format!("{name} REVOKED")
                } else {
                    name
                }
            },
            v.driver,
            v.owner,
            short_time(&v.created),
            v.uptime_secs.map(human_secs).unwrap_or_else(|| "-".into()),
            time_left(v),
            host_col(v.host.as_deref().unwrap_or("-")),
        );
    }
}

pub(crate) fn print_view(v: &InstanceView) {
    let kv = |k: &str, val: &str| println!("{k:<10} {val}");
    kv("id", &v.id);
    kv("name", v.name.as_deref().unwrap_or("-"));
    let mut state = v.state.clone();
    if let Some(c) = v.exit_code {
        state.push_str(&format!(" (exit status {c})"));
    }
    kv("state", &state);
    if let Some(h) = &v.host {
        kv("host", h);
    }
    if let Some(p) = &v.placement {
        kv("placement", p);
    }
    if let Some(e) = &v.error {
        kv("error", e);
    }
    kv(
        "image",
        &format!(
            "{} {}{}",
            v.image,
            v.image_name.as_deref().unwrap_or(""),
            if v.image_revoked {
                " (REVOKED by its image list)"
            } else {
                ""
            }
        ),
    );
    kv("driver", &v.driver);
    kv("owner", &v.owner);
    kv("hostname", &v.hostname);
    kv("created", &v.created);
    kv("started", v.started.as_deref().unwrap_or("-"));
    kv(
        "uptime",
        &v.uptime_secs.map(human_secs).unwrap_or_else(|| "-".into()),
    );
    match &v.expires {
        Some(e) => kv("expires", &format!("{e} ({})", time_left(v))),
        None => kv("expires", "-"),
    }
    if let Some(a) = &v.address {
        kv("address", a);
    }
    if let Some(vm) = &v.vm {
        kv(
            "vm",
            &format!(
                "{} vCPU(s), {} MiB, accel {}",
                vm.vcpus, vm.memory_mib, vm.accel
            ),
        );
        if let Some(n) = &vm.accel_note {
            kv("", n);
        }
        kv("profile", &vm.profile);
        if let Some(ssh) = &vm.ssh {
            kv(
                "ssh",
                &format!("{}@{} port {}", ssh.user, ssh.host, ssh.port),
            );
            kv("", &ssh.command);
        }
        if let Some(s) = &vm.stats {
            kv(
                "stats",
                &format!(
                    "cpu {:.1}s, rss {}, up {}, qemu pid {} ({})",
                    s.cpu_time_secs,
                    ByteSize(s.rss_bytes),
                    human_secs(s.uptime_secs as i64),
                    s.pid,
                    s.status
                ),
            );
            for b in &s.block {
                kv(
                    "",
                    &format!(
                        "{}: read {} ({} ops), written {} ({} ops), {} flushes",
                        b.device,
                        ByteSize(b.rd_bytes),
                        b.rd_operations,
                        ByteSize(b.wr_bytes),
                        b.wr_operations,
                        b.flush_operations
                    ),
                );
            }
            if let Some(n) = &s.net {
                kv(
                    "",
                    &format!(
                        "{} ({}): received {} ({} packets), sent {} ({} packets)",
                        n.interface,
                        n.mac,
                        ByteSize(n.rx_bytes),
                        n.rx_packets,
                        ByteSize(n.tx_bytes),
                        n.tx_packets
                    ),
                );
            }
        }
    }
    if let Some(s) = &v.snapshots {
        let names: Vec<String> = s
            .iter()
            .map(|s| format!("{} ({})", s.name, ByteSize(s.size)))
            .collect();
        kv("snapshots", if names.is_empty() { "-" } else { "" });
        for n in names {
            println!("           {n}");
        }
    }
}

fn report(ctx: &Ctx, store: &Store, id: &str, message: &str) -> Result<()> {
    if ctx.json() {
        let row = store
            .instance(id)?
            .ok_or_else(|| anyhow!("instance {id} vanished"))?;
        ctx.print_json(&view(store, &row, false)?)?;
    } else {
        println!("{message}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Creating

fn resolve_image(ctx: &Ctx, args: &ImageArgs, bootable: bool) -> Result<vfarm_image::Image> {
    if args.image_spec.is_some() || args.suite.is_some() {
        // The same spec handling as `vfarm image build`, fed the equivalent arguments. The
        // tar format is always part of a build, which is what the oci driver runs.
        use clap::FromArgMatches;
        let mut argv: Vec<std::ffi::OsString> = vec!["build".into()];
        if let Some(f) = &args.image_spec {
            argv.extend(["--file".into(), f.clone().into_os_string()]);
        }
        for (flag, v) in [("--suite", &args.suite), ("--variant", &args.variant)] {
            if let Some(v) = v {
                argv.extend([flag.into(), v.into()]);
            }
        }
        for p in &args.packages {
            argv.extend(["--package".into(), p.into()]);
        }
        if bootable {
            // A VM boots the image's kernel from its qcow2 disk.
            argv.extend([
                "--boot".into(),
                "vm".into(),
                "--format".into(),
                "qcow2".into(),
            ]);
        }
        let cmd = <crate::cmd::image::BuildArgs as Args>::augment_args(clap::Command::new("build"));
        let m = cmd.try_get_matches_from(argv)?;
        let build = crate::cmd::image::BuildArgs::from_arg_matches(&m)?;
        return Ok(crate::cmd::image::build(ctx, &build)?.image);
    }
    let reference = args
        .image
        .as_deref()
        .expect("clap requires --image, --image-spec or --suite");
    usable_image(ctx, reference)
}

/// An image new instances may be made from, by reference.
pub(crate) fn usable_image(ctx: &Ctx, reference: &str) -> Result<vfarm_image::Image> {
    let img = ctx.images()?.resolve(reference)?;
    // An image whose endorsement was revoked (image, endorser or subscription) must not
    // start anything new; instances already running from it are flagged, not killed.
    if ctx.store()?.repository_image_revoked(&img.id)? {
        return Err(ImageRevoked {
            reference: reference.to_string(),
            id: img.id[..12.min(img.id.len())].to_string(),
        }
        .into());
    }
    Ok(img)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "image `{reference}` ({id}) was revoked by its image list; new instances from it are refused"
)]
pub struct ImageRevoked {
    pub reference: String,
    pub id: String,
}

pub(crate) fn image_input(img: &vfarm_image::Image) -> ImageInput {
    ImageInput {
        id: img.id.clone(),
        files: img
            .artifacts
            .iter()
            .map(|a| ImageFile {
                format: a.format,
                path: a.path.clone(),
            })
            .collect(),
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
    }
}

/// The qemu-only options of a new instance, as typed.
#[derive(Default)]
pub(crate) struct GuestArgs<'a> {
    pub(crate) ssh_keys: &'a [PathBuf],
    /// Public keys given as text (the API), beside or instead of key files.
    pub(crate) ssh_key_texts: &'a [String],
    pub(crate) ssh_user: Option<&'a str>,
    pub(crate) guest_files: &'a [String],
}

/// The boot profile and guest setup of a new instance. They are for the qemu driver only (any
/// of them with another driver is refused, not ignored); its profile defaults to `default`.
/// Keys and files are read here, so a missing file fails before anything is made.
pub(crate) fn vm_setup(
    driver: &dyn Driver,
    profile: Option<&str>,
    default: BootProfile,
    g: &GuestArgs<'_>,
) -> Result<VmSetup> {
    let invalid = |field: &'static str, reason: String| {
        anyhow::Error::new(DriverError::InvalidSpec { field, reason })
    };
    if driver.kind() != "qemu" {
        let given = [
            ("--profile", profile.is_some()),
            (
                "--ssh-key",
                !g.ssh_keys.is_empty() || !g.ssh_key_texts.is_empty(),
            ),
            ("--ssh-user", g.ssh_user.is_some()),
            ("--guest-file", !g.guest_files.is_empty()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(
                "driver",
                format!("{flag} is for VMs: add --driver qemu"),
            ));
        }
        return Ok(VmSetup::default());
    }
    let profile = match profile {
        Some("full") => BootProfile::Full,
        Some("fast") => BootProfile::Fast,
        Some(other) => return Err(invalid("profile", format!("`{other}` is not fast or full"))),
        None => default,
    };
    if profile == BootProfile::Fast {
        let given = !g.ssh_keys.is_empty()
            || !g.ssh_key_texts.is_empty()
            || g.ssh_user.is_some()
            || !g.guest_files.is_empty();
        if given {
            return Err(invalid(
                "profile",
                "--ssh-key, --ssh-user and --guest-file need the full profile (cloud-init \
                 and sshd); the fast profile has neither"
                    .into(),
            ));
        }
        return Ok(VmSetup::default());
    }
    // Key lines of a public key file or text; none is an error naming `what`.
    let key_lines = |text: &str, what: String| {
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            return Err(invalid("ssh-key", format!("{what} holds no public key")));
        }
        Ok(lines)
    };
    let mut keys = Vec::new();
    for (i, text) in g.ssh_key_texts.iter().enumerate() {
        keys.extend(key_lines(text, format!("ssh key {}", i + 1))?);
    }
    let mut identity = None;
    for f in g.ssh_keys {
        let text = std::fs::read_to_string(f).map_err(|e| {
            invalid(
                "ssh-key",
                format!("cannot read public key file {}: {e}", f.display()),
            )
        })?;
        keys.extend(key_lines(&text, f.display().to_string())?);
        // `key.pub` beside `key`: ssh-keygen's layout; that private key logs in by default.
        if identity.is_none() {
            let private = f
                .to_str()
                .and_then(|s| s.strip_suffix(".pub"))
                .map(PathBuf::from)
                .filter(|p| p.is_file());
            identity = private.and_then(|p| std::fs::canonicalize(p).ok());
        }
    }
    let mut files = Vec::new();
    for spec in g.guest_files {
        let (src, dest) = spec.split_once(':').ok_or_else(|| {
            invalid(
                "guest-file",
                format!("`{spec}` is not SRC:DEST (a host file and an absolute guest path)"),
            )
        })?;
        let content = std::fs::read(src)
            .map_err(|e| invalid("guest-file", format!("cannot read {src}: {e}")))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(src)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        files.push(GuestFile {
            path: dest.to_string(),
            content,
            mode,
        });
    }
    Ok(VmSetup {
        profile,
        user: g.ssh_user.map(str::to_string),
        ssh_authorized_keys: keys,
        ssh_identity: identity,
        files,
    })
}

/// An image built on the fly (`--suite`, `--image-spec`) for the full profile gets what that
/// profile needs: sshd and cloud-init. A named image is taken as it is (the driver refuses
/// one without them, naming what to add).
fn full_profile_packages(args: &ImageArgs, profile: BootProfile) -> ImageArgs {
    let mut args = args.clone();
    if profile == BootProfile::Full && args.image.is_none() {
        for p in ["openssh-server", "cloud-init"] {
            if !args.packages.iter().any(|x| x == p) {
                args.packages.push(p.to_string());
            }
        }
    }
    args
}

/// 12 random hex digits: short enough to type, 48 bits against collisions on one host.
fn new_id() -> Result<String> {
    let mut b = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn time_after(secs: u64) -> String {
    // parse_duration caps every duration at MAX_DURATION_SECS, so this cannot overflow.
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs.min(MAX_DURATION_SECS) as i64);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An instance placed on a node is reached through the control service, not this machine's
/// drivers.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} runs on node {host}: act on it through the control service (--server)")]
pub(crate) struct OnNode {
    pub id: String,
    pub host: String,
}

/// A local instance of another service that shares the state database (several `vfarm
/// serve` on one PostgreSQL): it runs on that service's machine, under its data dir.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} runs under the service at {origin}: act on it there")]
pub(crate) struct Elsewhere {
    pub id: String,
    pub origin: String,
}

pub(crate) struct NewInstance {
    pub image: vfarm_image::Image,
    pub name: Option<String>,
    pub expiry: Option<String>,
    pub shape: ShapeArgs,
    pub command: Vec<String>,
    /// A `vfarm run` instance: its filesystem need not survive a host crash. Disposable
    /// instances take no pool hostname and no quota share (jobs have their own capacity).
    pub disposable: bool,
    /// Boot profile and guest setup (qemu).
    pub vm: VmSetup,
    pub owner: String,
    /// Disk size (bytes), for the disk quota and drivers with their own disks.
    pub disk: Option<u64>,
    /// The id to record it under (a node takes the control's); new otherwise.
    pub id: Option<String>,
}

/// The site's rules for new instances (serve.toml): hostname pool, quotas, default expiry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Admission {
    pub pool: HostnamePool,
    pub quotas: QuotaConfig,
    pub default_expiry_secs: Option<u64>,
    /// The service's own names (its certificate's), which no instance may take.
    pub reserved: Vec<String>,
}

impl Admission {
    pub(crate) fn from_config(c: &ServeConfig) -> Admission {
        Admission {
            pool: HostnamePool::new(&c.hostnames),
            quotas: c.quotas.clone(),
            default_expiry_secs: c.default_expiry_secs,
            reserved: Vec::new(),
        }
    }

    /// The data dir's `serve.toml` (absent: no pool, no quotas).
    pub(crate) fn load(ctx: &Ctx) -> Result<Admission> {
        let c = ServeConfig::load(&ServeConfig::default_path(&ctx.data_dir))?;
        Ok(Admission::from_config(&c))
    }
}

/// Record and prepare an instance (state `created`). On failure nothing is left behind.
fn create_instance(ctx: &Ctx, driver: &dyn Driver, n: NewInstance) -> Result<InstanceRow> {
    let admission = if n.disposable {
        Admission::default()
    } else {
        Admission::load(ctx)?
    };
    let store = ctx.store()?;
    let row = record_instance(&store, &admission, &ctx.data_dir, driver.kind(), n)?;
    prepare_recorded(&store, driver, &row, &ctx.data_dir)
}

/// Where an instance finds its host certificate (the grid layout).
pub const HOST_CERT: &str = "/etc/grid-security/hostcert.pem";
pub const HOST_KEY: &str = "/etc/grid-security/hostkey.pem";

/// The longest an instance certificate lives when the instance has no expiry.
const INSTANCE_CERT_MAX_DAYS: u32 = 365;

/// A host certificate for the instance from the site CA, if one was set up (`vfarm ca
/// init`): `OU=instances`, server purpose only, valid for the instance's lease, revoked at
/// destroy ([`revoke_host_certificate`]).
fn host_certificate(data_dir: &Path, row: &InstanceRow) -> Result<Option<vfarm_auth::ca::Issued>> {
    let dir = vfarm_auth::ca::ca_dir(data_dir);
    if !dir.is_dir() {
        return Ok(None);
    }
    let ca = vfarm_auth::ca::SiteCa::open(&dir)?;
    let until = row
        .expires
        .as_deref()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    Ok(Some(ca.issue_instance_for(
        &row.id,
        &row.hostname,
        until,
        INSTANCE_CERT_MAX_DAYS,
        chrono::Utc::now(),
    )?))
}

/// Revoke the instance's host certificate, if it has one (the CRL is republished).
fn revoke_host_certificate(data_dir: &Path, id: &str) -> Result<()> {
    let dir = vfarm_auth::ca::ca_dir(data_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    vfarm_auth::ca::SiteCa::open(&dir)?.revoke_instance(id, chrono::Utc::now())?;
    Ok(())
}

/// Put the host certificate and key into a prepared OCI instance (key mode 0600).
fn place_host_certificate(
    driver: &dyn Driver,
    id: &str,
    cert: &vfarm_auth::ca::Issued,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let files = staging::files_of(driver)?;
    let dir = tempfile::tempdir()?;
    for (name, pem, mode, dst) in [
        ("cert", &cert.cert_pem, 0o644, HOST_CERT),
        ("key", &cert.key_pem, 0o600, HOST_KEY),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, pem)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        files.copy_in(id, &p, dst)?;
    }
    Ok(())
}

/// Memory limit of a kept instance that asks for none and has no `[quotas] default_memory`:
/// what the qemu driver gives a VM anyway, and 1 GiB for a container.
fn default_memory(driver_kind: &str) -> u64 {
    if driver_kind == "qemu" {
        512 << 20
    } else {
        1 << 30
    }
}

/// An instance's host name must never be a service's: not an address, not `localhost`, not
/// a node's name nor one of the control's own names (its certificate would then name a
/// service a client trusts).
fn check_instance_hostname(store: &Store, admission: &Admission, h: &str) -> Result<()> {
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    let refuse = |reason: String| -> Result<()> {
        Err(DriverError::InvalidSpec {
            field: "hostname",
            reason: format!("`{h}` {reason}"),
        }
        .into())
    };
    let numeric = h
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if numeric || h.parse::<std::net::IpAddr>().is_ok() {
        return refuse("is an address; instance host names are names".into());
    }
    if h == "localhost" || h.ends_with(".localhost") || h.starts_with("localhost.") {
        return refuse("is reserved for the local host".into());
    }
    if admission
        .reserved
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&h))
    {
        return refuse("is a name of this service".into());
    }
    if store
        .hosts()?
        .iter()
        .any(|n| n.name.eq_ignore_ascii_case(&h))
    {
        return refuse("is the name of a node of this service".into());
    }
    Ok(())
}

/// Validate, take the quota share and the pool hostname, and record the instance
/// (`creating`). Every refusal happens here, before any work; a failure leaves nothing held.
pub(crate) fn record_instance(
    store: &Store,
    admission: &Admission,
    data_dir: &Path,
    driver_kind: &str,
    n: NewInstance,
) -> Result<InstanceRow> {
    let settings = InstanceRequest {
        name: n.name.clone(),
        cpus: n.shape.cpus,
        memory: n.shape.memory.clone(),
        pids: n.shape.pids,
        hostname: n.shape.hostname.clone(),
        expiry: n.expiry.clone(),
        env: n.shape.env.clone(),
        command: n.command.clone(),
    }
    .validate()?;
    let id = match &n.id {
        Some(id) => id.clone(),
        None => new_id()?,
    };
    let held = !n.disposable;
    let mut settings = settings;
    let mut disk = n.disk;
    if held {
        // A kept instance always runs with a memory limit, and what it may use is what
        // counts against the owner's quota (none asked for used to mean unlimited and 0).
        settings.memory = settings
            .memory
            .or(admission.quotas.default_memory)
            .or(Some(default_memory(driver_kind)));
        // An oci instance's upper dir has no size of its own: the disk it asked for, else
        // the site's default, is what counts against the disk quota.
        if driver_kind == "oci" {
            disk = disk.or(admission.quotas.default_disk);
        }
    }
    // An instance without a CPU limit still takes a CPU of the owner's share.
    let resources = Resources {
        cpus_milli: settings
            .cpus
            .map(|c| (c * 1000.0).round() as u64)
            .unwrap_or(1000),
        memory_mib: settings.memory.map(|m| m.div_ceil(1 << 20)).unwrap_or(0),
        disk_mib: disk.map(|d| d.div_ceil(1 << 20)).unwrap_or(0),
    };
    if let Some(h) = settings.hostname.as_ref().or(settings.name.as_ref()) {
        check_instance_hostname(store, admission, h)?;
    }
    if held {
        vfarm_auth::quota::reserve(store, &admission.quotas, &id, &n.owner, resources)?;
    }
    let hostname = if held && !admission.pool.is_empty() {
        match admission
            .pool
            .allocate(store, &id, &n.owner, settings.hostname.as_deref())
        {
            Ok(lease) => lease.name,
            Err(e) => {
                let _ = vfarm_auth::quota::release(store, &id);
                return Err(e.into());
            }
        }
    } else {
        settings
            .hostname
            .clone()
            .or_else(|| settings.name.clone())
            .unwrap_or_else(|| format!("vf-{id}"))
    };
    // Every oci instance but an admin's explicitly privileged one runs in a user namespace
    // with its owner's host id range (issue 15: root inside must not be root outside).
    let user_namespace = driver_kind == "oci" && !n.shape.privileged;
    let id_base = if user_namespace {
        vfarm_driver::idmap::base_for(data_dir, &n.owner)?
    } else {
        0
    };
    let spec = InstanceSpec {
        id: id.clone(),
        image: image_input(&n.image),
        hostname: hostname.clone(),
        cpus: settings.cpus,
        memory: settings.memory,
        pids: settings.pids,
        disk,
        env: settings.env.clone(),
        command: settings.command.clone(),
        network: match n.shape.net {
            NetArg::None => Network::None,
            NetArg::Host => Network::Host,
        },
        user_namespace,
        id_base,
        volatile: n.disposable,
        vm: n.vm.clone(),
    };
    let t = vfarm_store::now();
    let expiry_secs = settings.expiry_secs.or(if held {
        admission.default_expiry_secs
    } else {
        None
    });
    let row = InstanceRow {
        id: id.clone(),
        name: settings.name.clone(),
        image_id: n.image.id.clone(),
        driver: driver_kind.to_string(),
        owner: n.owner.clone(),
        state: State::Creating.as_str().into(),
        exit_code: None,
        hostname,
        spec: serde_json::to_string(&spec)?,
        created: t.clone(),
        started: None,
        expires: expiry_secs.map(time_after),
        updated: t,
        error: None,
    };
    if let Err(e) = store.insert_instance(&row) {
        // Nothing else refers to the holds yet.
        let _ = store.release_hostname(&id);
        let _ = store.release_quota(&id);
        return Err(e.into());
    }
    Ok(row)
}

/// Prepare a recorded instance (`creating` → `created`). On failure the instance is
/// removed, and its hostname and quota share with it.
///
/// With a site CA (`vfarm ca init`), a kept instance gets a host certificate for its
/// hostname: a file pair under /etc/grid-security for OCI, and the same files through
/// cloud-init for a full-profile VM. The key is written into the instance only, never into
/// the instance's record.
pub(crate) fn prepare_recorded(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    data_dir: &Path,
) -> Result<InstanceRow> {
    let id = &row.id;
    let mut spec: InstanceSpec = serde_json::from_str(&row.spec)
        .with_context(|| format!("instance {id} has an unreadable spec"))?;
    let fail = |e: anyhow::Error| {
        let _ = driver.cleanup(id);
        let _ = revoke_host_certificate(data_dir, id);
        let _ = store.delete_instance(&actor(), id);
        e.context(format!("cannot prepare instance {id}"))
    };
    let wants_cert =
        !spec.volatile && (driver.kind() == "oci" || spec.vm.profile == BootProfile::Full);
    let cert = if wants_cert {
        host_certificate(data_dir, row).map_err(fail)?
    } else {
        None
    };
    if let (Some(c), "qemu") = (&cert, driver.kind()) {
        for (path, pem, mode) in [
            (HOST_CERT, &c.cert_pem, 0o644),
            (HOST_KEY, &c.key_pem, 0o600),
        ] {
            spec.vm.files.push(GuestFile {
                path: path.to_string(),
                content: pem.as_bytes().to_vec(),
                mode,
            });
        }
    }
    if let Err(e) = driver.prepare(&spec) {
        return Err(fail(e.into()));
    }
    if let (Some(c), "oci") = (&cert, driver.kind()) {
        place_host_certificate(driver, id, c).map_err(fail)?;
    }
    transition(store, row, Event::Prepared, StateChange::default())?;
    Ok(store.instance(id)?.expect("just recorded"))
}

pub(crate) fn start_instance(store: &Store, driver: &dyn Driver, row: &InstanceRow) -> Result<()> {
    check(row, Event::Start)?;
    if let Err(e) = driver.start(&row.id) {
        let msg = e.to_string();
        let s = state_of(row)?;
        let _ = store.set_instance_state(
            &actor(),
            &row.id,
            s.as_str(),
            s.as_str(),
            &StateChange {
                error: Some(&msg),
                ..Default::default()
            },
        );
        return Err(anyhow::Error::new(e).context(format!("cannot start instance {}", row.id)));
    }
    transition(
        store,
        row,
        Event::Start,
        StateChange {
            started: true,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Stop: SIGTERM (a VM: poweroff, then ACPI) and a kill after the grace time, or a kill
/// at once with `force`.
pub(crate) fn stop_instance(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    force: bool,
) -> Result<()> {
    check(row, Event::Stop)?;
    let mode = if force {
        StopMode::Kill
    } else {
        StopMode::Graceful {
            timeout: Duration::from_secs(parse_duration("timeout", STOP_GRACE)?),
        }
    };
    let code = match driver.stop(&row.id, mode)? {
        Observed::Exited { code } => Some(code),
        _ => None,
    };
    transition(
        store,
        row,
        Event::Stop,
        StateChange {
            exit_code: code,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// `ev` is Pause or Resume; returns the new state.
pub(crate) fn pause_resume_instance(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    ev: Event,
) -> Result<State> {
    check(row, ev)?;
    let p = driver.pausable().ok_or_else(|| DriverError::Unsupported {
        driver: driver.kind(),
        what: "pause/resume".into(),
    })?;
    if ev == Event::Pause {
        p.pause(&row.id)?;
    } else {
        p.resume(&row.id)?;
    }
    transition(store, row, ev, StateChange::default())
}

/// Move the expiry `by` later (from now, if it had none or it has passed).
pub(crate) fn extend_instance(store: &Store, row: &InstanceRow, by: &str) -> Result<InstanceRow> {
    let secs = parse_duration("by", by)?;
    let now = chrono::Utc::now();
    let base = row
        .expires
        .as_deref()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .filter(|t| *t > now)
        .unwrap_or(now);
    // parse_duration caps `secs`; repeated extensions could still run past chrono's range.
    let until = base
        .checked_add_signed(chrono::Duration::seconds(secs as i64))
        .filter(|t| *t - now <= chrono::Duration::seconds(2 * MAX_DURATION_SECS as i64))
        .ok_or_else(|| vfarm_core::instance::InvalidField {
            field: "by",
            value: by.to_string(),
            reason: "the expiry would be more than 200 years away".into(),
        })?;
    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if !store.set_instance_expiry(&actor(), &row.id, &until)? {
        return Err(StoreError::NotFound {
            kind: "instance",
            id: row.id.clone(),
        }
        .into());
    }
    Ok(store.instance(&row.id)?.expect("just updated"))
}

/// Take a snapshot named `name` (refused if the name is taken).
pub(crate) fn snapshot_instance(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    name: &str,
) -> Result<SnapshotRow> {
    check(row, Event::Snapshot)?;
    if store.snapshot(&row.id, name)?.is_some() {
        return Err(StoreError::Conflict {
            kind: "snapshot",
            id: format!("{}/{name}", row.id),
        }
        .into());
    }
    let info = snapshots_of(driver)?.create(&row.id, name)?;
    let snap = SnapshotRow {
        instance_id: row.id.clone(),
        name: name.to_string(),
        created: vfarm_store::now(),
        size: info.size,
    };
    store.insert_snapshot(&actor(), &snap)?;
    Ok(snap)
}

fn snapshot_must_exist(store: &Store, row: &InstanceRow, name: &str) -> Result<()> {
    if store.snapshot(&row.id, name)?.is_none() {
        return Err(StoreError::NotFound {
            kind: "snapshot",
            id: format!("{}/{name}", row.id),
        }
        .into());
    }
    Ok(())
}

/// Make the instance's files the snapshot's (a running instance is restarted).
pub(crate) fn revert_instance(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    name: &str,
) -> Result<()> {
    check(row, Event::Revert)?;
    snapshot_must_exist(store, row, name)?;
    let was_active = state_of(row)?.is_active();
    snapshots_of(driver)?.revert(&row.id, name)?;
    transition(
        store,
        row,
        Event::Revert,
        StateChange {
            started: was_active,
            ..Default::default()
        },
    )?;
    Ok(())
}

pub(crate) fn remove_snapshot(
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    name: &str,
) -> Result<()> {
    snapshot_must_exist(store, row, name)?;
    match snapshots_of(driver)?.remove(&row.id, name) {
        Ok(()) | Err(DriverError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    store.delete_snapshot(&actor(), &row.id, name)?;
    Ok(())
}

/// Remove an instance from the host and the store.
pub(crate) fn destroy_instance(
    data_dir: &Path,
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
) -> Result<()> {
    check(row, Event::Destroy)?;
    here(store, row)?;
    driver
        .cleanup(&row.id)
        .with_context(|| format!("cannot destroy instance {}", row.id))?;
    // The certificate goes with the instance: whoever copied its key out holds nothing.
    revoke_host_certificate(data_dir, &row.id)
        .with_context(|| format!("cannot revoke the host certificate of {}", row.id))?;
    store.delete_instance(&actor(), &row.id)?;
    Ok(())
}

pub(crate) fn label(row: &InstanceRow) -> String {
    match &row.name {
        Some(n) => format!("{} ({n})", row.id),
        None => row.id.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// vfarm instance …

pub fn run_instance(ctx: &Ctx, cmd: InstanceCmd) -> Result<i32> {
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    match cmd {
        InstanceCmd::Create(a) => {
            let a = *a;
            if let Some(h) = &a.host {
                return Err(DriverError::InvalidSpec {
                    field: "host",
                    reason: format!(
                        "`{h}`: a node is chosen by a control service: use --server URL \
                         (without it, instances run on this machine)"
                    ),
                }
                .into());
            }
            let driver = make_driver(ctx, &a.driver.driver, &a.driver.runtime, &a.driver.accel)?;
            let vm = vm_setup(
                driver.as_ref(),
                a.driver.profile.as_deref(),
                BootProfile::Full,
                &GuestArgs {
                    ssh_keys: &a.ssh_keys,
                    ssh_key_texts: &[],
                    ssh_user: a.ssh_user.as_deref(),
                    guest_files: &a.guest_files,
                },
            )?;
            let image_args = full_profile_packages(&a.image, vm.profile);
            let image = resolve_image(ctx, &image_args, runs_commands_by_exec(driver.as_ref()))?;
            let row = create_instance(
                ctx,
                driver.as_ref(),
                NewInstance {
                    image,
                    name: a.name,
                    expiry: a.expiry,
                    shape: a.shape,
                    command: a.command,
                    disposable: false,
                    vm,
                    owner: actor(),
                    disk: None,
                    id: None,
                },
            )?;
            if !a.no_start {
                start_instance(&store, driver.as_ref(), &row)?;
            }
            let what = if a.no_start { "created" } else { "running" };
            report(
                ctx,
                &store,
                &row.id,
                &format!("instance {} {what}", label(&row)),
            )?;
            Ok(0)
        }
        InstanceCmd::Start { instance } => {
            let row = find(&store, &mut drivers, &instance)?;
            start_instance(&store, drivers.for_row(&store, &row)?, &row)?;
            report(
                ctx,
                &store,
                &row.id,
                &format!("instance {} running", label(&row)),
            )?;
            Ok(0)
        }
        InstanceCmd::Stop { instance, force } => {
            let row = find(&store, &mut drivers, &instance)?;
            stop_instance(&store, drivers.for_row(&store, &row)?, &row, force)?;
            report(
                ctx,
                &store,
                &row.id,
                &format!("instance {} stopped", label(&row)),
            )?;
            Ok(0)
        }
        InstanceCmd::Pause { instance } => {
            pause_resume(ctx, &store, &mut drivers, &instance, Event::Pause)
        }
        InstanceCmd::Resume { instance } => {
            pause_resume(ctx, &store, &mut drivers, &instance, Event::Resume)
        }
        InstanceCmd::Destroy { instance } => {
            let row = find(&store, &mut drivers, &instance)?;
            destroy_instance(&ctx.data_dir, &store, drivers.for_row(&store, &row)?, &row)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"id": row.id, "state": "destroyed"}))?;
            } else {
                println!("instance {} destroyed", label(&row));
            }
            Ok(0)
        }
        InstanceCmd::Exec {
            instance,
            env,
            command,
        } => {
            let row = find(&store, &mut drivers, &instance)?;
            check(&row, Event::Exec)?;
            let env = env
                .iter()
                .map(|e| vfarm_core::instance::parse_env(e))
                .collect::<Result<Vec<_>, _>>()?;
            let driver = drivers.for_row(&store, &row)?;
            let exec = driver.exec().ok_or_else(|| DriverError::Unsupported {
                driver: driver.kind(),
                what: "exec".into(),
            })?;
            Ok(exec.exec(&row.id, &command, &env, ExecIo::inherit())?)
        }
        InstanceCmd::Cp { src, dst } => {
            let (instance, path, host, into) = staging::cp_plan(&src, &dst)?;
            let row = find(&store, &mut drivers, instance)?;
            let files = staging::files_of(drivers.for_row(&store, &row)?)?;
            if into {
                files.copy_in(&row.id, host, path)?;
            } else {
                files.copy_out(&row.id, path, host)?;
            }
            Ok(0)
        }
        InstanceCmd::Logs { instance } => {
            let row = find(&store, &mut drivers, &instance)?;
            let logs = drivers.for_row(&store, &row)?.logs(&row.id)?;
            copy_file(&logs.stdout, &mut std::io::stdout())?;
            copy_file(&logs.stderr, &mut std::io::stderr())?;
            Ok(0)
        }
        InstanceCmd::Console { instance, follow } => {
            let row = find(&store, &mut drivers, &instance)?;
            console(drivers.for_row(&store, &row)?, &row.id, follow)?;
            Ok(0)
        }
        InstanceCmd::Checkpoint { instance, to, stop } => {
            let row = find(&store, &mut drivers, &instance)?;
            let q = qemu_for(&mut drivers, &row, "checkpoint")?;
            let ev = Event::Checkpoint { stop };
            check(&row, ev)?;
            // The default lives in the instance's directory, so destroy removes it.
            let file = to.unwrap_or_else(|| {
                q.instance_dir(&row.id).join(format!(
                    "checkpoint-{}.vmstate",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
                ))
            });
            let after = if stop {
                AfterCheckpoint::Stop
            } else {
                AfterCheckpoint::Continue
            };
            let info = q.checkpoint(&row.id, &file, after)?;
            // Without --stop the state stays as it was; with it the VM has ended.
            let state = if stop {
                transition(&store, &row, ev, StateChange::default())?
            } else {
                state_of(&row)?
            };
            if ctx.json() {
                ctx.print_json(&serde_json::json!({
                    "id": row.id,
                    "state": state,
                    "checkpoint": info.path,
                    "size": info.size,
                    "paused_secs": info.elapsed.as_secs_f64(),
                }))?;
            } else {
                println!(
                    "checkpoint of instance {} written to {} ({}, guest paused {:.1}s); instance {state}",
                    label(&row),
                    info.path.display(),
                    ByteSize(info.size),
                    info.elapsed.as_secs_f64()
                );
            }
            Ok(0)
        }
        InstanceCmd::Restore { instance, from } => {
            let row = find(&store, &mut drivers, &instance)?;
            let q = qemu_for(&mut drivers, &row, "restore")?;
            check(&row, Event::Restore)?;
            let file = match from {
                Some(f) => f,
                None => q
                    .checkpoints(&row.id)?
                    .pop()
                    .ok_or_else(|| DriverError::NotFound {
                        kind: "checkpoint of instance",
                        id: row.id.clone(),
                    })?,
            };
            q.restore(&row.id, &file)?;
            // The VM process is new: uptime counts from here.
            transition(
                &store,
                &row,
                Event::Restore,
                StateChange {
                    started: true,
                    ..Default::default()
                },
            )?;
            report(
                ctx,
                &store,
                &row.id,
                &format!(
                    "instance {} restored from {} and running",
                    label(&row),
                    file.display()
                ),
            )?;
            Ok(0)
        }
        InstanceCmd::Migrate(a) => crate::cmd::migrate::run(ctx, a),
        InstanceCmd::Extend { instance, by } => {
            let row = find(&store, &mut drivers, &instance)?;
            let row = extend_instance(&store, &row, &by)?;
            report(
                ctx,
                &store,
                &row.id,
                &format!(
                    "instance {} now expires {}",
                    label(&row),
                    row.expires.as_deref().unwrap_or("-")
                ),
            )?;
            Ok(0)
        }
        InstanceCmd::Ls => {
            let mut views = Vec::new();
            for row in store.instances()? {
                let row = match refresh(&store, &mut drivers, row.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("vfarm: warning: cannot check instance {}: {e:#}", row.id);
                        row
                    }
                };
                views.push(view(&store, &row, false)?);
            }
            if ctx.json() {
                ctx.print_json(&views)?;
            } else {
                print_table(&views);
            }
            Ok(0)
        }
        InstanceCmd::Show { instance } => {
            let row = find(&store, &mut drivers, &instance)?;
            let mut v = view(&store, &row, true)?;
            v.vm = vm_view(&mut drivers, &row);
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                print_view(&v);
            }
            Ok(0)
        }
        InstanceCmd::Ssh {
            instance,
            identity,
            command,
        } => {
            let row = find(&store, &mut drivers, &instance)?;
            let q = qemu_for(&mut drivers, &row, "ssh")?;
            check(&row, Event::Exec)?;
            let info = q.ssh_info(&row.id)?;
            let status = std::process::Command::new("ssh")
                .args(info.ssh_args(identity.as_deref(), &command))
                .status()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => anyhow::Error::new(DriverError::HostNotReady {
                        driver: "qemu",
                        reason: "the ssh client is not installed (Debian package openssh-client)"
                            .into(),
                    }),
                    _ => anyhow::Error::new(e).context("cannot run ssh"),
                })?;
            use std::os::unix::process::ExitStatusExt;
            Ok(status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        InstanceCmd::Reap => {
            let reaped = reap_expired(ctx)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({ "reaped": reaped }))?;
            } else {
                println!("reaped {} expired instance(s)", reaped.len());
            }
            Ok(0)
        }
    }
}

fn pause_resume(
    ctx: &Ctx,
    store: &Store,
    drivers: &mut Drivers<'_>,
    instance: &str,
    ev: Event,
) -> Result<i32> {
    let row = find(store, drivers, instance)?;
    let to = pause_resume_instance(store, drivers.for_row(store, &row)?, &row, ev)?;
    report(
        ctx,
        store,
        &row.id,
        &format!("instance {} {to}", label(&row)),
    )?;
    Ok(0)
}

/// Print an instance's console log; with `follow`, keep printing what is appended until the
/// instance is no longer running or paused (Ctrl-C ends it earlier: nothing to clean up).
fn console(driver: &dyn Driver, id: &str, follow: bool) -> Result<()> {
    let logs = driver.logs(id)?;
    // A VM has one console for both streams; print it once.
    let separate = logs.stderr != logs.stdout;
    // Before the first start there is no log yet: that is an empty console, not an error.
    let open = |p: &Path| match File::open(p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open {}", p.display()))),
    };
    let mut f = Follower {
        out: open(&logs.stdout)?,
        err: if separate { open(&logs.stderr)? } else { None },
    };
    f.pump()?;
    if !follow {
        return Ok(());
    }
    loop {
        let seen = driver.observe(id)?;
        // A log that appears later (the instance started meanwhile) is followed from then on.
        if f.out.is_none() {
            f.out = open(&logs.stdout)?;
        }
        if separate && f.err.is_none() {
            f.err = open(&logs.stderr)?;
        }
        f.pump()?;
        if !matches!(seen, Observed::Running | Observed::Paused) {
            // What was written between the last read and the end.
            return f.pump();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_file(path: &Path, out: &mut dyn Write) -> Result<()> {
    if !crate::cmd::print_file(path, out)? {
        bail!("cannot open {}: no such file", path.display());
    }
    Ok(())
}

/// Destroy every instance whose expiry has passed. Returns their ids. The service's reaper
/// calls this periodically; `vfarm instance reap` calls it once.
pub fn reap_expired(ctx: &Ctx) -> Result<Vec<String>> {
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    let mut reaped = Vec::new();
    for row in store.expired_instances(&vfarm_store::now())? {
        // One still being made belongs to its create (a dead create is reconciled at the
        // service's start); it is reaped on a later round.
        if row.state == State::Creating.as_str() {
            continue;
        }
        // Instances on nodes are the control service's to reap (through the node), those of
        // another service sharing the database that service's.
        if here(&store, &row).is_err() {
            continue;
        }
        let row = refresh(&store, &mut drivers, row.clone()).unwrap_or(row);
        let driver = drivers.for_row(&store, &row)?;
        match destroy_instance(&ctx.data_dir, &store, driver, &row) {
            Ok(()) => {
                // The audit log says who took it away, and why.
                let detail = serde_json::json!({
                    "owner": row.owner, "hostname": row.hostname, "expires": row.expires,
                });
                if let Err(e) = store.audit(
                    "vfarm-reaper",
                    "service",
                    "instance.reap",
                    &row.id,
                    "ok",
                    &detail,
                ) {
                    eprintln!(
                        "vfarm: warning: cannot audit the reaping of {}: {e}",
                        row.id
                    );
                }
                reaped.push(row.id.clone())
            }
            Err(e) => eprintln!("vfarm: warning: cannot reap instance {}: {e:#}", row.id),
        }
    }
    Ok(reaped)
}

// ---------------------------------------------------------------------------------------
// vfarm snapshot …

pub fn run_snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<i32> {
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    match cmd {
        SnapshotCmd::Create { instance, name } => {
            let row = find(&store, &mut drivers, &instance)?;
            let info = snapshot_instance(&store, drivers.for_row(&store, &row)?, &row, &name)?;
            if ctx.json() {
                ctx.print_json(&store.snapshot(&row.id, &name)?)?;
            } else {
                println!(
                    "snapshot {name} of instance {} ({})",
                    label(&row),
                    ByteSize(info.size)
                );
            }
            Ok(0)
        }
        SnapshotCmd::Ls { instance } => {
            let row = store.find_instance(&instance)?;
            let snaps: Vec<SnapshotView> = store
                .snapshots(&row.id)?
                .into_iter()
                .map(snapshot_view)
                .collect();
            if ctx.json() {
                ctx.print_json(&snaps)?;
            } else {
                print_snapshots(&snaps);
            }
            Ok(0)
        }
        SnapshotCmd::Revert { instance, name } => {
            let row = find(&store, &mut drivers, &instance)?;
            revert_instance(&store, drivers.for_row(&store, &row)?, &row, &name)?;
            report(
                ctx,
                &store,
                &row.id,
                &format!("instance {} reverted to {name}", label(&row)),
            )?;
            Ok(0)
        }
        SnapshotCmd::Rm { instance, name } => {
            let row = store.find_instance(&instance)?;
            remove_snapshot(&store, drivers.for_row(&store, &row)?, &row, &name)?;
            if ctx.json() {
                ctx.print_json(
                    &serde_json::json!({"instance": row.id, "snapshot": name, "removed": true}),
                )?;
            } else {
                println!("snapshot {name} of instance {} removed", label(&row));
            }
            Ok(0)
        }
    }
}

fn snapshots_of(driver: &dyn Driver) -> Result<&dyn vfarm_driver::Snapshots> {
    Ok(driver.snapshots().ok_or_else(|| DriverError::Unsupported {
        driver: driver.kind(),
        what: "snapshots".into(),
    })?)
}

// ---------------------------------------------------------------------------------------
// vfarm run …

/// Copies what an instance writes to its log files to our stdout/stderr as it arrives
/// (a file not there yet, or a VM's single console, is `None`).
struct Follower {
    out: Option<File>,
    err: Option<File>,
}

impl Follower {
    fn pump(&mut self) -> Result<()> {
        let mut buf = Vec::new();
        if let Some(out) = &mut self.out {
            out.read_to_end(&mut buf)?;
        }
        if !buf.is_empty() {
            let mut o = std::io::stdout().lock();
            o.write_all(&buf)?;
            o.flush()?;
        }
        buf.clear();
        if let Some(err) = &mut self.err {
            err.read_to_end(&mut buf)?;
        }
        if !buf.is_empty() {
            std::io::stderr().write_all(&buf)?;
        }
        Ok(())
    }
}

pub fn run_run(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    let outcome_file = a.outcome.clone();
    let r = run_disposable(ctx, a);
    if let Some(file) = outcome_file {
        let o = match &r {
            Ok((code, ending)) => RunOutcome {
                reason: match ending {
                    Ending::Exited => "exit",
                    Ending::TimedOut => "timeout",
                    Ending::Interrupted => "interrupted",
                }
                .into(),
                exit_code: Some(*code),
                error: None,
            },
            Err(e) => RunOutcome {
                reason: "error".into(),
                exit_code: None,
                error: Some(format!("{e:#}")),
            },
        };
        std::fs::write(&file, serde_json::to_vec(&o)?)
            .with_context(|| format!("cannot write --outcome {}", file.display()))?;
    }
    let (code, ending) = r?;
    Ok(match ending {
        Ending::Exited => code,
        Ending::TimedOut => TIMEOUT_EXIT,
        Ending::Interrupted => INTERRUPTED_EXIT,
    })
}

/// `vfarm run`: the command's own exit code (or 1 for lost outputs) and how it ended.
fn run_disposable(ctx: &Ctx, a: RunArgs) -> Result<(i32, Ending)> {
    let store = ctx.store()?;
    tracing::debug!("run: store open");
    let driver = make_driver(ctx, &a.driver.driver, &a.driver.runtime, &a.driver.accel)?;
    let driver = driver.as_ref();
    tracing::debug!(driver = driver.kind(), "run: driver ready");
    let by_exec = a.keep_on_failure || runs_commands_by_exec(driver);
    let timeout = a
        .timeout
        .as_deref()
        .map(|t| parse_duration("timeout", t).map(Duration::from_secs))
        .transpose()?;
    if let Some(dir) = &a.workdir {
        staging::check_workdir(dir)?;
    }
    let wd = a.workdir.as_deref();
    let stage_in = a
        .copy_in
        .iter()
        .map(|s| staging::parse_stage("copy-in", s, false, wd))
        .collect::<Result<Vec<_>>>()?;
    let stage_out = a
        .copy_out
        .iter()
        .map(|s| staging::parse_stage("copy-out", s, true, wd))
        .collect::<Result<Vec<_>>>()?;
    if !stage_in.is_empty() || !stage_out.is_empty() {
        staging::files_of(driver)?;
    }
    let command = match wd {
        Some(dir) => staging::in_workdir(dir, &a.command),
        None => a.command.clone(),
    };
    let vm = vm_setup(
        driver,
        a.driver.profile.as_deref(),
        BootProfile::Fast,
        &GuestArgs::default(),
    )?;
    let image = resolve_image(
        ctx,
        &full_profile_packages(&a.image, vm.profile),
        runs_commands_by_exec(driver),
    )?;
    tracing::debug!(image = %image.id, "run: image resolved");
    // With --keep-on-failure the main process is the idle init and the command runs through
    // exec, so the kept instance can be started again and entered; otherwise the command is
    // the main process (the fast path).
    let main_command = if by_exec { Vec::new() } else { command.clone() };
    let row = create_instance(
        ctx,
        driver,
        NewInstance {
            image,
            name: None,
            expiry: Some(a.expiry.clone()),
            shape: a.shape.clone(),
            command: main_command,
            disposable: true,
            vm,
            owner: actor(),
            disk: None,
            id: None,
        },
    )?;
    let id = row.id.clone();
    tracing::debug!(instance = %id, "run: prepared");
    let interrupted = interrupt_flag();
    let outcome = (|| -> Result<(i32, Ending)> {
        let until = Until {
            begun: Instant::now(),
            timeout,
            interrupted: &interrupted,
        };
        // A main command starts with the instance, so its inputs go in before; a command
        // run by exec gets them once the instance runs (a VM's agent needs a running guest).
        if !by_exec {
            staging::copy_in_all(driver, &id, &stage_in)?;
        }
        start_instance(&store, driver, &row)?;
        tracing::debug!(instance = %id, "run: started");
        if by_exec {
            staging::copy_in_all(driver, &id, &stage_in)?;
            exec_with_timeout(driver, &id, &command, &a.shape.env, &until)
        } else {
            follow_until_exit(driver, &id, &until)
        }
    })();
    let (code, ending) = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = destroy_after_run(&store, driver, &id);
            return Err(e);
        }
    };
    match ending {
        Ending::TimedOut => eprintln!(
            "vfarm: run: timed out after {}; the command was killed",
            a.timeout.as_deref().unwrap_or("?")
        ),
        Ending::Interrupted => eprintln!("vfarm: run: interrupted; the command was killed"),
        Ending::Exited => {}
    }
    tracing::debug!(instance = %id, code, ?ending, "run: ended");
    let lost_outputs = staging::copy_out_all(driver, &id, &stage_out);
    if let Some(file) = &a.console_log {
        if let Err(e) = save_console(driver, &id, file) {
            eprintln!("vfarm: run: cannot save the console log: {e:#}");
        }
    }
    let code = if code == 0 && lost_outputs > 0 {
        1
    } else {
        code
    };
    if (code == 0 && ending == Ending::Exited) || !a.keep_on_failure {
        destroy_after_run(&store, driver, &id)?;
        tracing::debug!(instance = %id, "run: destroyed");
    } else {
        keep_failed(&store, driver, &id, code)?;
    }
    Ok((code, ending))
}

/// How a disposable run's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    TimedOut,
    /// SIGINT or SIGTERM reached `vfarm run`.
    Interrupted,
}

/// When to stop waiting for a run's command.
struct Until<'a> {
    begun: Instant,
    timeout: Option<Duration>,
    interrupted: &'a AtomicBool,
}

impl Until<'_> {
    /// Why the command must be killed now, if it must.
    fn due(&self) -> Option<Ending> {
        if self.interrupted.load(Ordering::SeqCst) {
            Some(Ending::Interrupted)
        } else if self.timeout.is_some_and(|t| self.begun.elapsed() >= t) {
            Some(Ending::TimedOut)
        } else {
            None
        }
    }
}

/// Set when SIGINT or SIGTERM arrives, so an interrupted `vfarm run` kills and removes its
/// instance instead of dying and leaving it to the reaper. (The instance runs in its own
/// session, so the terminal's Ctrl-C reaches only us.)
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        });
        set.store(true, Ordering::SeqCst);
    });
    flag
}

/// Stream the main process's output until it exits; kill it at the deadline.
fn follow_until_exit(driver: &dyn Driver, id: &str, until: &Until<'_>) -> Result<(i32, Ending)> {
    let logs = driver.logs(id)?;
    let mut f = Follower {
        out: Some(File::open(&logs.stdout)?),
        err: Some(File::open(&logs.stderr)?),
    };
    let mut backoff = vfarm_driver::Backoff::default();
    let mut ending = Ending::Exited;
    let seen = loop {
        let seen = driver.observe(id)?;
        f.pump()?;
        if !matches!(seen, Observed::Running | Observed::Paused) {
            break seen;
        }
        if let Some(why) = until.due() {
            ending = why;
            break driver.stop(id, StopMode::Kill)?;
        }
        backoff.sleep();
    };
    f.pump()?;
    let code = match seen {
        Observed::Exited { code } => code,
        other => bail!("instance {id} ended without an exit status ({other})"),
    };
    Ok((code, ending))
}

/// Run the command with exec (output passes straight through); at the deadline stop the
/// instance, which ends the exec.
fn exec_with_timeout(
    driver: &dyn Driver,
    id: &str,
    command: &[String],
    env: &[String],
    until: &Until<'_>,
) -> Result<(i32, Ending)> {
    let env = env
        .iter()
        .map(|e| vfarm_core::instance::parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let exec = driver.exec().ok_or_else(|| DriverError::Unsupported {
        driver: driver.kind(),
        what: "exec".into(),
    })?;
    std::thread::scope(|s| {
        let h = s.spawn(|| exec.exec(id, command, &env, ExecIo::inherit()));
        let mut ending = Ending::Exited;
        while !h.is_finished() {
            if ending == Ending::Exited {
                if let Some(why) = until.due() {
                    ending = why;
                    driver.stop(id, StopMode::Kill)?;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let code = match h.join().map_err(|_| anyhow!("exec thread panicked"))? {
            Ok(c) => c,
            // Killed at the deadline: a VM's agent connection dies with it, so there is no
            // exit status to report; use SIGKILL's, as a killed container's would be.
            Err(_) if ending != Ending::Exited => 137,
            Err(e) => return Err(e.into()),
        };
        Ok((code, ending))
    })
}

/// Copy the console log (stdout, then stderr when it is a separate file) to `file`.
fn save_console(driver: &dyn Driver, id: &str, file: &Path) -> Result<()> {
    let logs = driver.logs(id)?;
    let mut out =
        File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    copy_file(&logs.stdout, &mut out)?;
    if logs.stderr != logs.stdout {
        copy_file(&logs.stderr, &mut out)?;
    }
    Ok(())
}

fn destroy_after_run(store: &Store, driver: &dyn Driver, id: &str) -> Result<()> {
    driver
        .cleanup(id)
        .with_context(|| format!("cannot remove disposable instance {id}"))?;
    store.delete_instance(&actor(), id)?;
    Ok(())
}

/// Keep a failed run's instance: stopped, with a `failure` snapshot, and say how to get in.
fn keep_failed(store: &Store, driver: &dyn Driver, id: &str, code: i32) -> Result<()> {
    let row = store
        .instance(id)?
        .ok_or_else(|| anyhow!("instance {id} vanished"))?;
    driver.stop(id, StopMode::Kill)?;
    let msg = format!("command exited with status {code}");
    transition(
        store,
        &row,
        Event::Stop,
        StateChange {
            exit_code: Some(code),
            error: Some(&msg),
            ..Default::default()
        },
    )?;
    let info = snapshots_of(driver)?.create(id, "failure")?;
    store.insert_snapshot(
        &actor(),
        &SnapshotRow {
            instance_id: id.to_string(),
            name: "failure".into(),
            created: vfarm_store::now(),
            size: info.size,
        },
    )?;
    eprintln!(
        "vfarm: run: kept instance {id} (stopped) with snapshot `failure`. To inspect it:\n  \
         vfarm instance start {id}\n  vfarm instance exec {id} -- sh\n  \
         vfarm instance destroy {id}   # when done"
    );
    Ok(())
}
