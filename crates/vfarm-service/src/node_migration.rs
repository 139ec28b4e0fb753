//! Live migration between nodes, a node's half: the driver's split migration steps
//! (`vfarm_driver::qemu::migrate`) behind the node API's migration routes, with the node's
//! records kept right. The control calls them in order — source, prepare (destination),
//! send, finish (destination), complete — and undoes with abort at any point before finish.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vfarm_proto::ErrorCode;

use crate::backend::MigrationBackend;
use serde_json::Value;
use vfarm_driver::qemu::{
    AccelChoice, Incoming, IncomingOptions, MigrationSource, QemuDriver, SendOptions, Storage,
    SWITCHOVER_TIMEOUT,
};
use vfarm_driver::InstanceSpec;
use vfarm_store::instances::InstanceRow;

use crate::instances::image_input;
use crate::local::{Busy, BusyGuard, ImagePuller};
use crate::{Env, ServiceError};

pub struct NodeMigrations {
    env: Env,
    /// This node's address: the destination's QEMU listens on it.
    listen: IpAddr,
    puller: ImagePuller,
    busy: Busy,
    /// Instances being sent: the watcher leaves them alone until complete or abort.
    sending: Mutex<HashMap<String, BusyGuard>>,
}

/// The node's migration steps act for the control, in the event log.
const MIGRATION_AGENT: &str = "vfarm-migration";

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(format!("{e:#}"))
}

fn not_here(id: &str) -> ServiceError {
    ServiceError {
        code: ErrorCode::InstanceNotFound,
        message: format!("instance `{id}` not found on this node"),
        field: None,
    }
}

fn driver_err(e: vfarm_driver::DriverError) -> ServiceError {
    let code = match e {
        vfarm_driver::DriverError::InvalidSpec { .. } => ErrorCode::InvalidRequest,
        vfarm_driver::DriverError::NotFound { .. } => ErrorCode::InstanceNotFound,
        _ => e.code(),
    };
    ServiceError::new(code, e.to_string())
}

impl NodeMigrations {
    pub fn new(env: &Env, listen: IpAddr, puller: ImagePuller, busy: Busy) -> NodeMigrations {
        NodeMigrations {
            env: env.fresh(),
            listen,
            puller,
            busy,
            sending: Mutex::new(HashMap::new()),
        }
    }

    fn qemu(&self) -> QemuDriver {
        // The accelerator is each VM's own (in its record); the choice matters to prepare only.
        QemuDriver::new(&self.env.data_dir, AccelChoice::Auto)
    }

    fn release(&self, id: &str) {
        self.sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl MigrationBackend for NodeMigrations {
    fn source(&self, id: &str, shared_storage: bool) -> Result<Value, ServiceError> {
        let store = self.env.store().map_err(internal)?;
        if store.instance(id).map_err(internal)?.is_none() {
            return Err(not_here(id));
        }
        let storage = if shared_storage {
            Storage::Shared
        } else {
            Storage::Copied
        };
        let guard = self.busy.hold(id);
        let src = self
            .qemu()
            .migration_source(id, storage)
            .map_err(driver_err)?;
        self.sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), guard);
        serde_json::to_value(src).map_err(internal)
    }

    fn prepare(&self, source: Value) -> Result<Value, ServiceError> {
        let src: MigrationSource = serde_json::from_value(source).map_err(|e| {
            ServiceError::bad_request("source", format!("not a migration source: {e}"))
        })?;
        let store = self.env.store().map_err(internal)?;
        if store.instance(&src.id).map_err(internal)?.is_some() {
            return Err(ServiceError {
                code: ErrorCode::Conflict,
                message: format!("this node already has an instance `{}`", src.id),
                field: None,
            });
        }
        // The destination boots its own copy of the image, fetched from the control.
        let image_id = src.spec().image.id.clone();
        (self.puller)(&image_id).map_err(|e| ServiceError {
            code: ErrorCode::ImagePullFailed,
            message: format!("{e:#}"),
            field: None,
        })?;
        let img = self
            .env
            .images()
            .and_then(|r| Ok(r.resolve(&image_id)?))
            .map_err(internal)?;
        // The tap on this node's bridge, with the address the VM keeps (the control's lease).
        crate::net::plug(&self.env.data_dir, src.spec()).map_err(internal)?;
        let incoming = self
            .qemu()
            .prepare_incoming(
                &src,
                &IncomingOptions {
                    storage: src.storage,
                    dest_image: Some(image_input(&img)),
                    listen: self.listen,
                },
            )
            .map_err(|e| {
                let _ = crate::net::unplug(&self.env.data_dir, src.spec());
                driver_err(e)
            })?;
        serde_json::to_value(incoming).map_err(internal)
    }

    fn send(&self, id: &str, incoming: Value) -> Result<Value, ServiceError> {
        let to: Incoming = serde_json::from_value(incoming).map_err(|e| {
            ServiceError::bad_request("incoming", format!("not an incoming VM: {e}"))
        })?;
        let report = self.qemu().send_migration(id, &to, &SendOptions::default());
        match report {
            Ok(r) => serde_json::to_value(r).map_err(internal),
            Err(e) => {
                // The driver let the source run on as before.
                self.release(id);
                Err(driver_err(e))
            }
        }
    }

    fn finish(&self, id: &str, was_running: bool, row: Value) -> Result<(), ServiceError> {
        let mut row: InstanceRow = serde_json::from_value(row).map_err(|e| {
            ServiceError::bad_request("row", format!("not an instance record: {e}"))
        })?;
        if row.id != id {
            return Err(ServiceError::bad_request(
                "row",
                "the record is another instance's",
            ));
        }
        let q = self.qemu();
        q.finish_incoming(id, was_running, SWITCHOVER_TIMEOUT)
            .map_err(driver_err)?;
        // The record here: the control's, with this node's image files in the spec.
        let store = self.env.store().map_err(internal)?;
        let img = self
            .env
            .images()
            .and_then(|r| Ok(r.resolve(&row.image_id)?))
            .map_err(internal)?;
        let mut spec: InstanceSpec = serde_json::from_str(&row.spec).map_err(internal)?;
        spec.image = image_input(&img);
        row.spec = serde_json::to_string(&spec).map_err(internal)?;
        row.state = if was_running { "running" } else { "paused" }.into();
        row.updated = vfarm_store::now();
        store.insert_instance(&row).map_err(internal)?;
        store
            .event(
                "vfarm-node",
                "instance.migrated_in",
                id,
                &serde_json::json!({}),
            )
            .map_err(internal)?;
        Ok(())
    }

    fn abort_incoming(&self, id: &str) -> Result<(), ServiceError> {
        let r = self.qemu().abort_incoming(id).map_err(driver_err);
        if let Err(e) = crate::net::unplug_key(&self.env.data_dir, id) {
            tracing::warn!("cannot take the given-up incoming VM {id} off its network: {e:#}");
        }
        r
    }

    fn complete(&self, id: &str) -> Result<Vec<String>, ServiceError> {
        let caller = &crate::Caller::agent(MIGRATION_AGENT);
        if std::fs::remove_file(self.outgoing_tar(id)).is_ok() {
            // An oci instance whose layer moved: destroyed here like any other.
            self.release(id);
            let store = self.env.store().map_err(internal)?;
            let Some(row) = store.instance(id).map_err(internal)? else {
                return Ok(vec![]);
            };
            let mut drivers = crate::instances::Drivers::new(&self.env);
            let driver = drivers.get("oci").map_err(internal)?;
            crate::instances::destroy_instance(caller, &self.env.data_dir, &store, driver, &row)
                .map_err(internal)?;
            return Ok(vec![]);
        }
        let warnings = self.qemu().complete_outgoing(id).map_err(driver_err)?;
        let store = self.env.store().map_err(internal)?;
        // The VM answers at its address on the destination now: its tap here goes.
        if let Some(spec) = store
            .instance(id)
            .map_err(internal)?
            .and_then(|r| crate::net::spec_of(&r.spec))
        {
            crate::net::unplug(&self.env.data_dir, &spec).map_err(internal)?;
        }
        store.delete_instance("vfarm-node", id).map_err(internal)?;
        self.release(id);
        Ok(warnings)
    }

    fn abort_outgoing(&self, id: &str) -> Result<(), ServiceError> {
        // An oci instance's export changed nothing but the tar file; a VM's send is undone.
        let r = if std::fs::remove_file(self.outgoing_tar(id)).is_ok() {
            Ok(())
        } else {
            self.qemu().abort_outgoing(id).map_err(driver_err)
        };
        self.release(id);
        r
    }

    fn export_upper(&self, id: &str) -> Result<PathBuf, ServiceError> {
        let store = self.env.store().map_err(internal)?;
        let row = store
            .instance(id)
            .map_err(internal)?
            .ok_or_else(|| not_here(id))?;
        if row.driver != "oci" {
            return Err(ServiceError::bad_request(
                "instance",
                format!("instance {id} is not an oci instance"),
            ));
        }
        if matches!(row.state.as_str(), "running" | "paused" | "creating") {
            return Err(ServiceError {
                code: ErrorCode::IllegalState,
                message: format!(
                    "instance {id} is {}: stop it before its layer moves",
                    row.state
                ),
                field: None,
            });
        }
        let snaps = store.snapshots(id).map_err(internal)?;
        let dir = self.oci_dir(id);
        let layered = std::fs::read_dir(dir.join("layers"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if !snaps.is_empty() || layered {
            return Err(ServiceError::bad_request(
                "instance",
                format!(
                    "instance {id} has snapshots ({}): only its writable layer moves between \
                     nodes; remove them first",
                    snaps
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let tar = self.outgoing_tar(id);
        if let Some(p) = tar.parent() {
            std::fs::create_dir_all(p).map_err(internal)?;
        }
        // Numeric owners, and the overlay's own xattrs (opaque dirs) and whiteouts (0:0
        // character devices) kept, so the layer means the same on the other side.
        let out = std::process::Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(dir.join("upper"))
            .arg(".")
            .output()
            .map_err(internal)?;
        if !out.status.success() {
            return Err(internal(format!(
                "tar of the writable layer failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let guard = self.busy.hold(id);
        self.sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), guard);
        Ok(tar)
    }

    fn import(&self, row: Value) -> Result<(), ServiceError> {
        let caller = &crate::Caller::agent(MIGRATION_AGENT);
        let mut row: InstanceRow = serde_json::from_value(row).map_err(|e| {
            ServiceError::bad_request("row", format!("not an instance record: {e}"))
        })?;
        if row.driver != "oci" {
            return Err(ServiceError::bad_request(
                "row",
                "only oci instances are imported",
            ));
        }
        let store = self.env.store().map_err(internal)?;
        if store.instance(&row.id).map_err(internal)?.is_some() {
            return Err(ServiceError {
                code: ErrorCode::Conflict,
                message: format!("this node already has an instance `{}`", row.id),
                field: None,
            });
        }
        (self.puller)(&row.image_id).map_err(|e| ServiceError {
            code: ErrorCode::ImagePullFailed,
            message: format!("{e:#}"),
            field: None,
        })?;
        let img = self
            .env
            .images()
            .and_then(|r| Ok(r.resolve(&row.image_id)?))
            .map_err(internal)?;
        let mut spec: InstanceSpec = serde_json::from_str(&row.spec).map_err(internal)?;
        spec.image = image_input(&img);
        row.spec = serde_json::to_string(&spec).map_err(internal)?;
        row.state = "creating".into();
        row.exit_code = None;
        row.error = None;
        row.updated = vfarm_store::now();
        store.insert_instance(&row).map_err(internal)?;
        let mut drivers = crate::instances::Drivers::new(&self.env);
        let driver = drivers.get("oci").map_err(internal)?;
        crate::instances::prepare_recorded(caller, &store, driver, &row, &self.env.data_dir)
            .map_err(internal)?;
        Ok(())
    }

    fn put_upper(&self, id: &str, tar: &Path) -> Result<(), ServiceError> {
        let store = self.env.store().map_err(internal)?;
        match store.instance(id).map_err(internal)? {
            Some(r) if r.state == "created" && r.driver == "oci" => {}
            Some(r) => {
                return Err(ServiceError {
                    code: ErrorCode::IllegalState,
                    message: format!("instance {id} is {} here: import it first", r.state),
                    field: None,
                })
            }
            None => return Err(not_here(id)),
        }
        let upper = self.oci_dir(id).join("upper");
        let out = std::process::Command::new("tar")
            .args([
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--same-permissions",
                "-xf",
            ])
            .arg(tar)
            .arg("-C")
            .arg(&upper)
            .output()
            .map_err(internal)?;
        if !out.status.success() {
            return Err(ServiceError::bad_request(
                "body",
                format!(
                    "the layer does not unpack: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    fn scratch(&self) -> PathBuf {
        // Not the repository's tmp/: it reaps entries there that no build holds.
        self.env.data_dir.join("migrations")
    }
}

impl NodeMigrations {
    fn oci_dir(&self, id: &str) -> PathBuf {
        // The layout is the oci driver's (instances/<id>/upper); the runtime does not matter.
        self.env.data_dir.join("instances").join(id)
    }

    fn outgoing_tar(&self, id: &str) -> PathBuf {
        self.scratch().join(format!("upper-out-{id}.tar"))
    }
}
