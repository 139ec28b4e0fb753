//! Copy-on-write disks: a qcow2 overlay on an image's disk, so a new VM costs no copy of the
//! image and the image itself is never written.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::cmdline::DiskFormat;
use crate::error::{Error, Result};
use crate::tools::run_checked;

/// The parts of `qemu-img info --output=json` this crate uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
}

pub fn image_info(qemu_img: &Path, path: &Path) -> Result<ImageInfo> {
    let out = run_checked(
        Command::new(qemu_img)
            .args(["info", "--output=json", "-U"])
            .arg(path),
    )?;
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Protocol {
        what: "qemu-img info",
        detail: e.to_string(),
    })
}

/// Creates `overlay` as a qcow2 file backed by `base` (`qemu-img create -f qcow2 -b BASE -F FMT
/// OVERLAY SIZE`). With `size` the guest sees a disk grown to that many bytes (the file system
/// inside is not resized); without, the base's size. Refuses to overwrite an existing file.
pub fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
    size: Option<u64>,
) -> Result<ImageInfo> {
    // The overlay records the backing path as given and QEMU resolves a relative one against
    // the overlay's directory, so store the absolute path.
    let base =
        std::fs::canonicalize(base).map_err(|e| Error::io("find the base image", base, e))?;
    if overlay.exists() {
        return Err(Error::io(
            "create the overlay",
            overlay,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let base_size = image_info(qemu_img, &base)?.virtual_size;
    if let Some(requested) = size {
        if requested < base_size {
            // Shrinking below the image would cut off its file system.
            return Err(Error::OverlayTooSmall {
                requested,
                base: base_size,
            });
        }
    }
    let mut cmd = Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", base_format.as_str()])
        .arg(overlay);
    if let Some(bytes) = size {
        cmd.arg(bytes.to_string());
    }
    run_checked(&mut cmd)?;
    image_info(qemu_img, overlay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::QEMU_IMG;

    fn qemu_img() -> std::path::PathBuf {
        QEMU_IMG.find().expect("qemu-img is needed by these tests")
    }

    fn base(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("base.qcow2");
        run_checked(
            Command::new(qemu_img())
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&p)
                .arg("64M"),
        )
        .unwrap();
        p
    }

    #[test]
    fn overlay_is_backed_by_base_and_grown() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path());
        let ov = dir.path().join("vm.qcow2");
        let info =
            create_overlay(&qemu_img(), &base, DiskFormat::Qcow2, &ov, Some(256 << 20)).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 256 << 20);
        assert_eq!(
            info.backing_filename.as_deref(),
            Some(base.to_str().unwrap())
        );
        // No copy of the base: the overlay is only metadata.
        assert!(std::fs::metadata(&ov).unwrap().len() < 1 << 20);
    }

    #[test]
    fn overlay_defaults_to_base_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path());
        let ov = dir.path().join("vm.qcow2");
        let info = create_overlay(&qemu_img(), &base, DiskFormat::Qcow2, &ov, None).unwrap();
        assert_eq!(info.virtual_size, 64 << 20);
    }

    #[test]
    fn overlay_smaller_than_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path());
        let ov = dir.path().join("vm.qcow2");
        let err =
            create_overlay(&qemu_img(), &base, DiskFormat::Qcow2, &ov, Some(1 << 20)).unwrap_err();
        assert!(matches!(err, Error::OverlayTooSmall { .. }), "{err}");
        assert!(!ov.exists());
    }

    #[test]
    fn existing_overlay_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path());
        let ov = dir.path().join("vm.qcow2");
        std::fs::write(&ov, b"keep").unwrap();
        assert!(create_overlay(&qemu_img(), &base, DiskFormat::Qcow2, &ov, None).is_err());
        assert_eq!(std::fs::read(&ov).unwrap(), b"keep");
    }

    #[test]
    fn missing_base_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_overlay(
            &qemu_img(),
            &dir.path().join("none.qcow2"),
            DiskFormat::Qcow2,
            &dir.path().join("vm.qcow2"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
