//! Queue configuration: named execution queues with defaults and limits, routing queues that
//! send a job to the queue whose environments match its OS requirements (the "SLC3/SLC4
//! routing queue" of the batch-virtualisation papers), host capacity and fair-share settings.
//!
//! The file is TOML (`<data>/jobs.toml`); without one, [`QueueConfig::embedded`] applies:
//! one execution queue `batch` (1 CPU, 512 MiB, 1 h by default) and a routing queue `route`
//! that sends Linux jobs to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vfarm_core::instance::parse_duration;

use crate::sched::{Capacity, FairShare};

/// Where a job runs: vfarm's own dispatcher on this host, or a Slurm cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Slurm,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Slurm => "slurm",
        }
    }
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "local" => Some(Backend::Local),
            "slurm" => Some(Backend::Slurm),
            _ => None,
        }
    }
}

/// The embedded default configuration.
pub const EMBEDDED: &str = r#"
default_queue = "batch"

[fair_share]
window = "1d"
half_life = "1h"

[queues.batch]
cpus = 1
memory = "512M"
walltime = "1h"
max_walltime = "7d"

[queues.route]
routes = [{ os = "LINUX", queue = "batch" }]
"#;

/// Why a job (or a configuration) is refused. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("queue `{name}` does not exist (queues: {known})")]
    UnknownQueue { name: String, known: String },
    #[error("routing queue `{queue}` has no route for os={os} os-version={version} arch={arch}")]
    NoRoute {
        queue: String,
        os: String,
        version: String,
        arch: String,
    },
    #[error("routing queue `{queue}` routes in a loop")]
    RouteLoop { queue: String },
    #[error("{field} {asked} exceeds {limit} allowed by {by}; no host can run this job")]
    TooBig {
        field: &'static str,
        asked: String,
        limit: String,
        by: String,
    },
    #[error("no image matches os={os} os-version={version} arch={arch} (images: {known})")]
    NoImage {
        os: String,
        version: String,
        arch: String,
        known: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("jobs config {field}: {reason}")]
    Config { field: String, reason: String },
}

impl Refusal {
    /// Stable error code.
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            Refusal::UnknownQueue { .. } => vfarm_proto::ErrorCode::UnknownQueue,
            Refusal::NoRoute { .. } | Refusal::RouteLoop { .. } => vfarm_proto::ErrorCode::NoRoute,
            Refusal::TooBig { .. } => vfarm_proto::ErrorCode::Unsatisfiable,
            Refusal::NoImage { .. } => vfarm_proto::ErrorCode::NoMatchingImage,
            Refusal::Invalid { .. } => vfarm_proto::ErrorCode::InvalidRequest,
            Refusal::Config { .. } => vfarm_proto::ErrorCode::InvalidConfig,
        }
    }

    /// The request field at fault.
    pub fn field(&self) -> &str {
        match self {
            Refusal::UnknownQueue { .. } | Refusal::NoRoute { .. } | Refusal::RouteLoop { .. } => {
                "queue"
            }
            Refusal::TooBig { field, .. } | Refusal::Invalid { field, .. } => field,
            Refusal::NoImage { .. } => "os",
            Refusal::Config { field, .. } => field,
        }
    }
}

/// An execution queue: defaults for what a job does not say, and limits it must respect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecQueue {
    pub name: String,
    pub priority: i32,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub walltime_secs: u64,
    pub max_cpus_milli: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_walltime_secs: Option<u64>,
    /// At most this many of the queue's jobs run at once.
    pub max_running: Option<u32>,
    /// The environment a job gets when it names neither image nor OS.
    pub image: Option<String>,
    pub driver: Option<String>,
    pub backend: Backend,
    pub keep_on_failure: bool,
    /// How long a kept failure instance stays before the reaper removes it.
    pub keep_for_secs: u64,
}

/// One route of a routing queue: requirements it accepts → target queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    pub queue: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Queue {
    Exec(ExecQueue),
    Routing { name: String, routes: Vec<Route> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueConfig {
    pub default_queue: String,
    pub queues: BTreeMap<String, Queue>,
    /// Host capacity from the file; `None` fields are measured by the caller.
    pub capacity: CapacityConfig,
    pub fair_share: FairShare,
    /// Where `backend = "slurm"` jobs go.
    pub slurm: SlurmConfig,
}

/// The Slurm cluster of the `slurm` backend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// The cluster's `slurm.conf` (else the tools' default: `$SLURM_CONF`, /etc/slurm).
    pub conf: Option<String>,
    pub partition: Option<String>,
    /// Extra wall time Slurm grants beyond the job's own limit, so vfarm's own kill (which
    /// records `walltime`) comes first. Seconds; default 120.
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CapacityConfig {
    pub cpus_milli: Option<u64>,
    pub memory_mib: Option<u64>,
    pub slots: BTreeMap<String, u32>,
}

// --- the file format -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default_queue: Option<String>,
    #[serde(default)]
    queues: BTreeMap<String, RawQueue>,
    #[serde(default)]
    capacity: RawCapacity,
    #[serde(default)]
    fair_share: RawFairShare,
    #[serde(default)]
    slurm: SlurmConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    cpus: Option<f64>,
    memory: Option<String>,
    #[serde(default)]
    slots: BTreeMap<String, u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFairShare {
    window: Option<String>,
    half_life: Option<String>,
    start_charge: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    priority: Option<i32>,
    cpus: Option<f64>,
    memory: Option<String>,
    walltime: Option<String>,
    max_cpus: Option<f64>,
    max_memory: Option<String>,
    max_walltime: Option<String>,
    max_running: Option<u32>,
    image: Option<String>,
    driver: Option<String>,
    backend: Option<String>,
    keep_on_failure: Option<bool>,
    keep_for: Option<String>,
    routes: Option<Vec<Route>>,
}

fn cfg_err(field: impl Into<String>, reason: impl Into<String>) -> Refusal {
    Refusal::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

fn secs(field: String, v: &Option<String>) -> Result<Option<u64>, Refusal> {
    v.as_deref()
        .map(|s| parse_duration("duration", s).map_err(|e| cfg_err(field, e.to_string())))
        .transpose()
}

fn mib(field: String, v: &Option<String>) -> Result<Option<u64>, Refusal> {
    v.as_deref()
        .map(|s| {
            vfarm_core::parse_size(s)
                .map(|b| b.div_ceil(1 << 20))
                .map_err(|e| cfg_err(field, e))
        })
        .transpose()
}

fn milli(field: String, v: Option<f64>) -> Result<Option<u64>, Refusal> {
    v.map(|c| {
        crate::cpus_to_milli(c).ok_or_else(|| cfg_err(field, format!("`{c}` is not a CPU count")))
    })
    .transpose()
}

impl QueueConfig {
    /// The configuration used when the site has no file.
    pub fn embedded() -> QueueConfig {
        QueueConfig::parse(EMBEDDED).expect("the embedded jobs config is valid")
    }

    /// Parse and check a configuration file's text. Unknown keys are refused by name.
    pub fn parse(text: &str) -> Result<QueueConfig, Refusal> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| cfg_err("toml", e.to_string().lines().collect::<Vec<_>>().join(" ")))?;
        let mut queues = BTreeMap::new();
        for (name, q) in &raw.queues {
            let f = |k: &str| format!("queues.{name}.{k}");
            if let Some(routes) = &q.routes {
                let other_keys = q.priority.is_some()
                    || q.cpus.is_some()
                    || q.memory.is_some()
                    || q.walltime.is_some()
                    || q.image.is_some()
                    || q.driver.is_some()
                    || q.backend.is_some();
                if other_keys {
                    return Err(cfg_err(
                        f("routes"),
                        "a routing queue has only routes; put defaults on its target queues",
                    ));
                }
                queues.insert(
                    name.clone(),
                    Queue::Routing {
                        name: name.clone(),
                        routes: routes.clone(),
                    },
                );
                continue;
            }
            let backend = match q.backend.as_deref() {
                None => Backend::Local,
                Some(b) => Backend::parse(b)
                    .ok_or_else(|| cfg_err(f("backend"), format!("`{b}`: use local or slurm")))?,
            };
            if let Some(d) = q.driver.as_deref() {
                if !["oci", "qemu", "any"].contains(&d) {
                    return Err(cfg_err(f("driver"), format!("`{d}`: use oci, qemu or any")));
                }
            }
            let e = ExecQueue {
                name: name.clone(),
                priority: q.priority.unwrap_or(0),
                cpus_milli: milli(f("cpus"), q.cpus)?.unwrap_or(1000),
                memory_mib: mib(f("memory"), &q.memory)?.unwrap_or(512),
                walltime_secs: secs(f("walltime"), &q.walltime)?.unwrap_or(3600),
                max_cpus_milli: milli(f("max_cpus"), q.max_cpus)?,
                max_memory_mib: mib(f("max_memory"), &q.max_memory)?,
                max_walltime_secs: secs(f("max_walltime"), &q.max_walltime)?,
                max_running: q.max_running,
                image: q.image.clone(),
                driver: q.driver.clone(),
                backend,
                keep_on_failure: q.keep_on_failure.unwrap_or(false),
                keep_for_secs: secs(f("keep_for"), &q.keep_for)?.unwrap_or(86_400),
            };
            // A queue whose own defaults break its limits would refuse every job.
            e.check_limits(e.cpus_milli, e.memory_mib, e.walltime_secs)
                .map_err(|r| cfg_err(f("defaults"), r.to_string()))?;
            queues.insert(name.clone(), Queue::Exec(e));
        }
        let default_queue = raw.default_queue.unwrap_or_else(|| "batch".into());
        let cfg = QueueConfig {
            default_queue,
            queues,
            capacity: CapacityConfig {
                cpus_milli: milli("capacity.cpus".into(), raw.capacity.cpus)?,
                memory_mib: mib("capacity.memory".into(), &raw.capacity.memory)?,
                slots: raw.capacity.slots,
            },
            fair_share: FairShare {
                window_secs: secs("fair_share.window".into(), &raw.fair_share.window)?
                    .unwrap_or(86_400),
                half_life_secs: secs("fair_share.half_life".into(), &raw.fair_share.half_life)?
                    .unwrap_or(3600),
                start_charge_cpu_secs: secs(
                    "fair_share.start_charge".into(),
                    &raw.fair_share.start_charge,
                )?
                .unwrap_or(1) as f64,
            },
            slurm: raw.slurm,
        };
        if !cfg.queues.contains_key(&cfg.default_queue) {
            return Err(cfg_err(
                "default_queue",
                format!("`{}` is not a configured queue", cfg.default_queue),
            ));
        }
        for q in cfg.queues.values() {
            if let Queue::Routing { name, routes } = q {
                for r in routes {
                    match cfg.queues.get(&r.queue) {
                        Some(Queue::Exec(_)) => {}
                        Some(Queue::Routing { .. }) => {
                            return Err(cfg_err(
                                format!("queues.{name}.routes"),
                                format!("target `{}` is itself a routing queue", r.queue),
                            ))
                        }
                        None => {
                            return Err(cfg_err(
                                format!("queues.{name}.routes"),
                                format!("target `{}` is not a configured queue", r.queue),
                            ))
                        }
                    }
                }
            }
        }
        Ok(cfg)
    }

    fn known(&self) -> String {
        self.queues.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    pub fn exec_queue(&self, name: &str) -> Option<&ExecQueue> {
        match self.queues.get(name) {
            Some(Queue::Exec(e)) => Some(e),
            _ => None,
        }
    }

    /// The execution queue a job lands in: `queue` (or the default queue); a routing queue
    /// sends it along the first route whose requirements agree with the job's. A route field
    /// the job leaves open matches; a job field the route leaves open matches.
    pub fn route(
        &self,
        queue: Option<&str>,
        os: Option<&str>,
        os_version: Option<&str>,
        arch: Option<&str>,
    ) -> Result<&ExecQueue, Refusal> {
        let name = queue.unwrap_or(&self.default_queue);
        match self.queues.get(name) {
            None => Err(Refusal::UnknownQueue {
                name: name.to_string(),
                known: self.known(),
            }),
            Some(Queue::Exec(e)) => Ok(e),
            Some(Queue::Routing { name, routes }) => {
                let agree =
                    |want: Option<&str>, offer: Option<&str>, f: fn(&str, &str) -> bool| match (
                        want, offer,
                    ) {
                        (Some(w), Some(o)) => f(w, o),
                        _ => true,
                    };
                let r = routes.iter().find(|r| {
                    agree(os, r.os.as_deref(), |w, o| w.eq_ignore_ascii_case(o))
                        // A route for `4` takes a job asking for `4.1`, and vice versa.
                        && agree(os_version, r.os_version.as_deref(), |w, o| {
                            vfarm_jsdl::version_matches(w, o) || vfarm_jsdl::version_matches(o, w)
                        })
                        && agree(arch, r.arch.as_deref(), arch_same)
                });
                let r = r.ok_or_else(|| Refusal::NoRoute {
                    queue: name.clone(),
                    os: os.unwrap_or("any").into(),
                    version: os_version.unwrap_or("any").into(),
                    arch: arch.unwrap_or("any").into(),
                })?;
                self.exec_queue(&r.queue).ok_or_else(|| Refusal::RouteLoop {
                    queue: name.clone(),
                })
            }
        }
    }
}

/// Two architecture spellings name the same family (`amd64` = `x86_64`).
pub fn arch_same(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "amd64" | "x86_64" | "x86-64" | "x64" => "x86_64".to_string(),
        "arm64" | "aarch64" => "aarch64".to_string(),
        "i386" | "i686" | "x86" | "x86_32" => "x86_32".to_string(),
        other => other.to_string(),
    };
    norm(a) == norm(b)
}

/// The resources one job asks for, after queue defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub walltime_secs: u64,
}

impl ExecQueue {
    /// Fill what the job does not say from the queue's defaults.
    pub fn fill(
        &self,
        cpus_milli: Option<u64>,
        memory_mib: Option<u64>,
        walltime_secs: Option<u64>,
    ) -> Ask {
        Ask {
            cpus_milli: cpus_milli.unwrap_or(self.cpus_milli),
            memory_mib: memory_mib.unwrap_or(self.memory_mib),
            walltime_secs: walltime_secs.unwrap_or(self.walltime_secs),
        }
    }

    fn check_limits(&self, cpus: u64, mem: u64, wall: u64) -> Result<(), Refusal> {
        let by = format!("queue `{}`", self.name);
        if let Some(m) = self.max_cpus_milli.filter(|m| cpus > *m) {
            return Err(Refusal::TooBig {
                field: "cpus",
                asked: crate::milli_to_cpus(cpus),
                limit: crate::milli_to_cpus(m),
                by,
            });
        }
        if let Some(m) = self.max_memory_mib.filter(|m| mem > *m) {
            return Err(Refusal::TooBig {
                field: "memory",
                asked: format!("{mem} MiB"),
                limit: format!("{m} MiB"),
                by,
            });
        }
        if let Some(m) = self.max_walltime_secs.filter(|m| wall > *m) {
            return Err(Refusal::TooBig {
                field: "walltime",
                asked: format!("{wall} s"),
                limit: format!("{m} s"),
                by,
            });
        }
        Ok(())
    }

    /// The submit-time check: a job this queue or this host can never run is refused now
    /// rather than left pending forever.
    pub fn check(&self, ask: &Ask, driver: &str, host: &Capacity) -> Result<(), Refusal> {
        self.check_limits(ask.cpus_milli, ask.memory_mib, ask.walltime_secs)?;
        if ask.cpus_milli > host.cpus_milli {
            return Err(Refusal::TooBig {
                field: "cpus",
                asked: crate::milli_to_cpus(ask.cpus_milli),
                limit: crate::milli_to_cpus(host.cpus_milli),
                by: "this host".into(),
            });
        }
        if ask.memory_mib > host.memory_mib {
            return Err(Refusal::TooBig {
                field: "memory",
                asked: format!("{} MiB", ask.memory_mib),
                limit: format!("{} MiB", host.memory_mib),
                by: "this host".into(),
            });
        }
        if host.slots_for(driver) == 0 {
            return Err(Refusal::TooBig {
                field: "driver",
                asked: driver.into(),
                limit: "0 instance slots".into(),
                by: "this host".into(),
            });
        }
        if self.max_running == Some(0) {
            return Err(Refusal::TooBig {
                field: "queue",
                asked: "1 running job".into(),
                limit: "max_running = 0".into(),
                by: format!("queue `{}`", self.name),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Capacity {
        Capacity {
            cpus_milli: 2000,
            memory_mib: 4096,
            slots: [("oci".to_string(), 8), ("qemu".to_string(), 0)].into(),
        }
    }

    #[test]
    fn embedded_config_has_a_default_and_a_routing_queue() {
        let c = QueueConfig::embedded();
        assert_eq!(c.default_queue, "batch");
        let b = c.exec_queue("batch").unwrap();
        assert_eq!(
            (b.cpus_milli, b.memory_mib, b.walltime_secs),
            (1000, 512, 3600)
        );
        assert_eq!(
            c.route(Some("route"), Some("linux"), None, None)
                .unwrap()
                .name,
            "batch"
        );
        assert!(matches!(
            c.route(Some("route"), Some("WINNT"), None, None),
            Err(Refusal::NoRoute { .. })
        ));
    }

    const SLC: &str = r#"
default_queue = "grid"
[queues.slc3]
image = "slc3"
max_walltime = "2d"
[queues.slc4]
image = "slc4"
cpus = 2
[queues.grid]
routes = [
  { os = "LINUX", os_version = "3", queue = "slc3" },
  { os = "LINUX", os_version = "4", arch = "x86_64", queue = "slc4" },
]
"#;

    #[test]
    fn a_routing_queue_sends_jobs_by_os_version_and_arch() {
        let c = QueueConfig::parse(SLC).unwrap();
        let r = |v: Option<&str>, a: Option<&str>| {
            c.route(None, Some("LINUX"), v, a).map(|q| q.name.clone())
        };
        assert_eq!(r(Some("3"), None).unwrap(), "slc3");
        assert_eq!(r(Some("4.1"), Some("amd64")).unwrap(), "slc4");
        let e = r(Some("5"), None).unwrap_err();
        assert_eq!(e.code().as_str(), "no_route");
        assert!(e.to_string().contains("os-version=5"), "{e}");
        // The job states no version: the first Linux route takes it.
        assert_eq!(r(None, None).unwrap(), "slc3");
        // An execution queue named directly is used as is.
        assert_eq!(
            c.route(Some("slc4"), None, None, None)
                .unwrap()
                .image
                .as_deref(),
            Some("slc4")
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = QueueConfig::parse("[queues.a]\ncpu = 2\n").unwrap_err();
        assert!(e.to_string().contains("cpu"), "{e}");
        let e = QueueConfig::parse("default_queue = \"x\"\n[queues.a]\n").unwrap_err();
        assert_eq!(e.field(), "default_queue");
        let e = QueueConfig::parse(
            "default_queue = \"r\"\n[queues.r]\nroutes = [{ queue = \"nope\" }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = QueueConfig::parse(
            "default_queue = \"a\"\n[queues.a]\nwalltime = \"2h\"\nmax_walltime = \"1h\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("queues.a.defaults"), "{e}");
        let e = QueueConfig::parse("default_queue = \"a\"\n[queues.a]\nmemory = \"lots\"\n")
            .unwrap_err();
        assert_eq!(e.field(), "queues.a.memory");
    }

    #[test]
    fn unsatisfiable_jobs_are_refused_with_the_reason() {
        let c = QueueConfig::parse(SLC).unwrap();
        let q = c.exec_queue("slc3").unwrap();
        let ok = q.fill(None, None, None);
        q.check(&ok, "oci", &host()).unwrap();
        let e = q
            .check(&q.fill(Some(3000), None, None), "oci", &host())
            .unwrap_err();
        assert_eq!((e.code().as_str(), e.field()), ("unsatisfiable", "cpus"));
        assert!(e.to_string().contains("this host"), "{e}");
        let e = q
            .check(&q.fill(None, Some(8192), None), "oci", &host())
            .unwrap_err();
        assert_eq!(e.field(), "memory");
        let e = q
            .check(&q.fill(None, None, Some(3 * 86_400)), "oci", &host())
            .unwrap_err();
        assert!(e.to_string().contains("queue `slc3`"), "{e}");
        let e = q.check(&ok, "qemu", &host()).unwrap_err();
        assert_eq!(e.field(), "driver");
    }

    #[test]
    fn arch_spellings() {
        assert!(arch_same("amd64", "x86_64"));
        assert!(arch_same("AArch64", "arm64"));
        assert!(!arch_same("amd64", "arm64"));
    }
}
