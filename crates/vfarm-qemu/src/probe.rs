//! Is KVM usable? Answered by booting a tiny guest with `-accel kvm` under a timeout.
//!
//! A `/dev/kvm` that opens (and even a `KVM_CREATE_VM` that succeeds) proves nothing: under
//! nested virtualisation without real support a KVM guest hangs at its first instructions. So
//! the probe boots a kernel with a busybox initramfs whose init prints a marker and powers off,
//! and calls KVM usable only if the marker appears and QEMU exits within the timeout. The
//! verdict is cached per host boot (`/proc/sys/kernel/random/boot_id`): KVM's usability does not
//! change while the host runs, and the probe costs seconds when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cmdline::{build_args, Accel, KernelBoot, Machine, VmConfig};
use crate::error::{Error, Result};
use crate::initramfs::{write_probe_initramfs, PROBE_MARKER};
use crate::tools::tail;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const CACHE_FILE: &str = "kvm-probe.json";

/// Why KVM was found unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KvmFailure {
    #[error("/dev/kvm does not exist (no KVM module loaded, or no hardware support)")]
    NoDevice,
    #[error("QEMU refused to start with KVM: {stderr}")]
    QemuRefused { stderr: String },
    #[error("a test guest did not finish booting within {secs} s")]
    BootTimeout { secs: u64 },
    #[error("the test guest stopped before reaching its init (QEMU exit: {exit})")]
    NoInit { exit: String },
}

/// The probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmVerdict {
    pub boot_id: String,
    /// The `-cpu` model probed (`None`: the VMs' default, the host model).
    #[serde(default)]
    pub cpu: Option<String>,
    pub usable: bool,
    pub failure: Option<KvmFailure>,
    /// How long the test boot took (until QEMU exited or the timeout hit).
    pub elapsed_ms: u64,
    /// True when the verdict came from the cache of an earlier probe in this host boot.
    #[serde(skip)]
    pub cached: bool,
}

/// What the probe needs.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub qemu: PathBuf,
    /// Any x86_64 kernel that boots under QEMU without modules (the probe's initramfs needs no
    /// disk or console driver): the host's own or an image's.
    pub kernel: PathBuf,
    /// A statically linked busybox for the probe's initramfs.
    pub busybox: PathBuf,
    /// Holds the verdict cache and the probe's scratch files.
    pub state_dir: PathBuf,
    /// How long the test guest may take. A working KVM boots it in well under a second.
    pub timeout: Duration,
    /// Ignore a cached verdict and probe again.
    pub refresh: bool,
    /// The `-cpu` model the VMs will use (`None`: `host`). Probe with the same model as the
    /// VMs: on a broken nested setup `host` can make QEMU abort while QEMU's default model
    /// starts and then hangs, and only the VMs' model tells whether they will run.
    pub cpu: Option<String>,
}

impl ProbeConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Which accelerator a caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM if the probe says it works, TCG otherwise.
    Auto,
    /// KVM or an error (`Error::KvmUnusable`).
    Kvm,
    /// TCG without probing.
    Tcg,
}

/// The accelerator decided on, with the probe verdict that led to it (none for a forced TCG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub verdict: Option<KvmVerdict>,
}

impl AccelDecision {
    /// A line for logs and CLI output when KVM was wanted but TCG is used.
    pub fn fallback_note(&self) -> Option<String> {
        let v = self.verdict.as_ref()?;
        let f = v.failure.as_ref()?;
        Some(format!(
            "KVM is not usable on this host ({f}); using TCG emulation"
        ))
    }
}

pub fn choose_accel(choice: AccelChoice, cfg: &ProbeConfig) -> Result<AccelDecision> {
    match choice {
        AccelChoice::Tcg => Ok(AccelDecision {
            accel: Accel::Tcg,
            verdict: None,
        }),
        AccelChoice::Auto | AccelChoice::Kvm => {
            let verdict = probe_kvm(cfg)?;
            if verdict.usable {
                return Ok(AccelDecision {
                    accel: Accel::Kvm,
                    verdict: Some(verdict),
                });
            }
            if choice == AccelChoice::Kvm {
                return Err(Error::KvmUnusable {
                    reason: verdict.failure.unwrap_or(KvmFailure::NoInit {
                        exit: "unknown".into(),
                    }),
                });
            }
            tracing::info!(
                failure = ?verdict.failure,
                "KVM is not usable on this host; using TCG"
            );
            Ok(AccelDecision {
                accel: Accel::Tcg,
                verdict: Some(verdict),
            })
        }
    }
}

/// The KVM verdict for this host boot: cached, or probed now (and then cached).
pub fn probe_kvm(cfg: &ProbeConfig) -> Result<KvmVerdict> {
    let boot_id = std::fs::read_to_string(BOOT_ID)
        .map_err(|source| Error::BootId { source })?
        .trim()
        .to_string();
    probe_kvm_for_boot(cfg, &boot_id, Path::new("/dev/kvm"))
}

fn probe_kvm_for_boot(cfg: &ProbeConfig, boot_id: &str, kvm_dev: &Path) -> Result<KvmVerdict> {
    let cache = cfg.state_dir.join(CACHE_FILE);
    if !cfg.refresh {
        if let Some(mut v) = read_cache(&cache) {
            if v.boot_id == boot_id && v.cpu == cfg.cpu {
                v.cached = true;
                return Ok(v);
            }
        }
    }
    let started = Instant::now();
    let failure = if kvm_dev.exists() {
        boot_test_guest(cfg)?
    } else {
        Some(KvmFailure::NoDevice)
    };
    let verdict = KvmVerdict {
        boot_id: boot_id.to_string(),
        cpu: cfg.cpu.clone(),
        usable: failure.is_none(),
        failure,
        elapsed_ms: started.elapsed().as_millis() as u64,
        cached: false,
    };
    write_cache(&cache, &verdict)?;
    Ok(verdict)
}

fn read_cache(path: &Path) -> Option<KvmVerdict> {
    let text = std::fs::read_to_string(path).ok()?;
    // An unreadable cache is only a reason to probe again.
    serde_json::from_str(&text).ok()
}

fn write_cache(path: &Path, v: &KvmVerdict) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create the state directory", dir, e))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    serde_json::to_writer_pretty(tmp.as_file(), v)
        .map_err(|e| Error::io("write", path, e.into()))?;
    tmp.persist(path)
        .map_err(|e| Error::io("move into place", path, e.error))?;
    Ok(())
}

/// Boots the test guest under KVM; `None` means it worked.
fn boot_test_guest(cfg: &ProbeConfig) -> Result<Option<KvmFailure>> {
    test_boot(cfg, Accel::Kvm)
}

/// Boots the probe's test guest with the given accelerator, without caching anything; `None`
/// means it reached its init and QEMU exited within the timeout. With TCG this checks the
/// probe's own machinery (kernel, initramfs, marker, exit) on hosts where KVM never works.
pub fn test_boot(cfg: &ProbeConfig, accel: Accel) -> Result<Option<KvmFailure>> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| Error::io("create the state directory", &cfg.state_dir, e))?;
    let scratch = tempfile::Builder::new()
        .prefix("kvm-probe-")
        .tempdir_in(&cfg.state_dir)
        .map_err(|e| Error::io("create a scratch directory in", &cfg.state_dir, e))?;
    let initrd = scratch.path().join("probe.cpio.gz");
    write_probe_initramfs(&cfg.busybox, &initrd)?;
    let console = scratch.path().join("console.log");

    let mut vm = VmConfig::new(
        "vfarm-kvm-probe",
        Machine::Microvm,
        accel,
        scratch.path().join("qmp.sock"),
    );
    vm.memory_mib = 128;
    vm.cpu = cfg.cpu.clone();
    vm.no_reboot = true;
    vm.serial_log = Some(console.clone());
    vm.kernel = Some(KernelBoot {
        kernel: cfg.kernel.clone(),
        initrd: Some(initrd),
        append: crate::profile::probe_append(accel),
    });
    let args = build_args(&vm)?;
    let stderr_path = scratch.path().join("stderr");
    let stderr =
        std::fs::File::create(&stderr_path).map_err(|e| Error::io("create", &stderr_path, e))?;
    let mut child = Command::new(&cfg.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: cfg.qemu.display().to_string(),
            source,
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= cfg.timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Spawn {
                    program: cfg.qemu.display().to_string(),
                    source,
                });
            }
        }
    };
    let Some(status) = status else {
        // The hang this probe exists for: stop the guest and say so.
        let _ = child.kill();
        let _ = child.wait();
        return Ok(Some(KvmFailure::BootTimeout {
            secs: cfg.timeout.as_secs().max(1),
        }));
    };
    let reached_init = std::fs::read(&console)
        .map(|c| String::from_utf8_lossy(&c).contains(PROBE_MARKER))
        .unwrap_or(false);
    if reached_init {
        return Ok(None);
    }
    let err = std::fs::read(&stderr_path).unwrap_or_default();
    if !status.success() && !err.is_empty() {
        return Ok(Some(KvmFailure::QemuRefused {
            stderr: tail(&err, 1000),
        }));
    }
    Ok(Some(KvmFailure::NoInit {
        exit: status.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> ProbeConfig {
        ProbeConfig {
            // Must never run in these tests: a cached verdict or a missing /dev/kvm answers.
            qemu: dir.join("no-such-qemu"),
            kernel: dir.join("no-such-kernel"),
            busybox: dir.join("no-such-busybox"),
            state_dir: dir.join("state"),
            timeout: Duration::from_secs(1),
            refresh: false,
            cpu: None,
        }
    }

    #[test]
    fn no_device_is_a_verdict_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let v = probe_kvm_for_boot(&cfg, "boot-1", &dir.path().join("kvm")).unwrap();
        assert!(!v.usable);
        assert_eq!(v.failure, Some(KvmFailure::NoDevice));
        assert!(!v.cached);
        let again = probe_kvm_for_boot(&cfg, "boot-1", &dir.path().join("kvm")).unwrap();
        assert!(again.cached);
        assert_eq!(again.failure, Some(KvmFailure::NoDevice));
    }

    #[test]
    fn cache_of_another_boot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        write_cache(
            &cfg.state_dir.join(CACHE_FILE),
            &KvmVerdict {
                boot_id: "boot-old".into(),
                cpu: None,
                usable: true,
                failure: None,
                elapsed_ms: 300,
                cached: false,
            },
        )
        .unwrap();
        // Same boot: the cached "usable" is returned without probing.
        let v = probe_kvm_for_boot(&cfg, "boot-old", &dir.path().join("kvm")).unwrap();
        assert!(v.usable && v.cached);
        // New boot: probed again (no device here), and the cache now holds the new verdict.
        let v = probe_kvm_for_boot(&cfg, "boot-new", &dir.path().join("kvm")).unwrap();
        assert!(!v.usable && !v.cached);
        let stored = read_cache(&cfg.state_dir.join(CACHE_FILE)).unwrap();
        assert_eq!(stored.boot_id, "boot-new");
    }

    #[test]
    fn cache_of_another_cpu_model_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(dir.path());
        write_cache(
            &cfg.state_dir.join(CACHE_FILE),
            &KvmVerdict {
                boot_id: "b".into(),
                cpu: None,
                usable: true,
                failure: None,
                elapsed_ms: 1,
                cached: false,
            },
        )
        .unwrap();
        cfg.cpu = Some("qemu64".into());
        let v = probe_kvm_for_boot(&cfg, "b", &dir.path().join("kvm")).unwrap();
        assert!(!v.usable && !v.cached);
        assert_eq!(v.cpu.as_deref(), Some("qemu64"));
    }

    #[test]
    fn refresh_ignores_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(dir.path());
        write_cache(
            &cfg.state_dir.join(CACHE_FILE),
            &KvmVerdict {
                boot_id: "b".into(),
                cpu: None,
                usable: true,
                failure: None,
                elapsed_ms: 1,
                cached: false,
            },
        )
        .unwrap();
        cfg.refresh = true;
        let v = probe_kvm_for_boot(&cfg, "b", &dir.path().join("kvm")).unwrap();
        assert!(!v.usable && !v.cached);
    }

    #[test]
    fn forced_kvm_error_names_the_reason() {
        let err = Error::KvmUnusable {
            reason: KvmFailure::BootTimeout { secs: 10 },
        };
        assert_eq!(
            err.to_string(),
            "KVM does not work on this host: a test guest did not finish booting within 10 s"
        );
    }

    #[test]
    fn forced_tcg_does_not_probe() {
        let dir = tempfile::tempdir().unwrap();
        let d = choose_accel(AccelChoice::Tcg, &cfg(dir.path())).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.verdict.is_none());
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn cached_failure_makes_forced_kvm_fail_and_auto_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let boot_id = std::fs::read_to_string(BOOT_ID).unwrap().trim().to_string();
        write_cache(
            &cfg.state_dir.join(CACHE_FILE),
            &KvmVerdict {
                boot_id,
                cpu: None,
                usable: false,
                failure: Some(KvmFailure::BootTimeout { secs: 10 }),
                elapsed_ms: 10_000,
                cached: false,
            },
        )
        .unwrap();
        match choose_accel(AccelChoice::Kvm, &cfg) {
            Err(Error::KvmUnusable { reason }) => {
                assert_eq!(reason, KvmFailure::BootTimeout { secs: 10 })
            }
            other => panic!("expected KvmUnusable, got {other:?}"),
        }
        let d = choose_accel(AccelChoice::Auto, &cfg).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d
            .fallback_note()
            .unwrap()
            .contains("did not finish booting"));
    }
}
