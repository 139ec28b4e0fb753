//! Live migration of a running VM to another data dir on this machine
//! (`vfarm instance migrate NAME --to DIR`). The driver moves the VM (see
//! `vfarm_driver::qemu::migrate`); this moves the instance's row (and its snapshot rows) from
//! this data dir's store to the destination's, once the VM runs there.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vfarm_core::instance::State;
use vfarm_driver::qemu::{AccelChoice, MigrateOptions, MigrationReport, QemuDriver, Storage};
use vfarm_driver::{DriverError, InstanceSpec};
use vfarm_store::instances::InstanceRow;
use vfarm_store::StoreError;

use crate::instances::{find, image_input, label, qemu_for, state_of, Drivers};
use crate::{Caller, Env};

/// A migrated instance: its row as it was, its state, where it went and how.
pub struct Migrated {
    pub row: InstanceRow,
    pub state: State,
    /// The destination data dir, absolute.
    pub to: PathBuf,
    pub report: MigrationReport,
}

pub fn to_data_dir(
    env: &Env,
    caller: &Caller,
    reference: &str,
    to: &Path,
    shared_storage: bool,
) -> Result<Migrated> {
    let to = destination_dir(env, to)?;
    let store = env.store()?;
    let mut drivers = Drivers::new(env);
    let row = find(caller, &store, &mut drivers, reference)?;
    if let Some(host) = store.instance_host(&row.id)? {
        return Err(crate::instances::OnNode { id: row.id, host }.into());
    }
    let source = qemu_for(&mut drivers, &row, "live migration")?;
    let state = state_of(&row)?;
    if !matches!(state, State::Running | State::Paused) {
        return Err(DriverError::InvalidSpec {
            field: "instance",
            reason: format!(
                "instance {} is {state}: only a running or paused VM migrates (start it first)",
                label(&row)
            ),
        }
        .into());
    }

    // The destination's store must be able to take the row: checked before anything moves.
    std::fs::create_dir_all(&to)
        .with_context(|| format!("cannot create the destination data dir {}", to.display()))?;
    let denv = Env::new(to.clone());
    let dstore = denv.store()?;
    if dstore.instance(&row.id)?.is_some() {
        return Err(StoreError::Conflict {
            kind: "instance id at the destination",
            id: row.id.clone(),
        }
        .into());
    }
    if let Some(name) = &row.name {
        if dstore.find_instance(name).is_ok() {
            return Err(StoreError::Conflict {
                kind: "instance name at the destination",
                id: name.clone(),
            }
            .into());
        }
    }
    // The destination's own copy of the image, when its repository has one; otherwise the
    // source's files serve (same machine).
    let dest_image = if to.join("images").join(&row.image_id).is_dir() {
        denv.images()?
            .resolve(&row.image_id)
            .ok()
            .map(|img| image_input(&img))
    } else {
        None
    };
    let storage = if shared_storage {
        Storage::Shared
    } else {
        Storage::Copied
    };
    let opts = MigrateOptions {
        storage,
        dest_image: dest_image.clone(),
        ..MigrateOptions::default()
    };
    // The accelerator is the VM's own (in its record); the choice only matters to prepare.
    let dest = QemuDriver::new(&to, AccelChoice::Auto);
    let report = source
        .migrate(&row.id, &dest, &opts)
        .with_context(|| format!("cannot migrate instance {}", label(&row)))?;

    // The VM runs at the destination now: move its row there.
    let mut moved = row.clone();
    if let Some(img) = dest_image {
        let mut spec: InstanceSpec = serde_json::from_str(&row.spec)?;
        spec.image = img;
        moved.spec = serde_json::to_string(&spec)?;
    }
    moved.updated = vfarm_store::now();
    let who = caller.user.clone();
    let detail = serde_json::json!({
        "name": row.name, "from": env.data_dir, "to": to, "storage": report.storage,
        "downtime_ms": report.downtime_ms, "total_ms": report.total_ms,
    });
    let record = || -> Result<()> {
        dstore.insert_instance(&moved)?;
        for s in store.snapshots(&row.id)? {
            dstore.insert_snapshot(&who, &s)?;
        }
        dstore.event(&who, "instance.migrated_in", &row.id, &detail)?;
        store.event(&who, "instance.migrated_out", &row.id, &detail)?;
        store.delete_instance(&who, &row.id)?;
        Ok(())
    };
    record().with_context(|| {
        format!(
            "instance {} runs in {} now, but its record could not be moved there",
            label(&row),
            to.display()
        )
    })?;

    Ok(Migrated {
        row,
        state,
        to,
        report,
    })
}

/// `--to` as an absolute path of a directory (existing or not) other than this data dir.
fn destination_dir(env: &Env, to: &Path) -> Result<PathBuf> {
    if to.exists() && !to.is_dir() {
        return Err(DriverError::InvalidSpec {
            field: "to",
            reason: format!("{} is not a directory", to.display()),
        }
        .into());
    }
    let abs = match std::fs::canonicalize(to) {
        Ok(p) => p,
        Err(_) => std::path::absolute(to)
            .with_context(|| format!("cannot resolve the destination {}", to.display()))?,
    };
    let here = std::fs::canonicalize(&env.data_dir).unwrap_or_else(|_| env.data_dir.clone());
    if abs == here {
        return Err(DriverError::InvalidSpec {
            field: "to",
            reason: format!(
                "{} is this instance's own data dir; migrate to another one",
                abs.display()
            ),
        }
        .into());
    }
    Ok(abs)
}

/// How many of the newest events [`moved_to`] looks through.
const MOVED_LOOKBACK: usize = 10_000;

/// Where instance `reference` (a name, id or id prefix) went when a migration moved it out
/// of this data dir: the destination and when, from the newest `instance.migrated_out`
/// event. A lookup that finds no instance says so, rather than a bare "not found".
pub fn moved_to(store: &vfarm_store::Store, reference: &str) -> Option<(PathBuf, String)> {
    store
        .events(MOVED_LOOKBACK)
        .ok()?
        .into_iter()
        .rev()
        .filter(|e| e.kind == "instance.migrated_out")
        .find_map(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
            let named = d["name"].as_str() == Some(reference);
            (named || e.object.starts_with(reference))
                .then(|| Some((PathBuf::from(d["to"].as_str()?), e.at.clone())))
                .flatten()
        })
}
