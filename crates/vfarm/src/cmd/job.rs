//! `vfarm job …`: batch jobs in disposable instances — the commands and their printing.
//! Submission, views and cancel requests are `vfarm_service::jobs`; the dispatcher, the
//! runner (`vfarm job run-one`, hidden), waiting and reconciliation are
//! `vfarm_service::dispatch`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use vfarm_proto::ErrorCode;

use crate::cmd::print_file;
use crate::ctx::Ctx;
pub use vfarm_service::jobs::*;
use vfarm_service::{dispatch, Caller};

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
        /// Only jobs of this owner.
        #[arg(long)]
        owner: Option<String>,
    },
    /// A job's record: state, reason, exit status, timings, files, events.
    Show {
        /// The job id.
        id: String,
        /// The job as a JSDL 1.0 document instead (POSIX application, resources, staging,
        /// the vfarm extension naming its image and driver).
        #[arg(long)]
        jsdl: bool,
    },
    /// Cancel jobs, in any state: a queued job never starts, a running one is killed and
    /// its instance removed.
    Cancel {
        /// The job ids.
        ids: Vec<String>,
    },
    /// Wait until the jobs are finished; exit 0 if all succeeded, else 1 (124 on --timeout).
    Wait {
        /// The job ids.
        ids: Vec<String>,
        /// Give up after this long (90s, 5m …) and exit 124.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// The job's standard output and error (also when JSDL redirected them to files);
    /// `--console`: the instance's console log instead (a VM's boot messages).
    Logs {
        /// The job id.
        id: String,
        /// The instance's console log instead (a VM's boot messages).
        #[arg(long)]
        console: bool,
    },
    /// Files the job left: staged out and JSDL output files; with FILE, print that file.
    Output {
        /// The job id.
        id: String,
        /// One file to print (default: list them).
        file: Option<String>,
    },
    /// The effective queue configuration and host capacity.
    Queues,
    /// Run one claimed job (started by the dispatcher; not for people).
    #[command(hide = true)]
    RunOne {
        /// The job id.
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
    /// A name for the job, shown by `job ls`.
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
    /// The command and its arguments, after `--` (or --jsdl).
    #[arg(last = true, required_unless_present = "jsdl")]
    pub command: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Errors

// ---------------------------------------------------------------------------------------
// Configuration and capacity

pub(crate) fn print_table(views: &[JobView]) {
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

/// The flags of `vfarm job submit` (and the JSDL file's text) as a request.
pub(crate) fn request_of(a: SubmitArgs) -> Result<JobRequest> {
    let jsdl = match &a.jsdl {
        Some(p) => Some((
            p.display().to_string(),
            crate::cmd::read_input_text("jsdl", p)?,
        )),
        None => None,
    };
    Ok(JobRequest {
        image: a.image,
        os: a.os,
        os_version: a.os_version,
        arch: a.arch,
        driver: a.driver,
        cpus: a.cpus,
        memory: a.memory,
        walltime: a.walltime,
        priority: a.priority,
        queue: a.queue,
        owner: a.owner,
        name: a.name,
        stage_in: a.stage_in,
        stage_out: a.stage_out,
        env: a.env,
        workdir: a.workdir,
        keep_on_failure: a.keep_on_failure,
        backend: a.backend,
        command: a.command,
        jsdl,
    })
}

/// What `vfarm job submit` prints once the job is queued: the id on stdout (the view with
/// `--output json`), the warnings and a summary on stderr.
pub(crate) fn print_queued(
    ctx: &Ctx,
    source: Option<&str>,
    warnings: &[String],
    routed: Option<&str>,
    v: &JobView,
    json: &serde_json::Value,
) -> Result<()> {
    for w in warnings {
        eprintln!("vfarm: job: {}: warning: {w}", source.unwrap_or("request"));
    }
    if let Some(r) = routed {
        eprintln!("vfarm: job: routed to {r}");
    }
    if ctx.json() {
        return ctx.print_json(json);
    }
    println!("{}", v.id);
    eprintln!(
        "vfarm: job {} queued in `{}` (image {}, driver {}, {} CPU, {} MiB, wall time {} s, priority {})",
        v.id,
        v.queue,
        &v.image[..12.min(v.image.len())],
        v.driver,
        v.cpus,
        v.memory_mib,
        v.walltime_secs,
        v.priority
    );
    Ok(())
}

/// `vfarm job submit`: the flags (and the JSDL file) as a request to the service.
fn submit_cli(ctx: &Ctx, cfg_path: Option<&Path>, a: SubmitArgs) -> Result<i32> {
    let req = request_of(a)?;
    let source = req.jsdl.as_ref().map(|(s, _)| s.clone());
    let done = submit(ctx, cfg_path, &Caller::local(), Origin::Local, req)?;
    let v = view(ctx, &*ctx.store()?, &done.job, false)?;
    print_queued(
        ctx,
        source.as_deref(),
        &done.warnings,
        done.routed.as_deref(),
        &v,
        &serde_json::to_value(&v)?,
    )?;
    Ok(0)
}

/// `vfarm job queues` as text, from its JSON document (`{config, capacity}`, the same
/// locally and from the API): the capacity, then one line per queue (`*` the default).
pub(crate) fn print_queues(doc: &serde_json::Value) {
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let cpus = |v: &Value| v.as_f64().map_or("-".into(), |m| (m / 1000.0).to_string());
    let cap = &doc["capacity"];
    let slots: Vec<String> = cap["slots"]
        .as_object()
        .map(|m| m.iter().map(|(d, n)| format!("{d} {n}")).collect())
        .unwrap_or_default();
    println!(
        "capacity: {} CPU, {} MiB, slots: {}",
        cpus(&cap["cpus_milli"]),
        text(&cap["memory_mib"]),
        slots.join(", ")
    );
    let row = |cells: [String; 8]| {
        println!(
            "{:<14} {:>4} {:>5} {:>7} {:>9} {:<8} {:<6} {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    row([
        "QUEUE",
        "PRIO",
        "CPUS",
        "MEMORY",
        "WALLTIME",
        "BACKEND",
        "DRIVER",
        "IMAGE / ROUTES",
    ]
    .map(String::from));
    let default = doc["config"]["default_queue"].as_str().unwrap_or("");
    let empty = serde_json::Map::new();
    for (name, q) in doc["config"]["queues"].as_object().unwrap_or(&empty) {
        let name = format!("{name}{}", if name == default { "*" } else { "" });
        if let Some(e) = q.get("Exec") {
            row([
                name,
                text(&e["priority"]),
                cpus(&e["cpus_milli"]),
                format!("{}M", text(&e["memory_mib"])),
                format!("{}s", text(&e["walltime_secs"])),
                text(&e["backend"]),
                e["driver"].as_str().unwrap_or("any").to_string(),
                text(&e["image"]),
            ]);
        } else if let Some(r) = q.get("Routing") {
            let routes: Vec<String> = r["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let any = |v: &Value| v.as_str().unwrap_or("*").to_string();
                    format!(
                        "{}/{}/{} -> {}",
                        any(&r["os"]),
                        any(&r["os_version"]),
                        any(&r["arch"]),
                        text(&r["queue"])
                    )
                })
                .collect();
            let dash = || "-".to_string();
            row([
                name,
                dash(),
                dash(),
                dash(),
                dash(),
                "route".into(),
                dash(),
                routes.join(", "),
            ]);
        }
    }
}

/// `vfarm job show` as text.
pub(crate) fn print_job(v: &JobView) {
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
    if !v.dir.as_os_str().is_empty() {
        println!("files:     {}", v.dir.display());
    }
    for e in v.events.iter().flatten() {
        println!(
            "  {} {} {}",
            e["at"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["detail"]
        );
    }
}

pub fn run(ctx: &Ctx, args: JobArgs) -> Result<i32> {
    let cfg_path = args.config.as_deref();
    match args.cmd {
        JobCmd::Submit(a) => submit_cli(ctx, cfg_path, *a),
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
        JobCmd::Show { id, jsdl: true } => {
            let store = ctx.store()?;
            let j = store.job(parse_id(&id)?)?;
            let spec: vfarm_jobs::JobSpec = serde_json::from_str(&j.spec)
                .with_context(|| format!("job {} has an unreadable spec", j.id))?;
            print!("{}", vfarm_jsdl::write(&spec.to_jsdl()));
            Ok(0)
        }
        JobCmd::Show { id, jsdl: false } => {
            let store = ctx.store()?;
            let j = store.job(parse_id(&id)?)?;
            let v = view(ctx, &store, &j, true)?;
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                print_job(&v);
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
                let state = dispatch::cancel_and_wait(&store, &cfg, &Caller::local(), id)?;
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
                let Some(j) = dispatch::wait(&store, &cfg, id, deadline)? else {
                    let j = store.job(id)?;
                    eprintln!("vfarm: job wait: job {id} is still {}", j.state);
                    return Ok(crate::cmd::instance::TIMEOUT_EXIT);
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
            if console {
                let files = log_files(ctx, &j, LogStream::Console)?;
                if files.is_empty() {
                    return Err(vfarm_store::StoreError::NotFound {
                        kind: "console log of job",
                        id: j.id.to_string(),
                    }
                    .into());
                }
                let mut out = std::io::stdout().lock();
                for f in files {
                    print_file(&f, &mut out)?;
                }
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            for f in log_files(ctx, &j, LogStream::Stdout)? {
                print_file(&f, &mut out)?;
            }
            out.flush()?;
            let mut err = std::io::stderr().lock();
            for f in log_files(ctx, &j, LogStream::Stderr)? {
                print_file(&f, &mut err)?;
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
                print_queues(&doc);
            }
            Ok(0)
        }
        JobCmd::RunOne { id, in_slurm } => dispatch::run_one(ctx, id, in_slurm),
    }
}
