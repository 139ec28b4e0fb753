//! Host filesystem work for the oci driver: unpacking image rootfs trees, overlay mounts,
//! mount-table queries and process liveness (atomic writes and I/O errors live in `record`).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{DriverError, Result};

pub(crate) use crate::record::{io_err, write_atomic};

/// Unpack the image's rootfs tarball into `dest` exactly once per image, so `dest` is either
/// absent or complete. One caller unpacks (into a temp dir, renamed into place) while the
/// others wait on the image's lock file and then find it done: 200 concurrent first creates
/// once made 200 copies of the tree at the same time and filled the disk.
pub(crate) fn unpack_rootfs(tar: &Path, dest: &Path, image_id: &str) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().expect("rootfs dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| io_err("unpack", image_id, parent.display(), e))?;
    let lock_path = parent.join(format!(".lock-{image_id}"));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("unpack", image_id, lock_path.display(), e))?;
    // Released when `lock` is dropped, or by the kernel when the holder dies.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("unpack", image_id, lock_path.display(), e.into()))?;
    if dest.is_dir() {
        return Ok(());
    }
    // Temp dirs of this image are a dead unpacker's (nobody else holds the lock).
    let stale = format!(".unpack-{image_id}-");
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!(
        ".unpack-{image_id}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&tmp).map_err(|e| io_err("unpack", image_id, tmp.display(), e))?;
    let out = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(&tmp)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(DriverError::HostNotReady {
                driver: "oci",
                reason: format!("cannot run tar to unpack images: {e}"),
            });
        }
    };
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
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
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
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
