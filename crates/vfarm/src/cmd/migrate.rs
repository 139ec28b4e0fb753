//! `vfarm instance migrate NAME --to DIR [--shared-storage]`: live migration of a running VM
//! to another data dir on this machine (`vfarm_service::migrate`), and its report.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use vfarm_core::ByteSize;
use vfarm_driver::qemu::Storage;
use vfarm_service::instances::label;
use vfarm_service::migrate::Migrated;

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
    let Migrated {
        row,
        state,
        to,
        report,
    } = vfarm_service::migrate::to_data_dir(ctx, caller, &a.instance, &a.to, a.shared_storage)?;
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
