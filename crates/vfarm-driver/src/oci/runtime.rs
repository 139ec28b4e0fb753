//! The OCI runtime binary (runc or crun): choosing one by actually running a container with
//! it, and calling it.
//!
//! A runtime is only trusted after it ran `/bin/true` in a throwaway bundle with namespaces
//! and a cgroup: on hosts with hybrid cgroups crun 1.8 is installed and works for `--version`
//! yet refuses every container, so presence proves nothing. The verdict is cached next to the
//! state (keyed on the binary's path, size and mtime) because a CLI invocation is a fresh
//! process each time and must not pay for a probe run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{MountBuilder, Spec};
use serde::{Deserialize, Serialize};

use crate::{DriverError, Result};

/// Which runtime to use: `auto` tries crun then runc; otherwise a name on `PATH` or a path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Named(String),
}

impl std::str::FromStr for RuntimeChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(if s.is_empty() || s == "auto" {
            RuntimeChoice::Auto
        } else {
            RuntimeChoice::Named(s.to_string())
        })
    }
}

/// A runtime that passed the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// `runc` or `crun` (the binary's file name).
    pub name: String,
    pub path: PathBuf,
    /// First line of `--version`.
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedVerdict {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    version: String,
    works: bool,
    reason: String,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn fingerprint(path: &Path) -> Option<(u64, i128)> {
    let md = std::fs::metadata(path).ok()?;
    let mtime = md.modified().ok()?;
    let ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some((md.len(), ns))
}

/// Choose a runtime per `choice`, probing (or reusing a cached verdict under `state_dir`).
/// `notes` receives one line per candidate.
pub fn select(
    choice: &RuntimeChoice,
    state_dir: &Path,
    notes: &mut Vec<String>,
    fresh: bool,
) -> Result<Runtime> {
    let candidates: Vec<String> = match choice {
        RuntimeChoice::Auto => vec!["crun".into(), "runc".into()],
        RuntimeChoice::Named(n) => vec![n.clone()],
    };
    for name in &candidates {
        let Some(path) = find_in_path(name) else {
            notes.push(format!("{name}: not found on PATH"));
            continue;
        };
        match verdict(&path, state_dir, fresh) {
            Ok(version) => {
                notes.push(format!("{}: works ({version})", path.display()));
                let name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(Runtime {
                    name,
                    path,
                    version,
                });
            }
            Err(reason) => notes.push(format!("{}: refused: {reason}", path.display())),
        }
    }
    Err(DriverError::HostNotReady {
        driver: "oci",
        reason: format!(
            "no usable OCI runtime ({}); install runc (Debian package `runc`)",
            notes.join("; ")
        ),
    })
}

/// One probe at a time per process: a service handling many creates at once on a fresh data
/// dir would otherwise start a test container per request, and an overloaded host makes
/// probes time out.
const PROBE_TIMEOUT: &str = "test container did not finish";

static PROBING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn verdict(path: &Path, state_dir: &Path, fresh: bool) -> std::result::Result<String, String> {
    let _one = PROBING.lock().unwrap_or_else(|e| e.into_inner());
    let cache_file = state_dir.join(format!(
        "probe-{}.json",
        path.to_string_lossy()
            .replace('/', "_")
            .trim_start_matches('_')
    ));
    let fp = fingerprint(path);
    if !fresh {
        if let Some(c) = std::fs::read(&cache_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<CachedVerdict>(&b).ok())
        {
            if c.path == path && Some((c.size, c.mtime_ns)) == fp {
                return if c.works {
                    Ok(c.version)
                } else {
                    Err(c.reason)
                };
            }
        }
    }
    let result = probe_binary(path, state_dir);
    // A probe that timed out says the host was busy, not that the runtime is broken: it is
    // not remembered, so it cannot condemn the runtime until its binary changes.
    let transient = matches!(&result, Err(r) if r.starts_with(PROBE_TIMEOUT));
    if let (Some((size, mtime_ns)), false) = (fp, transient) {
        let (works, version, reason) = match &result {
            Ok(v) => (true, v.clone(), String::new()),
            Err(r) => (false, String::new(), r.clone()),
        };
        let c = CachedVerdict {
            path: path.to_path_buf(),
            size,
            mtime_ns,
            version,
            works,
            reason,
        };
        if std::fs::create_dir_all(state_dir).is_ok() {
            let _ = super::hostfs::write_atomic(
                &cache_file,
                &serde_json::to_vec(&c).unwrap_or_default(),
            );
        }
    }
    result
}

/// Run `/bin/true` in a throwaway bundle whose rootfs borrows the host's `/usr` read-only,
/// with the namespaces and a cgroup limit an instance gets.
fn probe_binary(path: &Path, state_dir: &Path) -> std::result::Result<String, String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if !out.status.success() || version.is_empty() {
        return Err(format!("`--version` failed ({})", out.status));
    }
    let id = format!("vfarm-probe-{}", uuid::Uuid::new_v4().simple());
    let dir = state_dir.join(&id);
    let result = probe_in(path, &dir, &id);
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| version)
}

fn probe_in(path: &Path, dir: &Path, id: &str) -> std::result::Result<(), String> {
    let rootfs = dir.join("bundle/rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).map_err(|e| format!("probe bundle: {e}"))?;
    // Debian's merged /usr: the top-level dirs are links into /usr.
    for l in ["bin", "sbin", "lib", "lib64"] {
        if Path::new("/").join(l).exists() {
            let _ = std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l));
        }
    }
    let mut spec = Spec::default();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/usr")
            .typ("bind")
            .source("/usr")
            .options(vec!["rbind".into(), "ro".into()])
            .build()
            .map_err(|e| e.to_string())?,
    );
    spec.set_mounts(Some(mounts));
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(vec!["/bin/true".into()]));
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(format!("/vfarm/{id}").into()));
        if let Some(r) = linux.resources_mut() {
            r.set_pids(Some(
                oci_spec::runtime::LinuxPidsBuilder::default()
                    .limit(64)
                    .build()
                    .map_err(|e| e.to_string())?,
            ));
        }
    }
    spec.save(dir.join("bundle/config.json"))
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(path)
        .arg("--root")
        .arg(dir.join("state"))
        .args(["run", "--bundle"])
        .arg(dir.join("bundle"))
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new(path)
                    .arg("--root")
                    .arg(dir.join("state"))
                    .args(["delete", "-f", id])
                    .output();
                return Err(format!("{PROBE_TIMEOUT} within 20 s"));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "test container failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        ))
    }
}

impl Runtime {
    /// A command for this runtime with its state kept under `root`.
    pub(crate) fn command(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(root).stdin(Stdio::null());
        c
    }

    /// Run a runtime subcommand to completion; failures carry the runtime's own message.
    pub(crate) fn call(
        &self,
        root: &Path,
        op: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Output> {
        let out =
            self.command(root)
                .args(args)
                .output()
                .map_err(|e| DriverError::HostNotReady {
                    driver: "oci",
                    reason: format!("cannot run {}: {e}", self.path.display()),
                })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(DriverError::Backend {
                op,
                id: id.to_string(),
                detail: format!(
                    "{} {} failed ({}): {}",
                    self.name,
                    args.first().unwrap_or(&""),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                retryable: false,
                source: None,
            })
        }
    }
}
