//! Parsers for `scontrol show job -o` and `scontrol show node -o` (one record per line of
//! `Key=Value` words). Values may contain spaces (`Command=`, `OS=`, `Reason=`): a word with
//! no `=` continues the previous value. A key seen twice keeps its first value, so a command
//! argument such as `JobState=X` late in the line cannot override the real field.

use crate::error::{Error, Result};

/// A job's state as vfarm needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmState {
    /// Waiting; `reason` is Slurm's (`Priority`, `Resources`, `None`, …).
    Pending {
        reason: String,
    },
    /// Running (or completing) on `node`.
    Running {
        node: String,
    },
    /// Finished with exit status 0.
    Completed {
        exit_code: i32,
    },
    /// Finished otherwise: non-zero exit, killed by `signal`, launch failure, out of memory…
    Failed {
        exit_code: i32,
        signal: i32,
        reason: String,
    },
    Cancelled,
    /// Killed at its wall-time limit.
    Timeout,
    /// The node died under the job.
    NodeFail,
    /// Any other Slurm state (SUSPENDED, PREEMPTED, REQUEUED…), verbatim.
    Other(String),
}

impl SlurmState {
    /// Pending for a reason that no amount of waiting fixes (a limit or constraint the
    /// cluster can never meet, a dependency that can never be satisfied, an admin hold):
    /// the caller should cancel the job and report the reason instead of waiting forever.
    pub fn is_stuck(&self) -> bool {
        match self {
            SlurmState::Pending { reason } => matches!(
                reason.as_str(),
                "BadConstraints"
                    | "PartitionConfig"
                    | "PartitionNodeLimit"
                    | "PartitionTimeLimit"
                    | "PartitionDown"
                    | "PartitionInactive"
                    | "InvalidAccount"
                    | "InvalidQOS"
                    | "DependencyNeverSatisfied"
                    | "JobHeldAdmin"
            ),
            _ => false,
        }
    }

    /// The job will not change state any more.
    pub fn is_terminal(&self) -> bool {
        match self {
            SlurmState::Pending { .. } | SlurmState::Running { .. } => false,
            SlurmState::Other(s) => !matches!(
                s.as_str(),
                "SUSPENDED"
                    | "REQUEUED"
                    | "REQUEUE_FED"
                    | "REQUEUE_HOLD"
                    | "RESIZING"
                    | "SIGNALING"
                    | "STAGE_OUT"
                    | "STOPPED"
                    | "RESV_DEL_HOLD"
                    | "SPECIAL_EXIT"
            ),
            _ => true,
        }
    }
}

/// One job as `scontrol show job -o` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub id: u64,
    pub name: String,
    pub state: SlurmState,
    /// The raw `JobState` word.
    pub raw_state: String,
    pub reason: String,
    pub exit_code: i32,
    pub signal: i32,
    /// `BatchHost`, else `NodeList`, when allocated.
    pub node: Option<String>,
    /// Times as Slurm prints them (local time, `YYYY-MM-DDTHH:MM:SS`); `None` when `Unknown`.
    pub submit_time: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// One node as `scontrol show node -o` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Features the node offers (`AvailableFeatures`), in Slurm's order.
    pub features: Vec<String>,
    /// Features currently active (`ActiveFeatures`).
    pub active_features: Vec<String>,
    /// Slurm's state, lower case, with flags (`idle`, `mixed`, `idle+drain`, `down*`…).
    pub state: String,
    /// Why the node is drained/down, if Slurm says.
    pub reason: Option<String>,
    pub partitions: Vec<String>,
}

impl NodeInfo {
    /// Base state accepts jobs (idle, mixed, allocated, completing) and no drain/down flag.
    pub fn is_usable(&self) -> bool {
        let s = self
            .state
            .trim_end_matches(['*', '~', '#', '!', '%', '$', '@', '^', '-']);
        let mut parts = s.split('+');
        let base = parts.next().unwrap_or("");
        matches!(base, "idle" | "mixed" | "allocated" | "completing")
            && !parts.any(|f| matches!(f, "drain" | "draining" | "drained" | "down" | "fail"))
    }
}

/// The nodes of a cluster, as [`crate::Slurm::ping`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub nodes: Vec<NodeInfo>,
}

impl ClusterInfo {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Whether some node of the cluster could ever run `job` (its CPUs, memory, features and
    /// partition), whatever that node's current state. Lets a caller refuse at submit what
    /// Slurm would otherwise leave pending forever on a cluster without
    /// `EnforcePartLimits`. The error names the requirement no node meets.
    pub fn check_fits(&self, job: &crate::BatchJob) -> Result<()> {
        let mut cands: Vec<&NodeInfo> = self.nodes.iter().collect();
        let mut narrow = |field: &str, why: String, keep: &dyn Fn(&NodeInfo) -> bool| {
            cands.retain(|n| keep(n));
            if cands.is_empty() {
                Err(Error::Unsatisfiable {
                    field: field.into(),
                    reason: why,
                })
            } else {
                Ok(())
            }
        };
        if let Some(p) = &job.partition {
            narrow(
                "partition",
                format!("no node is in partition {p:?}"),
                &|n| n.partitions.iter().any(|q| q == p),
            )?;
        }
        narrow("cpus", format!("no node has {} CPUs", job.cpus), &|n| {
            n.cpus >= job.cpus
        })?;
        if let Some(m) = job.memory_mib {
            narrow(
                "memory_mib",
                format!("no node has {m} MiB of memory"),
                &|n| n.memory_mib >= m,
            )?;
        }
        for f in &job.features {
            narrow(
                "features",
                format!("no node (with the resources asked) offers feature {f:?}"),
                &|n| n.features.contains(f),
            )?;
        }
        Ok(())
    }
}

fn is_key(k: &str) -> bool {
    // Keys are like `JobId`, `CPUs/Task`, `ReqB:S:C:T`, `AllocNode:Sid`.
    !k.is_empty()
        && k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/'))
}

/// Splits one `-o` record into (key, value) pairs in order.
pub fn parse_record(line: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for word in line.split(' ') {
        if word.is_empty() {
            continue;
        }
        match word.split_once('=') {
            Some((k, v)) if is_key(k) => out.push((k.to_string(), v.to_string())),
            _ => {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(word);
                }
            }
        }
    }
    out
}

struct Record(Vec<(String, String)>);

impl Record {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    /// `None` for Slurm's placeholders of "nothing".
    fn value(&self, k: &str) -> Option<String> {
        self.get(k)
            .map(str::trim)
            .filter(|v| !v.is_empty() && !matches!(*v, "(null)" | "Unknown" | "None" | "N/A"))
            .map(str::to_string)
    }
}

fn parse_err(tool: &str, what: &str, output: &str) -> Error {
    Error::Parse {
        tool: tool.into(),
        what: what.into(),
        output: output.chars().take(400).collect(),
    }
}

/// `ExitCode=3:0` → (3, 0); `0:9` → (0, 9).
fn parse_exit(s: &str) -> Option<(i32, i32)> {
    let (e, sig) = s.split_once(':')?;
    Some((e.parse().ok()?, sig.parse().ok()?))
}

/// Maps Slurm's `JobState` (plus reason, exit code, node) to a [`SlurmState`].
pub fn job_state(
    raw: &str,
    reason: &str,
    exit_code: i32,
    signal: i32,
    node: Option<&str>,
) -> SlurmState {
    let node = node.unwrap_or("").to_string();
    match raw {
        "PENDING" => SlurmState::Pending {
            reason: reason.to_string(),
        },
        "RUNNING" | "CONFIGURING" | "COMPLETING" => SlurmState::Running { node },
        "COMPLETED" if exit_code == 0 && signal == 0 => SlurmState::Completed { exit_code },
        // COMPLETED with a non-zero code should not happen; never report it as success.
        "COMPLETED" | "FAILED" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" => {
            let reason = if raw == "FAILED" || raw == "COMPLETED" {
                reason.to_string()
            } else {
                raw.to_string()
            };
            SlurmState::Failed {
                exit_code,
                signal,
                reason,
            }
        }
        "CANCELLED" => SlurmState::Cancelled,
        "TIMEOUT" => SlurmState::Timeout,
        "NODE_FAIL" => SlurmState::NodeFail,
        other => SlurmState::Other(other.to_string()),
    }
}

/// Parses `scontrol show job -o ID` output and returns the record of job `id`.
pub fn parse_job(output: &str, id: u64) -> Result<JobInfo> {
    const TOOL: &str = "scontrol show job";
    for line in output.lines() {
        let r = Record(parse_record(line));
        let Some(jid) = r.get("JobId") else { continue };
        if jid.parse::<u64>().ok() != Some(id) {
            continue;
        }
        let raw_state = r
            .value("JobState")
            .ok_or_else(|| parse_err(TOOL, "JobState missing", line))?;
        // `CANCELLED by 0` in some versions: the first word is the state.
        let raw_state = raw_state
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let (exit_code, signal) = r
            .get("ExitCode")
            .and_then(parse_exit)
            .ok_or_else(|| parse_err(TOOL, "ExitCode is not CODE:SIGNAL", line))?;
        let reason = r.get("Reason").unwrap_or("None").to_string();
        let node = r.value("BatchHost").or_else(|| r.value("NodeList"));
        let state = job_state(&raw_state, &reason, exit_code, signal, node.as_deref());
        return Ok(JobInfo {
            id,
            name: r.get("JobName").unwrap_or_default().to_string(),
            state,
            raw_state,
            reason,
            exit_code,
            signal,
            node,
            submit_time: r.value("SubmitTime"),
            start_time: r.value("StartTime"),
            end_time: r.value("EndTime"),
            stdout: r.value("StdOut"),
            stderr: r.value("StdErr"),
        });
    }
    Err(Error::JobNotFound { id })
}

fn feature_list(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Parses `scontrol show node -o` output (every node, one per line).
pub fn parse_nodes(output: &str) -> Result<Vec<NodeInfo>> {
    const TOOL: &str = "scontrol show node";
    let mut nodes = Vec::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let r = Record(parse_record(line));
        let name = r
            .value("NodeName")
            .ok_or_else(|| parse_err(TOOL, "NodeName missing", line))?;
        let cpus = r
            .get("CPUTot")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| parse_err(TOOL, "CPUTot is not a number", line))?;
        let memory_mib = r
            .get("RealMemory")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| parse_err(TOOL, "RealMemory is not a number", line))?;
        nodes.push(NodeInfo {
            name,
            cpus,
            memory_mib,
            features: feature_list(r.value("AvailableFeatures")),
            active_features: feature_list(r.value("ActiveFeatures")),
            state: r.get("State").unwrap_or("unknown").trim().to_lowercase(),
            reason: r.value("Reason"),
            partitions: feature_list(r.value("Partitions")),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");
        std::fs::read_to_string(format!("{p}{name}")).unwrap()
    }

    #[test]
    fn record_keeps_spaces_and_first_value() {
        let r =
            parse_record("JobId=1 JobState=RUNNING Command=/bin/x a b JobState=EVIL WorkDir=/w");
        assert_eq!(r[0], ("JobId".into(), "1".into()));
        assert_eq!(r[2], ("Command".into(), "/bin/x a b".into()));
        let rec = Record(r);
        assert_eq!(rec.get("JobState"), Some("RUNNING"));
        assert_eq!(rec.get("WorkDir"), Some("/w"));
    }

    #[test]
    fn pending() {
        let j = parse_job(&fixture("job-pending.txt"), 1).unwrap();
        assert_eq!(
            j.state,
            SlurmState::Pending {
                reason: "None".into()
            }
        );
        assert_eq!(j.name, "t1");
        assert_eq!(j.node, None);
        assert_eq!(j.start_time, None);
        assert_eq!(j.stdout.as_deref(), Some("/tmp/sc1/w/out"));
        let j = parse_job(&fixture("job-pending-priority.txt"), 6).unwrap();
        assert_eq!(
            j.state,
            SlurmState::Pending {
                reason: "Priority".into()
            }
        );
        assert!(!j.state.is_terminal());
        assert!(!j.state.is_stuck());
        let stuck = SlurmState::Pending {
            reason: "PartitionConfig".into(),
        };
        assert!(stuck.is_stuck());
    }

    #[test]
    fn running() {
        let j = parse_job(&fixture("job-running.txt"), 2).unwrap();
        assert_eq!(j.state, SlurmState::Running { node: "vm".into() });
        assert_eq!(j.start_time.as_deref(), Some("2026-11-22T01:41:18"));
        assert_eq!(j.end_time, None);
    }

    #[test]
    fn failed_with_exit_code() {
        let j = parse_job(&fixture("job-failed-exit3.txt"), 1).unwrap();
        assert_eq!(
            j.state,
            SlurmState::Failed {
                exit_code: 3,
                signal: 0,
                reason: "NonZeroExitCode".into()
            }
        );
        assert!(j.state.is_terminal());
        assert_eq!(j.end_time.as_deref(), Some("2026-11-22T01:41:15"));
    }

    #[test]
    fn failed_by_signal() {
        let j = parse_job(&fixture("job-failed-signal9.txt"), 3).unwrap();
        assert_eq!(
            j.state,
            SlurmState::Failed {
                exit_code: 0,
                signal: 9,
                reason: "JobLaunchFailure".into()
            }
        );
    }

    #[test]
    fn cancelled() {
        let j = parse_job(&fixture("job-cancelled.txt"), 2).unwrap();
        assert_eq!(j.state, SlurmState::Cancelled);
        assert_eq!(j.signal, 15);
    }

    #[test]
    fn timeout_fixture() {
        let j = parse_job(&fixture("job-timeout.txt"), 4).unwrap();
        assert_eq!(j.state, SlurmState::Timeout);
    }

    #[test]
    fn other_id_or_garbage() {
        assert!(matches!(
            parse_job(&fixture("job-running.txt"), 3),
            Err(Error::JobNotFound { id: 3 })
        ));
        let e = parse_job("JobId=5 JobName=x ExitCode=0:0", 5).unwrap_err();
        assert_eq!(e.code().as_str(), "slurm_parse");
        let e = parse_job("JobId=5 JobState=RUNNING ExitCode=zero", 5).unwrap_err();
        assert_eq!(e.code().as_str(), "slurm_parse");
    }

    #[test]
    fn state_mapping() {
        assert_eq!(
            job_state("COMPLETED", "None", 0, 0, Some("n1")),
            SlurmState::Completed { exit_code: 0 }
        );
        assert!(matches!(
            job_state("OUT_OF_MEMORY", "None", 0, 9, None),
            SlurmState::Failed { reason, .. } if reason == "OUT_OF_MEMORY"
        ));
        assert_eq!(job_state("NODE_FAIL", "", 0, 0, None), SlurmState::NodeFail);
        assert_eq!(
            job_state("COMPLETING", "", 0, 0, Some("n1")),
            SlurmState::Running { node: "n1".into() }
        );
        assert_eq!(
            job_state("SUSPENDED", "", 0, 0, None),
            SlurmState::Other("SUSPENDED".into())
        );
        assert!(!SlurmState::Other("SUSPENDED".into()).is_terminal());
        assert!(SlurmState::Other("PREEMPTED".into()).is_terminal());
    }

    #[test]
    fn node() {
        let n = parse_nodes(&fixture("node.txt")).unwrap();
        assert_eq!(n.len(), 1);
        let n = &n[0];
        assert_eq!(n.name, "vm");
        assert_eq!(n.cpus, 2);
        assert_eq!(n.memory_mib, 24105);
        assert_eq!(n.features, vec!["vfarm-os-debian-12-x86_64", "foo"]);
        assert_eq!(n.active_features, n.features);
        assert_eq!(n.state, "idle");
        assert_eq!(n.partitions, vec!["vfarm"]);
        assert!(n.is_usable());
    }

    #[test]
    fn fits() {
        let c = ClusterInfo {
            nodes: parse_nodes(&fixture("node.txt")).unwrap(),
        };
        let mut j = crate::BatchJob::new("x", "/w", vec!["true".into()]);
        j.cpus = 2;
        j.memory_mib = Some(1024);
        j.features = vec!["foo".into()];
        c.check_fits(&j).unwrap();
        let field = |j: &crate::BatchJob| match c.check_fits(j).unwrap_err() {
            Error::Unsatisfiable { field, .. } => field,
            e => panic!("{e:?}"),
        };
        let mut k = j.clone();
        k.cpus = 3;
        assert_eq!(field(&k), "cpus");
        let mut k = j.clone();
        k.memory_mib = Some(1 << 30);
        assert_eq!(field(&k), "memory_mib");
        let mut k = j.clone();
        k.features.push("vfarm-os-nosuch-1-x86_64".into());
        assert_eq!(field(&k), "features");
        let mut k = j.clone();
        k.partition = Some("gpu".into());
        assert_eq!(field(&k), "partition");
        assert_eq!(
            c.check_fits(&k).unwrap_err().code().as_str(),
            "slurm_unsatisfiable"
        );
    }

    #[test]
    fn node_states() {
        let mk = |s: &str| NodeInfo {
            name: "n".into(),
            cpus: 1,
            memory_mib: 1,
            features: vec![],
            active_features: vec![],
            state: s.into(),
            reason: None,
            partitions: vec![],
        };
        assert!(mk("mixed").is_usable());
        assert!(!mk("idle+drain").is_usable());
        assert!(!mk("down*").is_usable());
        assert!(!mk("unknown").is_usable());
    }
}
