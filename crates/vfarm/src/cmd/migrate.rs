//! `vfarm instance migrate NAME --to DIR [--shared-storage]`: live migration of a running VM
//! to another data dir on this machine. The driver moves the VM (see
//! `vfarm_driver::qemu::migrate`); this command moves the instance's row (and its snapshot
//! rows) from this data dir's store to the destination's, once the VM runs there.
//! Remote nodes (`--to HOST`) come with the multi-host work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use vfarm_core::instance::State;
use vfarm_core::ByteSize;
use vfarm_driver::qemu::{AccelChoice, MigrateOptions, QemuDriver, Storage};
use vfarm_driver::{DriverError, InstanceSpec};
use vfarm_store::StoreError;

use crate::cmd::image::actor;
use crate::cmd::instance::{find, image_input, label, qemu_for, state_of, Drivers};
use crate::ctx::Ctx;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Instance id, unique id prefix or name.
    pub instance: String,
    /// The destination: a data dir on this machine (created if missing), or, with --server
    /// on a control, a node's name.
    #[arg(long, value_name = "DIR|HOST")]
    pub to: PathBuf,
    /// Both sides use the same overlay file instead of copying the disk (it must be on the
    /// same file system); snapshots and checkpoints in it stay usable.
    #[arg(long)]
    pub shared_storage: bool,
}

#[derive(Debug, Serialize)]
struct Moved<'a> {
    id: &'a str,
    name: Option<&'a str>,
    state: &'a str,
    from: &'a Path,
    to: &'a Path,
    #[serde(flatten)]
    report: &'a vfarm_driver::qemu::MigrationReport,
}

pub fn run(ctx: &Ctx, a: MigrateArgs) -> Result<i32> {
    let caller = &vfarm_service::Caller::local();
    let to = destination_dir(ctx, &a.to)?;
    let store = ctx.store()?;
    let mut drivers = Drivers::new(ctx);
    let row = find(caller, &store, &mut drivers, &a.instance)?;
    if let Some(host) = store.instance_host(&row.id)? {
        return Err(crate::cmd::instance::OnNode { id: row.id, host }.into());
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
    let dctx = Ctx::new(to.clone(), ctx.output, ctx.verbose);
    let dstore = dctx.store()?;
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
        dctx.images()?
            .resolve(&row.image_id)
            .ok()
            .map(|img| image_input(&img))
    } else {
        None
    };
    let storage = if a.shared_storage {
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
    let who = actor();
    let detail = serde_json::json!({
        "from": ctx.data_dir, "to": to, "storage": report.storage,
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

    for w in &report.warnings {
        eprintln!("vfarm: warning: {w}");
    }
    if ctx.json() {
        ctx.print_json(&Moved {
            id: &row.id,
            name: row.name.as_deref(),
            state: state.as_str(),
            from: &ctx.data_dir,
            to: &to,
            report: &report,
        })?;
    } else {
        let disk = match report.storage {
            Storage::Copied => format!(" + {} of disk", ByteSize(report.disk_bytes)),
            Storage::Shared => String::new(),
        };
        println!(
            "instance {} migrated to {} ({} storage): downtime {} ms, total {:.2} s (RAM \
             phase {:.2} s), {} of RAM stream{disk}",
            label(&row),
            to.display(),
            match report.storage {
                Storage::Copied => "copied",
                Storage::Shared => "shared",
            },
            report.downtime_ms,
            report.total_ms as f64 / 1000.0,
            report.ram_migration_ms as f64 / 1000.0,
            ByteSize(report.ram_bytes),
        );
    }
    Ok(0)
}

/// `--to` as an absolute path of a directory (existing or not) other than this data dir.
fn destination_dir(ctx: &Ctx, to: &Path) -> Result<PathBuf> {
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
    let here = std::fs::canonicalize(&ctx.data_dir).unwrap_or_else(|_| ctx.data_dir.clone());
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
