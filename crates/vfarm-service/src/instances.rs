//! Instances on this host: records, drivers, transitions, views, the reaper.
//!
//! Every operation first reconciles the store with what the driver observes (an instance
//! whose process ended while nobody watched becomes stopped/failed with its exit status),
//! then asks `vfarm_core::instance::next` whether the operation is legal, acts through the
//! driver, and records the transition (compare-and-set, so concurrent actors cannot both
//! win).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use vfarm_core::instance::{
    next, parse_duration, Event, InstanceRequest, State, MAX_DURATION_SECS,
};
use vfarm_driver::oci::{OciDriver, RuntimeChoice};
use vfarm_driver::qemu::{AccelChoice, QemuDriver};
use vfarm_driver::{
    BootProfile, Driver, DriverError, GuestFile, ImageFile, ImageInput, InstanceSpec, Network,
    Observed, StopMode, VmSetup,
};
use vfarm_proto::instances::{
    BlockView, InstanceView, NetView, SnapshotView, SshView, StatsView, VmView,
};
use vfarm_proto::ErrorCode;
use vfarm_store::instances::{InstanceRow, SnapshotRow, StateChange};
use vfarm_store::{Store, StoreError};

use vfarm_auth::config::QuotaConfig;
use vfarm_auth::pool::HostnamePool;
use vfarm_auth::ServeConfig;
use vfarm_store::auth::Resources;

use crate::env::Env;
use crate::staging;
use crate::Caller;

/// How a graceful stop waits before killing.
const STOP_GRACE: &str = "10s";

/// The network an instance gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Net {
    /// Loopback only.
    #[default]
    None,
    /// The host's network.
    Host,
    /// The site's default network (`default_network` in serve.toml), loopback only without.
    Default,
    /// One of the site's networks by name (`none`: loopback only).
    Named(String),
    /// A grid's own network (`g-<n>`): only its members are made with this, never from a
    /// name a caller gives.
    Grid(String),
}

/// CPU, memory, process limit, hostname, environment, network and privilege of a new
/// instance, as the CLI's flags and the API's body give them.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub pids: Option<u64>,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub net: Net,
    pub privileged: bool,
}

pub fn accel_choice(s: &str) -> AccelChoice {
    match s {
        "kvm" => AccelChoice::Kvm,
        "tcg" => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}

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

pub fn make_driver(env: &Env, kind: &str, runtime: &str, accel: &str) -> Result<Box<dyn Driver>> {
    #[cfg(feature = "fake")]
    if let Some(fake) = &env.fake {
        let kind = match kind {
            "oci" => "oci",
            "qemu" => "qemu",
            _ => "fake",
        };
        return Ok(Box::new(fake.as_kind(kind)));
    }
    match kind {
        "oci" => Ok(Box::new(OciDriver::new(
            &env.data_dir,
            runtime.parse::<RuntimeChoice>().expect("infallible"),
        )?)),
        "qemu" => Ok(Box::new(QemuDriver::new(
            &env.data_dir,
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
pub fn runs_commands_by_exec(driver: &dyn Driver) -> bool {
    driver.kind() == "qemu"
}

/// The qemu driver itself, for what only a VM has (checkpoints, measured stats): those are
/// inherent methods, not part of the `Driver` trait. Other drivers get a clear Unsupported
/// (never a silent success).
pub fn qemu_for(drivers: &mut Drivers<'_>, row: &InstanceRow, what: &str) -> Result<QemuDriver> {
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
        &drivers.env.data_dir,
        accel_choice(&drivers.accel),
    ))
}

/// Drivers by kind, made on first use (each probes its backend once per process).
pub struct Drivers<'a> {
    env: &'a Env,
    runtime: String,
    accel: String,
    made: HashMap<String, Box<dyn Driver>>,
}

impl<'a> Drivers<'a> {
    pub fn new(env: &'a Env) -> Drivers<'a> {
        Drivers {
            env,
            runtime: std::env::var("VFARM_OCI_RUNTIME").unwrap_or_else(|_| "auto".into()),
            accel: std::env::var("VFARM_ACCEL").unwrap_or_else(|_| "auto".into()),
            made: HashMap::new(),
        }
    }

    pub fn get(&mut self, kind: &str) -> Result<&dyn Driver> {
        if !self.made.contains_key(kind) {
            let d = make_driver(self.env, kind, &self.runtime, &self.accel)?;
            self.made.insert(kind.to_string(), d);
        }
        Ok(self.made[kind].as_ref())
    }

    /// The driver of `kind` if [`get`](Self::get) made it already (borrows immutably, so
    /// several can be held at once).
    pub fn made(&self, kind: &str) -> Option<&dyn Driver> {
        self.made.get(kind).map(|d| d.as_ref())
    }

    /// The driver that acts on `row` here: refused for an instance placed on a node or made
    /// by another service that shares the database (its drivers are on its machine).
    pub fn for_row(&mut self, store: &Store, row: &InstanceRow) -> Result<&dyn Driver> {
        here(store, row)?;
        self.get(&row.driver)
    }
}

/// Refuse what this machine's drivers cannot reach: an instance on a node, or one that
/// another service sharing the database runs on its own machine.
pub fn here(store: &Store, row: &InstanceRow) -> Result<()> {
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

pub fn state_of(row: &InstanceRow) -> Result<State> {
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
pub fn transition(
    caller: &Caller,
    store: &Store,
    row: &InstanceRow,
    event: Event,
    change: StateChange<'_>,
) -> Result<State> {
    let from = state_of(row)?;
    let to = next(from, event)?;
    if !store.set_instance_state(&caller.user, &row.id, from.as_str(), to.as_str(), &change)? {
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
pub fn check(row: &InstanceRow, event: Event) -> Result<State> {
    Ok(next(state_of(row)?, event)?)
}

/// The event that explains what the driver observes, given what the store says.
pub fn explain(stored: State, seen: Observed) -> Option<Event> {
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
pub fn refresh(
    caller: &Caller,
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
                let _ = transition(caller, store, &row, Event::Prepared, StateChange::default());
                let row = store.instance(&row.id)?.unwrap_or(row);
                if matches!(seen, Observed::Created) {
                    Ok(row)
                } else {
                    refresh(caller, store, drivers, row)
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
    let _ = transition(caller, store, &row, event, change);
    Ok(store.instance(&row.id)?.unwrap_or(row))
}

pub fn find(
    caller: &Caller,
    store: &Store,
    drivers: &mut Drivers<'_>,
    reference: &str,
) -> Result<InstanceRow> {
    let row = store.find_instance(reference)?;
    refresh(caller, store, drivers, row)
}

/// What the qemu driver says about a VM instance; `None` for other drivers. A failure to
/// measure is a warning: `show` must still show the rest.
pub fn vm_view(drivers: &mut Drivers<'_>, row: &InstanceRow) -> Option<VmView> {
    if row.driver != "qemu" {
        return None;
    }
    let q = qemu_for(drivers, row, "vm details").ok()?;
    let info = match q.info(&row.id) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("no VM details for {}: {e}", row.id);
            return None;
        }
    };
    let active = state_of(row).is_ok_and(State::is_active);
    let stats = match q.vm_stats(&row.id) {
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
            tracing::warn!("cannot measure {}: {e}", row.id);
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
pub struct ViewCache {
    /// Image id → (name, revoked).
    images: HashMap<String, (Option<String>, bool)>,
    /// Lease holder (instance id) → the pool address of its hostname.
    addresses: Option<HashMap<String, Option<String>>>,
    /// Instance id → the node it was placed on.
    hosts: Option<HashMap<String, String>>,
}

/// Up to this many rows, a listing looks up only their leases and placements; beyond, the
/// whole tables are read once (an `IN` list that long costs more than it saves).
const PAGE_LOOKUP_MAX: usize = 1000;

impl ViewCache {
    /// A cache for viewing `rows`: for a page of a list, the addresses and placements of
    /// these rows only, so a page costs the same whatever the table holds.
    pub fn for_rows(store: &Store, rows: &[InstanceRow]) -> Result<ViewCache> {
        let mut cache = ViewCache::default();
        if rows.len() <= PAGE_LOOKUP_MAX {
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            cache.addresses = Some(
                store
                    .hostname_leases_of(&ids)?
                    .into_iter()
                    .map(|l| (l.holder, l.address))
                    .collect(),
            );
            cache.hosts = Some(store.instance_hosts_of(&ids)?);
        }
        Ok(cache)
    }
}

pub fn view(store: &Store, row: &InstanceRow, detail: bool) -> Result<InstanceView> {
    view_cached(store, row, detail, &mut ViewCache::default())
}

pub fn view_cached(
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
    let pool_address = cache
        .addresses
        .as_ref()
        .and_then(|a| a.get(&row.id).cloned().flatten());
    let on_net = crate::net::view_of(&row.spec);
    let address = on_net
        .as_ref()
        .map(|n| n.address.to_string())
        .or(pool_address.clone());
    // The pool's name is what the site's DNS maps to that address; otherwise the address.
    let ssh_command = on_net.as_ref().and_then(|n| {
        let user = n.ssh_user.as_ref()?;
        let target = if pool_address.as_deref() == Some(n.address.to_string().as_str()) {
            row.hostname.clone()
        } else {
            n.address.to_string()
        };
        Some(format!("ssh {user}@{target}"))
    });
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
        network: on_net.map(|n| n.network),
        ssh_command,
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

pub fn snapshot_view(s: SnapshotRow) -> SnapshotView {
    SnapshotView {
        instance_id: s.instance_id,
        name: s.name,
        created: s.created,
        size: s.size,
    }
}

/// Files injected into a VM (host certificates and their keys) are shown by size, not
/// content.
pub fn redact_guest_files(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(files) = spec.pointer_mut("/vm/files").and_then(|f| f.as_array_mut()) {
        for f in files {
            let size = f["content"].as_array().map(Vec::len).unwrap_or(0);
            f["content"] = serde_json::json!(format!("({size} bytes)"));
        }
    }
    spec
}

/// An image new instances may be made from, by reference.
pub fn usable_image(env: &Env, reference: &str) -> Result<vfarm_image::Image> {
    let img = env.images()?.resolve(reference)?;
    // An image whose endorsement was revoked (image, endorser or subscription) must not
    // start anything new; instances already running from it are flagged, not killed.
    if env.store()?.repository_image_revoked(&img.id)? {
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

pub fn image_input(img: &vfarm_image::Image) -> ImageInput {
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
pub struct GuestArgs<'a> {
    pub ssh_keys: &'a [PathBuf],
    /// Public keys given as text (the API), beside or instead of key files.
    pub ssh_key_texts: &'a [String],
    pub ssh_user: Option<&'a str>,
    pub guest_files: &'a [String],
}

/// The boot profile and guest setup of a new instance. They are for the qemu driver only (any
/// of them with another driver is refused, not ignored); its profile defaults to `default`.
/// Keys and files are read here, so a missing file fails before anything is made.
pub fn vm_setup(
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

/// 12 random hex digits: short enough to type, 48 bits against collisions on one host.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn time_after(secs: u64) -> String {
    // parse_duration caps every duration at MAX_DURATION_SECS, so this cannot overflow.
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs.min(MAX_DURATION_SECS) as i64);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An instance placed on a node is reached through the control service, not this machine's
/// drivers.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} runs on node {host}: act on it through the control service (--server)")]
pub struct OnNode {
    pub id: String,
    pub host: String,
}

/// A local instance of another service that shares the state database (several `vfarm
/// serve` on one PostgreSQL): it runs on that service's machine, under its data dir.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} runs under the service at {origin}: act on it there")]
pub struct Elsewhere {
    pub id: String,
    pub origin: String,
}

pub struct NewInstance {
    pub image: vfarm_image::Image,
    pub name: Option<String>,
    pub expiry: Option<String>,
    pub shape: Shape,
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
    /// The address on its network the control leased (a node takes the control's).
    pub address: Option<std::net::IpAddr>,
}

/// The site's rules for new instances (serve.toml): hostname pool, quotas, default expiry.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The site's configuration (its networks).
    pub config: ServeConfig,
    pub pool: HostnamePool,
    pub quotas: QuotaConfig,
    pub default_expiry_secs: Option<u64>,
    /// The service's own names (its certificate's), which no instance may take.
    pub reserved: Vec<String>,
}

impl Admission {
    pub fn from_config(c: &ServeConfig) -> Admission {
        Admission {
            config: c.clone(),
            pool: HostnamePool::new(&c.hostnames).with_quarantine(c.hostname_quarantine_secs),
            quotas: c.quotas.clone(),
            default_expiry_secs: c.default_expiry_secs,
            reserved: Vec::new(),
        }
    }

    /// The data dir's `serve.toml` (absent: no pool, no quotas).
    pub fn load(env: &Env) -> Result<Admission> {
        let c = ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?;
        Ok(Admission::from_config(&c))
    }
}

/// Record and prepare an instance (state `created`). On failure nothing is left behind.
pub fn create_instance(
    caller: &Caller,
    env: &Env,
    driver: &dyn Driver,
    n: NewInstance,
) -> Result<InstanceRow> {
    let mut n = n;
    let admission = if n.disposable {
        // A disposable run joins a network only when it names one (attaching costs time).
        if n.shape.net == Net::Default {
            n.shape.net = Net::None;
        }
        let config = match n.shape.net {
            Net::Named(_) => ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?,
            _ => ServeConfig::default(),
        };
        Admission {
            config,
            ..Default::default()
        }
    } else {
        Admission::load(env)?
    };
    let store = env.store()?;
    let row = record_instance(&store, &admission, &env.data_dir, driver.kind(), n)?;
    prepare_recorded(caller, &store, driver, &row, &env.data_dir)
}

/// Where an instance finds its host certificate (the grid layout).
pub const HOST_CERT: &str = "/etc/grid-security/hostcert.pem";

pub const HOST_KEY: &str = "/etc/grid-security/hostkey.pem";

/// The longest an instance certificate lives when the instance has no expiry.
const INSTANCE_CERT_MAX_DAYS: u32 = 365;

/// A host certificate for the instance from the site CA, if one was set up (`vfarm ca
/// init`): `OU=instances`, server purpose only, valid for the instance's lease, revoked at
/// destroy ([`revoke_host_certificate`]).
pub fn host_certificate(
    data_dir: &Path,
    row: &InstanceRow,
) -> Result<Option<vfarm_auth::ca::Issued>> {
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
pub fn revoke_host_certificate(data_dir: &Path, id: &str) -> Result<()> {
    let dir = vfarm_auth::ca::ca_dir(data_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    vfarm_auth::ca::SiteCa::open(&dir)?.revoke_instance(id, chrono::Utc::now())?;
    Ok(())
}

/// Put the host certificate and key into a prepared OCI instance (key mode 0600).
pub fn place_host_certificate(
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
pub fn default_memory(driver_kind: &str) -> u64 {
    if driver_kind == "qemu" {
        512 << 20
    } else {
        1 << 30
    }
}

/// An instance's host name must never be a service's: not an address, not `localhost`, not
/// a node's name nor one of the control's own names (its certificate would then name a
/// service a client trusts).
pub fn check_instance_hostname(store: &Store, admission: &Admission, h: &str) -> Result<()> {
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
pub fn record_instance(
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
            Ok(lease) => (lease.name, lease.address),
            Err(e) => {
                let _ = vfarm_auth::quota::release(store, &id);
                return Err(e.into());
            }
        }
    } else {
        let h = settings
            .hostname
            .clone()
            .or_else(|| settings.name.clone())
            .unwrap_or_else(|| format!("vf-{id}"));
        (h, None)
    };
    let (hostname, pool_address) = hostname;
    let release_holds = || {
        let _ = store.release_hostname(&id);
        let _ = store.release_quota(&id);
    };
    let network = match crate::net::choose(&admission.config, &n.shape.net) {
        Ok(Some(net)) => {
            let want = n.address.or(pool_address.and_then(|a| a.parse().ok()));
            match crate::net::lease(&net, &id, driver_kind, &hostname, want) {
                Ok(a) => Network::Attached(a),
                Err(e) => {
                    release_holds();
                    return Err(e);
                }
            }
        }
        Ok(None) if n.shape.net == Net::Host => Network::Host,
        Ok(None) => Network::None,
        Err(e) => {
            release_holds();
            return Err(anyhow::Error::new(e));
        }
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
        network,
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
        release_holds();
        if let Some(a) = spec.network.attachment() {
            if let Ok(net) = crate::net::find(&admission.config, &a.network) {
                let _ = net.release(&id);
            }
        }
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
pub fn prepare_recorded(
    caller: &Caller,
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
    data_dir: &Path,
) -> Result<InstanceRow> {
    let id = &row.id;
    let mut spec: InstanceSpec = serde_json::from_str(&row.spec)
        .with_context(|| format!("instance {id} has an unreadable spec"))?;
    let recorded = spec.clone();
    let fail = |e: anyhow::Error| {
        let _ = driver.cleanup(id);
        let _ = crate::net::unplug(data_dir, &recorded);
        let _ = revoke_host_certificate(data_dir, id);
        let _ = store.delete_instance(&caller.user, id);
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
    crate::net::plug(data_dir, &spec).map_err(fail)?;
    if let Err(e) = driver.prepare(&spec) {
        return Err(fail(e.into()));
    }
    crate::net::place_files(driver, &spec).map_err(fail)?;
    if let (Some(c), "oci") = (&cert, driver.kind()) {
        place_host_certificate(driver, id, c).map_err(fail)?;
    }
    transition(caller, store, row, Event::Prepared, StateChange::default())?;
    Ok(store.instance(id)?.expect("just recorded"))
}

pub fn start_instance(
    caller: &Caller,
    store: &Store,
    driver: &dyn Driver,
    row: &InstanceRow,
) -> Result<()> {
    check(row, Event::Start)?;
    if let Err(e) = driver.start(&row.id) {
        let msg = e.to_string();
        let s = state_of(row)?;
        let _ = store.set_instance_state(
            &caller.user,
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
        caller,
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
pub fn stop_instance(
    caller: &Caller,
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
        caller,
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
pub fn pause_resume_instance(
    caller: &Caller,
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
    transition(caller, store, row, ev, StateChange::default())
}

/// Move the expiry `by` later (from now, if it had none or it has passed).
pub fn extend_instance(
    caller: &Caller,
    store: &Store,
    row: &InstanceRow,
    by: &str,
) -> Result<InstanceRow> {
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
    if !store.set_instance_expiry(&caller.user, &row.id, &until)? {
        return Err(StoreError::NotFound {
            kind: "instance",
            id: row.id.clone(),
        }
        .into());
    }
    Ok(store.instance(&row.id)?.expect("just updated"))
}

/// Take a snapshot named `name` (refused if the name is taken).
pub fn snapshot_instance(
    caller: &Caller,
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
    store.insert_snapshot(&caller.user, &snap)?;
    Ok(snap)
}

pub fn snapshot_must_exist(store: &Store, row: &InstanceRow, name: &str) -> Result<()> {
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
pub fn revert_instance(
    caller: &Caller,
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
        caller,
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

pub fn remove_snapshot(
    caller: &Caller,
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
    store.delete_snapshot(&caller.user, &row.id, name)?;
    Ok(())
}

/// Remove an instance from the host and the store.
pub fn destroy_instance(
    caller: &Caller,
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
    if let Some(spec) = crate::net::spec_of(&row.spec) {
        crate::net::unplug(data_dir, &spec)
            .with_context(|| format!("cannot take instance {} off its network", row.id))?;
    }
    // The certificate goes with the instance: whoever copied its key out holds nothing.
    revoke_host_certificate(data_dir, &row.id)
        .with_context(|| format!("cannot revoke the host certificate of {}", row.id))?;
    store.delete_instance(&caller.user, &row.id)?;
    Ok(())
}

pub fn label(row: &InstanceRow) -> String {
    match &row.name {
        Some(n) => format!("{} ({n})", row.id),
        None => row.id.clone(),
    }
}

/// Destroy every instance whose expiry has passed. Returns their ids. The service's reaper
/// calls this periodically; `vfarm instance reap` calls it once.
/// The reaper's name in the event log and the audit.
pub const REAPER: &str = "vfarm-reaper";

pub fn reap_expired(env: &Env) -> Result<Vec<String>> {
    let caller = &Caller::agent(REAPER);
    let store = env.store()?;
    let mut drivers = Drivers::new(env);
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
        // A grid's members go with their grid, as a whole (`grids::reap_expired`).
        if store.grid_of_instance(&row.id)?.is_some() {
            continue;
        }
        let row = refresh(caller, &store, &mut drivers, row.clone()).unwrap_or(row);
        let driver = drivers.for_row(&store, &row)?;
        match destroy_instance(caller, &env.data_dir, &store, driver, &row) {
            Ok(()) => {
                // The audit log says who took it away, and why.
                let detail = serde_json::json!({
                    "owner": row.owner, "hostname": row.hostname, "expires": row.expires,
                });
                if let Err(e) =
                    store.audit(REAPER, "service", "instance.reap", &row.id, "ok", &detail)
                {
                    tracing::warn!("cannot audit the reaping of {}: {e}", row.id);
                }
                reaped.push(row.id.clone())
            }
            Err(e) => tracing::warn!("cannot reap instance {}: {e:#}", row.id),
        }
    }
    Ok(reaped)
}

pub fn snapshots_of(driver: &dyn Driver) -> Result<&dyn vfarm_driver::Snapshots> {
    Ok(driver.snapshots().ok_or_else(|| DriverError::Unsupported {
        driver: driver.kind(),
        what: "snapshots".into(),
    })?)
}

/// How a disposable run ended, as `vfarm run --outcome` writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    /// `exit`, `timeout`, `interrupted` or `error` (vfarm's own failure, not the command's).
    pub reason: String,
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
