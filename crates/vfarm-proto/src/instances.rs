//! Instances on the wire: what the API and `--output json` show, and the requests the API
//! accepts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An instance as the API and `vfarm instance ls/show --output json` show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub name: Option<String>,
    /// creating, created, running, paused, stopped or failed.
    pub state: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The image's id.
    pub image: String,
    pub image_name: Option<String>,
    /// The image's endorsement was revoked after this instance was made from it.
    pub image_revoked: bool,
    pub driver: String,
    pub owner: String,
    pub hostname: String,
    /// The node it runs on (several hosts); absent: the service's own machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Why the control chose that node (e.g. "KVM works there (n2 would emulate with TCG);
    /// spread: …").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// The instance's address on its network, else the address that goes with a hostname
    /// from the pool, if the pool gives one.
    #[serde(default)]
    pub address: Option<String>,
    /// The site network it is on (absent: loopback only, or the host's network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// How to log in from a machine that reaches its network (VMs with sshd):
    /// `ssh vfarm@node07.example.org`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    pub created: String,
    pub started: Option<String>,
    pub uptime_secs: Option<i64>,
    pub expires: Option<String>,
    /// Seconds until the reaper destroys it (negative: due).
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotView>>,
    /// The driver's instance spec (show only; injected file contents redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// VM details (qemu instances, show only).
    #[serde(flatten)]
    #[schema(inline, value_type = VmFields)]
    pub vm: Option<VmView>,
}

/// How the VM details appear in an instance's schema: every field may be absent (not a VM,
/// or a listing).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VmFields {
    /// kvm or tcg.
    accel: Option<String>,
    /// Why the accelerator is not the one asked for.
    accel_note: Option<String>,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    /// fast or full.
    profile: Option<String>,
    ssh: Option<SshView>,
    stats: Option<StatsView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    /// kvm or tcg.
    pub accel: String,
    /// Why the accelerator is not the one asked for (KVM unusable here, so TCG).
    pub accel_note: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Boot profile: fast or full.
    pub profile: String,
    /// How to log in (full profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshView>,
    /// Only while QEMU runs (running or paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshView {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The ssh command line `vfarm instance ssh` runs.
    pub command: String,
}

/// A VM's measured use, durations in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    pub pid: i32,
    /// QEMU's run state (running, paused, postmigrate …).
    pub status: String,
    /// Host CPU time of the QEMU process (all vCPU and I/O threads).
    pub cpu_time_secs: f64,
    pub rss_bytes: u64,
    /// Since QEMU started (a restore counts from the restore).
    pub uptime_secs: f64,
    pub block: Vec<BlockView>,
    /// The NIC's counters as the guest kernel counts them; absent without a NIC or while
    /// paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlockView {
    pub device: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetView {
    pub interface: String,
    pub mac: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    pub instance_id: String,
    pub name: String,
    pub created: String,
    /// Bytes the snapshot holds.
    pub size: u64,
}

/// `POST /api/v1/instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Image id, unique id prefix or name.
    pub image: String,
    /// a-z 0-9 -, usable wherever an id is.
    #[serde(default)]
    pub name: Option<String>,
    /// From the hostname pool when one is configured (a free one if not given).
    #[serde(default)]
    pub hostname: Option<String>,
    /// CPUs (fractions allowed: 0.5).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory, e.g. 512M, 2G.
    #[serde(default)]
    pub memory: Option<String>,
    /// Disk, e.g. 10G (counted against the disk quota; qemu grows the VM's disk to it).
    #[serde(default)]
    pub disk: Option<String>,
    /// Destroy it this long after creation: 90m, 2h, 2d, 1w.
    #[serde(default)]
    pub expiry: Option<String>,
    /// oci (default) or qemu.
    #[serde(default)]
    pub driver: Option<String>,
    /// Hold the resources and the hostname without starting.
    #[serde(default)]
    pub reserve: bool,
    /// OpenSSH public keys for the login user (qemu full profile).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Admins only (oci): run without a user namespace, so root in the instance is root on
    /// the host. Every other oci instance maps its ids to its owner's unprivileged range.
    #[serde(default)]
    pub privileged: bool,
    /// The site network to join (`GET /api/v1/networks`), or `none` for loopback only;
    /// absent: the site's default network.
    #[serde(default)]
    pub network: Option<String>,
    /// The main command (default: an idle init that keeps the instance up for exec).
    #[serde(default)]
    pub command: Vec<String>,
    /// KEY=VALUE.
    #[serde(default)]
    pub env: Vec<String>,
    /// Admins only (a control placing the instance on a node): record it under this id,
    /// 12 hex digits.
    #[serde(default)]
    pub id: Option<String>,
    /// Admins only: whose instance it is (default: the caller).
    #[serde(default)]
    pub owner: Option<String>,
    /// Admins only (a control placing the instance on a node): the address on `network` the
    /// control leased, so addresses stay unique across the nodes of one LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Several hosts: run it on this node (default: the placement policy chooses).
    #[serde(default)]
    pub host: Option<String>,
    /// qemu: `full` (default: the image's own kernel, cloud-init, SSH) or `fast` (the host's
    /// kernel and a minimal init; seconds to boot, reached through the guest agent only).
    #[serde(default)]
    pub profile: Option<String>,
}

/// What an instance action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop { force: bool },
    Pause,
    Resume,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Kill at once instead of SIGTERM (or ACPI) first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The node to move to (several hosts).
    pub to: String,
    /// Both nodes open the same disk file instead of copying it (it must be on a file
    /// system both reach).
    #[serde(default)]
    pub shared_storage: bool,
}

/// What a live migration between nodes did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrateResult {
    pub id: String,
    pub from: String,
    pub to: String,
    /// copied or shared
    pub storage: String,
    /// How long the guest was paused.
    pub downtime_ms: u64,
    /// The whole migration, from the control's first call to its last.
    pub total_ms: u64,
    pub ram_bytes: u64,
    pub disk_bytes: u64,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Move the expiry this much later: 90m, 2h, 2d, 1w.
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments.
    #[schema(min_items = 1)]
    pub command: Vec<String>,
    /// KEY=VALUE.
    #[serde(default)]
    pub env: Vec<String>,
    /// Longest the command may run before it is killed: 90s, 30m (default 5m, at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Set when the client goes away, so the command is killed. Not part of the body.
    #[serde(skip)]
    pub cancelled: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Exec time limit when the request names none.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest exec time limit a request may ask for.
pub const EXEC_MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Execs one user may run at a time.
pub const EXEC_PER_USER: usize = 4;
/// Execs the service runs at a time. Each has its own thread (never the blocking pool that
/// token checks use) and up to two capped output buffers.
pub const EXEC_TOTAL: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub exit_code: i32,
    /// Standard output (invalid UTF-8 replaced; at most 8 MiB, see `truncated`).
    pub stdout: String,
    pub stderr: String,
    /// The command was killed at its time limit.
    #[serde(default)]
    pub timed_out: bool,
    /// Output past 8 MiB per stream was discarded.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: String,
}

/// `GET /api/v1/quota`: the caller's limits and what they hold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub owner: String,
    pub limits: QuotaNumbers,
    pub usage: QuotaNumbers,
}

/// Instances, CPUs in thousandths, sizes in MiB; `null` is unlimited (limits only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct QuotaNumbers {
    pub instances: Option<u64>,
    pub cpus_milli: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
}
