//! `vfarm job …`: batch jobs in disposable instances.
//!
//! * `submit` checks the request against the queue configuration, this host and the image
//!   repository (routing by OS, version and architecture) and stores it `queued`; a job that
//!   nothing can ever run is refused here, with the reason.
//! * The dispatcher ([`spawn_dispatcher`], a thread of `vfarm serve`) asks the scheduler in
//!   `vfarm_jobs::sched` which jobs to start, claims each in one transaction and starts a
//!   detached runner for it.
//! * The runner (`vfarm job run-one ID`, hidden) runs the job through `vfarm run` (fresh
//!   instance, staging, wall time as `--timeout`, `--keep-on-failure`) with its output in
//!   `<data>/jobs/<id>/`, and records the end in one transaction. It is its own session, so
//!   a killed service does not take running jobs with it; SIGTERM to it cancels the job.
//! * Reconciliation (every dispatcher round, so also at start-up): a claimed job whose runner
//!   is gone without recording an end is failed as `lost` and its instance removed; it is
//!   never started again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use vfarm_jobs::{
    cpus_to_milli, milli_to_cpus, Active, Backend, Candidate, Capacity, JobEvent, JobSpec,
    JobState, QueueConfig, Refusal, Stage, UsageRecord,
};
use vfarm_proto::ErrorCode;
use vfarm_store::jobs::{CancelOutcome, JobEnd, JobRow, NewJob, Registration};
use vfarm_store::Store;

use crate::cmd::image::actor;
use crate::cmd::print_file;
use crate::ctx::Ctx;

/// How often the dispatcher looks at the queue.
const TICK: Duration = Duration::from_millis(250);
/// A claimed job whose runner has not registered after this long is lost (its runner never
/// came up, e.g. the service died between claim and spawn).
const REGISTER_GRACE_MS: i64 = 30_000;
/// `vfarm run`'s exit status for a command killed at its timeout.
/// Where a job's `vfarm run` writes how it ended (`vfarm run --outcome`).
const OUTCOME_FILE: &str = "outcome.json";

#[derive(Args)]
pub struct JobArgs {
    /// Queue configuration (TOML). Default: `<data>/jobs.toml` if present, else the
    /// embedded default (queue `batch`, routing queue `route`).
    #[arg(long, global = true, env = "VFARM_JOBS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: JobCmd,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Queue a job: a command (after `--`) or a JSDL 1.0 document (`--jsdl FILE`).
    Submit(Box<SubmitArgs>),
    /// List jobs.
    #[command(alias = "list")]
    Ls {
        /// Only jobs in this state (repeatable): queued, starting, running, succeeded,
        /// failed, cancelled.
        #[arg(long)]
        state: Vec<String>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// A job's record: state, reason, exit status, timings, files, events.
    Show { id: String },
    /// Cancel jobs, in any state: a queued job never starts, a running one is killed and
    /// its instance removed.
    Cancel { ids: Vec<String> },
    /// Wait until the jobs are finished; exit 0 if all succeeded, else 1 (124 on --timeout).
    Wait {
        ids: Vec<String>,
        #[arg(long)]
        timeout: Option<String>,
    },
    /// The job's standard output and error (also when JSDL redirected them to files);
    /// `--console`: the instance's console log instead (a VM's boot messages).
    Logs {
        id: String,
        #[arg(long)]
        console: bool,
    },
    /// Files the job left: staged out and JSDL output files; with FILE, print that file.
    Output { id: String, file: Option<String> },
    /// The effective queue configuration and host capacity.
    Queues,
    /// Run one claimed job (started by the dispatcher; not for people).
    #[command(hide = true)]
    RunOne {
        id: i64,
        /// Running as the payload of a Slurm batch job.
        #[arg(long)]
        in_slurm: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct SubmitArgs {
    /// Image id, id prefix or name.
    #[arg(long, conflicts_with_all = ["os", "os_version", "arch"])]
    pub image: Option<String>,
    /// Route by operating system instead (JSDL OperatingSystemName, e.g. LINUX).
    #[arg(long)]
    pub os: Option<String>,
    /// With --os: the version, matched by dotted prefix (12 matches 12.8).
    #[arg(long)]
    pub os_version: Option<String>,
    /// With --os: the CPU architecture (x86_64, amd64, arm64 …).
    #[arg(long)]
    pub arch: Option<String>,
    /// oci, qemu or any (the queue's, else oci when the image has a root filesystem).
    #[arg(long)]
    pub driver: Option<String>,
    /// CPUs (fractions allowed); default from the queue.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory, e.g. 512M; default from the queue.
    #[arg(long)]
    pub memory: Option<String>,
    /// Wall-time limit (90s, 30m, 1h); the job is killed after it. Default from the queue.
    #[arg(long)]
    pub walltime: Option<String>,
    /// Higher runs first. Default from the queue.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Queue (an execution or a routing queue). Default: the config's default queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Who the job is accounted to for fair share. Default: the local user.
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Stage a file in before the command: SRC:DST, SRC a host path or file://, http://,
    /// https:// URL, DST a path in the instance (relative = in the working directory).
    #[arg(long = "stage-in", value_name = "SRC:DST")]
    pub stage_in: Vec<String>,
    /// Stage a file out after the command: SRC:DST, SRC a path in the instance, DST a host
    /// path, a file:// or http(s):// URL (PUT), or a bare name kept with the job
    /// (`vfarm job output`).
    #[arg(long = "stage-out", value_name = "SRC:DST")]
    pub stage_out: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the instance (made if missing; default /tmp/job).
    #[arg(long)]
    pub workdir: Option<String>,
    /// On failure keep the stopped instance with a `failure` snapshot.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// local (this host's queue) or slurm.
    #[arg(long)]
    pub backend: Option<String>,
    /// A JSDL 1.0 JobDefinition; the flags above override what it says.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub jsdl: Option<PathBuf>,
    #[arg(last = true, required_unless_present = "jsdl")]
    pub command: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Errors

/// A request refused before anything was stored (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SubmitError {
    pub code: ErrorCode,
    pub field: String,
    pub message: String,
}

fn refuse(code: ErrorCode, field: &str, message: impl Into<String>) -> anyhow::Error {
    SubmitError {
        code,
        field: field.to_string(),
        message: message.into(),
    }
    .into()
}

impl From<Refusal> for SubmitError {
    fn from(r: Refusal) -> Self {
        SubmitError {
            code: r.code(),
            field: r.field().to_string(),
            message: r.to_string(),
        }
    }
}

/// (code, field) for errors of these commands.
pub fn classify(err: &anyhow::Error) -> Option<(ErrorCode, Option<&str>)> {
    if let Some(e) = err.downcast_ref::<SubmitError>() {
        return Some((e.code, Some(e.field.as_str())));
    }
    if let Some(e) = err.downcast_ref::<Refusal>() {
        return Some((e.code(), Some(e.field())));
    }
    None
}

// ---------------------------------------------------------------------------------------
// Configuration and capacity

fn load_config(ctx: &Ctx, path: Option<&Path>) -> Result<QueueConfig> {
    let default = ctx.data_dir.join("jobs.toml");
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => default.is_file().then_some(default),
    };
    let Some(path) = path else {
        return Ok(QueueConfig::embedded());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read jobs config {}", path.display()))?;
    QueueConfig::parse(&text)
        .map_err(|r| anyhow::Error::from(SubmitError::from(r)))
        .with_context(|| format!("jobs config {}", path.display()))
}

/// This host's capacity: the config's numbers, else measured (all CPUs, 90 % of memory,
/// 4 container slots and 1 VM slot per CPU).
fn host_capacity(cfg: &QueueConfig) -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1024, |kb| kb / 1024 * 9 / 10);
    let mut slots: BTreeMap<String, u32> = [
        ("oci".to_string(), cpus as u32 * 4),
        ("qemu".to_string(), cpus as u32),
    ]
    .into();
    slots.extend(cfg.capacity.slots.clone());
    Capacity {
        cpus_milli: cfg.capacity.cpus_milli.unwrap_or(cpus * 1000),
        memory_mib: cfg.capacity.memory_mib.unwrap_or(mem_mib),
        slots,
    }
}

fn job_dir(ctx: &Ctx, id: i64) -> PathBuf {
    ctx.data_dir.join("jobs").join(id.to_string())
}

fn parse_id(s: &str) -> Result<i64> {
    s.trim_start_matches("job-").parse::<i64>().map_err(|_| {
        refuse(
            ErrorCode::InvalidRequest,
            "id",
            format!("`{s}` is not a job id (a number)"),
        )
    })
}

fn ms(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------
// Submit

/// The request after flags and JSDL are merged, before routing.
#[derive(Default)]
struct Request {
    name: Option<String>,
    image: Option<String>,
    os: Option<String>,
    os_version: Option<String>,
    arch: Option<String>,
    driver: Option<String>,
    cpus_milli: Option<u64>,
    memory_mib: Option<u64>,
    walltime_secs: Option<u64>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    stage_in: Vec<Stage>,
    stage_out: Vec<Stage>,
    /// How many of the stages (in, out) come from the JSDL document.
    jsdl_stages: (usize, usize),
}

fn from_jsdl(path: &Path) -> Result<Request> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read JSDL file {}", path.display()))?;
    let parsed = vfarm_jsdl::parse(&text).map_err(|e| {
        refuse(
            ErrorCode::InvalidJsdl,
            "jsdl",
            format!("{}: refused: {e}", path.display()),
        )
    })?;
    for w in &parsed.warnings {
        eprintln!("vfarm: job: {}: warning: {w}", path.display());
    }
    let req = parsed.value.to_job_request().map_err(|e| {
        refuse(
            ErrorCode::InvalidJsdl,
            "jsdl",
            format!("{}: cannot run: {e}", path.display()),
        )
    })?;
    let Some(exe) = req.executable.clone() else {
        return Err(refuse(
            ErrorCode::InvalidJsdl,
            "jsdl",
            format!(
                "{}: <jsdl:Application> names no <Executable>: nothing to run",
                path.display()
            ),
        ));
    };
    if req.instance.is_some() && req.image.is_none() {
        eprintln!(
            "vfarm: job: {}: xsdl:InstanceDefinition is ignored; the job is routed by its OS requirements",
            path.display()
        );
    }
    // A relative executable that is staged in runs from the working directory, not PATH.
    let staged = req.stage_in.iter().any(|s| s.file_name == exe);
    let exe = if staged && !exe.starts_with('/') && !exe.starts_with("./") {
        format!("./{exe}")
    } else {
        exe
    };
    let mut argv = vec![exe];
    argv.extend(req.args.iter().cloned());
    let bytes_to_mib = |b: u64| b.div_ceil(1 << 20);
    Ok(Request {
        name: req.job_name.clone(),
        image: req.image.clone(),
        os: req.os.map(|o| o.as_str().to_string()),
        os_version: req.os_version.clone(),
        arch: req.arch.map(|a| a.as_str().to_string()),
        driver: match req.driver {
            vfarm_jsdl::Driver::Any => None,
            d => Some(d.as_str().to_string()),
        },
        cpus_milli: req.cpu_count.map(|c| c.max(1) * 1000),
        memory_mib: req.memory_bytes.map(bytes_to_mib),
        walltime_secs: req.wall_time_seconds,
        argv,
        env: req.env.clone(),
        workdir: req.working_dir.clone(),
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        stage_in: req
            .stage_in
            .iter()
            .map(|s| Stage {
                src: s.uri.clone(),
                dst: s.file_name.clone(),
            })
            .collect(),
        stage_out: req
            .stage_out
            .iter()
            .map(|s| Stage {
                src: s.file_name.clone(),
                dst: s.uri.clone(),
            })
            .collect(),
        jsdl_stages: (req.stage_in.len(), req.stage_out.len()),
    })
}

fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://") || file_uri_path(s).is_some()
}

fn is_http(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// The local path of a `file:` URI: `file:///p`, `file://localhost/p` and `file:/p` (the
/// short form real JSDL documents use).
fn file_uri_path(s: &str) -> Option<&str> {
    let rest = s
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("file:"))
        .map(|_| &s[5..])?;
    let path = match rest.strip_prefix("//") {
        Some(r) => &r[r.find('/')?..],
        None => rest,
    };
    path.starts_with('/').then_some(path)
}

/// `SRC:DST` of `--stage-in`: the source may be a URL (with `:`), the destination not.
fn parse_stage_in(s: &str) -> Result<Stage> {
    let (src, dst) = s
        .rsplit_once(':')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.starts_with("//"))
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "stage-in",
                format!(
                    "`{s}`: expected SRC:DST (a host path or URL, then a path in the instance)"
                ),
            )
        })?;
    Ok(Stage {
        src: src.to_string(),
        dst: dst.to_string(),
    })
}

/// `SRC:DST` of `--stage-out`: the source is a path in the instance (no `:`).
fn parse_stage_out(s: &str) -> Result<Stage> {
    let (src, dst) = s
        .split_once(':')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "stage-out",
                format!("`{s}`: expected SRC:DST (a path in the instance, then a host path, URL or name)"),
            )
        })?;
    Ok(Stage {
        src: src.to_string(),
        dst: dst.to_string(),
    })
}

/// Check a stage's instance path and make host paths absolute (the runner's working
/// directory is not the submitter's).
fn check_stage(field: &str, s: &mut Stage, inbound: bool) -> Result<()> {
    let (guest, host) = if inbound {
        (&s.dst, &mut s.src)
    } else {
        (&s.src, &mut s.dst)
    };
    if guest.split('/').any(|c| c == "..") || guest.contains(':') {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            field,
            format!("{field} `{guest}`: a path in the instance must not contain `..` or `:`"),
        ));
    }
    let l = host.to_ascii_lowercase();
    if (l.contains("://") || l.starts_with("file:")) && !is_url(host) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            field,
            format!("{field} `{host}`: vfarm stages file:, http:// and https:// only"),
        ));
    }
    if !is_url(host) {
        let p = Path::new(host.as_str());
        if inbound || p.is_absolute() || host.contains('/') {
            let abs = std::path::absolute(p)
                .with_context(|| format!("{field}: cannot resolve {host}"))?;
            if inbound && !abs.is_file() {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    field,
                    format!("{field} `{host}` → `{guest}`: no such file on this host"),
                ));
            }
            *host = abs.display().to_string();
        }
    } else if let Some(p) = file_uri_path(host).filter(|_| inbound) {
        if !Path::new(p).is_file() {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                field,
                format!("{field} `{host}` → `{guest}`: no such file on this host"),
            ));
        }
    }
    Ok(())
}

fn parse_os(s: &str) -> Result<vfarm_jsdl::OperatingSystemName> {
    use vfarm_jsdl::OperatingSystemName as O;
    O::from_xml(s)
        .or_else(|| O::suggest(s).and_then(O::from_xml))
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "os",
                format!("`{s}` is not a JSDL OperatingSystemName (e.g. LINUX)"),
            )
        })
}

fn parse_arch(s: &str) -> Result<vfarm_jsdl::CpuArchitectureName> {
    use vfarm_jsdl::CpuArchitectureName as A;
    let l = s.to_ascii_lowercase();
    A::from_xml(&l)
        .or(match l.as_str() {
            "amd64" | "x64" | "x86-64" => Some(A::X86_64),
            "i386" | "i686" => Some(A::X86_32),
            "arm64" | "aarch64" | "armhf" => Some(A::Arm),
            "ppc64el" | "ppc64le" | "ppc64" => Some(A::Powerpc),
            _ => None,
        })
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "arch",
                format!("`{s}` is not a CPU architecture (x86_64, amd64, arm64 …)"),
            )
        })
}

/// The job view shared by `submit`, `show` and `ls`.
#[derive(Serialize)]
struct JobView {
    id: i64,
    name: Option<String>,
    owner: String,
    queue: String,
    priority: i32,
    state: String,
    reason: Option<String>,
    exit_code: Option<i32>,
    error: Option<String>,
    backend: String,
    driver: String,
    image: String,
    cpus: String,
    memory_mib: u64,
    walltime_secs: u64,
    submitted: String,
    claimed: Option<String>,
    started: Option<String>,
    ended: Option<String>,
    /// Seconds from submit to the command's start, and of its run.
    wait_secs: Option<f64>,
    run_secs: Option<f64>,
    instance_kept: Option<String>,
    slurm_id: Option<i64>,
    /// The runner process (`vfarm job run-one`) while the job is claimed or running.
    runner_pid: Option<i64>,
    dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<serde_json::Value>>,
}

fn view(ctx: &Ctx, store: &Store, j: &JobRow, detail: bool) -> Result<JobView> {
    let secs = |a: &Option<String>, b: &Option<String>| match (
        a.as_deref().and_then(ms),
        b.as_deref().and_then(ms),
    ) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    let events = if detail {
        Some(
            store
                .job_events(j.id)?
                .into_iter()
                .map(|e| {
                    serde_json::json!({"seq": e.seq, "at": e.at, "kind": e.kind,
                        "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or_default()})
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(JobView {
        id: j.id,
        name: j.name.clone(),
        owner: j.owner.clone(),
        queue: j.queue.clone(),
        priority: j.priority,
        state: j.state.clone(),
        reason: j.reason.clone(),
        exit_code: j.exit_code,
        error: j.error.clone(),
        backend: j.backend.clone(),
        driver: j.driver.clone(),
        image: j.image_id.clone(),
        cpus: milli_to_cpus(j.cpus_milli),
        memory_mib: j.memory_mib,
        walltime_secs: j.walltime_secs,
        submitted: j.submitted.clone(),
        claimed: j.claimed.clone(),
        started: j.started.clone(),
        ended: j.ended.clone(),
        wait_secs: secs(&Some(j.submitted.clone()), &j.started),
        run_secs: secs(&j.started, &j.ended),
        instance_kept: j.instance_id.clone(),
        slurm_id: j.slurm_id,
        runner_pid: j.runner_pid,
        dir: job_dir(ctx, j.id),
        spec: detail.then(|| serde_json::from_str(&j.spec).unwrap_or_default()),
        events,
    })
}

fn submit(ctx: &Ctx, cfg_path: Option<&Path>, a: SubmitArgs) -> Result<i32> {
    let cfg = load_config(ctx, cfg_path)?;
    let cap = host_capacity(&cfg);
    let mut req = match &a.jsdl {
        Some(p) => from_jsdl(p)?,
        None => Request {
            argv: a.command.clone(),
            ..Default::default()
        },
    };
    // Flags override the document.
    if a.image.is_some() {
        req.image = a.image.clone();
        req.os = None;
        req.os_version = None;
        req.arch = None;
    }
    for (dst, v) in [
        (&mut req.os, &a.os),
        (&mut req.os_version, &a.os_version),
        (&mut req.arch, &a.arch),
        (&mut req.driver, &a.driver),
        (&mut req.workdir, &a.workdir),
        (&mut req.name, &a.name),
    ] {
        if v.is_some() {
            *dst = v.clone();
        }
    }
    if let Some(c) = a.cpus {
        req.cpus_milli = Some(cpus_to_milli(c).ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "cpus",
                format!("`{c}` is not a CPU count (e.g. 1, 0.5)"),
            )
        })?);
    }
    if let Some(m) = &a.memory {
        let b = vfarm_core::parse_size(m)
            .map_err(|e| refuse(ErrorCode::InvalidRequest, "memory", format!("`{m}`: {e}")))?;
        req.memory_mib = Some(b.div_ceil(1 << 20));
    }
    if let Some(w) = &a.walltime {
        req.walltime_secs = Some(
            vfarm_core::instance::parse_duration("walltime", w)
                .map_err(|e| refuse(ErrorCode::InvalidRequest, "walltime", e.to_string()))?,
        );
    }
    for e in &a.env {
        let (k, v) = vfarm_core::instance::parse_env(e)
            .map_err(|e| refuse(ErrorCode::InvalidRequest, "env", e.to_string()))?;
        req.env.push((k, v));
    }
    for s in &a.stage_in {
        req.stage_in.push(parse_stage_in(s)?);
    }
    for s in &a.stage_out {
        req.stage_out.push(parse_stage_out(s)?);
    }
    if let Some(w) = &req.workdir {
        if !w.starts_with('/') || w.split('/').any(|c| c == "..") {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                "workdir",
                format!("`{w}`: must be an absolute path in the instance, without `..`"),
            ));
        }
    }
    for (n, s) in req.stage_in.iter_mut().enumerate() {
        let field = if n < req.jsdl_stages.0 {
            "DataStaging"
        } else {
            "stage-in"
        };
        check_stage(field, s, true)?;
    }
    for (n, s) in req.stage_out.iter_mut().enumerate() {
        let field = if n < req.jsdl_stages.1 {
            "DataStaging"
        } else {
            "stage-out"
        };
        check_stage(field, s, false)?;
    }
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "command",
            "no command to run",
        ));
    }
    let owner = a.owner.clone().unwrap_or_else(actor);
    if owner.is_empty() || owner.contains(char::is_whitespace) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "owner",
            format!("`{owner}`: must be a non-empty name without spaces"),
        ));
    }
    let os = req.os.as_deref().map(parse_os).transpose()?;
    let arch = req.arch.as_deref().map(parse_arch).transpose()?;
    if req.os_version.is_some() && os.is_none() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "os-version",
            "--os-version needs --os",
        ));
    }

    // Routing: the queue, then the environment.
    let queue = cfg
        .route(
            a.queue.as_deref(),
            os.map(|o| o.as_str()),
            req.os_version.as_deref(),
            arch.map(|a| a.as_str()),
        )
        .map_err(SubmitError::from)?
        .clone();
    let images = ctx.images()?;
    let image = if let Some(r) = req.image.clone().or_else(|| {
        (os.is_none() && arch.is_none())
            .then(|| queue.image.clone())
            .flatten()
    }) {
        images.resolve(&r).map_err(|e| {
            refuse(
                ErrorCode::ImageNotFound,
                "image",
                format!("image `{r}`: {e}"),
            )
        })?
    } else if os.is_some() || arch.is_some() {
        let want = vfarm_jsdl::JobRequest {
            os,
            os_version: req.os_version.clone(),
            arch,
            ..Default::default()
        };
        let all = images.list()?;
        // Prefer the queue's own environment when it matches; else the newest match.
        let matching: Vec<_> = all
            .iter()
            .filter(|i| {
                want.matches_image(
                    i.os.as_deref().unwrap_or(""),
                    i.os_version.as_deref().unwrap_or(""),
                    // An image without a recorded architecture (an imported tarball) is
                    // taken to be this host's: it could not run here otherwise.
                    i.arch.as_deref().unwrap_or(std::env::consts::ARCH),
                )
            })
            .collect();
        let preferred = queue.image.as_deref().and_then(|q| {
            matching
                .iter()
                .find(|i| i.name.as_deref() == Some(q) || i.id.starts_with(q))
        });
        match preferred.or_else(|| matching.iter().max_by(|a, b| a.created.cmp(&b.created))) {
            Some(i) => (*i).clone(),
            None => {
                return Err(SubmitError::from(Refusal::NoImage {
                    os: req.os.clone().unwrap_or("any".into()),
                    version: req.os_version.clone().unwrap_or("any".into()),
                    arch: req.arch.clone().unwrap_or("any".into()),
                    known: all
                        .iter()
                        .map(|i| {
                            format!(
                                "{} {}/{}/{}",
                                i.display_name(),
                                i.os.as_deref().unwrap_or("?"),
                                i.os_version.as_deref().unwrap_or("?"),
                                i.arch.as_deref().unwrap_or("?")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                })
                .into())
            }
        }
    } else {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "image",
            format!(
                "give --image or --os (queue `{}` has no default image)",
                queue.name
            ),
        ));
    };
    if let Some(ia) = image.arch.as_deref() {
        if !vfarm_jobs::queue::arch_same(ia, std::env::consts::ARCH) {
            return Err(refuse(
                ErrorCode::Unsatisfiable,
                "arch",
                format!(
                    "image `{}` is for {ia}; this host runs {}",
                    image.display_name(),
                    std::env::consts::ARCH
                ),
            ));
        }
    }
    let has_tar = image.artifact(vfarm_core::Format::Tar).is_some();
    let bootable = image.kernel.is_some() && image.artifact(vfarm_core::Format::Qcow2).is_some();
    let driver = match req.driver.as_deref().or(queue.driver.as_deref()).unwrap_or("any") {
        "any" if has_tar => "oci",
        "any" if bootable => "qemu",
        "oci" if has_tar => "oci",
        "qemu" if bootable => "qemu",
        d @ ("any" | "oci" | "qemu") => {
            return Err(refuse(
                ErrorCode::Unsatisfiable,
                "driver",
                format!(
                    "image `{}` cannot run with driver {d} (oci needs its root filesystem tarball, qemu a bootable qcow2 image built with --boot vm)",
                    image.display_name()
                ),
            ))
        }
        d => {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                "driver",
                format!("`{d}`: use oci, qemu or any"),
            ))
        }
    };
    let backend = match a.backend.as_deref() {
        None => queue.backend,
        Some(b) => Backend::parse(b).ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                "backend",
                format!("`{b}`: use local or slurm"),
            )
        })?,
    };
    let ask = queue.fill(req.cpus_milli, req.memory_mib, req.walltime_secs);
    // Slurm judges its own cluster's capacity at sbatch; the queue's limits still apply.
    let cap = if backend == Backend::Slurm {
        Capacity {
            cpus_milli: u64::MAX,
            memory_mib: u64::MAX,
            slots: [(driver.to_string(), u32::MAX)].into(),
        }
    } else {
        cap
    };
    queue.check(&ask, driver, &cap).map_err(SubmitError::from)?;
    let spec = JobSpec {
        name: req.name.clone(),
        owner: owner.clone(),
        queue: queue.name.clone(),
        image: image.id.clone(),
        requested_image: req.image.clone(),
        os: req.os.clone(),
        os_version: req.os_version.clone(),
        arch: req.arch.clone(),
        driver: driver.to_string(),
        backend,
        cpus_milli: ask.cpus_milli,
        memory_mib: ask.memory_mib,
        walltime_secs: ask.walltime_secs,
        priority: a.priority.unwrap_or(queue.priority),
        argv: req.argv.clone(),
        env: req.env.clone(),
        workdir: req.workdir.clone(),
        stdin: req.stdin.clone(),
        stdout_file: req.stdout.clone(),
        stderr_file: req.stderr.clone(),
        stage_in: req.stage_in.clone(),
        stage_out: req.stage_out.clone(),
        keep_on_failure: a.keep_on_failure || queue.keep_on_failure,
        keep_for_secs: Some(queue.keep_for_secs),
    };
    let spec_json = serde_json::to_string(&spec)?;
    let store = ctx.store()?;
    let id = store.insert_job(&NewJob {
        name: spec.name.as_deref(),
        owner: &spec.owner,
        queue: &spec.queue,
        priority: spec.priority,
        backend: backend.as_str(),
        driver,
        image_id: &image.id,
        cpus_milli: spec.cpus_milli,
        memory_mib: spec.memory_mib,
        walltime_secs: spec.walltime_secs,
        spec: &spec_json,
    })?;
    std::fs::create_dir_all(job_dir(ctx, id))?;
    if backend == Backend::Slurm {
        slurm_submit(ctx, &cfg, &store, id, &spec)?;
    }
    let j = store.job(id)?;
    if ctx.json() {
        ctx.print_json(&view(ctx, &store, &j, false)?)?;
    } else {
        println!("{id}");
        eprintln!(
            "vfarm: job {id} queued in `{}` (image {}, driver {driver}, {} CPU, {} MiB, wall time {} s, priority {})",
            spec.queue,
            image.display_name(),
            milli_to_cpus(spec.cpus_milli),
            spec.memory_mib,
            spec.walltime_secs,
            spec.priority
        );
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------
// Listing and inspecting

fn print_table(views: &[JobView]) {
    println!(
        "{:<6} {:<16} {:<10} {:<8} {:>4} {:<10} {:<9} {:>4} {:>8} {:>8}",
        "ID", "NAME", "OWNER", "QUEUE", "PRIO", "STATE", "REASON", "EXIT", "WAIT", "RUN"
    );
    for v in views {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{s:.1}s"));
        println!(
            "{:<6} {:<16} {:<10} {:<8} {:>4} {:<10} {:<9} {:>4} {:>8} {:>8}",
            v.id,
            v.name.as_deref().unwrap_or("-"),
            v.owner,
            v.queue,
            v.priority,
            v.state,
            v.reason.as_deref().unwrap_or("-"),
            v.exit_code.map_or("-".into(), |c| c.to_string()),
            f(v.wait_secs),
            f(v.run_secs)
        );
    }
}

fn output_files(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir.join("output"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map_or(0, |m| m.len()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn base_name(p: &str) -> String {
    p.rsplit('/').next().unwrap_or(p).to_string()
}

pub fn run(ctx: &Ctx, args: JobArgs) -> Result<i32> {
    let cfg_path = args.config.as_deref();
    match args.cmd {
        JobCmd::Submit(a) => submit(ctx, cfg_path, *a),
        JobCmd::Ls { state, owner } => {
            for s in &state {
                if vfarm_jobs::JobState::parse(s).is_none() {
                    return Err(refuse(
                        ErrorCode::InvalidRequest,
                        "state",
                        format!("`{s}` is not a job state"),
                    ));
                }
            }
            let store = ctx.store()?;
            let states: Vec<&str> = state.iter().map(String::as_str).collect();
            let rows = store.jobs(&states)?;
            let views = rows
                .iter()
                .filter(|j| owner.as_deref().is_none_or(|o| o == j.owner))
                .map(|j| view(ctx, &store, j, false))
                .collect::<Result<Vec<_>>>()?;
            if ctx.json() {
                ctx.print_json(&views)?;
            } else {
                print_table(&views);
            }
            Ok(0)
        }
        JobCmd::Show { id } => {
            let store = ctx.store()?;
            let j = store.job(parse_id(&id)?)?;
            let v = view(ctx, &store, &j, true)?;
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                let opt = |o: &Option<String>| o.clone().unwrap_or("-".into());
                println!("id:        {}", v.id);
                println!("name:      {}", opt(&v.name));
                println!("owner:     {}", v.owner);
                println!("queue:     {} (priority {})", v.queue, v.priority);
                println!(
                    "state:     {}{}",
                    v.state,
                    v.reason
                        .as_ref()
                        .map_or(String::new(), |r| format!(" ({r})"))
                );
                println!(
                    "exit:      {}",
                    v.exit_code.map_or("-".into(), |c| c.to_string())
                );
                if let Some(e) = &v.error {
                    println!("error:     {e}");
                }
                println!(
                    "image:     {} ({}, backend {})",
                    v.image, v.driver, v.backend
                );
                println!(
                    "resources: {} CPU, {} MiB, wall time {} s",
                    v.cpus, v.memory_mib, v.walltime_secs
                );
                println!("submitted: {}", v.submitted);
                println!("claimed:   {}", opt(&v.claimed));
                println!("started:   {}", opt(&v.started));
                println!("ended:     {}", opt(&v.ended));
                if let Some(k) = &v.instance_kept {
                    println!("kept:      instance {k} with snapshot `failure` (vfarm instance start {k}; vfarm instance exec {k} -- sh)");
                }
                println!("files:     {}", v.dir.display());
                for e in v.events.iter().flatten() {
                    println!(
                        "  {} {} {}",
                        e["at"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        e["detail"]
                    );
                }
            }
            Ok(0)
        }
        JobCmd::Cancel { ids } => {
            let store = ctx.store()?;
            let ids = ids
                .iter()
                .map(|s| parse_id(s))
                .collect::<Result<Vec<_>>>()?;
            let cfg = load_config(ctx, cfg_path)?;
            for id in ids {
                let state = cancel(&store, &cfg, id)?;
                if ctx.json() {
                    ctx.print_json(&serde_json::json!({"id": id, "state": state}))?;
                } else {
                    println!("{id} {state}");
                }
            }
            Ok(0)
        }
        JobCmd::Wait { ids, timeout } => {
            let store = ctx.store()?;
            let ids = ids
                .iter()
                .map(|s| parse_id(s))
                .collect::<Result<Vec<_>>>()?;
            let deadline = timeout
                .as_deref()
                .map(|t| vfarm_core::instance::parse_duration("timeout", t))
                .transpose()?
                .map(|s| Instant::now() + Duration::from_secs(s));
            let cfg = load_config(ctx, cfg_path)?;
            let mut all_ok = true;
            for id in ids {
                let mut synced: Option<Instant> = None;
                let j = loop {
                    let mut j = store.job(id)?;
                    // Without the service running, whoever waits notices a Slurm job that
                    // ended without its payload recording it.
                    if j.backend == "slurm"
                        && synced.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        sync_slurm(&store, &cfg, &j)?;
                        synced = Some(Instant::now());
                        j = store.job(id)?;
                    }
                    if vfarm_jobs::JobState::parse(&j.state).is_some_and(|s| s.is_final()) {
                        break j;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        eprintln!("vfarm: job wait: job {id} is still {}", j.state);
                        return Ok(crate::cmd::instance::TIMEOUT_EXIT);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                all_ok &= j.state == "succeeded";
                if ctx.json() {
                    ctx.print_json(&view(ctx, &store, &j, false)?)?;
                } else {
                    println!(
                        "{id} {}{}{}",
                        j.state,
                        j.reason
                            .as_ref()
                            .map_or(String::new(), |r| format!(" ({r})")),
                        j.exit_code.map_or(String::new(), |c| format!(" exit {c}"))
                    );
                }
            }
            Ok(if all_ok { 0 } else { 1 })
        }
        JobCmd::Logs { id, console } => {
            let store = ctx.store()?;
            let j = store.job(parse_id(&id)?)?;
            let spec: JobSpec = serde_json::from_str(&j.spec)?;
            let dir = job_dir(ctx, j.id);
            let mut out = std::io::stdout().lock();
            if console {
                if !print_file(&dir.join("console.log"), &mut out)? {
                    return Err(vfarm_store::StoreError::NotFound {
                        kind: "console log of job",
                        id: j.id.to_string(),
                    }
                    .into());
                }
                return Ok(0);
            }
            print_file(&dir.join("stdout"), &mut out)?;
            if let Some(f) = &spec.stdout_file {
                print_file(&dir.join("output").join(base_name(f)), &mut out)?;
            }
            out.flush()?;
            let mut err = std::io::stderr().lock();
            print_file(&dir.join("stderr"), &mut err)?;
            if let Some(f) = &spec.stderr_file {
                print_file(&dir.join("output").join(base_name(f)), &mut err)?;
            }
            Ok(0)
        }
        JobCmd::Output { id, file } => {
            let store = ctx.store()?;
            let j = store.job(parse_id(&id)?)?;
            let dir = job_dir(ctx, j.id);
            match file {
                Some(f) => {
                    if f.contains('/') || f == ".." {
                        return Err(refuse(
                            ErrorCode::InvalidRequest,
                            "file",
                            format!("`{f}`: a file name from `vfarm job output {}`", j.id),
                        ));
                    }
                    let p = dir.join("output").join(&f);
                    if !print_file(&p, &mut std::io::stdout().lock())? {
                        return Err(vfarm_store::StoreError::NotFound {
                            kind: "job output file",
                            id: f,
                        }
                        .into());
                    }
                }
                None => {
                    let files = output_files(&dir);
                    if ctx.json() {
                        let v: Vec<_> = files
                            .iter()
                            .map(|(n, s)| serde_json::json!({"name": n, "size": s, "path": dir.join("output").join(n)}))
                            .collect();
                        ctx.print_json(&v)?;
                    } else {
                        for (n, s) in files {
                            println!("{s:>10}  {n}");
                        }
                    }
                }
            }
            Ok(0)
        }
        JobCmd::Queues => {
            let cfg = load_config(ctx, cfg_path)?;
            let cap = host_capacity(&cfg);
            let doc = serde_json::json!({"config": cfg, "capacity": cap});
            if ctx.json() {
                ctx.print_json(&doc)?;
            } else {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            Ok(0)
        }
        JobCmd::RunOne { id, in_slurm } => run_one(ctx, id, in_slurm),
    }
}

// ---------------------------------------------------------------------------------------
// Processes: identity, liveness, signals

/// The process that was `pid` at `start` still runs (not a zombie, pid not reused).
fn alive(pid: i64, start: Option<i64>) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(vfarm_driver::process::start_time)
        .is_some_and(|s| start.is_none_or(|x| x == s as i64))
}

fn signal(pid: i64, start: Option<i64>, sig: rustix::process::Signal) {
    if !alive(pid, start) {
        return;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// The start time recorded with a pid (0 if the process is already gone).
fn start_of(pid: i64) -> i64 {
    u32::try_from(pid)
        .ok()
        .and_then(vfarm_driver::process::start_time)
        .map_or(0, |s| s as i64)
}

fn self_identity() -> (i64, i64) {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as i64;
    let start = start_of(pid);
    (pid, start)
}

/// Cancel one job; returns its state afterwards.
fn cancel(store: &Store, cfg: &QueueConfig, id: i64) -> Result<String> {
    match store.request_cancel(&actor(), id)? {
        CancelOutcome::Cancelled => Ok("cancelled".into()),
        CancelOutcome::AlreadyFinal { state } => Ok(state),
        CancelOutcome::Requested { runner } => {
            let j = store.job(id)?;
            if j.backend == "slurm" {
                // Slurm sends SIGTERM to the payload runner, which cancels like a local one.
                if let Some(sid) = j.slurm_id {
                    slurm_of(cfg).cancel(sid as u64)?;
                }
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    sync_slurm(store, cfg, &store.job(id)?)?;
                    let j = store.job(id)?;
                    if is_final(&j) || Instant::now() >= deadline {
                        return Ok(j.state);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            if let Some((pid, start)) = runner {
                signal(pid, start, rustix::process::Signal::TERM);
            }
            // The runner records the end once `vfarm run` removed the instance.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let j = store.job(id)?;
                if vfarm_jobs::JobState::parse(&j.state).is_some_and(|s| s.is_final()) {
                    return Ok(j.state);
                }
                let runner_gone = j.runner_pid.is_some_and(|p| !alive(p, j.runner_start));
                let never_came = j.runner_pid.is_none()
                    && j.claimed
                        .as_deref()
                        .and_then(ms)
                        .is_some_and(|c| now_ms() - c > REGISTER_GRACE_MS);
                if runner_gone || never_came || Instant::now() >= deadline {
                    if runner_gone || never_came {
                        end_lost(store, &j, "cancelled")?;
                        return Ok(store.job(id)?.state);
                    }
                    return Ok(j.state);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The final (state, reason) `event` leads to from a claimed job, as `vfarm_jobs::next`
/// decides; the store then records it compare-and-set from `starting`/`running`.
/// The end record of a claimed job that ends by `event` without an exit status.
fn ended_by(event: JobEvent, error: Option<&str>) -> JobEnd<'_> {
    let (state, reason) = ending(event);
    JobEnd {
        state,
        reason,
        error,
        ..Default::default()
    }
}

fn ending(event: JobEvent) -> (&'static str, &'static str) {
    let (state, reason) =
        vfarm_jobs::next(JobState::Starting, event).expect("every ending is legal once claimed");
    (state.as_str(), reason.map_or("exit", |r| r.as_str()))
}

/// A claimed job without a live runner: stop whatever it left and record the end once.
/// `as_state` is `failed` (reason lost) or `cancelled`.
fn end_lost(store: &Store, j: &JobRow, as_state: &str) -> Result<()> {
    if let Some(p) = j.payload_pid {
        // `vfarm run` removes its instance on SIGTERM.
        signal(p, j.payload_start, rustix::process::Signal::TERM);
    }
    let (state, reason) = ending(if as_state == "cancelled" || j.cancel_requested {
        JobEvent::Cancel
    } else {
        JobEvent::Lost
    });
    let msg = "its runner ended without recording an end; the job is not run again";
    if store.end_job(
        j.id,
        &["starting", "running"],
        &JobEnd {
            state,
            reason,
            error: (reason == "lost").then_some(msg),
            ..Default::default()
        },
    )? {
        tracing::warn!(job = j.id, state, "job without a runner ended");
    }
    Ok(())
}

/// Remove instances a lost job left (its payload was killed with the runner).
fn destroy_job_instances(ctx: &Ctx, store: &Store, id: i64) {
    let host = hostname_of(id);
    let Ok(instances) = store.instances() else {
        return;
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vfarm"));
    for i in instances.iter().filter(|i| i.hostname == host) {
        let st = Command::new(&exe)
            .arg("--data-dir")
            .arg(&ctx.data_dir)
            .args(["instance", "destroy", &i.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        tracing::info!(job = id, instance = %i.id, ?st, "removed a lost job's instance");
    }
}

/// The instance a finished run of job `id` left behind, if any.
fn kept_instance(store: &Store, id: i64) -> Result<Option<String>> {
    let host = hostname_of(id);
    Ok(store
        .instances()?
        .into_iter()
        .find(|i| i.hostname == host)
        .map(|i| i.id))
}

fn hostname_of(id: i64) -> String {
    format!("vfjob-{id}")
}

// ---------------------------------------------------------------------------------------
// The Slurm backend: the payload is `vfarm job run-one ID --in-slurm` on the allocated node
// (it records the job's end in the store like a local runner); Slurm's own state is only
// consulted for jobs whose payload never recorded an end.

fn is_final(j: &JobRow) -> bool {
    vfarm_jobs::JobState::parse(&j.state).is_some_and(|s| s.is_final())
}

fn slurm_of(cfg: &QueueConfig) -> vfarm_slurm::Slurm {
    vfarm_slurm::Slurm::new(cfg.slurm.conf.as_ref().map(PathBuf::from))
}

fn short_hostname() -> String {
    let host = crate::ctx::hostname();
    host.split('.').next().unwrap_or("").to_string()
}

fn slurm_refusal(e: vfarm_slurm::Error) -> anyhow::Error {
    let field = match &e {
        vfarm_slurm::Error::Unsatisfiable { field, .. } => field.clone(),
        _ => "backend".into(),
    };
    SubmitError {
        code: e.code(),
        field,
        message: format!("slurm: {e}"),
    }
    .into()
}

/// Claim a stored job and hand it to Slurm. This host's images are offered as node features
/// of this host's node, and the job asks for its image's feature, so Slurm runs it where
/// the image is. A job Slurm refuses ends `failed (refused)` and the error says why.
fn slurm_submit(
    ctx: &Ctx,
    cfg: &QueueConfig,
    store: &Store,
    id: i64,
    spec: &JobSpec,
) -> Result<u64> {
    let slurm = slurm_of(cfg);
    let dir = job_dir(ctx, id);
    let exe = std::env::current_exe().context("cannot find the vfarm binary")?;
    let argv = vec![
        exe.display().to_string(),
        "--data-dir".into(),
        ctx.data_dir.display().to_string(),
        "job".into(),
        "run-one".into(),
        id.to_string(),
        "--in-slurm".into(),
    ];
    let mut bj = vfarm_slurm::BatchJob::new(format!("vfarm-job-{id}"), &dir, argv);
    bj.stdout = dir.join("slurm.out");
    bj.stderr = dir.join("slurm.err");
    bj.cpus = spec.cpus_milli.div_ceil(1000).max(1) as u32;
    bj.memory_mib = Some(spec.memory_mib);
    bj.time_limit = Some(Duration::from_secs(
        spec.walltime_secs + cfg.slurm.grace_secs.unwrap_or(120),
    ));
    bj.partition = cfg.slurm.partition.clone();
    // sbatch runs with `--export=NONE`: the payload needs a PATH that has runc and the tools.
    bj.env.push((
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        }),
    ));
    // The payload must open the same state store as this process (PostgreSQL included).
    for k in [
        "VFARM_OCI_RUNTIME",
        "VFARM_ACCEL",
        "VFARM_LOG",
        "VFARM_DATABASE",
        "VFARM_DATABASE_SCHEMA",
    ] {
        if let Ok(v) = std::env::var(k) {
            bj.env.push((k.into(), v));
        }
    }
    if !store.claim_job(id, &serde_json::json!({"backend": "slurm"}))? {
        bail!("job {id} was claimed by someone else");
    }
    let result = (|| -> Result<u64, vfarm_slurm::Error> {
        let info = slurm.ping()?;
        if let Some(node) = info.node(&short_hostname()) {
            let metas: Vec<vfarm_slurm::ImageMeta> = ctx
                .images()
                .and_then(|r| Ok(r.list()?))
                .unwrap_or_default()
                .into_iter()
                .map(|i| vfarm_slurm::ImageMeta {
                    id: Some(i.id),
                    os: i.os.unwrap_or_else(|| "unknown".into()),
                    os_version: i.os_version.unwrap_or_else(|| "unknown".into()),
                    arch: i.arch.unwrap_or_else(|| std::env::consts::ARCH.into()),
                })
                .collect();
            let want = vfarm_slurm::merge_node_features(
                &node.features,
                &vfarm_slurm::image_features(&metas),
            );
            if want != node.features {
                slurm.set_node_features(&node.name, &want)?;
            }
            bj.features.extend(vfarm_slurm::image_feature(&spec.image));
        } else {
            tracing::warn!(host = %short_hostname(), "this host is no node of the Slurm cluster: the job is not routed by image feature");
        }
        slurm.ping()?.check_fits(&bj)?;
        slurm.submit(&bj)
    })();
    match result {
        Ok(sid) => {
            store.set_job_slurm_id(id, sid as i64)?;
            Ok(sid)
        }
        Err(e) => {
            let msg = format!("slurm: {e}");
            store.end_job(id, &["starting"], &ended_by(JobEvent::Refused, Some(&msg)))?;
            Err(slurm_refusal(e))
        }
    }
}

/// Bring a Slurm job's record up to date when Slurm says it ended but its payload never
/// recorded the end (cancelled while pending, killed by Slurm, node failure).
fn sync_slurm(store: &Store, cfg: &QueueConfig, j: &JobRow) -> Result<()> {
    if j.backend != "slurm" || is_final(j) {
        return Ok(());
    }
    let Some(sid) = j.slurm_id else {
        // Claimed but never handed to Slurm (the submitter died in between).
        if j.claimed
            .as_deref()
            .and_then(ms)
            .is_some_and(|c| now_ms() - c > REGISTER_GRACE_MS)
        {
            end_lost(store, j, "failed")?;
        }
        return Ok(());
    };
    use vfarm_slurm::SlurmState as S;
    let st = match slurm_of(cfg).state(sid as u64) {
        Ok(s) => s,
        Err(vfarm_slurm::Error::JobNotFound { .. }) => S::Other("PURGED".into()),
        Err(e) => return Err(e.into()),
    };
    if !st.is_terminal() {
        return Ok(());
    }
    // The payload records its end before it exits, so a terminal Slurm job whose record is
    // still open never will be.
    let fresh = store.job(j.id)?;
    if is_final(&fresh) {
        return Ok(());
    }
    let lost = |st: &S| format!("the Slurm job ended ({st:?}) without recording the job's end");
    let (event, code, msg) = match &st {
        S::Cancelled => (JobEvent::Cancel, None, None),
        S::Timeout => (
            JobEvent::Walltime,
            None,
            Some("Slurm killed the job at its time limit".to_string()),
        ),
        S::Completed { exit_code } | S::Failed { exit_code, .. } => {
            (JobEvent::Lost, Some(*exit_code), Some(lost(&st)))
        }
        other => (JobEvent::Lost, None, Some(lost(other))),
    };
    let (state, reason) = ending(if fresh.cancel_requested {
        JobEvent::Cancel
    } else {
        event
    });
    store.end_job(
        j.id,
        &["starting", "running"],
        &JobEnd {
            state,
            reason,
            exit_code: code,
            error: msg.as_deref(),
            ..Default::default()
        },
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The dispatcher

/// Start the dispatcher thread of `vfarm serve`.
pub fn spawn_dispatcher(ctx: &Ctx) -> Result<()> {
    let ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    let cfg = load_config(&ctx, None)?;
    std::thread::Builder::new()
        .name("job-dispatcher".into())
        .spawn(move || {
            let mut d = Dispatcher {
                cap: host_capacity(&cfg),
                cfg,
                children: Vec::new(),
                slurm_synced: Instant::now(),
            };
            tracing::info!(capacity = ?d.cap, "job dispatcher running");
            loop {
                if let Err(e) = d.round(&ctx) {
                    tracing::warn!("job dispatcher: {e:#}");
                }
                std::thread::sleep(TICK);
            }
        })?;
    Ok(())
}

struct Dispatcher {
    cfg: QueueConfig,
    cap: Capacity,
    /// Runners this process started, reaped as they end (they are their own sessions, so
    /// a killed service leaves them running).
    children: Vec<(i64, Child)>,
    slurm_synced: Instant,
}

impl Dispatcher {
    fn round(&mut self, ctx: &Ctx) -> Result<()> {
        self.children
            .retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
        let store = ctx.store()?;
        let now = now_ms();

        // Reconcile: claimed jobs whose runner is gone. Jobs another service sharing the
        // database claimed are its own: their runners are on its machine, and they use its
        // capacity.
        let elsewhere = store.jobs_claimed_elsewhere()?;
        let mut active_rows = store.jobs_in(&["starting", "running"])?;
        active_rows.retain(|j| !elsewhere.contains(&j.id));
        let mut active = Vec::new();
        for j in &active_rows {
            let gone = match j.runner_pid {
                Some(p) => !alive(p, j.runner_start),
                None => j
                    .claimed
                    .as_deref()
                    .and_then(ms)
                    .is_some_and(|c| now - c > REGISTER_GRACE_MS),
            };
            if j.backend == "slurm" {
                if self.slurm_synced.elapsed() >= Duration::from_secs(2) {
                    if let Err(e) = sync_slurm(&store, &self.cfg, j) {
                        tracing::warn!(job = j.id, "slurm: {e:#}");
                    }
                }
                // Slurm accounts for its own cluster's capacity.
                continue;
            }
            if gone {
                // Re-read: the runner may have recorded its end just before exiting.
                let fresh = store.job(j.id)?;
                if fresh.state == j.state {
                    end_lost(&store, &fresh, "failed")?;
                    destroy_job_instances(ctx, &store, j.id);
                }
                continue;
            }
            active.push(Active {
                id: j.id,
                owner: j.owner.clone(),
                queue: j.queue.clone(),
                cpus_milli: j.cpus_milli,
                memory_mib: j.memory_mib,
                driver: j.driver.clone(),
                since_ms: j.claimed.as_deref().and_then(ms).unwrap_or(now),
            });
        }
        if self.slurm_synced.elapsed() >= Duration::from_secs(2) {
            self.slurm_synced = Instant::now();
        }

        let queued: Vec<Candidate> = store
            .jobs_in(&["queued"])?
            .into_iter()
            .filter(|j| j.backend == "local")
            .map(|j| Candidate {
                id: j.id,
                owner: j.owner,
                queue: j.queue,
                priority: j.priority,
                submitted_ms: ms(&j.submitted).unwrap_or(now),
                cpus_milli: j.cpus_milli,
                memory_mib: j.memory_mib,
                driver: j.driver,
            })
            .collect();
        if queued.is_empty() {
            return Ok(());
        }
        let fs = &self.cfg.fair_share;
        let since = chrono::DateTime::from_timestamp_millis(now - fs.window_secs as i64 * 1000)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let history: Vec<UsageRecord> = store
            .jobs_ended_since(&since)?
            .into_iter()
            .filter_map(|j| {
                Some(UsageRecord {
                    start_ms: ms(j.claimed.as_deref()?)?,
                    end_ms: ms(j.ended.as_deref()?)?,
                    owner: j.owner,
                    cpus_milli: j.cpus_milli,
                })
            })
            .collect();
        let usage = vfarm_jobs::usage_by_owner(&history, &active, now, fs);
        let limits: BTreeMap<String, u32> = self
            .cfg
            .queues
            .values()
            .filter_map(|q| match q {
                vfarm_jobs::Queue::Exec(e) => e.max_running.map(|m| (e.name.clone(), m)),
                _ => None,
            })
            .collect();
        for p in vfarm_jobs::pick(&queued, &active, &self.cap, &limits, &usage, fs) {
            let detail = serde_json::json!({"priority": p.priority, "owner": p.owner,
                "usage": p.usage, "rivals": p.rivals});
            if !store.claim_job(p.id, &detail)? {
                continue; // another dispatcher took it
            }
            match self.spawn_runner(ctx, p.id) {
                Ok(c) => self.children.push((p.id, c)),
                Err(e) => {
                    let msg = format!("cannot start the job's runner: {e:#}");
                    store.end_job(p.id, &["starting"], &ended_by(JobEvent::Error, Some(&msg)))?;
                }
            }
        }
        Ok(())
    }

    fn spawn_runner(&self, ctx: &Ctx, id: i64) -> Result<Child> {
        let dir = job_dir(ctx, id);
        std::fs::create_dir_all(&dir)?;
        let log = File::create(dir.join("runner.log"))?;
        let exe = std::env::current_exe().context("cannot find the vfarm binary")?;
        Ok(Command::new(exe)
            .arg("--data-dir")
            .arg(&ctx.data_dir)
            .args(["job", "run-one", &id.to_string()])
            .env_remove("VFARM_OUTPUT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }
}

// ---------------------------------------------------------------------------------------
// The runner

/// Set on SIGTERM/SIGINT: the runner then cancels its job.
fn term_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            let _ = tx.send(());
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                let _ = tx.send(());
                return std::future::pending().await;
            };
            let _ = tx.send(());
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        });
        set.store(true, Ordering::SeqCst);
    });
    // Registered before the runner announces itself, so a cancel never kills it unhandled.
    let _ = rx.recv_timeout(Duration::from_secs(5));
    flag
}

/// What the runner prepared on the host for staging.
struct Staged {
    copy_in: Vec<String>,
    copy_out: Vec<String>,
    /// (local file, URL) to upload after the run.
    uploads: Vec<(PathBuf, String)>,
}

fn http_client() -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?)
}

fn stage_files(spec: &JobSpec, dir: &Path) -> Result<Staged> {
    let input = dir.join("stage-in");
    let output = dir.join("output");
    std::fs::create_dir_all(&output)?;
    let mut st = Staged {
        copy_in: Vec::new(),
        copy_out: Vec::new(),
        uploads: Vec::new(),
    };
    for (n, s) in spec.stage_in.iter().enumerate() {
        let guest = spec.in_instance(&s.dst);
        let host = if is_http(&s.src) {
            std::fs::create_dir_all(&input)?;
            let local = input.join(format!("{n}-{}", base_name(&guest)));
            let resp = http_client()?
                .get(&s.src)
                .send()
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("stage-in: cannot download {}", s.src))?;
            let bytes = resp
                .bytes()
                .with_context(|| format!("stage-in: cannot download {}", s.src))?;
            std::fs::write(&local, &bytes)?;
            local
        } else if let Some(p) = file_uri_path(&s.src) {
            PathBuf::from(p)
        } else {
            PathBuf::from(&s.src)
        };
        st.copy_in.push(format!("{}:{guest}", host.display()));
    }
    let mut outs: Vec<(String, String)> = spec
        .stage_out
        .iter()
        .map(|s| (spec.in_instance(&s.src), s.dst.clone()))
        .collect();
    // JSDL Output/Error files come back with the job, for `vfarm job logs`.
    for f in [&spec.stdout_file, &spec.stderr_file].into_iter().flatten() {
        outs.push((spec.in_instance(f), base_name(f)));
    }
    for (n, (guest, dst)) in outs.into_iter().enumerate() {
        let host = if is_http(&dst) {
            let local = output.join(format!("upload-{n}-{}", base_name(&guest)));
            st.uploads.push((local.clone(), dst.clone()));
            local
        } else if let Some(p) = file_uri_path(&dst) {
            PathBuf::from(p)
        } else if dst.starts_with('/') {
            PathBuf::from(&dst)
        } else {
            output.join(base_name(&dst))
        };
        st.copy_out.push(format!("{guest}:{}", host.display()));
    }
    Ok(st)
}

/// The command line for `vfarm run`.
fn run_argv(ctx: &Ctx, id: i64, spec: &JobSpec, st: &Staged) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--data-dir".into(),
        ctx.data_dir.display().to_string(),
        "run".into(),
        "--image".into(),
        spec.image.clone(),
        "--driver".into(),
        spec.driver.clone(),
        "--cpus".into(),
        milli_to_cpus(spec.cpus_milli),
        "--memory".into(),
        format!("{}M", spec.memory_mib),
        "--timeout".into(),
        format!("{}s", spec.walltime_secs),
        "--hostname".into(),
        hostname_of(id),
        "--workdir".into(),
        spec.workdir().to_string(),
        // The instance's console (a VM's boot messages) is kept with the job.
        "--console-log".into(),
        job_dir(ctx, id).join("console.log").display().to_string(),
        // How the run ended, typed: exit status 124 is also a command's own.
        "--outcome".into(),
        job_dir(ctx, id).join(OUTCOME_FILE).display().to_string(),
    ];
    if spec.keep_on_failure {
        // The kept instance lives this long; never shorter than the run itself.
        let keep = spec
            .keep_for_secs
            .unwrap_or(86_400)
            .max(spec.walltime_secs + 600);
        a.extend([
            "--keep-on-failure".into(),
            "--expiry".into(),
            format!("{keep}s"),
        ]);
    }
    for (k, v) in &spec.env {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    for c in &st.copy_in {
        a.extend(["--copy-in".into(), c.clone()]);
    }
    for c in &st.copy_out {
        a.extend(["--copy-out".into(), c.clone()]);
    }
    a.push("--".into());
    // JSDL Input/Output/Error: redirect inside the instance, relative to the working dir.
    let redirects: Vec<(&str, &String)> = [
        ("<", &spec.stdin),
        (">", &spec.stdout_file),
        ("2>", &spec.stderr_file),
    ]
    .into_iter()
    .filter_map(|(op, f)| f.as_ref().map(|f| (op, f)))
    .collect();
    if !redirects.is_empty() {
        let mut script = String::new();
        let mut tail = String::new();
        for (i, (op, _)) in redirects.iter().enumerate() {
            script.push_str(&format!("r{i}=$1; shift; "));
            tail.push_str(&format!(" {op}\"$r{i}\""));
        }
        script.push_str(&format!("exec \"$@\"{tail}"));
        a.extend(["/bin/sh".into(), "-c".into(), script, "sh".into()]);
        a.extend(redirects.iter().map(|(_, f)| (*f).clone()));
    }
    a.extend(spec.argv.iter().cloned());
    a
}

fn run_one(ctx: &Ctx, id: i64, in_slurm: bool) -> Result<i32> {
    // Own session: a terminal's signals or the service's process group do not reach us.
    if !in_slurm {
        let _ = rustix::process::setsid();
    }
    let term = term_flag();
    let store = ctx.store()?;
    let (pid, start) = self_identity();
    match store.register_runner(id, pid, start)? {
        Registration::Registered => {}
        Registration::CancelRequested => {
            store.end_job(id, &["starting"], &ended_by(JobEvent::Cancel, None))?;
            return Ok(0);
        }
        Registration::Refused { state } => {
            bail!("job {id} is {state} or has a runner already; not running it again")
        }
    }
    let j = store.job(id)?;
    let spec: JobSpec = serde_json::from_str(&j.spec).context("stored job spec")?;
    let dir = job_dir(ctx, id);
    std::fs::create_dir_all(&dir)?;
    let fail = |msg: String| -> Result<i32> {
        eprintln!("vfarm: job {id}: {msg}");
        store.end_job(
            id,
            &["starting", "running"],
            &ended_by(JobEvent::Error, Some(&msg)),
        )?;
        Ok(1)
    };
    let staged = match stage_files(&spec, &dir) {
        Ok(s) => s,
        Err(e) => return fail(format!("{e:#}")),
    };
    let exe = std::env::current_exe().context("cannot find the vfarm binary")?;
    let argv = run_argv(ctx, id, &spec, &staged);
    let mut child = match Command::new(exe)
        .args(&argv)
        .env_remove("VFARM_OUTPUT")
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("stdout"))?)
        .stderr(File::create(dir.join("stderr"))?)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start vfarm run: {e}")),
    };
    let cpid = child.id() as i64;
    store.set_job_payload(id, cpid, start_of(cpid))?;
    if !store.mark_job_running(id)? {
        // Someone ended the job meanwhile (a cancel that found no runner yet).
        signal(cpid, None, rustix::process::Signal::TERM);
        let _ = child.wait();
        return Ok(0);
    }
    // `vfarm run` enforces the wall time; this backstop only catches a stuck `vfarm run`.
    let backstop = Instant::now() + Duration::from_secs(spec.walltime_secs + 300);
    let mut forwarded = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if term.load(Ordering::SeqCst) && !forwarded {
            forwarded = true;
            signal(cpid, None, rustix::process::Signal::TERM);
        }
        if Instant::now() >= backstop {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    for (local, url) in &staged.uploads {
        let r = (|| -> Result<()> {
            let body = std::fs::read(local)?;
            http_client()?
                .put(url)
                .body(body)
                .send()?
                .error_for_status()?;
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("vfarm: job {id}: stage-out to {url} failed: {e:#}");
        }
    }
    let stderr_text = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    // `vfarm run` removes its instance unless it keeps it for --keep-on-failure, and the
    // job's hostname is its own: an instance still named so is the kept one. (Its stderr
    // line is not evidence: the job's own stderr goes to the same file.)
    let mut kept = kept_instance(&store, id)?;
    // `vfarm run` reports its own failures (not the command's) as `vfarm: error:`.
    let vfarm_error = stderr_text
        .lines()
        .find(|l| l.starts_with("vfarm: error:"))
        .map(|l| l.trim_start_matches("vfarm: error: ").to_string());
    let cancelled = forwarded || store.job(id)?.cancel_requested;
    // A cancelled job keeps nothing. A cancel that reaches `vfarm run` while it is still
    // making its instance can leave that instance behind (seen under load).
    if cancelled && kept.is_some() {
        destroy_job_instances(ctx, &store, id);
        kept = kept_instance(&store, id)?;
    }
    // `vfarm run` says how it ended; without its word (it died), a failure it printed is
    // still an error, anything else the command's own exit.
    let outcome: Option<crate::cmd::instance::RunOutcome> = std::fs::read(dir.join(OUTCOME_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let vfarm_error = match &outcome {
        Some(o) if o.reason == "error" => o.error.clone().or(vfarm_error),
        Some(_) => None,
        None => vfarm_error,
    };
    let (state, reason) = ending(if cancelled {
        JobEvent::Cancel
    } else if outcome.as_ref().is_some_and(|o| o.reason == "timeout") {
        JobEvent::Walltime
    } else if vfarm_error.is_some() && (code != 0 || outcome.is_some()) {
        JobEvent::Error
    } else {
        JobEvent::Exit { code }
    });
    let error = match reason {
        "walltime" => Some(format!(
            "killed at its wall-time limit of {} s",
            spec.walltime_secs
        )),
        "error" => vfarm_error,
        _ => None,
    };
    let ended = store.end_job(
        id,
        &["starting", "running"],
        &JobEnd {
            state,
            reason,
            exit_code: Some(code),
            error: error.as_deref(),
            instance_id: kept.as_deref(),
        },
    )?;
    if !ended {
        return Err(anyhow!("job {id} was ended by someone else meanwhile"));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_and_stage_arguments() {
        assert_eq!(file_uri_path("file:///a/b"), Some("/a/b"));
        assert_eq!(file_uri_path("file://localhost/a"), Some("/a"));
        assert_eq!(file_uri_path("FILE:/Users/x"), Some("/Users/x"));
        assert_eq!(file_uri_path("file:rel"), None);
        assert_eq!(file_uri_path("/plain"), None);
        let s = parse_stage_in("http://h:8080/x.txt:in/x.txt").unwrap();
        assert_eq!(
            (s.src.as_str(), s.dst.as_str()),
            ("http://h:8080/x.txt", "in/x.txt")
        );
        assert!(parse_stage_in("http://h/x.txt").is_err());
        let s = parse_stage_out("out.txt:https://h/put/out.txt").unwrap();
        assert_eq!(
            (s.src.as_str(), s.dst.as_str()),
            ("out.txt", "https://h/put/out.txt")
        );
        assert!(parse_stage_out(":x").is_err());
        let mut s = Stage {
            src: "../x".into(),
            dst: "result".into(),
        };
        let e = check_stage("stage-out", &mut s, false).unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        let mut s = Stage {
            src: "ftp://h/x".into(),
            dst: "x".into(),
        };
        let e = check_stage("DataStaging", &mut s, true).unwrap_err();
        assert!(e.to_string().contains("DataStaging"), "{e}");
    }

    fn spec() -> JobSpec {
        JobSpec {
            name: None,
            owner: "o".into(),
            queue: "batch".into(),
            image: "img".into(),
            requested_image: None,
            os: None,
            os_version: None,
            arch: None,
            driver: "oci".into(),
            backend: Backend::Local,
            cpus_milli: 500,
            memory_mib: 256,
            walltime_secs: 90,
            priority: 0,
            argv: vec!["/bin/date".into(), "-v".into()],
            env: vec![("A".into(), "b c".into())],
            workdir: None,
            stdin: Some("stdin".into()),
            stdout_file: None,
            stderr_file: Some("err file".into()),
            stage_in: vec![],
            stage_out: vec![Stage {
                src: "res.txt".into(),
                dst: "kept.txt".into(),
            }],
            keep_on_failure: true,
            keep_for_secs: Some(60),
        }
    }

    #[test]
    fn the_run_command_line_carries_limits_staging_and_redirections() {
        let ctx = Ctx::new(PathBuf::from("/d"), crate::ctx::OutputFormat::Table, 0);
        let sp = spec();
        let st = stage_files(&sp, &std::env::temp_dir().join("vfarm-job-unit")).unwrap();
        assert_eq!(
            st.copy_out,
            [
                format!(
                    "/tmp/job/res.txt:{}",
                    std::env::temp_dir()
                        .join("vfarm-job-unit/output/kept.txt")
                        .display()
                ),
                format!(
                    "/tmp/job/err file:{}",
                    std::env::temp_dir()
                        .join("vfarm-job-unit/output/err file")
                        .display()
                ),
            ]
        );
        let a = run_argv(&ctx, 7, &sp, &st);
        let s = a.join(" ");
        for want in [
            "--cpus 0.5",
            "--memory 256M",
            "--timeout 90s",
            "--hostname vfjob-7",
            "--workdir /tmp/job",
            // The kept instance outlives the run by at least the run's own length.
            "--keep-on-failure --expiry 690s",
            "--env A=b c",
        ] {
            assert!(s.contains(want), "{want:?} not in {s}");
        }
        let tail: Vec<&str> = a[a.iter().position(|x| x == "--").unwrap() + 1..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "/bin/sh",
                "-c",
                r#"r0=$1; shift; r1=$1; shift; exec "$@" <"$r0" 2>"$r1""#,
                "sh",
                "stdin",
                "err file",
                "/bin/date",
                "-v"
            ]
        );
    }
}
