//! Shared fixtures: a real Debian minbase rootfs (built once with mmdebstrap, cached in the
//! target dir) and a data dir shared by the tests so the rootfs is unpacked once.
//! Missing components fail the tests loudly; nothing is skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use vfarm_driver::oci::{OciDriver, RuntimeChoice};
use vfarm_driver::{Driver, ImageFile, ImageInput, InstanceSpec, Network};

pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn require(bin: &str, package: &str) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(bin).is_file());
    assert!(
        found,
        "these tests need `{bin}` (Debian package `{package}`); install it: apt-get install {package}"
    );
}

/// The minbase bookworm rootfs tarball, built on first use.
pub fn minbase_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        require("runc", "runc");
        let out = cache_dir().join("minbase-bookworm.tar");
        if out.is_file() {
            return out;
        }
        require("mmdebstrap", "mmdebstrap");
        // mmdebstrap picks the output format from the file name, so build under the final
        // name in a private dir and move it into place.
        let work = cache_dir().join(format!(".mk-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let tmp = work.join("minbase-bookworm.tar");
        let st = Command::new("mmdebstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&tmp)
            .status()
            .expect("run mmdebstrap");
        assert!(
            st.success(),
            "mmdebstrap --variant=minbase bookworm failed: {st}"
        );
        std::fs::rename(&tmp, &out).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        out
    })
    .clone()
}

pub fn data_dir() -> PathBuf {
    let d = cache_dir().join("driver-tests-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn driver() -> OciDriver {
    minbase_tar();
    OciDriver::new(&data_dir(), RuntimeChoice::Auto).expect("an OCI runtime must work on this host")
}

pub fn unique_id(prefix: &str) -> String {
    format!("t-{prefix}-{}", &uuid_like()[..10])
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: Mutex<u64> = Mutex::new(0);
    let mut n = N.lock().unwrap();
    *n += 1;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:04x}{:06x}", t, *n, std::process::id())
        .chars()
        .rev()
        .collect()
}

pub fn spec(id: &str, command: &[&str]) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        image: ImageInput {
            id: "minbase-bookworm-test".into(),
            files: vec![ImageFile {
                format: vfarm_core::Format::Tar,
                path: minbase_tar(),
            }],
            kernel: None,
            initrd: None,
        },
        hostname: "testnode".into(),
        cpus: None,
        memory: None,
        pids: None,
        disk: None,
        env: vec![],
        command: command.iter().map(|s| s.to_string()).collect(),
        network: Network::None,
        user_namespace: false,
        id_base: 0,
        volatile: false,
        vm: Default::default(),
    }
}

/// An instance that is cleaned up when the test ends, pass or fail, and checked to leave
/// nothing behind.
pub struct Inst<'a> {
    pub d: &'a OciDriver,
    pub id: String,
}

impl<'a> Inst<'a> {
    pub fn new(d: &'a OciDriver, s: &InstanceSpec) -> Inst<'a> {
        let i = Inst {
            d,
            id: s.id.clone(),
        };
        d.prepare(s).expect("prepare");
        i
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.d.logs(&self.id).unwrap().stdout).unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.d.logs(&self.id).unwrap().stderr).unwrap()
    }
}

impl Drop for Inst<'_> {
    fn drop(&mut self) {
        let r = self.d.cleanup(&self.id);
        if std::thread::panicking() {
            return;
        }
        r.expect("cleanup");
        assert_left_nothing(self.d, &self.id);
    }
}

pub fn assert_left_nothing(d: &OciDriver, id: &str) {
    let dir = d.instance_dir(id);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !d.runtime_root().join(id).exists(),
        "runtime state of {id} left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mount under {} left behind",
        dir.display()
    );
    for ctl in ["memory", "pids", "cpu", "freezer"] {
        let cg = Path::new("/sys/fs/cgroup").join(ctl).join("vfarm").join(id);
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
}
