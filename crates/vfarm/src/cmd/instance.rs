//! `vfarm instance …`, `vfarm snapshot …` and `vfarm run …`: instances on this host.
//!
//! Every command first reconciles the store with what the driver observes (an instance whose
//! process ended while nobody watched becomes stopped/failed with its exit status), then asks
//! `vfarm_core::instance::next` whether the operation is legal, acts through the driver, and
//! records the transition (compare-and-set, so concurrent actors cannot both win).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use vfarm_core::instance::Event;
use vfarm_core::ByteSize;
use vfarm_driver::qemu::AfterCheckpoint;
use vfarm_driver::{BootProfile, DriverError, ExecIo};
use vfarm_store::instances::StateChange;
use vfarm_store::Store;

use vfarm_api::instances::{InstanceView, SnapshotView};

use crate::cmd::staging;
use crate::ctx::Ctx;
pub use vfarm_service::instances::*;
use vfarm_service::run::{Ending, RunIo, RunRequest};
use vfarm_service::Caller;

/// Exit status of `vfarm run` when the command was killed at its `--timeout` (as timeout(1)).
pub const TIMEOUT_EXIT: i32 = 124;
/// Exit status of `vfarm run` when it was interrupted (SIGINT/SIGTERM), as a shell reports.
pub const INTERRUPTED_EXIT: i32 = 130;

/// The filters and the page size of `vfarm instance ls`.
#[derive(Debug, Clone, Default, Args)]
pub struct LsArgs {
    /// Only this owner's instances (through --server, a non-admin sees only their own).
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
    /// Only instances in this state (creating, created, running, paused, stopped, failed…).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<String>,
    /// Only instances of this image (id or name).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Only instances placed on this node (several hosts).
    #[arg(long, value_name = "NODE")]
    pub host: Option<String>,
    /// At most N instances (1 to 1000), oldest first. Default: all (through --server, page
    /// after page).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Measured use of each running instance instead: CPU % (of one CPU; N = its CPUs),
    /// memory used/limit, disk and network KB/s, now and avg/max over the last minutes
    /// (through --server, the service's samples; locally, one 2-second measurement).
    /// Only running instances are measured: --state and --image do not apply.
    #[arg(long, conflicts_with_all = ["state", "image"])]
    pub stats: bool,
}

impl LsArgs {
    pub fn filter(&self) -> vfarm_store::instances::InstanceFilter {
        vfarm_store::instances::InstanceFilter {
            owner: self.owner.clone(),
            state: self.state.clone(),
            image: self.image.clone(),
            host: self.host.clone(),
            scope: Vec::new(),
        }
    }
}

fn parse_state(s: &str) -> Result<String, String> {
    s.parse::<vfarm_core::instance::State>()
        .map(|st| st.as_str().to_string())
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

impl From<ShapeArgs> for Shape {
    fn from(a: ShapeArgs) -> Shape {
        Shape {
            cpus: a.cpus,
            memory: a.memory,
            pids: a.pids,
            hostname: a.hostname,
            env: a.env,
            net: match a.net.as_deref() {
                None => Net::Default,
                Some("none") => Net::None,
                Some("host") => Net::Host,
                Some(n) => Net::Named(n.to_string()),
            },
            privileged: a.privileged,
        }
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
    /// Network: one of the site's networks by name (`vfarm network ls`), none (loopback
    /// only) or host (the host's own stack; oci). Default: the site's default network for
    /// kept instances (none when serve.toml defines no networks), none for `run`.
    #[arg(long, visible_alias = "network", value_name = "NAME|none|host")]
    pub net: Option<String>,
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
    Start {
        /// The instance's name or id.
        instance: String,
    },
    /// Stop: SIGTERM, then SIGKILL after 10 s; --force kills at once.
    Stop {
        /// The instance's name or id.
        instance: String,
        /// Kill at once (SIGKILL) instead of SIGTERM and a 10 s grace.
        #[arg(long)]
        force: bool,
    },
    /// Freeze all processes of the instance.
    Pause {
        /// The instance's name or id.
        instance: String,
    },
    /// Thaw a paused instance.
    Resume {
        /// The instance's name or id.
        instance: String,
    },
    /// Remove the instance, its files and snapshots.
    #[command(alias = "rm")]
    Destroy {
        /// The instance's name or id.
        instance: String,
    },
    /// Run a command inside a running instance; its output and exit status pass through.
    Exec {
        /// The instance's name or id.
        instance: String,
        /// KEY=VALUE for the command (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command and its arguments, after `--`.
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
    Logs {
        /// The instance's name or id.
        instance: String,
    },
    /// Print the console log (qemu: the VM's serial console, boot messages included; oci:
    /// the main process's output).
    Console {
        /// The instance's name or id.
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
        /// The instance's name or id.
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
        /// The instance's name or id.
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
    /// List instances: state, image, driver, owner, created, uptime, expiry. Filters combine;
    /// the store (or, with --server, the service) selects, not the client.
    #[command(
        alias = "list",
        after_help = "Examples:
  vfarm instance ls --owner alice --state running
  vfarm instance ls --image debian-12 --limit 50
  vfarm --server https://vfarm:8750 instance ls --host node2"
    )]
    Ls(LsArgs),
    /// Show one instance.
    Show {
        /// The instance's name or id.
        instance: String,
    },
    /// Log in to a full-profile VM with the system's ssh client, as the injected user, or
    /// run a command there; the exit status passes through. As with ssh, the command is run
    /// by the user's shell in the guest. Host keys are checked against the keys vfarm read
    /// from the guest (the user's known_hosts is left alone).
    #[command(
        after_help = "Example:\n  vfarm instance ssh web -- id -un\n  vfarm instance ssh web -- 'ps ax | wc -l'"
    )]
    Ssh {
        /// The instance's name or id.
        instance: String,
        /// Private key (default: the one beside the --ssh-key given at create, if any).
        #[arg(short = 'i', long, value_name = "KEY")]
        identity: Option<PathBuf>,
        /// A command to run instead of a login shell, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Destroy every expired instance now (the service does this by itself).
    Reap,
    /// Move an instance's expiry later (from now if it had none).
    #[command(after_help = "Example:\n  vfarm instance extend web --by 2d")]
    Extend {
        /// The instance's name or id.
        instance: String,
        /// How much later: 90m, 2h, 2d, 1w.
        #[arg(long)]
        by: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot an instance's filesystem (a running instance keeps running).
    Create {
        /// The instance's name or id.
        instance: String,
        /// The snapshot's name.
        name: String,
    },
    /// List an instance's snapshots.
    #[command(alias = "list")]
    Ls {
        /// The instance's name or id.
        instance: String,
    },
    /// Make the instance's files exactly the snapshot's (a running instance is restarted).
    Revert {
        /// The instance's name or id.
        instance: String,
        /// The snapshot's name.
        name: String,
    },
    /// Remove a snapshot.
    #[command(alias = "remove")]
    Rm {
        /// The instance's name or id.
        instance: String,
        /// The snapshot's name.
        name: String,
    },
}

/// A VM's checkpoints (made by `vfarm instance checkpoint`).
#[derive(Subcommand, Debug)]
pub enum CheckpointCmd {
    /// List a VM's checkpoints, oldest first: state file, size, when made.
    #[command(alias = "list")]
    Ls {
        /// The instance's name or id.
        instance: String,
    },
    /// Remove a checkpoint: its disk snapshot leaves the VM's overlay and the state file is
    /// deleted (a VM with checkpoints can only migrate with --shared-storage).
    #[command(alias = "remove")]
    Rm {
        /// The instance's name or id.
        instance: String,
        /// The checkpoint's state file, as `vfarm checkpoint ls` shows it (or its file name).
        file: PathBuf,
    },
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
    #[arg(long, default_value = vfarm_service::run::DEFAULT_EXPIRY)]
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
    /// The command and its arguments, after `--`; its exit status is vfarm's.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

// Printing (the operations are in vfarm-service)

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

/// How long a local `instance ls --stats` measures (no service keeps a history for it).
const LOCAL_STATS_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The overview rows `ls`'s filters select (--owner, --host, --limit).
pub(crate) fn stats_filtered(
    mut rows: Vec<vfarm_service::stats::InstanceUsage>,
    args: &LsArgs,
) -> Vec<vfarm_service::stats::InstanceUsage> {
    rows.retain(|u| args.owner.as_ref().is_none_or(|o| &u.owner == o));
    rows.retain(|u| args.host.as_ref().is_none_or(|h| &u.host == h));
    if let Some(n) = args.limit {
        rows.truncate(n as usize);
    }
    rows
}

/// The XenCenter-style overview: one line per instance, now and avg/max of the window.
pub(crate) fn print_stats_table(rows: &[vfarm_service::stats::InstanceUsage]) {
    let mib = |b: u64| b as f64 / 1048576.0;
    let rate = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "{:<12}  {:<14}  {:<6}  {:<8}  {:>16}  {:>17}  {:>19}  {:>19}",
        "ID",
        "NAME",
        "DRIVER",
        "OWNER",
        "CPU% (avg/max)",
        "MEM MiB (limit)",
        "DISK R/W KB/s",
        "NET RX/TX KB/s"
    );
    for u in rows {
        let (now, avg, max) = (u.now.unwrap_or_default(), u.avg, u.max);
        let cpu = format!(
            "{:.1} ({:.0}/{:.0}) of {}",
            now.cpu_percent,
            avg.map_or(0.0, |r| r.cpu_percent),
            max.map_or(0.0, |r| r.cpu_percent),
            u.cpus
        );
        let mem = format!(
            "{:.0} ({})",
            mib(now.memory_bytes),
            u.memory_limit_bytes
                .map_or("-".to_string(), |l| format!("{:.0}", mib(l)))
        );
        println!(
            "{:<12}  {:<14}  {:<6}  {:<8}  {:>16}  {:>17}  {:>19}  {:>19}",
            u.id,
            if u.name.is_empty() { "-" } else { &u.name },
            u.driver,
            u.owner,
            cpu,
            mem,
            format!(
                "{}/{}",
                rate(Some(now.disk_read_kbps)),
                rate(Some(now.disk_write_kbps))
            ),
            format!("{}/{}", rate(now.net_rx_kbps), rate(now.net_tx_kbps)),
        );
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
    if let Some(n) = &v.network {
        kv("network", n);
    }
    if let Some(a) = &v.address {
        kv("address", a);
    }
    if let Some(c) = &v.ssh_command {
        kv("ssh", c);
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

pub fn run_instance(ctx: &Ctx, cmd: InstanceCmd) -> Result<i32> {
    let caller = &Caller::local();
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
            let steps = crate::cmd::progress::Steps::new(ctx);
            steps.step("checking the driver");
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
            steps.step("finding the image");
            let image = resolve_image(ctx, &image_args, runs_commands_by_exec(driver.as_ref()))?;
            steps.step(format!(
                "preparing the instance ({} driver: root filesystem or disk, guest set-up)",
                driver.kind()
            ));
            let row = create_instance(
                caller,
                ctx,
                driver.as_ref(),
                NewInstance {
                    image,
                    name: a.name,
                    expiry: a.expiry,
                    shape: a.shape.into(),
                    command: a.command,
                    disposable: false,
                    vm,
                    owner: caller.user.clone(),
                    disk: None,
                    id: None,
                    address: None,
                },
            )?;
            if !a.no_start {
                steps.step(start_step(driver.kind(), &row));
                start_instance(caller, &store, driver.as_ref(), &row)?;
            }
            drop(steps);
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
            let row = find(caller, &store, &mut drivers, &instance)?;
            let steps = crate::cmd::progress::Steps::new(ctx);
            steps.step(start_step(&row.driver, &row));
            start_instance(caller, &store, drivers.for_row(&store, &row)?, &row)?;
            drop(steps);
            report(
                ctx,
                &store,
                &row.id,
                &format!("instance {} running", label(&row)),
            )?;
            Ok(0)
        }
        InstanceCmd::Stop { instance, force } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            stop_instance(caller, &store, drivers.for_row(&store, &row)?, &row, force)?;
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
            let row = find(caller, &store, &mut drivers, &instance)?;
            destroy_instance(
                caller,
                &ctx.data_dir,
                &store,
                drivers.for_row(&store, &row)?,
                &row,
            )?;
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
            let row = find(caller, &store, &mut drivers, &instance)?;
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
            let row = find(caller, &store, &mut drivers, instance)?;
            let files = staging::files_of(drivers.for_row(&store, &row)?)?;
            if into {
                files.copy_in(&row.id, host, path)?;
            } else {
                files.copy_out(&row.id, path, host)?;
            }
            Ok(0)
        }
        InstanceCmd::Logs { instance } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            let logs = drivers.for_row(&store, &row)?.logs(&row.id)?;
            copy_file(&logs.stdout, &mut std::io::stdout())?;
            copy_file(&logs.stderr, &mut std::io::stderr())?;
            Ok(0)
        }
        InstanceCmd::Console { instance, follow } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            vfarm_service::run::console(
                drivers.for_row(&store, &row)?,
                &row.id,
                follow,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(0)
        }
        InstanceCmd::Checkpoint { instance, to, stop } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
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
                transition(caller, &store, &row, ev, StateChange::default())?
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
            let row = find(caller, &store, &mut drivers, &instance)?;
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
                caller,
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
            let row = find(caller, &store, &mut drivers, &instance)?;
            let row = extend_instance(caller, &store, &row, &by)?;
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
        InstanceCmd::Ls(args) if args.stats => {
            let sampler = vfarm_service::stats::Sampler::new();
            sampler.sample(ctx)?;
            // Rates need two samples: a measurement window, not a wait for an event.
            std::thread::sleep(LOCAL_STATS_WINDOW);
            sampler.sample(ctx)?;
            let rows = stats_filtered(sampler.overview_for(caller), &args);
            if ctx.json() {
                ctx.print_json(&rows)?;
            } else {
                print_stats_table(&rows);
            }
            Ok(0)
        }
        InstanceCmd::Ls(args) => {
            let mut views = Vec::new();
            let rows = store
                .instances_page(&args.filter(), None, args.limit.map(|n| n as usize), false)?
                .items;
            for row in rows {
                let row = match refresh(caller, &store, &mut drivers, row.clone()) {
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
            let row = find(caller, &store, &mut drivers, &instance)?;
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
            let row = find(caller, &store, &mut drivers, &instance)?;
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
    let caller = &Caller::local();
    let row = find(caller, store, drivers, instance)?;
    let to = pause_resume_instance(caller, store, drivers.for_row(store, &row)?, &row, ev)?;
    report(
        ctx,
        store,
        &row.id,
        &format!("instance {} {to}", label(&row)),
    )?;
    Ok(0)
}

fn copy_file(path: &Path, out: &mut dyn Write) -> Result<()> {
    if !crate::cmd::print_file(path, out)? {
        bail!("cannot open {}: no such file", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// vfarm snapshot …

pub fn run_snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<i32> {
    let caller = &Caller::local();
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    match cmd {
        SnapshotCmd::Create { instance, name } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            let info =
                snapshot_instance(caller, &store, drivers.for_row(&store, &row)?, &row, &name)?;
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
            let row = find(caller, &store, &mut drivers, &instance)?;
            revert_instance(caller, &store, drivers.for_row(&store, &row)?, &row, &name)?;
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
            remove_snapshot(caller, &store, drivers.for_row(&store, &row)?, &row, &name)?;
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

/// What starting instance `row` waits for, as a progress step.
fn start_step(driver: &str, row: &vfarm_store::instances::InstanceRow) -> String {
    match driver {
        "qemu" => format!(
            "starting {}: booting the VM and waiting for its guest agent (a full-profile VM also for cloud-init and sshd)",
            label(row)
        ),
        _ => format!("starting {}", label(row)),
    }
}

pub fn run_checkpoint(ctx: &Ctx, cmd: CheckpointCmd) -> Result<i32> {
    use vfarm_service::checkpoints;
    let caller = &Caller::local();
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    match cmd {
        CheckpointCmd::Ls { instance } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            let list = checkpoints::list(&mut drivers, &row)?;
            if ctx.json() {
                ctx.print_json(&list)?;
            } else {
                println!("{:<21} {:>10}  FILE", "CREATED", "SIZE");
                for c in &list {
                    println!(
                        "{:<21} {:>10}  {}",
                        c.created.as_deref().unwrap_or("-"),
                        ByteSize(c.size).to_string(),
                        c.file.display()
                    );
                }
            }
            Ok(0)
        }
        CheckpointCmd::Rm { instance, file } => {
            let row = find(caller, &store, &mut drivers, &instance)?;
            let removed = checkpoints::remove(&mut drivers, &row, &file)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"instance": row.id, "checkpoint": removed, "removed": true}))?;
            } else {
                println!(
                    "checkpoint {} of instance {} removed",
                    removed.display(),
                    label(&row)
                );
            }
            Ok(0)
        }
    }
}

// ---------------------------------------------------------------------------------------
// vfarm run …

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
    let caller = &Caller::local();
    let driver = make_driver(ctx, &a.driver.driver, &a.driver.runtime, &a.driver.accel)?;
    let driver = driver.as_ref();
    tracing::debug!(driver = driver.kind(), "run: driver ready");
    let req = RunRequest {
        shape: a.shape.clone().into(),
        timeout: a.timeout.clone(),
        keep_on_failure: a.keep_on_failure,
        expiry: a.expiry.clone(),
        copy_in: a.copy_in.clone(),
        copy_out: a.copy_out.clone(),
        workdir: a.workdir.clone(),
        console_log: a.console_log.clone(),
        command: a.command.clone(),
    };
    // Refusals before an image is built on the fly.
    req.plan(driver)?;
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
    // An interrupted `vfarm run` kills and removes its instance instead of dying and
    // leaving it to the reaper. (The instance runs in its own session, so the terminal's
    // Ctrl-C reaches only us.)
    let interrupted = vfarm_service::dispatch::termination_flag();
    let io = RunIo {
        exec: ExecIo::inherit(),
        out: &mut std::io::stdout(),
        err: &mut std::io::stderr(),
    };
    let end = vfarm_service::run::run(ctx, caller, driver, vm, image, &req, io, &interrupted)?;
    for n in &end.notes {
        eprintln!("vfarm: run: {n}");
    }
    Ok((end.code, end.ending))
}
