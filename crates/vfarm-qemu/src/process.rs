//! Starting a detached QEMU and finding it again through its pidfile.
//!
//! QEMU runs with `-daemonize`: it forks, the parent exits once the VM is set up (or reports a
//! start-up error on stderr and a non-zero status), and the VM process belongs to init, so it
//! outlives the service that started it. From then on the pidfile is the only handle; it is
//! checked against `/proc/<pid>/cmdline` so a recycled pid is never signalled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tools::tail;
use crate::wire::Deadline;

/// A daemonized QEMU, known by its pidfile (serializable, for the driver's runtime record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuProcess {
    pub pid: i32,
    pub pidfile: PathBuf,
}

/// Starts `qemu` with `args` (which must contain `-daemonize` and `-pidfile PIDFILE`) and
/// returns once QEMU has daemonized.
pub fn spawn_daemonized(qemu: &Path, args: &[String], pidfile: &Path) -> Result<QemuProcess> {
    if !args.iter().any(|a| a == "-daemonize") {
        return Err(Error::InvalidConfig {
            reason: "spawn_daemonized needs -daemonize in the arguments".into(),
        });
    }
    let output = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: qemu.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            program: qemu.display().to_string(),
            status: output.status,
            stderr: tail(&output.stderr, 2000),
        });
    }
    QemuProcess::from_pidfile(pidfile)?.ok_or_else(|| Error::Protocol {
        what: "QEMU",
        detail: format!("daemonized but no live process in {}", pidfile.display()),
    })
}

impl QemuProcess {
    /// The QEMU recorded in `pidfile`, if that process still runs and is the QEMU that wrote it.
    /// This is how a restarted service re-attaches.
    pub fn from_pidfile(pidfile: &Path) -> Result<Option<QemuProcess>> {
        let text = match std::fs::read_to_string(pidfile) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read the pidfile", pidfile, e)),
        };
        let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0) else {
            return Ok(None);
        };
        let p = QemuProcess {
            pid,
            pidfile: pidfile.to_path_buf(),
        };
        Ok(p.is_alive().then_some(p))
    }

    /// Whether the process runs and its command line names this pidfile (so it is our QEMU
    /// and not a process that reused the pid).
    pub fn is_alive(&self) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // A zombie has exited already; its cmdline is empty anyway, but be explicit.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if state == Some("Z") {
            return false;
        }
        let want = self.pidfile.as_os_str().as_encoded_bytes();
        cmdline.split(|&b| b == 0).any(|arg| arg == want)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        // Pid 0 or a negative one would signal a whole process group.
        let pid = Pid::from_raw(self.pid)
            .filter(|_| self.pid > 0)
            .ok_or_else(|| Error::Signal {
                pid: self.pid,
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
        match kill_process(pid, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::Signal {
                pid: self.pid,
                source: e.into(),
            }),
        }
    }

    /// Waits until the process is gone, for at most `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> Result<()> {
        let deadline = Deadline::after(timeout);
        while self.is_alive() {
            if deadline.expired() {
                return Err(Error::Timeout {
                    what: format!("QEMU (pid {}) to exit", self.pid),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM (QEMU exits cleanly, as on `quit`), then SIGKILL if it is still there after
    /// `grace`. Removes the pidfile.
    pub fn terminate(&self, grace: Duration) -> Result<()> {
        if self.is_alive() {
            self.signal(Signal::TERM)?;
            if self.wait_gone(grace).is_err() {
                self.kill()?;
            }
        }
        self.remove_pidfile()
    }

    /// SIGKILL and wait (bounded) for the process to disappear; removes the pidfile.
    pub fn kill(&self) -> Result<()> {
        if self.is_alive() {
            self.signal(Signal::KILL)?;
            self.wait_gone(Duration::from_secs(5))?;
        }
        self.remove_pidfile()
    }

    /// QEMU removes its pidfile on a clean exit but not when killed.
    pub fn remove_pidfile(&self) -> Result<()> {
        match std::fs::remove_file(&self.pidfile) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove the pidfile", &self.pidfile, e)),
        }
    }
}

/// Kills the QEMU of a pidfile when dropped, unless disarmed: for tests and for start-up paths
/// that must not leave a VM behind when a later step fails.
#[derive(Debug)]
pub struct KillOnDrop {
    pidfile: Option<PathBuf>,
}

impl KillOnDrop {
    pub fn new(pidfile: &Path) -> KillOnDrop {
        KillOnDrop {
            pidfile: Some(pidfile.to_path_buf()),
        }
    }

    /// Keep the VM running after all.
    pub fn disarm(mut self) {
        self.pidfile = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pidfile) = self.pidfile.take() {
            if let Ok(Some(p)) = QemuProcess::from_pidfile(&pidfile) {
                if let Err(e) = p.kill() {
                    tracing::warn!(pid = p.pid, error = %e, "could not kill QEMU");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_of_a_foreign_process_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        // Our own pid: alive, but its command line does not name the pidfile.
        std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(QemuProcess::from_pidfile(&pidfile).unwrap(), None);
    }

    #[test]
    fn missing_or_garbled_pidfile_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        assert_eq!(QemuProcess::from_pidfile(&pidfile).unwrap(), None);
        std::fs::write(&pidfile, "not a pid").unwrap();
        assert_eq!(QemuProcess::from_pidfile(&pidfile).unwrap(), None);
    }

    #[test]
    fn process_naming_the_pidfile_is_found_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        // A stand-in whose command line names the pidfile, like QEMU's does. (The `; exit`
        // keeps the shell from exec'ing sleep, which would drop the pidfile argument.)
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "sh"])
            .arg(&pidfile)
            .spawn()
            .unwrap();
        // QEMU writes its pidfile once it runs. spawn() may return while the child is still
        // inside execve, with an empty /proc/<pid>/cmdline, so wait for the exec to finish
        // before writing the stand-in's pidfile.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        for _ in 0..500 {
            if std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        let guard = KillOnDrop::new(&pidfile);
        let p = QemuProcess::from_pidfile(&pidfile)
            .unwrap()
            .expect("the stand-in runs and names the pidfile");
        assert_eq!(p.pid as u32, child.id());
        // The child is ours, so reap it from another thread while the guard kills it; until it
        // is reaped it shows as a zombie, which is_alive treats as gone.
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        drop(guard);
        let status = reaper.join().unwrap();
        assert!(!status.success());
        assert!(!pidfile.exists());
    }
}
