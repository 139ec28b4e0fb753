//! vfarm batch jobs, the pure domain: no files, processes, sockets or clocks.
//!
//! * [`state`]: job states, end reasons and the one function [`state::next`] that decides
//!   every transition.
//! * [`queue`]: named queues with defaults and limits, routing queues that map OS
//!   requirements to target queues, loaded from TOML (an embedded default works without a
//!   file), and the submit-time check that refuses a job nothing can ever run.
//! * [`sched`]: capacity accounting (CPUs, memory, instance slots per driver) and the
//!   scheduler [`sched::pick`]: priority first, then per-owner fair share with a decaying
//!   usage history.
//!
//! Time enters only as numbers the caller passes in (milliseconds since the epoch), so every
//! decision is reproducible in a unit test.

pub mod queue;
pub mod sched;
pub mod state;

pub use queue::{Ask, Backend, ExecQueue, Queue, QueueConfig, Refusal, Route};
pub use sched::{pick, usage_by_owner, Active, Candidate, Capacity, FairShare, Pick, UsageRecord};
pub use state::{next, EndReason, JobEvent, JobState, TransitionError};

use serde::{Deserialize, Serialize};

/// One file to stage: `src` is read, `dst` is written.
///
/// Stage-in: `src` is a host path or a `file://`/`http(s)://` URI, `dst` a path in the
/// instance. Stage-out: `src` is a path in the instance, `dst` a host path, a
/// `file://`/`http(s)://` URI, or a relative name (kept in the job's output directory).
/// Relative instance paths are relative to the job's working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub src: String,
    pub dst: String,
}

/// Everything needed to run a job, fixed at submit (routing already resolved to one image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: Option<String>,
    pub owner: String,
    /// The execution queue the job ended up in (after routing).
    pub queue: String,
    /// Image id the job runs in.
    pub image: String,
    /// What the user asked for, kept for display: an image reference or OS requirements.
    pub requested_image: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    /// `oci` or `qemu` (an `any` request is resolved at submit).
    pub driver: String,
    pub backend: Backend,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub walltime_secs: u64,
    pub priority: i32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory in the instance (created if missing); default [`DEFAULT_WORKDIR`].
    pub workdir: Option<String>,
    /// JSDL Input/Output/Error: files in the instance (relative to the working directory)
    /// the command's standard streams are redirected to.
    pub stdin: Option<String>,
    pub stdout_file: Option<String>,
    pub stderr_file: Option<String>,
    pub stage_in: Vec<Stage>,
    pub stage_out: Vec<Stage>,
    pub keep_on_failure: bool,
    /// How long a kept failure instance stays (the queue's `keep_for`).
    #[serde(default)]
    pub keep_for_secs: Option<u64>,
}

/// Where a job's command runs when the job names no working directory.
pub const DEFAULT_WORKDIR: &str = "/tmp/job";

impl JobSpec {
    pub fn workdir(&self) -> &str {
        self.workdir.as_deref().unwrap_or(DEFAULT_WORKDIR)
    }

    /// An instance path made absolute against the working directory.
    pub fn in_instance(&self, p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{}", self.workdir().trim_end_matches('/'), p)
        }
    }
}

/// A staging location as a JSDL URI: URIs stay, a host path becomes `file://`, a relative
/// name (kept in the job's output directory) stays a relative URI reference.
fn staging_uri(s: &str) -> String {
    if s.starts_with('/') {
        format!("file://{s}")
    } else {
        s.to_string()
    }
}

impl JobSpec {
    /// The job as a JSDL 1.0 document (`vfarm job show ID --jsdl`): POSIXApplication for the
    /// command, Resources for CPUs, memory, OS and architecture, DataStaging for the stages,
    /// and the vfarm extension naming the image and driver it was routed to.
    pub fn to_jsdl(&self) -> vfarm_jsdl::JobDefinition {
        use vfarm_jsdl::*;
        let file = |v: &str| FileRef::new(v);
        let posix = PosixApplication {
            executable: self.argv.first().map(|a| file(a)),
            arguments: self.argv.iter().skip(1).map(|a| file(a)).collect(),
            input: self.stdin.as_deref().map(file),
            output: self.stdout_file.as_deref().map(file),
            error: self.stderr_file.as_deref().map(file),
            working_directory: self.workdir.as_deref().map(file),
            environment: self
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                    filesystem_name: None,
                })
                .collect(),
            wall_time_limit: (self.walltime_secs > 0).then_some(self.walltime_secs),
            ..PosixApplication::default()
        };
        let os = self.os.as_deref().and_then(|o| {
            OperatingSystemName::from_xml(o)
                .or_else(|| OperatingSystemName::suggest(o).and_then(OperatingSystemName::from_xml))
        });
        let resources = Resources {
            operating_system: (os.is_some() || self.os_version.is_some()).then(|| {
                OperatingSystem {
                    name: os,
                    version: self.os_version.clone(),
                    ..OperatingSystem::default()
                }
            }),
            cpu_architecture: self.arch.as_deref().and_then(CpuArchitectureName::from_xml),
            total_cpu_count: (self.cpus_milli > 0)
                .then(|| RangeValue::exact(self.cpus_milli as f64 / 1000.0)),
            total_physical_memory: (self.memory_mib > 0)
                .then(|| RangeValue::exact((self.memory_mib << 20) as f64)),
            vfarm: VfarmExtension {
                image: Some(self.image.clone()),
                driver: Driver::from_xml(&self.driver),
            },
            ..Resources::default()
        };
        let stage = |file_name: &str, uri: String, inbound: bool| DataStaging {
            file_name: file_name.to_string(),
            creation_flag: Some(CreationFlag::Overwrite),
            delete_on_termination: Some(true),
            source: inbound.then(|| StagingLocation {
                uri: Some(uri.clone()),
                extensions: Vec::new(),
            }),
            target: (!inbound).then(|| StagingLocation {
                uri: Some(uri),
                extensions: Vec::new(),
            }),
            ..DataStaging::default()
        };
        let data_staging = self
            .stage_in
            .iter()
            .map(|s| stage(&s.dst, staging_uri(&s.src), true))
            .chain(
                self.stage_out
                    .iter()
                    .map(|s| stage(&s.src, staging_uri(&s.dst), false)),
            )
            .collect();
        JobDefinition {
            description: JobDescription {
                identification: self.name.as_ref().map(|n| JobIdentification {
                    job_name: Some(n.clone()),
                    ..JobIdentification::default()
                }),
                application: Some(Application {
                    body: Some(ApplicationBody::Posix(posix)),
                    ..Application::default()
                }),
                resources: Some(resources),
                data_staging,
                ..JobDescription::default()
            },
            ..JobDefinition::default()
        }
    }
}

/// Milli-CPUs from a CPU count such as `0.5` or `2`.
pub fn cpus_to_milli(cpus: f64) -> Option<u64> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
        return None;
    }
    Some(((cpus * 1000.0).round() as u64).max(1))
}

/// `1500` → `"1.5"`.
pub fn milli_to_cpus(m: u64) -> String {
    if m.is_multiple_of(1000) {
        format!("{}", m / 1000)
    } else {
        let s = format!("{}.{:03}", m / 1000, m % 1000);
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_units_round_trip() {
        assert_eq!(cpus_to_milli(0.5), Some(500));
        assert_eq!(cpus_to_milli(2.0), Some(2000));
        assert_eq!(cpus_to_milli(0.0), None);
        assert_eq!(cpus_to_milli(f64::NAN), None);
        assert_eq!(milli_to_cpus(1500), "1.5");
        assert_eq!(milli_to_cpus(2000), "2");
        assert_eq!(milli_to_cpus(250), "0.25");
    }
}
