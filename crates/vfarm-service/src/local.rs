//! The instance backend of `vfarm serve`: the REST API's instance calls, done with the same
//! operations as the CLI (cmd/instance.rs), for an identified caller who sees and touches
//! only their own instances (admins: all). Also the service's start-up reconciliation and
//! the watcher that keeps records current and feeds `/api/v1/events`.

use crate::Caller;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfarm_proto::ErrorCode;

use crate::backend::{InstanceBackend, InstanceEvent, ListInstances};
use anyhow::Context;
use vfarm_auth::Identity;
use vfarm_core::instance::{Event, State};
use vfarm_driver::{BootProfile, DriverError, ExecIo, ExecStop};
use vfarm_proto::instances::{
    Action, CreateInstance, ExecRequest, ExecResult, InstanceView, QuotaNumbers, QuotaView,
    SnapshotView,
};
use vfarm_store::instances::InstanceRow;
use vfarm_store::Page;
use vfarm_store::Store;

use crate::instances::{self as inst, Admission, Drivers, Net, NewInstance, Shape};
use crate::{Env, ServiceError};

/// Exec output kept per stream; more is cut (the API is not a bulk transfer channel).
const EXEC_OUTPUT_LIMIT: u64 = 8 << 20;
/// Console bytes returned: the tail of the log.
const CONSOLE_LIMIT: u64 = 1 << 20;

/// Instances an API call is acting on right now: the watcher leaves them alone, so it
/// cannot record a half-done operation (a revert's restart, say) as a state change.
#[derive(Clone, Default)]
pub struct Busy(Arc<Mutex<HashSet<String>>>);

impl Busy {
    pub(crate) fn hold(&self, id: &str) -> BusyGuard {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        BusyGuard {
            busy: self.clone(),
            id: id.to_string(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

pub(crate) struct BusyGuard {
    busy: Busy,
    id: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Fetches an image this machine lacks (a node pulls from its control's repository).
pub type ImagePuller = Arc<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

pub struct Service {
    env: Env,
    admission: Admission,
    busy: Busy,
    /// Set on nodes: images come from the control on first use.
    pub puller: Option<ImagePuller>,
}

impl Service {
    pub fn new(env: &Env, admission: Admission, busy: Busy) -> Service {
        Service {
            env: env.fresh(),
            admission,
            busy,
            puller: None,
        }
    }

    fn store(&self) -> Result<Arc<Store>, ServiceError> {
        self.env.store().map_err(api_error)
    }

    /// The caller's instance by reference, reconciled with its driver. Another owner's
    /// instance is reported exactly like a missing one.
    fn find(&self, who: &Identity, reference: &str) -> Result<InstanceRow, ServiceError> {
        let caller = &Caller::from(who);
        let store = self.store()?;
        // Only the caller's own instances (all, for admins) take part in the lookup, so
        // another owner's ids never make a prefix ambiguous or appear in an error.
        let scope = owner_scope(who);
        let row = store
            .find_instance_among(reference, scope_refs(&scope))
            .map_err(|e| api_error(e.into()))?;
        if !who.may_access(&row.owner) {
            return Err(ServiceError::not_found("instance", reference));
        }
        let mut drivers = Drivers::new(&self.env);
        inst::refresh(caller, &store, &mut drivers, row).map_err(api_error)
    }

    /// `find`, and mark the instance busy until the guard is dropped.
    fn take(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<(InstanceRow, BusyGuard), ServiceError> {
        let row = self.find(who, reference)?;
        let guard = self.busy.hold(&row.id);
        Ok((row, guard))
    }

    /// The view of instance `id` as it is now stored (after an operation changed it).
    fn reread(
        &self,
        store: &Store,
        id: &str,
        reference: &str,
    ) -> Result<InstanceView, ServiceError> {
        let row = store
            .instance(id)
            .map_err(|e| api_error(e.into()))?
            .ok_or_else(|| ServiceError::not_found("instance", reference))?;
        self.view(&row)
    }

    fn view(&self, row: &InstanceRow) -> Result<InstanceView, ServiceError> {
        inst::view(&*self.store()?, row, false).map_err(api_error)
    }
}

/// The owners whose instances a caller's references resolve among (`None`: all, for admins):
/// the caller, and for a certificate user also its records from before owners carried the
/// issuer ([`Identity::legacy_owner`]).
pub(crate) fn owner_scope(who: &Identity) -> Option<[String; 2]> {
    (!who.admin).then(|| {
        [
            who.user.clone(),
            who.legacy_owner().unwrap_or_else(|| who.user.clone()),
        ]
    })
}

/// [`owner_scope`] as the store takes it.
pub(crate) fn scope_refs(scope: &Option<[String; 2]>) -> Option<[&str; 2]> {
    scope.as_ref().map(|[a, b]| [a.as_str(), b.as_str()])
}

/// The service's watcher, in the event log: it records what it observed.
pub const WATCHER: &str = "vfarm-watcher";

/// Errors of the instance operations as the caller sees them.
fn api_error(e: anyhow::Error) -> ServiceError {
    ServiceError::from_anyhow(e)
}

/// Reads a pipe on a thread of its own, keeping the first `limit` bytes and discarding the
/// rest, so a command's output costs at most `limit` bytes of memory and none of disk.
struct CappedReader {
    buf: Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
    done: std::sync::mpsc::Receiver<()>,
    abandon: Arc<std::sync::atomic::AtomicBool>,
}

impl CappedReader {
    fn spawn(mut r: std::io::PipeReader, limit: u64) -> CappedReader {
        use std::sync::atomic::Ordering;
        let buf = Arc::new(std::sync::Mutex::new((Vec::new(), false)));
        let abandon = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, done) = std::sync::mpsc::channel();
        let (b, stop) = (buf.clone(), abandon.clone());
        // Non-blocking, so the thread can be told to stop while a process the command left
        // in the background still holds the pipe open.
        let _ = rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut g = b.lock().unwrap_or_else(|e| e.into_inner());
                        let room = (limit as usize).saturating_sub(g.0.len());
                        g.0.extend_from_slice(&chunk[..n.min(room)]);
                        g.1 |= n > room;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        CappedReader { buf, done, abandon }
    }

    /// The output and whether it was cut. A process the command left behind may still hold
    /// the pipe open: then what arrived within a moment is the output, and the reader stops.
    fn finish(self) -> (String, bool) {
        let _ = self.done.recv_timeout(std::time::Duration::from_secs(2));
        self.abandon
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let g = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&g.0).into_owned(), g.1)
    }
}

impl InstanceBackend for Service {
    fn list(&self, who: &Identity, q: &ListInstances) -> Result<Page<InstanceView>, ServiceError> {
        let mut filter = q.filter.clone();
        if let Some(mine) = owner_scope(who) {
            // A non-admin's owner filter narrows to themselves or to nothing.
            if filter.owner.as_ref().is_some_and(|o| !mine.contains(o)) {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            filter.scope = mine.to_vec();
        }
        let store = self.store()?;
        let page = store
            .instances_page(&filter, q.after.as_ref(), q.limit, true)
            .map_err(|e| api_error(e.into()))?;
        let mut cache = inst::ViewCache::for_rows(&store, &page.items).map_err(api_error)?;
        let items = page
            .items
            .iter()
            .map(|r| inst::view_cached(&store, r, false, &mut cache).map_err(api_error))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    fn show(&self, who: &Identity, reference: &str) -> Result<InstanceView, ServiceError> {
        let row = self.find(who, reference)?;
        let mut v = inst::view(&*self.store()?, &row, true).map_err(api_error)?;
        v.vm = inst::vm_view(&mut Drivers::new(&self.env), &row);
        Ok(v)
    }

    fn create(
        &self,
        who: &Identity,
        mut req: CreateInstance,
    ) -> Result<InstanceView, ServiceError> {
        let kind = req.driver.as_deref().unwrap_or("oci");
        if !["oci", "qemu"].contains(&kind) {
            return Err(ServiceError::bad_request(
                "driver",
                format!("`{kind}` is not a driver of this service (oci, qemu)"),
            ));
        }
        if req.image.trim().is_empty() {
            return Err(ServiceError::bad_request("image", "an image is required"));
        }
        if let Some(h) = &req.host {
            return Err(ServiceError::bad_request(
                "host",
                format!(
                    "`{h}`: this service runs instances itself; it takes nodes only with                      --tls-cert and a site CA (vfarm ca init)"
                ),
            ));
        }
        if req.ssh_keys.iter().any(|k| k.contains('\0')) {
            return Err(ServiceError::bad_request(
                "ssh_keys",
                "a key contains a NUL byte",
            ));
        }
        let disk = req
            .disk
            .as_deref()
            .map(|d| {
                vfarm_core::parse_size(d)
                    .map_err(|why| ServiceError::bad_request("disk", format!("`{d}`: {why}")))
            })
            .transpose()?;
        // A control places instances on nodes under its own id and for their owner.
        let admin_only = |field: &'static str| {
            ServiceError::bad_request(
                field,
                format!("only an admin (a control service) sets `{field}`"),
            )
        };
        if req.privileged && !who.admin {
            return Err(admin_only("privileged"));
        }
        if req.privileged && kind != "oci" {
            return Err(ServiceError::bad_request(
                "privileged",
                "only oci instances have a user namespace to leave out",
            ));
        }
        let owner = match req.owner.take() {
            Some(_) if !who.admin => return Err(admin_only("owner")),
            Some(o) => o,
            None => who.user.clone(),
        };
        let address = match req.address.take() {
            Some(_) if !who.admin => return Err(admin_only("address")),
            Some(a) => Some(a.parse::<std::net::IpAddr>().map_err(|_| {
                ServiceError::bad_request("address", format!("`{a}` is not an IP address"))
            })?),
            None => None,
        };
        let id = match req.id.take() {
            Some(_) if !who.admin => return Err(admin_only("id")),
            Some(i) if i.len() != 12 || !i.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(ServiceError::bad_request(
                    "id",
                    format!("`{i}` is not 12 hex digits"),
                ))
            }
            i => i,
        };
        if let Some(pull) = &self.puller {
            pull(&req.image).map_err(|e| ServiceError {
                code: ErrorCode::ImagePullFailed,
                message: format!("{e:#}"),
                field: Some("image".into()),
            })?;
        }
        let image = inst::usable_image(&self.env, &req.image).map_err(api_error)?;
        let vm = if kind == "qemu" {
            let mut drivers = Drivers::new(&self.env);
            let driver = drivers.get("qemu").map_err(api_error)?;
            inst::vm_setup(
                driver,
                req.profile.as_deref(),
                BootProfile::Full,
                &inst::GuestArgs {
                    ssh_key_texts: &req.ssh_keys,
                    ..Default::default()
                },
            )
            .map_err(api_error)?
        } else {
            if !req.ssh_keys.is_empty() {
                return Err(ServiceError::bad_request(
                    "ssh_keys",
                    "SSH keys are for VMs: use the qemu driver",
                ));
            }
            if req.profile.is_some() {
                return Err(ServiceError::bad_request(
                    "profile",
                    "a boot profile is for VMs: use the qemu driver",
                ));
            }
            Default::default()
        };
        let store = self.store()?;
        let row = inst::record_instance(
            &store,
            &self.admission,
            &self.env.data_dir,
            kind,
            NewInstance {
                image,
                name: req.name,
                expiry: req.expiry,
                shape: Shape {
                    cpus: req.cpus,
                    memory: req.memory,
                    pids: None,
                    hostname: req.hostname,
                    env: req.env,
                    net: match req.network {
                        Some(n) => Net::Named(n),
                        None => Net::Default,
                    },
                    privileged: req.privileged,
                },
                command: req.command,
                disposable: false,
                vm,
                owner,
                disk,
                id,
                address,
            },
        )
        .map_err(api_error)?;
        self.view(&row)
    }

    fn complete(&self, id: &str, start: bool) -> Result<InstanceView, ServiceError> {
        let store = self.store()?;
        let row = store
            .instance(id)
            .map_err(|e| api_error(e.into()))?
            .ok_or_else(|| ServiceError::not_found("instance", id))?;
        let _busy = self.busy.hold(id);
        // Completing a create acts for the instance's owner, who asked for it.
        let caller = &Caller::new(row.owner.clone(), false);
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        let row = inst::prepare_recorded(caller, &store, driver, &row, &self.env.data_dir)
            .map_err(api_error)?;
        if start {
            inst::start_instance(caller, &store, driver, &row).map_err(api_error)?;
        }
        let row = store
            .instance(id)
            .map_err(|e| api_error(e.into()))?
            .ok_or_else(|| ServiceError::not_found("instance", id))?;
        self.view(&row)
    }

    fn destroy(&self, who: &Identity, reference: &str) -> Result<String, ServiceError> {
        let caller = &Caller::from(who);
        let (row, _busy) = self.take(who, reference)?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        inst::destroy_instance(caller, &self.env.data_dir, &*self.store()?, driver, &row)
            .map_err(api_error)?;
        Ok(row.id)
    }

    fn act(
        &self,
        who: &Identity,
        reference: &str,
        action: Action,
    ) -> Result<InstanceView, ServiceError> {
        let caller = &Caller::from(who);
        let (row, _busy) = self.take(who, reference)?;
        let store = self.store()?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        match action {
            Action::Start => inst::start_instance(caller, &store, driver, &row),
            Action::Stop { force } => inst::stop_instance(caller, &store, driver, &row, force),
            Action::Pause => {
                inst::pause_resume_instance(caller, &store, driver, &row, Event::Pause).map(|_| ())
            }
            Action::Resume => {
                inst::pause_resume_instance(caller, &store, driver, &row, Event::Resume).map(|_| ())
            }
        }
        .map_err(api_error)?;
        self.reread(&store, &row.id, reference)
    }

    fn extend(
        &self,
        who: &Identity,
        reference: &str,
        by: &str,
    ) -> Result<InstanceView, ServiceError> {
        let caller = &Caller::from(who);
        let row = self.find(who, reference)?;
        let row = inst::extend_instance(caller, &*self.store()?, &row, by).map_err(api_error)?;
        self.view(&row)
    }

    fn exec(
        &self,
        who: &Identity,
        reference: &str,
        req: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        vfarm_core::instance::validate_command(&req.command).map_err(|e| api_error(e.into()))?;
        let env = req
            .env
            .iter()
            .map(|e| vfarm_core::instance::parse_env(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServiceError::bad_request("env", e.to_string()))?;
        let row = self.find(who, reference)?;
        inst::check(&row, Event::Exec).map_err(api_error)?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        let exec = driver.exec().ok_or_else(|| {
            api_error(
                DriverError::Unsupported {
                    driver: driver.kind(),
                    what: "exec".into(),
                }
                .into(),
            )
        })?;
        // Pipes read by threads that keep the first EXEC_OUTPUT_LIMIT bytes and drain the
        // rest: the process never blocks on a full pipe, and nothing piles up on disk.
        let io_err = |e: std::io::Error| api_error(anyhow::Error::new(e).context("exec output"));
        let (out_r, out_w) = std::io::pipe().map_err(io_err)?;
        let (err_r, err_w) = std::io::pipe().map_err(io_err)?;
        let out = CappedReader::spawn(out_r, EXEC_OUTPUT_LIMIT);
        let err = CappedReader::spawn(err_r, EXEC_OUTPUT_LIMIT);
        let io = ExecIo {
            stdin: std::process::Stdio::null(),
            stdout: out_w.into(),
            stderr: err_w.into(),
        };
        let stop = ExecStop {
            deadline: Some(std::time::Instant::now() + crate::backend::exec_time_limit(&req)?),
            cancelled: req.cancelled.clone(),
        };
        let code = exec
            .exec_until(&row.id, &req.command, &env, io, &stop)
            .map_err(|e| api_error(e.into()))?;
        let (stdout, cut_out) = out.finish();
        let (stderr, cut_err) = err.finish();
        Ok(ExecResult {
            // Killed with SIGKILL, as a shell would report it.
            exit_code: code.unwrap_or(128 + 9),
            stdout,
            stderr,
            timed_out: code.is_none(),
            truncated: cut_out || cut_err,
        })
    }

    fn console(&self, who: &Identity, reference: &str) -> Result<Vec<u8>, ServiceError> {
        let row = self.find(who, reference)?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        let logs = driver.logs(&row.id).map_err(|e| api_error(e.into()))?;
        let mut paths = vec![logs.stdout.clone()];
        if logs.stderr != logs.stdout {
            paths.push(logs.stderr);
        }
        let mut all = Vec::new();
        for p in paths {
            // Before the first start there is no log yet: an empty console.
            let Ok(mut f) = std::fs::File::open(&p) else {
                continue;
            };
            use std::io::Seek;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(CONSOLE_LIMIT)));
            let _ = f.read_to_end(&mut all);
        }
        Ok(all)
    }

    fn snapshots(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<Vec<SnapshotView>, ServiceError> {
        let row = self.find(who, reference)?;
        Ok(self
            .store()?
            .snapshots(&row.id)
            .map_err(|e| api_error(e.into()))?
            .into_iter()
            .map(inst::snapshot_view)
            .collect())
    }

    fn snapshot_create(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<SnapshotView, ServiceError> {
        let caller = &Caller::from(who);
        let (row, _busy) = self.take(who, reference)?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        inst::snapshot_instance(caller, &*self.store()?, driver, &row, name)
            .map(inst::snapshot_view)
            .map_err(api_error)
    }

    fn snapshot_revert(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<InstanceView, ServiceError> {
        let caller = &Caller::from(who);
        let (row, _busy) = self.take(who, reference)?;
        let store = self.store()?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        inst::revert_instance(caller, &store, driver, &row, name).map_err(api_error)?;
        self.reread(&store, &row.id, reference)
    }

    fn snapshot_remove(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<(), ServiceError> {
        let caller = &Caller::from(who);
        let (row, _busy) = self.take(who, reference)?;
        let mut drivers = Drivers::new(&self.env);
        let driver = drivers.for_row(&*self.store()?, &row).map_err(api_error)?;
        inst::remove_snapshot(caller, &*self.store()?, driver, &row, name).map_err(api_error)
    }

    fn quota(&self, who: &Identity) -> Result<QuotaView, ServiceError> {
        let q = self.admission.quotas.for_owner(&who.user);
        let u = self
            .store()?
            .quota_usage(&who.user)
            .map_err(|e| api_error(e.into()))?;
        Ok(QuotaView {
            owner: who.user.clone(),
            limits: QuotaNumbers {
                instances: q.instances,
                cpus_milli: q.cpus_milli,
                memory_mib: q.memory_mib,
                disk_mib: q.disk_mib,
            },
            usage: QuotaNumbers {
                instances: Some(u.instances),
                cpus_milli: Some(u.cpus_milli),
                memory_mib: Some(u.memory_mib),
                disk_mib: Some(u.disk_mib),
            },
        })
    }
}

/// What start-up reconciliation did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reconciled {
    /// Creates that died before the driver had the instance: removed.
    pub unfinished_creates: usize,
    /// Instance directories no record refers to: cleaned up.
    pub orphan_dirs: usize,
    /// Hostname leases and quota shares of no instance: released.
    pub orphan_holds: usize,
    /// Accepted creates whose operation was still running: settled.
    pub settled_operations: usize,
}

/// Make records and the host agree after a service that died mid-work (kill -9 during a
/// burst of creates and destroys): every record is checked against its driver, creates
/// that never reached the driver are removed, directories without a record are cleaned
/// up, and holds of vanished instances are released. Running instances are left running.
pub fn reconcile(env: &Env) -> anyhow::Result<Reconciled> {
    let caller = &Caller::agent(WATCHER);
    let store = env.store()?;
    let mut drivers = Drivers::new(env);
    let mut out = Reconciled::default();
    for row in store.instances()? {
        let row = match inst::refresh(caller, &store, &mut drivers, row.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot check instance {}: {e:#}", row.id);
                continue;
            }
        };
        // Another service sharing the database may be creating it right now.
        if row.state == State::Creating.as_str() && store.foreign_origin(&row.id)?.is_none() {
            match drivers.get(&row.driver) {
                Ok(driver) => {
                    let _ = driver.cleanup(&row.id);
                    // Prepare may have issued its host certificate before the stop.
                    if let Err(e) = inst::revoke_host_certificate(&env.data_dir, &row.id) {
                        tracing::warn!("cannot revoke the certificate of {}: {e:#}", row.id);
                        continue;
                    }
                    store.delete_instance("vfarm-service", &row.id)?;
                    out.unfinished_creates += 1;
                }
                // The record stays (and says `creating`) until the driver is usable again.
                Err(e) => tracing::warn!("cannot clean up unfinished create {}: {e:#}", row.id),
            }
        }
    }
    let known: std::collections::HashSet<String> =
        store.instances()?.into_iter().map(|r| r.id).collect();
    let dir = env.data_dir.join("instances");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if known.contains(&id) || id.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            // The directory says whose it is: an OCI bundle, or a VM's runtime record.
            let kind = if e.path().join("bundle").exists() {
                "oci"
            } else {
                "qemu"
            };
            match drivers.get(kind).and_then(|d| Ok(d.cleanup(&id)?)) {
                Ok(()) => out.orphan_dirs += 1,
                Err(e) => tracing::warn!("cannot clean up orphan instance dir {id}: {e:#}"),
            }
        }
    }
    out.orphan_holds = store.release_orphan_holds()?;
    // Creates the dead service accepted (202) end as what happened to their instance, so a
    // client polling the operation learns the truth: there and prepared, or removed.
    for (op, target) in store.running_operations("instance.create")? {
        let row = match &target {
            Some(id) => store.instance(id)?,
            None => None,
        };
        match row {
            Some(row) => {
                let v = inst::view(&store, &row, false)?;
                store.finish_operation(
                    &op,
                    "succeeded",
                    None,
                    serde_json::to_value(v).ok().as_ref(),
                )?;
            }
            None => store.finish_operation(
                &op,
                "failed",
                Some("the service stopped before the instance was prepared; it was removed"),
                Some(&serde_json::json!({ "code": "interrupted" })),
            )?,
        }
        out.settled_operations += 1;
    }
    Ok(out)
}

/// Keep records current (instances that exit or die while nobody asks) and tell
/// `/api/v1/events` listeners what changed, whichever process changed it.
pub fn spawn_watcher(env: &Env, events: tokio::sync::broadcast::Sender<InstanceEvent>, busy: Busy) {
    let env = env.fresh();
    std::thread::spawn(move || {
        let mut w = Watch::default();
        let mut first = true;
        loop {
            if let Err(e) = watch_once(&env, &events, &busy, &mut w, first) {
                tracing::warn!("instance watcher: {e:#}");
            }
            first = false;
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// Per instance: (state, updated, expires) when last seen, and the owner.
type Seen = HashMap<String, ((String, String, Option<String>), String)>;

/// What the watcher knew after its last round.
#[derive(Default)]
struct Watch {
    seen: Seen,
    fingerprint: Option<(i64, Option<String>)>,
}

fn watch_once(
    env: &Env,
    events: &tokio::sync::broadcast::Sender<InstanceEvent>,
    busy: &Busy,
    w: &mut Watch,
    first: bool,
) -> anyhow::Result<()> {
    let caller = &Caller::agent(WATCHER);
    let store = env.store()?;
    // Running and paused instances can end by themselves: ask their drivers (cheap: a
    // process check), and record what they observe.
    let mut drivers = Drivers::new(env);
    let active = store
        .instances_in(&[State::Running.as_str(), State::Paused.as_str()])
        .context("list active instances")?;
    for row in active.into_iter().filter(|r| !busy.contains(&r.id)) {
        let _ = inst::refresh(caller, &store, &mut drivers, row);
    }
    // Only a changed table is read in full (a service with 10,000 idle records mostly isn't).
    let fp = store.instances_fingerprint()?;
    if w.fingerprint.as_ref() == Some(&fp) {
        return Ok(());
    }
    w.fingerprint = Some(fp);
    let rows = store.instances_brief().context("list instances")?;
    let mut cache = inst::ViewCache::default();
    let mut now = HashMap::with_capacity(rows.len());
    for row in &rows {
        let key = (row.state.clone(), row.updated.clone(), row.expires.clone());
        let changed = w.seen.get(&row.id).map(|(k, _)| k) != Some(&key);
        if !first && changed && events.receiver_count() > 0 {
            if let Ok(v) = inst::view_cached(&store, row, false, &mut cache) {
                let _ = events.send(InstanceEvent::Changed(Box::new(v)));
            }
        }
        now.insert(row.id.clone(), (key, row.owner.clone()));
    }
    for (id, (_, owner)) in w.seen.iter().filter(|(id, _)| !now.contains_key(*id)) {
        let _ = events.send(InstanceEvent::Removed {
            id: id.clone(),
            owner: owner.clone(),
        });
    }
    w.seen = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfarm_store::StoreError;

    #[test]
    fn errors_map_to_stable_codes_and_statuses() {
        let e = api_error(
            inst::ImageRevoked {
                reference: "web".into(),
                id: "0123456789ab".into(),
            }
            .into(),
        );
        assert_eq!(
            (e.code.http_status(), e.code),
            (409, ErrorCode::ImageRevoked)
        );
        let e = api_error(
            StoreError::NotFound {
                kind: "snapshot",
                id: "x/s1".into(),
            }
            .into(),
        );
        assert_eq!(
            (e.code.http_status(), e.code),
            (404, ErrorCode::SnapshotNotFound)
        );
        let e = api_error(vfarm_auth::AuthError::PoolExhausted { size: 150 }.into());
        assert_eq!(
            (e.code.http_status(), e.code),
            (409, ErrorCode::PoolExhausted)
        );
        // Server-side failures name no internals beyond the top message.
        let e = api_error(anyhow::anyhow!("disk on fire").context("cannot prepare instance x"));
        assert_eq!(e.code.http_status(), 500);
        assert!(!e.message.contains("disk on fire"), "{}", e.message);
    }

    #[test]
    fn nul_bytes_are_bad_input_naming_the_field() {
        let e = vfarm_core::instance::validate_command(&["sh".into(), "a\0b".into()])
            .map_err(|e| api_error(e.into()))
            .unwrap_err();
        assert_eq!(
            (e.code.http_status(), e.field.as_deref()),
            (400, Some("command"))
        );
        assert!(vfarm_core::instance::parse_env("A=1").is_ok());
    }
}
