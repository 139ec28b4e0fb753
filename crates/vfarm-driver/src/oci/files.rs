//! Copying files in and out of an oci instance's root, through the overlay mount.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` from the instance's root: an
//! absolute symlink or `..` inside the instance resolves against the instance's root, never
//! the host's, so a copy cannot be turned into a write or read of a host file.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};

use crate::{DriverError, Result};

fn open_in_root(root: &OwnedFd, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        mode,
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io::Error::from)
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Split `/a/b/c` into (`a/b`, `c`).
fn split(path: &str) -> (&str, &str) {
    let rel = path.trim_start_matches('/');
    match rel.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", rel),
    }
}

/// Open (creating as needed, owned by `owner` when given) the directory `rel` below the root.
fn make_dirs(root: &OwnedFd, rel: &str, owner: Option<u32>) -> io::Result<OwnedFd> {
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY;
    match open_in_root(root, rel, dir_flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    let parent_fd = make_dirs(root, parent, owner)?;
    match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {
            if let Some(id) = owner {
                let id = Some(rustix::fs::Uid::from_raw(id));
                rustix::fs::chownat(
                    &parent_fd,
                    name,
                    id,
                    id.map(|u| rustix::fs::Gid::from_raw(u.as_raw())),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
        }
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_in_root(root, rel, dir_flags, Mode::empty())
}

/// Copy host `src` to `dst` below `root` (the mounted instance root); what is made belongs to
/// host id `owner` (the instance's root in a user namespace), else to the host's root.
pub(crate) fn copy_in(
    id: &str,
    root: &Path,
    src: &Path,
    dst: &str,
    owner: Option<u32>,
) -> Result<()> {
    let err = |what: &str, e: io::Error| DriverError::Backend {
        op: "copy in",
        id: id.to_string(),
        detail: format!("{what}: {e}"),
        retryable: false,
        source: Some(e),
    };
    let mut input = File::open(src).map_err(|e| DriverError::InvalidSpec {
        field: "source",
        reason: format!("cannot open {}: {e}", src.display()),
    })?;
    let meta = input.metadata().map_err(|e| err("stat source", e))?;
    if !meta.is_file() {
        return Err(DriverError::InvalidSpec {
            field: "source",
            reason: format!("{} is not a regular file", src.display()),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let rootfd = open_root(root).map_err(|e| err("open instance root", e))?;
    let (dir, name) = split(dst);
    let dirfd =
        make_dirs(&rootfd, dir, owner).map_err(|e| err(&format!("make directory /{dir}"), e))?;
    // Write beside the target and rename over it, so a reader in the instance never sees a
    // half-written file and a failed copy leaves the old one.
    let tmp = format!(".{name}.vfarm-{}", uuid::Uuid::new_v4().simple());
    let fd = rustix::fs::openat(
        &dirfd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| err(&format!("create {dst}"), e.into()))?;
    let mut out = File::from(fd);
    let copied = io::copy(&mut input, &mut out)
        .and_then(|_| match owner {
            Some(u) => std::os::unix::fs::fchown(&out, Some(u), Some(u)),
            None => Ok(()),
        })
        // After the chown, which clears set-id bits.
        .and_then(|_| out.set_permissions(std::fs::Permissions::from_mode(mode)));
    if let Err(e) = copied {
        let _ = rustix::fs::unlinkat(&dirfd, tmp.as_str(), rustix::fs::AtFlags::empty());
        return Err(err(&format!("write {dst}"), e));
    }
    drop(out);
    rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(&dirfd, tmp.as_str(), rustix::fs::AtFlags::empty());
        err(&format!("replace {dst}"), e.into())
    })
}

/// Copy `src` below `root` to the host file `dst`.
pub(crate) fn copy_out(id: &str, root: &Path, src: &str, dst: &Path) -> Result<()> {
    let err = |what: &str, e: io::Error| DriverError::Backend {
        op: "copy out",
        id: id.to_string(),
        detail: format!("{what}: {e}"),
        retryable: false,
        source: Some(e),
    };
    let rootfd = open_root(root).map_err(|e| err("open instance root", e))?;
    let rel = src.trim_start_matches('/');
    let fd = match open_in_root(&rootfd, rel, OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DriverError::NotFound {
                kind: "file",
                id: format!("{id}:{src}"),
            })
        }
        Err(e) => return Err(err(&format!("open {src}"), e)),
    };
    let mut input = File::from(fd);
    let meta = input.metadata().map_err(|e| err("stat", e))?;
    if !meta.is_file() {
        return Err(DriverError::InvalidSpec {
            field: "source",
            reason: format!("{src} in instance {id} is not a regular file"),
        });
    }
    crate::record::copy_to_host(&mut input, meta.permissions().mode() & 0o777, dst)
        .map_err(|e| err(&format!("write {}", dst.display()), e))
}
