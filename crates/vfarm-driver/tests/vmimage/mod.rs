//! The bootable image the QEMU driver tests run: built once per target dir through the
//! vfarm CLI (mmdebstrap, `--boot vm --format qcow2`), later runs answered from its cache.
//! A missing component fails the test with its name.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vfarm_driver::{ImageFile, ImageInput};

/// `<target>/debug/deps/<test>-…` → `<target>`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

pub fn require(bin: &str, package: &str) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(bin).is_file());
    assert!(
        found,
        "this end-to-end test needs `{bin}` (Debian package `{package}`): apt-get install {package}"
    );
}

/// The workspace's `vfarm` binary from this target directory, built first if it is not there.
pub fn vfarm_binary() -> PathBuf {
    let target = target_dir();
    let bin = target.join("debug").join("vfarm");
    if !bin.is_file() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "vfarm"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&workspace)
            .status()
            .expect("cannot run cargo to build the vfarm binary");
        assert!(
            status.success(),
            "building the vfarm binary failed ({status})"
        );
    }
    assert!(bin.is_file(), "vfarm binary missing at {}", bin.display());
    bin
}

/// A bootable bookworm image built through the CLI, once per target dir (later runs are
/// answered from the CLI's cache).
pub fn build_image(extra: &[&str]) -> ImageInput {
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("busybox", "busybox-static"),
        ("mmdebstrap", "mmdebstrap"),
    ] {
        require(bin, pkg);
    }
    let out = Command::new(vfarm_binary())
        .args([
            "image", "build", "--suite", "bookworm", "--boot", "vm", "--format", "qcow2",
            "--output", "json",
        ])
        .args(extra)
        .env("VFARM_DATA_DIR", target_dir().join("vfarm-qemudrv-images"))
        .output()
        .expect("cannot run the vfarm binary");
    assert!(
        out.status.success(),
        "vfarm image build {extra:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("vfarm image build --output json");
    let artifact = |format: &str, f: vfarm_core::Format| ImageFile {
        format: f,
        path: v["artifacts"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["format"] == format))
            .and_then(|x| x["path"].as_str())
            .unwrap_or_else(|| panic!("no {format} artifact in {v}"))
            .into(),
    };
    ImageInput {
        id: v["id"].as_str().unwrap_or("bookworm-vm").to_string(),
        files: vec![
            artifact("qcow2", vfarm_core::Format::Qcow2),
            artifact("tar", vfarm_core::Format::Tar),
        ],
        kernel: Some(
            v["kernel"]
                .as_str()
                .unwrap_or_else(|| panic!("no kernel in {v}"))
                .into(),
        ),
        initrd: v["initrd"].as_str().map(PathBuf::from),
    }
}
