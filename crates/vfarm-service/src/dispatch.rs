//! The job dispatcher, the runner and reconciliation.
//!
//! * The dispatcher ([`spawn_dispatcher`], a thread of `vfarm serve`) asks the scheduler in
//!   `vfarm_jobs::sched` which jobs to start, claims each in one transaction and starts a
//!   detached runner for it (`vfarm job run-one ID`, which calls [`run_one`]).
//! * The runner runs the job through `vfarm run` (fresh instance, staging, wall time as
//!   `--timeout`, `--keep-on-failure`) with its output in `<data>/jobs/<id>/`, reads how the
//!   run ended from `--outcome` (typed: a command's own exit 124 is not a wall-time kill),
//!   and records the end in one transaction. It is its own session, so a killed service does
//!   not take running jobs with it; SIGTERM to it cancels the job.
//! * Reconciliation (every dispatcher round, so also at start-up): a claimed job whose runner
//!   is gone without recording an end is failed as `lost` and its instance removed; it is
//!   never started again.
//! * The Slurm backend: the payload is `vfarm job run-one ID --in-slurm` on the allocated
//!   node; Slurm's own state is only consulted for jobs whose payload never recorded an end.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vfarm_jobs::{
    milli_to_cpus, Active, Candidate, Capacity, JobEvent, JobSpec, QueueConfig, UsageRecord,
};
use vfarm_store::jobs::{JobEnd, JobRow, Registration};
use vfarm_store::Store;

use crate::instances::RunOutcome;
use crate::jobs::*;
use crate::{Caller, Env};

/// How often the dispatcher looks at the queue.
const TICK: Duration = Duration::from_millis(250);
/// A claimed job whose runner has not registered after this long is lost (its runner never
/// came up, e.g. the service died between claim and spawn).
const REGISTER_GRACE_MS: i64 = 30_000;
/// Where a job's `vfarm run` writes how it ended (`vfarm run --outcome`).
const OUTCOME_FILE: &str = "outcome.json";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------
// Processes: identity, liveness, signals

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

/// Cancel job `id` and wait for its end (at most 60 s locally, 90 s under Slurm).
pub fn cancel_and_wait(
    store: &Store,
    cfg: &QueueConfig,
    caller: &Caller,
    id: i64,
) -> Result<String> {
    let state = request_cancel(store, cfg, caller, id)?;
    let j = store.job(id)?;
    if is_final(&j) {
        return Ok(state);
    }
    if j.backend == "slurm" {
        // Slurm sends SIGTERM to the payload runner, which cancels like a local one.
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
    // The runner records the end once `vfarm run` removed the instance.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = store.job(id)?;
        if is_final(&j) {
            return Ok(j.state);
        }
        let runner_gone = j.runner_pid.is_some_and(|p| !alive(p, j.runner_start));
        let never_came = j.runner_pid.is_none()
            && j.claimed
                .as_deref()
                .and_then(ms)
                .is_some_and(|c| now_ms() - c > REGISTER_GRACE_MS);
        if runner_gone || never_came {
            end_lost(store, &j, "cancelled")?;
            return Ok(store.job(id)?.state);
        }
        if Instant::now() >= deadline {
            return Ok(j.state);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
fn destroy_job_instances(env: &Env, store: &Store, id: i64) {
    let host = hostname_of(id);
    let Ok(instances) = store.instances() else {
        return;
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vfarm"));
    for i in instances.iter().filter(|i| i.hostname == host) {
        let st = Command::new(&exe)
            .arg("--data-dir")
            .arg(&env.data_dir)
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

// ---------------------------------------------------------------------------------------
// The Slurm backend

/// Bring a Slurm job's record up to date when Slurm says it ended but its payload never
/// recorded the end (cancelled while pending, killed by Slurm, node failure).
pub fn sync_slurm(store: &Store, cfg: &QueueConfig, j: &JobRow) -> Result<()> {
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

/// Wait for job `id` to reach a final state, or until `deadline`: the final row, or `None`
/// at the deadline. Without the service running, whoever waits notices a Slurm job that
/// ended without its payload recording it.
pub fn wait(
    store: &Store,
    cfg: &QueueConfig,
    id: i64,
    deadline: Option<Instant>,
) -> Result<Option<JobRow>> {
    let mut synced: Option<Instant> = None;
    loop {
        let mut j = store.job(id)?;
        if j.backend == "slurm" && synced.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            sync_slurm(store, cfg, &j)?;
            synced = Some(Instant::now());
            j = store.job(id)?;
        }
        if is_final(&j) {
            return Ok(Some(j));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// The dispatcher

/// Start the dispatcher thread of `vfarm serve`.
pub fn spawn_dispatcher(env: &Env) -> Result<()> {
    let env = env.fresh();
    let cfg = load_config(&env, None)?;
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
                if let Err(e) = d.round(&env) {
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
    fn round(&mut self, env: &Env) -> Result<()> {
        self.children
            .retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
        let store = env.store()?;
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
                    destroy_job_instances(env, &store, j.id);
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
            tracing::info!(job = p.id, owner = %p.owner, priority = p.priority, usage = p.usage, "dispatching job");
            match self.spawn_runner(env, p.id) {
                Ok(c) => self.children.push((p.id, c)),
                Err(e) => {
                    let msg = format!("cannot start the job's runner: {e:#}");
                    store.end_job(p.id, &["starting"], &ended_by(JobEvent::Error, Some(&msg)))?;
                }
            }
        }
        Ok(())
    }

    fn spawn_runner(&self, env: &Env, id: i64) -> Result<Child> {
        let dir = job_dir(env, id);
        std::fs::create_dir_all(&dir)?;
        let log = File::create(dir.join("runner.log"))?;
        let exe = std::env::current_exe().context("cannot find the vfarm binary")?;
        Ok(Command::new(exe)
            .arg("--data-dir")
            .arg(&env.data_dir)
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

/// Set on SIGTERM/SIGINT (the runner then cancels its job; `vfarm run` removes its
/// instance). The handlers are in place when this returns.
pub fn termination_flag() -> Arc<AtomicBool> {
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
fn run_argv(env: &Env, id: i64, spec: &JobSpec, st: &Staged) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--data-dir".into(),
        env.data_dir.display().to_string(),
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
        job_dir(env, id).join("console.log").display().to_string(),
        // How the run ended, typed: exit status 124 is also a command's own.
        "--outcome".into(),
        job_dir(env, id).join(OUTCOME_FILE).display().to_string(),
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

/// The runner of job `id` (`vfarm job run-one`): its exit status.
pub fn run_one(env: &Env, id: i64, in_slurm: bool) -> Result<i32> {
    // Own session: a terminal's signals or the service's process group do not reach us.
    if !in_slurm {
        let _ = rustix::process::setsid();
    }
    let term = termination_flag();
    let store = env.store()?;
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
    let dir = job_dir(env, id);
    std::fs::create_dir_all(&dir)?;
    let fail = |msg: String| -> Result<i32> {
        tracing::error!(job = id, "{msg}");
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
    let argv = run_argv(env, id, &spec, &staged);
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
            tracing::warn!(job = id, "stage-out to {url} failed: {e:#}");
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
        destroy_job_instances(env, &store, id);
        kept = kept_instance(&store, id)?;
    }
    // `vfarm run` says how it ended; without its word (it died), a failure it printed is
    // still an error, anything else the command's own exit.
    let outcome: Option<RunOutcome> = std::fs::read(dir.join(OUTCOME_FILE))
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
    use vfarm_jobs::{Backend, Stage};

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
        let env = Env::new(PathBuf::from("/d"));
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
        let a = run_argv(&env, 7, &sp, &st);
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
