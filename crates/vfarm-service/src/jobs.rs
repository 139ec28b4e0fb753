//! Batch jobs: submission (flags, JSON or JSDL, checked against the queues, this host and
//! the images, stored `queued`), the job view, and the Slurm hand-off. The dispatcher and
//! the runner are still in the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vfarm_jobs::{
    cpus_to_milli, milli_to_cpus, Backend, Capacity, JobEvent, JobSpec, JobState, QueueConfig,
    Refusal, Stage,
};
use vfarm_proto::ErrorCode;
use vfarm_store::jobs::JobEnd;
use vfarm_store::jobs::{JobRow, NewJob};
use vfarm_store::Store;

use crate::env::Env;
use crate::Caller;
use vfarm_image::Image;

/// A request refused before anything was stored (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SubmitError {
    pub code: ErrorCode,
    pub field: String,
    pub message: String,
}

pub fn refuse(code: ErrorCode, field: &str, message: impl Into<String>) -> anyhow::Error {
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

/// The jobs config file `path` names, else the data dir's (which may not exist).
fn config_file(env: &Env, path: Option<&Path>) -> PathBuf {
    path.map_or_else(|| env.data_dir.join("jobs.toml"), Path::to_path_buf)
}

pub fn load_config(env: &Env, path: Option<&Path>) -> Result<QueueConfig> {
    let default = config_file(env, None);
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
pub fn host_capacity(cfg: &QueueConfig) -> Capacity {
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

pub fn job_dir(env: &Env, id: i64) -> PathBuf {
    env.data_dir.join("jobs").join(id.to_string())
}

pub fn parse_id(s: &str) -> Result<i64> {
    s.trim_start_matches("job-").parse::<i64>().map_err(|_| {
        refuse(
            ErrorCode::InvalidRequest,
            "id",
            format!("`{s}` is not a job id (a number)"),
        )
    })
}

pub fn ms(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// The request after flags and JSDL are merged, before routing.
#[derive(Default)]
pub struct Request {
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

/// The request a JSDL document asks for; `source` names it in messages (a file name, or
/// `request body`). What vfarm parses but cannot honour goes to `warnings`.
pub fn from_jsdl(source: &str, text: &str, warnings: &mut Vec<String>) -> Result<Request> {
    let path = Path::new(source);
    let parsed = vfarm_jsdl::parse(text).map_err(|e| {
        refuse(
            ErrorCode::InvalidJsdl,
            "jsdl",
            format!("{}: refused: {e}", path.display()),
        )
    })?;
    warnings.extend(parsed.warnings.iter().map(|w| w.to_string()));
    if let Some(vfarm_jsdl::ApplicationBody::Posix(p)) = parsed
        .value
        .description
        .application
        .as_ref()
        .and_then(|a| a.body.as_ref())
    {
        for (limit, set) in [
            ("CPUTimeLimit", p.cpu_time_limit.is_some()),
            ("ProcessCountLimit", p.process_count_limit.is_some()),
            ("VirtualMemoryLimit", p.virtual_memory_limit.is_some()),
            ("ThreadCountLimit", p.thread_count_limit.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "posix:{limit} is not applied: vfarm limits wall time, CPUs and memory only"
                ));
            }
        }
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
        warnings.push(
            "xsdl:InstanceDefinition is ignored; the job is routed by its OS requirements".into(),
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

pub fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://") || file_uri_path(s).is_some()
}

pub fn is_http(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// The local path of a `file:` URI: `file:///p`, `file://localhost/p` and `file:/p` (the
/// short form real JSDL documents use).
pub fn file_uri_path(s: &str) -> Option<&str> {
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
pub fn parse_stage_in(s: &str) -> Result<Stage> {
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
pub fn parse_stage_out(s: &str) -> Result<Stage> {
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
pub fn check_stage(field: &str, s: &mut Stage, inbound: bool) -> Result<()> {
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

pub fn parse_os(s: &str) -> Result<vfarm_jsdl::OperatingSystemName> {
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

pub fn parse_arch(s: &str) -> Result<vfarm_jsdl::CpuArchitectureName> {
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

/// The job view shared by `submit`, `show` and `ls`, locally and over the API.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct JobView {
    pub id: i64,
    pub name: Option<String>,
    pub owner: String,
    pub queue: String,
    pub priority: i32,
    pub state: String,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub backend: String,
    pub driver: String,
    pub image: String,
    pub cpus: String,
    pub memory_mib: u64,
    pub walltime_secs: u64,
    pub submitted: String,
    pub claimed: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// Seconds from submit to the command's start, and of its run.
    pub wait_secs: Option<f64>,
    pub run_secs: Option<f64>,
    pub instance_kept: Option<String>,
    pub slurm_id: Option<i64>,
    /// The runner process (`vfarm job run-one`) while the job is claimed or running.
    pub runner_pid: Option<i64>,
    /// The job's files on the service's host (not sent over the API).
    #[serde(default)]
    pub dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<serde_json::Value>>,
}

pub fn view(env: &Env, store: &Store, j: &JobRow, detail: bool) -> Result<JobView> {
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
        dir: job_dir(env, j.id),
        spec: detail.then(|| serde_json::from_str(&j.spec).unwrap_or_default()),
        events,
    })
}

/// A job as the CLI's flags or the API's body give it; a JSDL document's values are
/// overridden by the fields set beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Image id, id prefix or name (or route by `os`, `os_version`, `arch`).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    /// oci, qemu or any.
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    /// e.g. 512M.
    #[serde(default)]
    pub memory: Option<String>,
    /// e.g. 30m.
    #[serde(default)]
    pub walltime: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub queue: Option<String>,
    /// Who the job is accounted to (admins only; default: the caller).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// SRC:DST; over the API SRC must be an http(s) URL.
    #[serde(default)]
    pub stage_in: Vec<String>,
    /// SRC:DST; over the API DST must be an http(s) URL or a bare name kept with the job.
    #[serde(default)]
    pub stage_out: Vec<String>,
    /// KEY=VALUE.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub keep_on_failure: bool,
    /// local or slurm.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    /// A JSDL 1.0 document (source name, text); not part of a JSON body.
    #[serde(skip)]
    pub jsdl: Option<(String, String)>,
}

/// A stored job, and what of the request vfarm cannot honour.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub job: JobRow,
    pub warnings: Vec<String>,
    /// Which image routing by OS/arch chose and why (None when the image was named).
    pub routed: Option<String>,
}

/// The driver that runs `image` when `want` (oci, qemu or any) is asked for; None when that
/// driver cannot run it.
fn driver_for(image: &Image, want: &str) -> Option<&'static str> {
    let has_tar = image.artifact(vfarm_core::Format::Tar).is_some();
    let bootable = image.kernel.is_some() && image.artifact(vfarm_core::Format::Qcow2).is_some();
    match want {
        "any" | "oci" if has_tar => Some("oci"),
        "any" | "qemu" if bootable => Some("qemu"),
        _ => None,
    }
}

/// Routing by OS: of the `matching` images, only those `want_driver` can run on this host
/// are candidates (routing to one that cannot run would only move the refusal to the driver
/// check); the queue's own image is preferred, else the newest. Returns the choice, why it
/// was chosen, and how many could run.
fn route_image<'a>(
    matching: &[&'a Image],
    want_driver: &str,
    queue_image: Option<&str>,
    queue: &str,
) -> Option<(&'a Image, String, usize)> {
    let runnable: Vec<&Image> = matching
        .iter()
        .copied()
        .filter(|i| runs_here(i) && driver_for(i, want_driver).is_some())
        .collect();
    let preferred = queue_image.and_then(|q| {
        runnable
            .iter()
            .find(|i| i.name.as_deref() == Some(q) || i.id.starts_with(q))
    });
    let (chosen, why) = match preferred {
        Some(i) => (*i, format!("the default image of queue `{queue}`")),
        None => (
            *runnable.iter().max_by(|a, b| a.created.cmp(&b.created))?,
            "the newest".to_string(),
        ),
    };
    Some((chosen, why, runnable.len()))
}

/// The image is for this host's architecture (or has none recorded).
fn runs_here(image: &Image) -> bool {
    image
        .arch
        .as_deref()
        .is_none_or(|a| vfarm_jobs::queue::arch_same(a, std::env::consts::ARCH))
}

/// Which drivers can run an image, for a refusal that lists the images.
fn runnable_by(image: &Image) -> &'static str {
    if !runs_here(image) {
        return "not for this host's architecture";
    }
    match (driver_for(image, "oci"), driver_for(image, "qemu")) {
        (Some(_), Some(_)) => "runs with oci or qemu",
        (Some(_), None) => "runs with oci",
        (None, Some(_)) => "runs with qemu",
        (None, None) => "runs with no driver",
    }
}

/// Who may submit what from where: the CLI on the server's own machine may stage from and to
/// host paths; a caller over the API only from and to URLs (and names kept with the job),
/// or it could read and write the server's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Remote,
}

/// Check a job against the queues, this host and the images, and store it `queued`.
pub fn submit(
    env: &Env,
    cfg_path: Option<&Path>,
    caller: &Caller,
    origin: Origin,
    a: JobRequest,
) -> Result<Submitted> {
    let cfg = load_config(env, cfg_path)?;
    let cap = host_capacity(&cfg);
    let mut warnings = Vec::new();
    let mut req = match &a.jsdl {
        Some((source, text)) => {
            if !a.command.is_empty() {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    "command",
                    "give a command or a JSDL document, not both",
                ));
            }
            from_jsdl(source, text, &mut warnings)?
        }
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
    if origin == Origin::Remote {
        for s in &req.stage_in {
            if !is_http(&s.src) {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    "stage_in",
                    format!(
                        "`{}`: over the API a file is staged in from an http(s) URL only",
                        s.src
                    ),
                ));
            }
        }
        for s in &req.stage_out {
            let bare = !s.dst.contains('/') && !s.dst.contains(':') && !s.dst.starts_with('.');
            if !is_http(&s.dst) && !bare {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    "stage_out",
                    format!(
                        "`{}`: over the API a file is staged out to an http(s) URL or a bare name kept with the job",
                        s.dst
                    ),
                ));
            }
        }
    }
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "command",
            "no command to run",
        ));
    }
    let owner = match a.owner.clone() {
        Some(o) if o != caller.user && !caller.admin => {
            return Err(refuse(
                ErrorCode::Forbidden,
                "owner",
                format!("only admins submit jobs for others (`{o}`)"),
            ))
        }
        Some(o) => o,
        None => caller.user.clone(),
    };
    // A certificate's DN has spaces; a name must still print on one line.
    if owner.trim().is_empty() || owner.contains(char::is_control) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "owner",
            format!("`{owner}`: must be a non-empty name on one line"),
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
    let want_driver = req
        .driver
        .clone()
        .or(queue.driver.clone())
        .unwrap_or("any".into());
    let want_driver = want_driver.as_str();
    if !matches!(want_driver, "any" | "oci" | "qemu") {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "driver",
            format!("`{want_driver}`: use oci, qemu or any"),
        ));
    }
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
    // A host without Slurm is told so first: no other answer helps there.
    if backend == Backend::Slurm {
        // scontrol retries a missing slurm.conf for a minute; say it at once.
        if let Some(c) = cfg.slurm.conf.as_deref() {
            if !Path::new(c).is_file() {
                return Err(refuse(
                    ErrorCode::InvalidConfig,
                    "slurm.conf",
                    format!(
                        "`{c}` (conf under [slurm] in {}) is no file: point it at the cluster's slurm.conf, or use --backend local",
                        config_file(env, cfg_path).display()
                    ),
                ));
            }
        }
        slurm_of(&cfg).ping().map_err(|e| slurm_refusal(env, e))?;
    }
    let mut routed = None;
    let images = env.images()?;
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
        match route_image(&matching, want_driver, queue.image.as_deref(), &queue.name) {
            Some((i, why, runnable)) => {
                routed = Some(format!(
                    "image {} ({}): {why} of {runnable} image(s) matching {}/{}/{} that driver {want_driver} can run here ({} match but cannot)",
                    i.display_name(),
                    &i.id[..12.min(i.id.len())],
                    req.os.as_deref().unwrap_or("any"),
                    req.os_version.as_deref().unwrap_or("any"),
                    req.arch.as_deref().unwrap_or("any"),
                    matching.len() - runnable,
                ));
                i.clone()
            }
            None => {
                return Err(SubmitError::from(Refusal::NoImage {
                    os: req.os.clone().unwrap_or("any".into()),
                    version: req.os_version.clone().unwrap_or("any".into()),
                    arch: req.arch.clone().unwrap_or("any".into()),
                    known: all
                        .iter()
                        .map(|i| {
                            format!(
                                "{} {}/{}/{} ({})",
                                i.display_name(),
                                i.os.as_deref().unwrap_or("?"),
                                i.os_version.as_deref().unwrap_or("?"),
                                i.arch.as_deref().unwrap_or("?"),
                                runnable_by(i)
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
                "give --image NAME or --os OS (queue `{}` has no default image); fix: `vfarm image ls` lists the images, or set `image` under [queues.{}] in {}",
                queue.name,
                queue.name,
                config_file(env, cfg_path).display()
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
    let driver = match driver_for(&image, want_driver) {
        Some(d) => d,
        None => {
            return Err(refuse(
                ErrorCode::Unsatisfiable,
                "driver",
                format!(
                    "image `{}` cannot run with driver {want_driver} (oci needs its root filesystem tarball, qemu a bootable qcow2 image built with --boot vm)",
                    image.display_name()
                ),
            ))
        }
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
    if backend == Backend::Slurm {
        slurm_precheck(env, &cfg, &spec)?;
    }
    let spec_json = serde_json::to_string(&spec)?;
    let store = env.store()?;
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
    std::fs::create_dir_all(job_dir(env, id))?;
    if backend == Backend::Slurm {
        slurm_submit(env, &cfg, &store, id, &spec)?;
    }
    Ok(Submitted {
        job: store.job(id)?,
        warnings,
        routed,
    })
}

/// A job's log streams, as `vfarm job logs` and `GET /api/v1/jobs/{id}/logs/{stream}` show
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The instance's console (a VM's boot messages).
    Console,
}

impl LogStream {
    pub fn parse(s: &str) -> Option<LogStream> {
        match s {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            "console" => Some(LogStream::Console),
            _ => None,
        }
    }
}

/// The files that make up one of a job's log streams, in order: the run's own output, then
/// the file JSDL redirected it to (which comes back with the job's outputs). Files not
/// written (yet) are left out.
pub fn log_files(env: &Env, j: &JobRow, stream: LogStream) -> Result<Vec<PathBuf>> {
    let dir = job_dir(env, j.id);
    let spec: JobSpec = serde_json::from_str(&j.spec).context("stored job spec")?;
    let (own, redirected) = match stream {
        LogStream::Console => (dir.join("console.log"), None),
        LogStream::Stdout => (dir.join("stdout"), spec.stdout_file.as_deref()),
        LogStream::Stderr => (dir.join("stderr"), spec.stderr_file.as_deref()),
    };
    let mut files = vec![own];
    if let Some(f) = redirected {
        files.push(dir.join("output").join(base_name(f)));
    }
    files.retain(|f| f.is_file());
    Ok(files)
}

pub fn output_files(dir: &Path) -> Vec<(String, u64)> {
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

pub fn base_name(p: &str) -> String {
    p.rsplit('/').next().unwrap_or(p).to_string()
}

pub fn hostname_of(id: i64) -> String {
    format!("vfjob-{id}")
}

pub fn is_final(j: &JobRow) -> bool {
    vfarm_jobs::JobState::parse(&j.state).is_some_and(|s| s.is_final())
}

pub fn slurm_of(cfg: &QueueConfig) -> vfarm_slurm::Slurm {
    vfarm_slurm::Slurm::new(cfg.slurm.conf.as_ref().map(PathBuf::from))
}

pub fn short_hostname() -> String {
    let host = crate::env::hostname();
    host.split('.').next().unwrap_or("").to_string()
}

/// A Slurm error as one line naming the fix: a host without a Slurm configuration is told
/// where to set one.
pub fn slurm_refusal(env: &Env, e: vfarm_slurm::Error) -> anyhow::Error {
    let field = match &e {
        vfarm_slurm::Error::Unsatisfiable { field, .. } => field.clone(),
        _ => "backend".into(),
    };
    let message = match &e {
        vfarm_slurm::Error::NotConfigured { tool } => format!(
            "slurm: {tool} finds no Slurm configuration on this host: set `conf = \"/etc/slurm/slurm.conf\"` (the cluster's slurm.conf) under [slurm] in {}, or use --backend local",
            config_file(env, None).display()
        ),
        _ => format!("slurm: {e}").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; "),
    };
    SubmitError {
        code: e.code(),
        field,
        message,
    }
    .into()
}

/// Claim a stored job and hand it to Slurm. This host's images are offered as node features
/// of this host's node, and the job asks for its image's feature, so Slurm runs it where
/// the image is. A job Slurm refuses ends `failed (refused)` and the error says why.
pub fn slurm_submit(
    env: &Env,
    cfg: &QueueConfig,
    store: &Store,
    id: i64,
    spec: &JobSpec,
) -> Result<u64> {
    let slurm = slurm_of(cfg);
    let mut bj = slurm_job(env, cfg, id, spec)?;
    if !store.claim_job(id, &serde_json::json!({"backend": "slurm"}))? {
        bail!("job {id} was claimed by someone else");
    }
    let result = slurm_place(env, &slurm, &mut bj, spec).and_then(|()| slurm.submit(&bj));
    match result {
        Ok(sid) => {
            store.set_job_slurm_id(id, sid as i64)?;
            Ok(sid)
        }
        Err(e) => {
            let msg = format!("slurm: {e}");
            store.end_job(id, &["starting"], &ended_by(JobEvent::Refused, Some(&msg)))?;
            Err(slurm_refusal(env, e))
        }
    }
}

/// Ask Slurm whether it can take `spec` before anything is stored: a cluster that is not
/// configured or cannot place the job is refused without leaving a job record.
pub fn slurm_precheck(env: &Env, cfg: &QueueConfig, spec: &JobSpec) -> Result<()> {
    let mut bj = slurm_job(env, cfg, 0, spec)?;
    slurm_place(env, &slurm_of(cfg), &mut bj, spec).map_err(|e| slurm_refusal(env, e))
}

/// The batch job that runs job `id` through `vfarm job run-one --in-slurm`.
fn slurm_job(
    env: &Env,
    cfg: &QueueConfig,
    id: i64,
    spec: &JobSpec,
) -> Result<vfarm_slurm::BatchJob> {
    let dir = job_dir(env, id);
    let exe = std::env::current_exe().context("cannot find the vfarm binary")?;
    let argv = vec![
        exe.display().to_string(),
        "--data-dir".into(),
        env.data_dir.display().to_string(),
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
    Ok(bj)
}

/// Offer this host's images as node features, ask for the job's image, and check that some
/// node can run the job.
fn slurm_place(
    env: &Env,
    slurm: &vfarm_slurm::Slurm,
    bj: &mut vfarm_slurm::BatchJob,
    spec: &JobSpec,
) -> Result<(), vfarm_slurm::Error> {
    let info = slurm.ping()?;
    if let Some(node) = info.node(&short_hostname()) {
        let metas: Vec<vfarm_slurm::ImageMeta> = env
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
        let want =
            vfarm_slurm::merge_node_features(&node.features, &vfarm_slurm::image_features(&metas));
        if want != node.features {
            slurm.set_node_features(&node.name, &want)?;
        }
        if let Some(f) = vfarm_slurm::image_feature(&spec.image) {
            if !bj.features.contains(&f) {
                bj.features.push(f);
            }
        }
    } else {
        tracing::warn!(host = %short_hostname(), "this host is no node of the Slurm cluster: the job is not routed by image feature");
    }
    slurm.ping()?.check_fits(bj)
}

/// The final (state, reason) `event` leads to from a claimed job, as `vfarm_jobs::next`
/// decides; the store then records it compare-and-set from `starting`/`running`.
/// The end record of a claimed job that ends by `event` without an exit status.
pub fn ended_by(event: JobEvent, error: Option<&str>) -> JobEnd<'_> {
    let (state, reason) = ending(event);
    JobEnd {
        state,
        reason,
        error,
        ..Default::default()
    }
}

pub fn ending(event: JobEvent) -> (&'static str, &'static str) {
    let (state, reason) =
        vfarm_jobs::next(JobState::Starting, event).expect("every ending is legal once claimed");
    (state.as_str(), reason.map_or("exit", |r| r.as_str()))
}

/// The process that was `pid` at `start` still runs (not a zombie, pid not reused).
pub fn alive(pid: i64, start: Option<i64>) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(vfarm_driver::process::start_time)
        .is_some_and(|s| start.is_none_or(|x| x == s as i64))
}

pub fn signal(pid: i64, start: Option<i64>, sig: rustix::process::Signal) {
    if !alive(pid, start) {
        return;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Ask for a job's end without waiting for it (the API answers at once; the CLI then waits
/// for the end): a queued job ends now; a running one's runner gets SIGTERM (Slurm's payload
/// through `scancel`) and records the end once its instance is gone. The answer is the
/// job's state after the request.
pub fn request_cancel(
    store: &Store,
    cfg: &QueueConfig,
    caller: &Caller,
    id: i64,
) -> Result<String> {
    use vfarm_store::jobs::CancelOutcome;
    match store.request_cancel(&caller.user, id)? {
        CancelOutcome::Cancelled => Ok("cancelled".into()),
        CancelOutcome::AlreadyFinal { state } => Ok(state),
        CancelOutcome::Requested { runner } => {
            let j = store.job(id)?;
            if j.backend == "slurm" {
                if let Some(sid) = j.slurm_id {
                    slurm_of(cfg).cancel(sid as u64)?;
                }
            } else if let Some((pid, start)) = runner {
                signal(pid, start, rustix::process::Signal::TERM);
            }
            Ok(store.job(id)?.state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image with these artifacts (a kernel when bootable), created at `created`.
    fn image(name: &str, created: &str, formats: &[&str], kernel: bool) -> Image {
        let artifacts: Vec<_> = formats
            .iter()
            .map(|f| serde_json::json!({"format": f, "path": format!("/x/{f}"), "size": 1, "sha512": "", "disk_size": null}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": format!("{name}0000000000000"), "name": name, "summary": "", "origin": "build",
            "created": created, "os": "debian", "os_version": "12", "arch": null,
            "kernel": kernel.then_some("/x/vmlinuz"), "initrd": null, "spec": {},
            "artifacts": artifacts,
        }))
        .unwrap()
    }

    #[test]
    fn routing_takes_only_images_the_driver_can_run() {
        let oci = image("oci", "2026-01-01", &["tar"], false);
        let vm = image("vm", "2026-02-01", &["qcow2"], true);
        // Newest of all, but no driver can run it (a subscribed disk without a kernel).
        let disk = image("disk", "2026-03-01", &["raw"], false);
        let all = [&oci, &vm, &disk];
        let name = |d: &str, q: Option<&str>| {
            route_image(&all, d, q, "batch").map(|(i, why, n)| (i.display_name(), why, n))
        };
        assert_eq!(
            name("any", None),
            Some(("vm".into(), "the newest".into(), 2))
        );
        assert_eq!(
            name("oci", None),
            Some(("oci".into(), "the newest".into(), 1))
        );
        assert_eq!(
            name("qemu", None),
            Some(("vm".into(), "the newest".into(), 1))
        );
        assert_eq!(
            name("any", Some("oci")),
            Some(("oci".into(), "the default image of queue `batch`".into(), 2))
        );
        // The queue's image is not preferred when the driver asked for cannot run it.
        assert_eq!(
            name("qemu", Some("oci")),
            Some(("vm".into(), "the newest".into(), 1))
        );
        assert_eq!(
            route_image(&[&disk], "any", None, "batch").map(|r| r.2),
            None
        );
        assert_eq!(runnable_by(&disk), "runs with no driver");
        assert_eq!(runnable_by(&vm), "runs with qemu");
    }
}
