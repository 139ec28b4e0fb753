//! A VM's checkpoints as objects of their own: listed with their files and sizes, and
//! removed (the overlay's disk snapshot and the state file), so the advice of a refused
//! migration ("remove them first") can be followed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use vfarm_store::instances::InstanceRow;

use crate::instances::{qemu_for, Drivers};

/// One checkpoint of a VM, as `vfarm checkpoint ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointView {
    /// The state file: what `vfarm instance restore --from` and `vfarm checkpoint rm` take.
    pub file: PathBuf,
    /// Its size in bytes (0 when the file is gone).
    pub size: u64,
    /// When it was written (RFC 3339), from the file.
    pub created: Option<String>,
}

/// The VM's checkpoints, oldest first.
pub fn list(drivers: &mut Drivers<'_>, row: &InstanceRow) -> Result<Vec<CheckpointView>> {
    let q = qemu_for(drivers, row, "checkpoints")?;
    Ok(q.checkpoints(&row.id)?
        .into_iter()
        .map(|file| {
            let meta = std::fs::metadata(&file).ok();
            CheckpointView {
                size: meta.as_ref().map_or(0, |m| m.len()),
                created: meta.and_then(|m| m.modified().ok()).map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                }),
                file,
            }
        })
        .collect())
}

/// Remove checkpoint `file` of the VM (as listed; a bare file name is looked up among
/// them): its disk snapshot leaves the overlay and the state file is deleted. Returns the
/// file removed.
pub fn remove(drivers: &mut Drivers<'_>, row: &InstanceRow, file: &Path) -> Result<PathBuf> {
    let q = qemu_for(drivers, row, "checkpoints")?;
    let known = q.checkpoints(&row.id)?;
    let file = known
        .iter()
        .find(|k| {
            k.as_path() == file
                || (file.components().count() == 1 && k.file_name() == Some(file.as_os_str()))
        })
        .cloned()
        .unwrap_or_else(|| file.to_path_buf());
    q.forget_checkpoint(&row.id, &file)?;
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow::Error::from(e).context(format!(
                "checkpoint forgotten, but its file {} could not be removed",
                file.display()
            )))
        }
        _ => {}
    }
    Ok(file)
}
