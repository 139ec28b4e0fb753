//! Host filesystem work for the oci driver: unpacking image rootfs trees, overlay mounts,
//! mount-table queries and process liveness (atomic writes and I/O errors live in `record`).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{DriverError, Result};

pub(crate) use crate::record::{io_err, write_atomic};

/// Unpack the image's rootfs tarball into `dest` exactly once per image (see [`make_once`]).
pub(crate) fn unpack_rootfs(tar: &Path, dest: &Path, image_id: &str) -> Result<()> {
    make_once(dest, image_id, |tmp| {
        let out = Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(tmp)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DriverError::HostNotReady {
                driver: "oci",
                reason: format!("cannot run tar to unpack images: {e}"),
            })?;
        if !out.status.success() {
            return Err(DriverError::Backend {
                op: "unpack",
                id: image_id.to_string(),
                detail: format!(
                    "tar -x {} failed ({}): {}",
                    tar.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                retryable: false,
                source: None,
            });
        }
        Ok(())
    })
}

/// Make `dest`, a copy of the unpacked rootfs `src` whose every file and directory is owned
/// by its id plus `base` (ids past the 16-bit range become base + 65534, "nobody"): the
/// bottom layer of instances whose ids map 0 → `base`. Made once per image and range.
pub(crate) fn shift_rootfs(src: &Path, dest: &Path, base: u32, image_id: &str) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32| {
        base + if id < crate::idmap::IDS_PER_RANGE {
            id
        } else {
            65_534
        }
    };
    make_once(dest, image_id, |tmp| {
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto", "--"])
            .arg(format!("{}/.", src.display()))
            .arg(tmp)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err("shift", image_id, "cp", e))?;
        if !out.status.success() {
            return Err(DriverError::Backend {
                op: "shift",
                id: image_id.to_string(),
                detail: format!(
                    "cp -a {} failed: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                retryable: false,
                source: None,
            });
        }
        // Owners come from `src`, so a hard-linked file is not shifted twice.
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let from = src.join(&rel);
            let to = tmp.join(&rel);
            let meta = std::fs::symlink_metadata(&from)
                .map_err(|e| io_err("shift", image_id, from.display(), e))?;
            std::os::unix::fs::lchown(&to, Some(shift(meta.uid())), Some(shift(meta.gid())))
                .map_err(|e| io_err("shift", image_id, to.display(), e))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            // chown clears set-id bits; the image's own modes are kept.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| io_err("shift", image_id, to.display(), e))?;
            if meta.is_dir() {
                let rd = std::fs::read_dir(&from)
                    .map_err(|e| io_err("shift", image_id, from.display(), e))?;
                for e in rd {
                    let e = e.map_err(|e| io_err("shift", image_id, from.display(), e))?;
                    stack.push(rel.join(e.file_name()));
                }
            }
        }
        Ok(())
    })
}

/// Make the directory `dest` exactly once, so it is either absent or complete: one caller
/// fills a temp dir (renamed into place) while the others wait on the image's lock file and
/// then find it done. 200 concurrent first creates once made 200 copies of the tree at the
/// same time and filled the disk.
fn make_once(dest: &Path, image_id: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().expect("rootfs dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| io_err("unpack", image_id, parent.display(), e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| image_id.to_string());
    let lock_path = parent.join(format!(".lock-{name}"));
    let _lock = crate::record::lock_file(&lock_path)
        .map_err(|e| io_err("unpack", image_id, lock_path.display(), e))?;
    if dest.is_dir() {
        return Ok(());
    }
    // Temp dirs of this name are a dead maker's (nobody else holds the lock).
    let stale = format!(".unpack-{name}-");
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!("{stale}{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&tmp).map_err(|e| io_err("unpack", image_id, tmp.display(), e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io_err("unpack", image_id, dest.display(), e))
        }
    }
}

/// Mount an overlay at `target`: `lowers` top-most first, then `upper` and `work` (same fs).
///
/// With `volatile`, overlayfs skips every sync, including the one of the whole upper file
/// system that an unmount otherwise does (which waits for all of the host's dirty data).
pub(crate) fn mount_overlay(
    id: &str,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if volatile {
        data.push_str(",volatile");
    }
    // The kernel takes mount options in one page.
    if data.len() >= 4000 {
        return Err(DriverError::Backend {
            op: "mount",
            id: id.to_string(),
            detail: format!(
                "overlay options too long ({} layers); remove some snapshots",
                lowers.len()
            ),
            retryable: false,
            source: None,
        });
    }
    let data = CString::new(data).map_err(|_| DriverError::InvalidSpec {
        field: "data dir",
        reason: "path contains a NUL byte".into(),
    })?;
    // The instance's files are reached on the host through this mount too: a set-id or
    // device file made inside must mean nothing there.
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        io_err(
            "mount",
            id,
            format!("overlay on {}", target.display()),
            e.into(),
        )
    })
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    // mountinfo holds absolute, resolved paths; a relative data dir (`--data-dir ./d`)
    // matched none of them and left the instance's overlay mounted.
    let dir = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Unmount everything at or below `dir`. A busy mount is detached lazily rather than left
/// behind: by the time we unmount, the instance's processes are gone.
pub(crate) fn unmount_all(id: &str, dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        if let Err(e) = rustix::mount::unmount(&m, UnmountFlags::empty()) {
            if e == rustix::io::Errno::BUSY {
                rustix::mount::unmount(&m, UnmountFlags::DETACH)
                    .map_err(|e| io_err("unmount", id, m.display(), e.into()))?;
            } else if e != rustix::io::Errno::INVAL {
                // EINVAL: no longer a mount point (raced with another cleanup).
                return Err(io_err("unmount", id, m.display(), e.into()));
            }
        }
    }
    Ok(())
}

/// Total bytes of regular files below `dir` (hard links counted once per path; fine for
/// a rough snapshot size).
pub(crate) fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

/// Remove `dirs` in a detached background process, so callers do not wait for the deletion
/// of a large tree (revert moves the discarded upper dir aside and lets this delete it).
pub(crate) fn remove_in_background(dirs: &[PathBuf]) {
    if dirs.is_empty() {
        return;
    }
    let spawned = Command::new("setsid")
        .args(["-f", "rm", "-rf", "--one-file-system", "--"])
        .args(dirs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(spawned, Ok(s) if s.success()) {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    }

    /// While one unpacker holds the image's lock, the others wait without unpacking (no
    /// temp trees pile up); then exactly one tree is in place, a dead unpacker's leftover is
    /// gone, and nothing else is left.
    #[test]
    fn concurrent_unpacks_of_one_image_wait_for_the_first() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/os-release"), "ID=test\n").unwrap();
        let tar = t.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("tar is installed");
        assert!(st.success());
        let parent = t.path().join("rootfs");
        std::fs::create_dir_all(parent.join(".unpack-img1-deadbeef")).unwrap();
        let dest = parent.join("img1");
        // Hold the lock as a first unpacker would.
        let held = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(parent.join(".lock-img1"))
            .unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (tar, dest) = (tar.clone(), dest.clone());
                std::thread::spawn(move || unpack_rootfs(&tar, &dest, "img1"))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let temps = |p: &Path| -> Vec<String> {
            std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".unpack-"))
                .collect()
        };
        assert_eq!(
            temps(&parent),
            [".unpack-img1-deadbeef"],
            "unpacked without the lock"
        );
        assert!(!dest.exists());
        drop(held);
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/os-release")).unwrap(),
            "ID=test\n"
        );
        assert!(temps(&parent).is_empty(), "{:?}", temps(&parent));
    }
}
