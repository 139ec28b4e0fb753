//! Locating and running the host programs this crate drives (qemu-system-x86_64, qemu-img,
//! busybox).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// A host program with the Debian package that provides it, so a missing one can be named
/// together with the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const QEMU_SYSTEM_X86_64: Tool = Tool {
    name: "qemu-system-x86_64",
    package: "qemu-system-x86",
};
pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};
/// Only the static build works inside an initramfs, which carries no shared libraries.
pub const BUSYBOX_STATIC: Tool = Tool {
    name: "busybox",
    package: "busybox-static",
};

impl Tool {
    /// The program's path from `PATH`, or `ToolMissing`.
    pub fn find(&self) -> Result<PathBuf> {
        find_in_path(self.name).ok_or(Error::ToolMissing {
            tool: self.name,
            package: self.package,
        })
    }
}

/// Searches `PATH` like a shell would (first executable regular file wins).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a command to completion and returns its output, turning a non-zero exit into
/// `CommandFailed` with the tail of its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            program,
            status: output.status,
            stderr: tail(&output.stderr, 2000),
        });
    }
    Ok(output)
}

/// The last `max` bytes of a program's output as trimmed text (the end holds the error).
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}
