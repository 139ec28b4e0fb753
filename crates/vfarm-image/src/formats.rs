//! Turning a root filesystem directory into artifacts, and checking each one after writing.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha512};
use vfarm_core::Format;

use crate::error::{ImageError, Result};
use crate::tools::run_quiet;

/// A written, checked artifact, before it is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub format: Format,
    pub path: PathBuf,
    pub size: u64,
    pub sha512: String,
    pub disk_size: Option<u64>,
}

/// Write the rootfs tarball by piping `tar` through a hasher: one pass over the data gives
/// the file, its size and its sha512.
pub fn write_tar(rootfs: &Path, out: &Path) -> Result<Written> {
    let mut child = Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--sort=name",
            "-C",
        ])
        .arg(rootfs)
        .args(["-cf", "-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::ToolMissing { tool: "tar" },
            _ => ImageError::io("start tar for", out)(e),
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut file = File::create(out).map_err(ImageError::io("create", out))?;
    let (size, sha512) =
        copy_hashing(&mut stdout, &mut file).map_err(ImageError::io("write", out))?;
    file.sync_all().map_err(ImageError::io("sync", out))?;
    let output = child
        .wait_with_output()
        .map_err(ImageError::io("wait for tar writing", out))?;
    if !output.status.success() {
        return Err(ImageError::ToolFailed {
            tool: "tar",
            status: output
                .status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            tail: String::from_utf8_lossy(&output.stderr).into_owned(),
            log: None,
        });
    }
    check_tar(out)?;
    Ok(Written {
        format: Format::Tar,
        path: out.to_path_buf(),
        size,
        sha512,
        disk_size: None,
    })
}

/// A rootfs tarball must list `etc/debian_version` (or at least `etc/os-release` for imports
/// of other distributions).
pub fn check_tar(path: &Path) -> Result<()> {
    let listing = run_quiet("tar", Command::new("tar").arg("-tf").arg(path))?;
    let has = |name: &str| listing.lines().any(|l| l.trim_start_matches("./") == name);
    if has("etc/debian_version") || has("etc/os-release") {
        Ok(())
    } else {
        Err(ImageError::CheckFailed {
            format: "tar".into(),
            reason: format!(
                "{} lists no etc/debian_version or etc/os-release",
                path.display()
            ),
        })
    }
}

/// Bytes the tree occupies (apparent sizes, rounded up to 4 KiB blocks per file): the basis
/// for the default disk size and for refusing sizes that cannot hold the tree.
pub fn tree_size(root: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(ImageError::io("read dir", &dir))? {
            let entry = entry.map_err(ImageError::io("read dir", &dir))?;
            let meta = entry
                .metadata()
                .map_err(ImageError::io("stat", entry.path()))?;
            total += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Smallest disk that holds `content` bytes: ext4 metadata, the journal and reserved
/// blocks take about 10 %, plus a fixed margin.
pub fn minimum_disk(content: u64) -> u64 {
    content + content / 10 + (48 << 20)
}

/// Default disk: room to grow by half again (at least 256 MiB), in whole 64 MiB steps,
/// never below 512 MiB.
pub fn default_disk(content: u64) -> u64 {
    let want = content + (content / 2).max(256 << 20);
    want.div_ceil(64 << 20) * (64 << 20)
}

/// `mkfs.ext4 -d`: an ext4 image of the tree without loop mounts; then `e2fsck -fn`.
pub fn write_raw(rootfs: &Path, out: &Path, disk_size: u64) -> Result<Written> {
    let f = File::create(out).map_err(ImageError::io("create", out))?;
    f.set_len(disk_size).map_err(ImageError::io("size", out))?;
    drop(f);
    run_quiet(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vfarm-root", "-E", "root_owner=0:0", "-d"])
            .arg(rootfs)
            .arg(out),
    )?;
    check_ext4(out)?;
    hash_written(Format::Raw, out, Some(disk_size))
}

pub fn check_ext4(path: &Path) -> Result<()> {
    run_quiet("e2fsck", Command::new("e2fsck").args(["-fn"]).arg(path))
        .map(|_| ())
        .map_err(|e| ImageError::CheckFailed {
            format: "raw".into(),
            reason: e.to_string(),
        })
}

/// qcow2, vmdk and vdi are conversions of the raw image by `qemu-img`.
pub fn convert(raw: &Path, format: Format, out: &Path, disk_size: u64) -> Result<Written> {
    run_quiet(
        "qemu-img",
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", format.as_str()])
            .arg(raw)
            .arg(out),
    )?;
    check_image(format, out)?;
    hash_written(format, out, Some(disk_size))
}

/// `qemu-img check` where the format supports it; a format whose driver has no check
/// (qemu-img says "does not support checks") must at least be recognised by `qemu-img info`.
pub fn check_image(format: Format, path: &Path) -> Result<()> {
    match run_quiet(
        "qemu-img",
        Command::new("qemu-img")
            .args(["check", "-q", "-f", format.as_str()])
            .arg(path),
    ) {
        Ok(_) => Ok(()),
        Err(ImageError::ToolFailed { tail, .. }) if tail.contains("does not support checks") => {
            let info = run_quiet(
                "qemu-img",
                Command::new("qemu-img")
                    .args(["info", "--output=json"])
                    .arg(path),
            )?;
            if info.contains(&format!("\"format\": \"{}\"", format.as_str())) {
                Ok(())
            } else {
                Err(ImageError::CheckFailed {
                    format: format.to_string(),
                    reason: format!("qemu-img info does not see a {format} image"),
                })
            }
        }
        Err(e) => Err(ImageError::CheckFailed {
            format: format.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn hash_written(format: Format, path: &Path, disk_size: Option<u64>) -> Result<Written> {
    let (size, sha512) = hash_file(path)?;
    Ok(Written {
        format,
        path: path.to_path_buf(),
        size,
        sha512,
        disk_size,
    })
}

/// sha512 and length of a file, streaming.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(ImageError::io("open", path))?;
    copy_hashing(&mut f, &mut std::io::sink()).map_err(ImageError::io("read", path))
}

/// Copy `r` to `w` while hashing: returns (bytes, sha512 hex).
pub fn copy_hashing(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<(u64, String)> {
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Detect what an import file is: a rootfs tarball, or a disk image qemu-img recognises.
pub fn detect_format(path: &Path) -> Result<Format> {
    if check_tar(path).is_ok() {
        return Ok(Format::Tar);
    }
    let info = run_quiet(
        "qemu-img",
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path),
    )
    .map_err(|e| ImageError::Import {
        path: path.to_path_buf(),
        reason: format!("neither a rootfs tarball nor a disk image qemu-img knows ({e})"),
    })?;
    let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| ImageError::Import {
        path: path.to_path_buf(),
        reason: format!("unreadable qemu-img info: {e}"),
    })?;
    let fmt = v["format"].as_str().unwrap_or("");
    fmt.parse::<Format>().map_err(|_| ImageError::Import {
        path: path.to_path_buf(),
        reason: format!("disk format `{fmt}` is not one of tar, raw, qcow2, vmdk, vdi"),
    })
}

/// A raw disk must hold something a machine can use: a filesystem or a partition table, as
/// `blkid -p` probes it (qemu-img calls any file "raw", so it cannot tell).
pub fn check_raw(path: &Path) -> Result<()> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::ToolMissing { tool: "blkid" },
            _ => ImageError::io("probe", path)(e),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success()
        && text
            .lines()
            .any(|l| l.starts_with("TYPE=") || l.starts_with("PTTYPE="))
    {
        Ok(())
    } else {
        Err(ImageError::CheckFailed {
            format: "raw".into(),
            reason: format!("{} holds no filesystem or partition table", path.display()),
        })
    }
}

/// Virtual size of a disk image.
pub fn virtual_size(path: &Path) -> Result<u64> {
    let info = run_quiet(
        "qemu-img",
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&info).map_err(|e| ImageError::CheckFailed {
            format: "disk".into(),
            reason: format!("unreadable qemu-img info: {e}"),
        })?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| ImageError::CheckFailed {
            format: "disk".into(),
            reason: "qemu-img info has no virtual-size".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_have_room() {
        let content = 200 << 20;
        assert!(minimum_disk(content) > content);
        let d = default_disk(content);
        assert!(d >= minimum_disk(content));
        assert_eq!(d % (64 << 20), 0);
        assert_eq!(default_disk(1 << 30), (1 << 30) + (512 << 20));
    }

    #[test]
    fn copy_hashing_matches_known_digest() {
        let mut out = Vec::new();
        let (n, h) = copy_hashing(&mut &b"abc"[..], &mut out).unwrap();
        assert_eq!(n, 3);
        assert_eq!(out, b"abc");
        assert!(h.starts_with("ddaf35a193617aba"));
    }
}
