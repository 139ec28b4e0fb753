//! Per-instance runtime records: a JSON file beside each instance, written atomically and
//! readable by any later process. This is how a restarted vfarm re-attaches to instances it
//! did not start; every backend keeps its own record type in this one format.

use std::io;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::{validate_id, DriverError, Result};

/// Read instance `id`'s record at `path`: `NotFound` when there is none, a non-retryable
/// `Backend` error when it is corrupt.
pub(crate) fn load<T: DeserializeOwned>(path: &Path, id: &str) -> Result<T> {
    validate_id(id)?;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DriverError::NotFound {
                kind: "instance",
                id: id.to_string(),
            })
        }
        Err(e) => return Err(io_err("read record", id, path.display(), e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| DriverError::Backend {
        op: "read record",
        id: id.to_string(),
        detail: format!("{} is corrupt: {e}", path.display()),
        retryable: false,
        source: None,
    })
}

/// Write the record so readers see the old or the new one, never half of it.
pub(crate) fn save<T: Serialize>(path: &Path, id: &str, rec: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(rec).expect("runtime records serialise");
    write_atomic(path, &data).map_err(|e| io_err("write record", id, path.display(), e))
}

/// An I/O failure of a backend operation on instance `id`.
pub(crate) fn io_err(
    op: &'static str,
    id: &str,
    what: impl std::fmt::Display,
    source: io::Error,
) -> DriverError {
    // Transient kernel/file-system conditions may clear up; anything else will not.
    let retryable = matches!(
        source.raw_os_error(),
        Some(libc_codes::EBUSY | libc_codes::EAGAIN | libc_codes::EINTR | libc_codes::ENOSPC)
    );
    DriverError::Backend {
        op,
        id: id.to_string(),
        detail: what.to_string(),
        retryable,
        source: Some(source),
    }
}

/// The few errno values the classification needs, without a libc dependency.
mod libc_codes {
    pub const EINTR: i32 = 4;
    pub const EAGAIN: i32 = 11;
    pub const EBUSY: i32 = 16;
    pub const ENOSPC: i32 = 28;
}

/// Write `data` to `path` so readers see the old or the new content, never a torn file.
/// Take an exclusive `flock` on the file at `path` (made if missing); released when the
/// returned file is dropped, or by the kernel when the holder dies.
pub(crate) fn lock_file(path: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(f)
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Copy `input` to the host file `dst` through a temporary file beside it, so `dst` is the
/// old file or the whole new one, never a partial copy. `mode` are the new file's permissions.
pub(crate) fn copy_to_host(input: &mut dyn io::Read, mode: u32, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = dst
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dst.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp)?;
        io::copy(input, &mut out)?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, dst)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
