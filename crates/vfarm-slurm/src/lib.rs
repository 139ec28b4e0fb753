//! The Slurm backend: batch jobs submitted, tracked and cancelled through Slurm's own
//! command-line tools (`sbatch`, `scontrol`, `scancel`), and vfarm images offered to Slurm
//! as node features.
//!
//! Why the CLI tools and not `slurmrestd`: the tools are on every Slurm submit host, speak
//! whatever protocol version the site's controller speaks, and authenticate with the site's
//! munge setup; `slurmrestd` is an extra daemon many sites do not run, needs JWT or a local
//! socket set up, and its OpenAPI schema changes between Slurm releases (v0.0.36…v0.0.39 for
//! 22.05–23.x). Every command line here is built by a pure function and every output is
//! parsed by one, both unit-tested on output captured from a real Slurm 22.05.

mod error;
mod features;
mod parse;
mod run;
mod script;
pub mod testcluster;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::{Error, Result};
pub use features::{image_feature, image_features, merge_node_features, os_feature, ImageMeta};
pub use parse::{
    job_state, parse_job, parse_nodes, parse_record, ClusterInfo, JobInfo, NodeInfo, SlurmState,
};
pub use script::{render_script, sbatch_args, sh_quote, time_limit_minutes, BatchJob};

/// A handle on one Slurm cluster, reached through its command-line tools.
#[derive(Debug, Clone)]
pub struct Slurm {
    conf: Option<PathBuf>,
    timeout: Duration,
}

impl Slurm {
    /// `conf`: the cluster's `slurm.conf`, passed to every tool as `SLURM_CONF`; `None` =
    /// the tools' own default (the `SLURM_CONF` of this process, else `/etc/slurm/slurm.conf`).
    pub fn new(conf: Option<PathBuf>) -> Self {
        Slurm {
            conf,
            timeout: Duration::from_secs(30),
        }
    }

    /// Deadline for each tool invocation (default 30 s); a slower tool is killed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn conf(&self) -> Option<&Path> {
        self.conf.as_deref()
    }

    fn run(&self, tool: &str, args: &[String], stdin: Option<&str>) -> Result<run::Output> {
        run::run(tool, args, self.conf.as_deref(), stdin, self.timeout)
    }

    /// The cluster's nodes (CPUs, memory, features, state). Fails when the controller cannot
    /// be reached.
    pub fn ping(&self) -> Result<ClusterInfo> {
        let args = ["show", "node", "-o"].map(String::from);
        let out = self.run("scontrol", &args, None)?;
        if !out.success {
            return Err(run::failure("scontrol show node", out));
        }
        Ok(ClusterInfo {
            nodes: parse_nodes(&out.stdout)?,
        })
    }

    /// Submits `job`; returns the Slurm job id. A job Slurm cannot place (unknown feature or
    /// partition, more CPUs or memory than any node has) is refused here.
    pub fn submit(&self, job: &BatchJob) -> Result<u64> {
        let args = sbatch_args(job)?;
        let script = render_script(job)?;
        let out = self.run("sbatch", &args, Some(&script))?;
        if !out.success {
            if let Some(msg) = out
                .stderr
                .lines()
                .find_map(|l| l.split_once("Batch job submission failed:"))
                .map(|(_, m)| m.trim().to_string())
            {
                return Err(Error::SubmitRefused { message: msg });
            }
            return Err(run::failure("sbatch", out));
        }
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let first = out.stdout.trim().split(';').next().unwrap_or_default();
        first.parse().map_err(|_| Error::Parse {
            tool: "sbatch".into(),
            what: "job id".into(),
            output: out.stdout.clone(),
        })
    }

    /// Everything `scontrol show job` says about job `id`.
    pub fn job(&self, id: u64) -> Result<JobInfo> {
        let args = vec!["show".into(), "job".into(), "-o".into(), id.to_string()];
        let out = self.run("scontrol", &args, None)?;
        if !out.success {
            if out.stderr.contains("Invalid job id specified") {
                return Err(Error::JobNotFound { id });
            }
            return Err(run::failure("scontrol show job", out));
        }
        parse_job(&out.stdout, id)
    }

    /// The state of job `id`. Without an accounting daemon Slurm forgets finished jobs after
    /// `MinJobAge` seconds: poll before that, or get [`Error::JobNotFound`].
    pub fn state(&self, id: u64) -> Result<SlurmState> {
        Ok(self.job(id)?.state)
    }

    /// Polls until job `id` is in a terminal state or `timeout` passes.
    pub fn wait(&self, id: u64, timeout: Duration) -> Result<JobInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.job(id)?;
            if j.state.is_terminal() {
                return Ok(j);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    tool: format!("waiting for Slurm job {id} (last state {})", j.raw_state),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Cancels job `id` in any state. Cancelling a job that already ended succeeds and
    /// changes nothing.
    pub fn cancel(&self, id: u64) -> Result<()> {
        // scancel 22.05 exits 0 and prints nothing for an unknown id: ask first.
        if self.job(id)?.state.is_terminal() {
            return Ok(());
        }
        let out = self.run("scancel", &[id.to_string()], None)?;
        if out.success {
            return Ok(());
        }
        if out.stderr.contains("already completing or completed") {
            return Ok(());
        }
        if out.stderr.contains("Invalid job id specified") {
            return Err(Error::JobNotFound { id });
        }
        Err(run::failure("scancel", out))
    }

    /// Replaces `node`'s features (available and active) with `features`.
    ///
    /// Lifetime: slurmctld keeps them across slurmd restarts and node re-registration, and
    /// across a slurmctld restart only with `-R` (state recovered); a normal slurmctld
    /// restart or `scontrol reconfigure` goes back to `Feature=` in slurm.conf. So vfarm
    /// re-applies them whenever its image set changes and at every service start (and a
    /// site that wants them fixed writes them into slurm.conf).
    pub fn set_node_features(&self, node: &str, features: &[String]) -> Result<()> {
        if node.is_empty() || node.contains(|c: char| c.is_whitespace() || c == '=') {
            return Err(Error::invalid(
                "node",
                format!("{node:?} is not a node name"),
            ));
        }
        for f in features {
            script::check_feature("features", f)?;
        }
        let list = features.join(",");
        let args = vec![
            "update".into(),
            format!("NodeName={node}"),
            format!("AvailableFeatures={list}"),
            format!("ActiveFeatures={list}"),
        ];
        let out = self.run("scontrol", &args, None)?;
        if out.success {
            return Ok(());
        }
        if out.stderr.contains("Invalid node name") {
            return Err(Error::NodeNotFound { node: node.into() });
        }
        Err(run::failure("scontrol update", out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_named() {
        let e = run::run(
            "vfarm-no-such-slurm-tool",
            &[],
            None,
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(e.code().as_str(), "slurm_tool_missing");
        assert!(e.to_string().contains("vfarm-no-such-slurm-tool"), "{e}");
    }

    #[test]
    fn slow_tool_is_killed() {
        let e = run::run(
            "sleep",
            &["30".to_string()],
            None,
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.code().as_str(), "slurm_timeout");
    }

    #[test]
    fn bad_job_never_runs_sbatch() {
        // Validation comes before any tool runs: the config named here does not exist.
        let s = Slurm::new(Some("/nonexistent/slurm.conf".into()));
        let j = BatchJob::new("x", "relative", vec!["true".into()]);
        assert_eq!(s.submit(&j).unwrap_err().code().as_str(), "invalid_job");
    }
}
