//! A private one-node Slurm cluster for tests, started and stopped by
//! `scripts/slurm-cluster.sh` (munged + slurmctld + slurmd, all state in a temporary
//! directory, free ports). Several can run at once. Dropping the handle stops the daemons;
//! a test process killed with SIGKILL leaves them running (stop them with
//! `scripts/slurm-cluster.sh stop DIR`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::Slurm;

/// The cluster script in this source tree.
pub fn script_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/slurm-cluster.sh"
    ))
}

pub struct TestCluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    stopped: bool,
}

impl TestCluster {
    /// Starts a cluster and waits until its node is idle. Fails naming a missing binary
    /// (slurmctld, slurmd, munged…) when Slurm is not installed.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vfarm-slurm-")
            .tempdir()
            .map_err(|e| Error::Io {
                what: "creating the test cluster directory".into(),
                source: e,
            })?;
        let out = Command::new("bash")
            .arg(script_path())
            .arg("start")
            .arg(dir.path())
            .output()
            .map_err(|e| Error::Io {
                what: format!("running {}", script_path().display()),
                source: e,
            })?;
        let conf = dir.path().join("etc/slurm.conf");
        if !out.status.success() {
            let mut c = TestCluster {
                dir,
                conf,
                stopped: false,
            };
            let _ = c.stop();
            return Err(Error::ClusterStart {
                dir: c.dir.path().to_path_buf(),
                message: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                ),
            });
        }
        Ok(TestCluster {
            dir,
            conf,
            stopped: false,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's slurm.conf (what `SLURM_CONF` must name).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn slurm(&self) -> Slurm {
        Slurm::new(Some(self.conf.clone()))
    }

    /// Restarts slurmd alone and waits until it has registered again.
    pub fn restart_slurmd(&self) -> Result<()> {
        self.script("restart-slurmd")
    }

    fn script(&self, verb: &str) -> Result<()> {
        let out = Command::new("bash")
            .arg(script_path())
            .arg(verb)
            .arg(self.dir.path())
            .output()
            .map_err(|e| Error::Io {
                what: format!("running {}", script_path().display()),
                source: e,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::CommandFailed {
                tool: format!("slurm-cluster.sh {verb}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Stops every daemon (jobs are killed first).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.script("stop")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
