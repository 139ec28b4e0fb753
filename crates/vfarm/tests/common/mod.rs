//! Helpers shared by the black-box test binaries of `vfarm`.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// `vfarm serve` on an ephemeral loopback port, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    data: PathBuf,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("VFARM_DATA_DIR", data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vfarm serve");
        // `serve` prints its address as its first line on stdout.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the serving line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Server {
            child,
            base,
            data: data.to_path_buf(),
        }
    }

    /// A new bearer token (`vfarm token create`): every `/api/v1/*` request needs one.
    pub fn token(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args([
                "token",
                "create",
                "--user",
                "vfarm-tests",
                "--name",
                "tests",
            ])
            .env("VFARM_DATA_DIR", &self.data)
            .output()
            .expect("run vfarm token create");
        assert!(
            out.status.success(),
            "vfarm token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// An HTTP client that sends a fresh token with every request.
    pub fn client(&self) -> reqwest::blocking::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token()).parse().unwrap(),
        );
        reqwest::blocking::Client::builder()
            .default_headers(headers)
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests' scratch directory (cargo's per-target tmp dir, kept between runs).
pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Fail loudly, naming the package, when a component the test drives is not installed.
pub fn require(b: &str, package: &str) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(b).is_file());
    assert!(
        found,
        "these tests need `{b}`: run scripts/setup.sh (apt-get install {package})"
    );
}

/// A Debian bookworm minbase rootfs tarball, built once with mmdebstrap and kept in the
/// target dir, so every test binary that runs OCI instances shares one bootstrap.
pub fn minbase_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        require("runc", "runc");
        let out = tmp().join("minbase-bookworm.tar");
        if out.is_file() {
            return out;
        }
        require("mmdebstrap", "mmdebstrap");
        // Built under a private name and renamed: test binaries racing here each finish a
        // whole tarball and the last rename wins; nobody reads a partial one.
        let work = tmp().join(format!(".mk-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        // mmdebstrap chooses the format from the name: build as *.tar, then move.
        let t = work.join("minbase-bookworm.tar");
        let st = Command::new("mmdebstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&t)
            .status()
            .unwrap();
        assert!(st.success(), "mmdebstrap failed: {st}");
        std::fs::rename(&t, &out).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        out
    })
    .clone()
}
