//! Disposable runs (`vfarm run`, and a job's instance): a fresh instance for one command,
//! its inputs copied in, its output streamed, killed at its time limit, its outputs copied
//! out, then removed — or, with keep-on-failure, kept stopped with a `failure` snapshot.
//! Also the console reader shared with `vfarm instance console`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vfarm_core::instance::{parse_duration, Event};

use vfarm_driver::{Driver, DriverError, ExecIo, Observed, StopMode, VmSetup};
use vfarm_store::instances::{SnapshotRow, StateChange};
use vfarm_store::Store;

use crate::instances::{
    create_instance, runs_commands_by_exec, snapshots_of, start_instance, transition, NewInstance,
    Shape,
};
use crate::staging::{self, Stage};
use crate::{Caller, Env};

/// Disposable instances expire after this unless told otherwise, so a run whose front end
/// was killed is still reaped eventually.
pub const DEFAULT_EXPIRY: &str = "1d";

/// One disposable run, as `vfarm run`'s flags give it.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub shape: Shape,
    /// Kill the command after this long (`90s`, `5m`).
    pub timeout: Option<String>,
    /// On a non-zero exit (or timeout) keep the instance, stopped, with a `failure` snapshot.
    pub keep_on_failure: bool,
    /// Expiry of the instance if it is kept (or if the run's front end dies).
    pub expiry: String,
    /// `HOST:GUEST`; a relative guest path is relative to `workdir`.
    pub copy_in: Vec<String>,
    /// `GUEST:HOST`, also after a failure.
    pub copy_out: Vec<String>,
    pub workdir: Option<String>,
    /// Where to save the instance's console log before it goes.
    pub console_log: Option<PathBuf>,
    pub command: Vec<String>,
}

/// A request checked against a driver: everything that can be refused is refused here,
/// before an image is built or an instance made.
pub struct Plan {
    timeout: Option<Duration>,
    stage_in: Vec<Stage>,
    stage_out: Vec<Stage>,
    command: Vec<String>,
    /// The command runs through exec (the main process is the idle init).
    by_exec: bool,
}

impl RunRequest {
    pub fn plan(&self, driver: &dyn Driver) -> Result<Plan> {
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| parse_duration("timeout", t).map(Duration::from_secs))
            .transpose()?;
        if let Some(dir) = &self.workdir {
            staging::check_workdir(dir)?;
        }
        let wd = self.workdir.as_deref();
        let stage_in = self
            .copy_in
            .iter()
            .map(|s| staging::parse_stage("copy-in", s, false, wd))
            .collect::<Result<Vec<_>>>()?;
        let stage_out = self
            .copy_out
            .iter()
            .map(|s| staging::parse_stage("copy-out", s, true, wd))
            .collect::<Result<Vec<_>>>()?;
        if !stage_in.is_empty() || !stage_out.is_empty() {
            staging::files_of(driver)?;
        }
        let command = match wd {
            Some(dir) => staging::in_workdir(dir, &self.command),
            None => self.command.clone(),
        };
        Ok(Plan {
            timeout,
            stage_in,
            stage_out,
            command,
            // With keep-on-failure the command runs through exec, so the kept instance can
            // be started again and entered; otherwise it is the main process (the fast path).
            by_exec: self.keep_on_failure || runs_commands_by_exec(driver),
        })
    }
}

/// How a disposable run's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited,
    TimedOut,
    /// The run was interrupted (SIGINT or SIGTERM reached its front end).
    Interrupted,
}

/// Where a run's command output goes: `exec` for a command run by exec (its own streams),
/// `out`/`err` for a main process's log files as they grow.
pub struct RunIo<'a> {
    pub exec: ExecIo,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

/// How a run ended: the command's exit status (1 when it succeeded but an output could not
/// be copied out), why, and what the person who ran it should be told.
#[derive(Debug)]
pub struct RunEnd {
    pub code: i32,
    pub ending: Ending,
    pub notes: Vec<String>,
}

/// Run `req` in a fresh instance of `image` made by `driver` with `vm` (from
/// [`crate::instances::vm_setup`]). `interrupted` set meanwhile kills the command and
/// removes the instance.
#[allow(clippy::too_many_arguments)]
pub fn run(
    env: &Env,
    caller: &Caller,
    driver: &dyn Driver,
    vm: VmSetup,
    image: vfarm_image::Image,
    req: &RunRequest,
    io: RunIo<'_>,
    interrupted: &AtomicBool,
) -> Result<RunEnd> {
    let plan = req.plan(driver)?;
    let store = env.store()?;
    let main_command = if plan.by_exec {
        Vec::new()
    } else {
        plan.command.clone()
    };
    let row = create_instance(
        caller,
        env,
        driver,
        NewInstance {
            image,
            name: None,
            expiry: Some(req.expiry.clone()),
            shape: req.shape.clone(),
            command: main_command,
            disposable: true,
            vm,
            owner: caller.user.clone(),
            disk: None,
            id: None,
            address: None,
        },
    )?;
    let id = row.id.clone();
    tracing::debug!(instance = %id, "run: prepared");
    let RunIo { exec, out, err } = io;
    let outcome = (|| -> Result<(i32, Ending)> {
        let until = Until {
            begun: Instant::now(),
            timeout: plan.timeout,
            interrupted,
        };
        // A main command starts with the instance, so its inputs go in before; a command
        // run by exec gets them once the instance runs (a VM's agent needs a running guest).
        if !plan.by_exec {
            staging::copy_in_all(driver, &id, &plan.stage_in)?;
        }
        start_instance(caller, &store, driver, &row)?;
        tracing::debug!(instance = %id, "run: started");
        if plan.by_exec {
            staging::copy_in_all(driver, &id, &plan.stage_in)?;
            exec_with_timeout(driver, &id, &plan.command, &req.shape.env, exec, &until)
        } else {
            follow_until_exit(driver, &id, &until, out, err)
        }
    })();
    let (code, ending) = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = destroy_after_run(caller, &store, driver, &env.data_dir, &id);
            return Err(e);
        }
    };
    let mut notes = Vec::new();
    match ending {
        Ending::TimedOut => notes.push(format!(
            "timed out after {}; the command was killed",
            req.timeout.as_deref().unwrap_or("?")
        )),
        Ending::Interrupted => notes.push("interrupted; the command was killed".into()),
        Ending::Exited => {}
    }
    tracing::debug!(instance = %id, code, ?ending, "run: ended");
    let lost_outputs = staging::copy_out_all(driver, &id, &plan.stage_out);
    if let Some(file) = &req.console_log {
        if let Err(e) = save_console(driver, &id, file) {
            notes.push(format!("cannot save the console log: {e:#}"));
        }
    }
    let code = if code == 0 && lost_outputs > 0 {
        1
    } else {
        code
    };
    if (code == 0 && ending == Ending::Exited) || !req.keep_on_failure {
        destroy_after_run(caller, &store, driver, &env.data_dir, &id)?;
        tracing::debug!(instance = %id, "run: destroyed");
    } else {
        keep_failed(caller, &store, driver, &id, code)?;
        notes.push(format!(
            "kept instance {id} (stopped) with snapshot `failure`. To inspect it:\n  \
             vfarm instance start {id}\n  vfarm instance exec {id} -- sh\n  \
             vfarm instance destroy {id}   # when done"
        ));
    }
    Ok(RunEnd {
        code,
        ending,
        notes,
    })
}

/// When to stop waiting for a run's command.
struct Until<'a> {
    begun: Instant,
    timeout: Option<Duration>,
    interrupted: &'a AtomicBool,
}

impl Until<'_> {
    /// Why the command must be killed now, if it must.
    fn due(&self) -> Option<Ending> {
        if self.interrupted.load(Ordering::SeqCst) {
            Some(Ending::Interrupted)
        } else if self.timeout.is_some_and(|t| self.begun.elapsed() >= t) {
            Some(Ending::TimedOut)
        } else {
            None
        }
    }
}

/// Copies what an instance writes to its log files to two sinks as it arrives (a file not
/// there yet, or a VM's single console, is `None`).
pub struct Follower {
    pub out: Option<File>,
    pub err: Option<File>,
}

impl Follower {
    pub fn pump(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
        let mut buf = Vec::new();
        if let Some(f) = &mut self.out {
            f.read_to_end(&mut buf)?;
        }
        if !buf.is_empty() {
            out.write_all(&buf)?;
            out.flush()?;
        }
        buf.clear();
        if let Some(f) = &mut self.err {
            f.read_to_end(&mut buf)?;
        }
        if !buf.is_empty() {
            err.write_all(&buf)?;
        }
        Ok(())
    }
}

/// Copy an instance's console log to `out`/`err`; with `follow`, keep copying what is
/// appended until the instance is no longer running or paused.
pub fn console(
    driver: &dyn Driver,
    id: &str,
    follow: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let logs = driver.logs(id)?;
    // A VM has one console for both streams; copy it once.
    let separate = logs.stderr != logs.stdout;
    // Before the first start there is no log yet: that is an empty console, not an error.
    let open = |p: &Path| match File::open(p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open {}", p.display()))),
    };
    let mut f = Follower {
        out: open(&logs.stdout)?,
        err: if separate { open(&logs.stderr)? } else { None },
    };
    f.pump(out, err)?;
    if !follow {
        return Ok(());
    }
    loop {
        let seen = driver.observe(id)?;
        // A log that appears later (the instance started meanwhile) is followed from then on.
        if f.out.is_none() {
            f.out = open(&logs.stdout)?;
        }
        if separate && f.err.is_none() {
            f.err = open(&logs.stderr)?;
        }
        f.pump(out, err)?;
        if !matches!(seen, Observed::Running | Observed::Paused) {
            // What was written between the last read and the end.
            return f.pump(out, err);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stream the main process's output until it exits; kill it at the deadline.
fn follow_until_exit(
    driver: &dyn Driver,
    id: &str,
    until: &Until<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(i32, Ending)> {
    let logs = driver.logs(id)?;
    let mut f = Follower {
        out: Some(File::open(&logs.stdout)?),
        err: Some(File::open(&logs.stderr)?),
    };
    let mut backoff = vfarm_driver::Backoff::default();
    let mut ending = Ending::Exited;
    let seen = loop {
        let seen = driver.observe(id)?;
        f.pump(out, err)?;
        if !matches!(seen, Observed::Running | Observed::Paused) {
            break seen;
        }
        if let Some(why) = until.due() {
            ending = why;
            break driver.stop(id, StopMode::Kill)?;
        }
        backoff.sleep();
    };
    f.pump(out, err)?;
    let code = match seen {
        Observed::Exited { code } => code,
        other => bail!("instance {id} ended without an exit status ({other})"),
    };
    Ok((code, ending))
}

/// Run the command with exec (its output goes to `io`); at the deadline stop the instance,
/// which ends the exec.
fn exec_with_timeout(
    driver: &dyn Driver,
    id: &str,
    command: &[String],
    env: &[String],
    io: ExecIo,
    until: &Until<'_>,
) -> Result<(i32, Ending)> {
    let env = env
        .iter()
        .map(|e| vfarm_core::instance::parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let exec = driver.exec().ok_or_else(|| DriverError::Unsupported {
        driver: driver.kind(),
        what: "exec".into(),
    })?;
    std::thread::scope(|s| {
        let h = s.spawn(|| exec.exec(id, command, &env, io));
        let mut ending = Ending::Exited;
        while !h.is_finished() {
            if ending == Ending::Exited {
                if let Some(why) = until.due() {
                    ending = why;
                    driver.stop(id, StopMode::Kill)?;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let code = match h.join().map_err(|_| anyhow!("exec thread panicked"))? {
            Ok(c) => c,
            // Killed at the deadline: a VM's agent connection dies with it, so there is no
            // exit status to report; use SIGKILL's, as a killed container's would be.
            Err(_) if ending != Ending::Exited => 137,
            Err(e) => return Err(e.into()),
        };
        Ok((code, ending))
    })
}

/// Copy the console log (stdout, then stderr when it is a separate file) to `file`.
fn save_console(driver: &dyn Driver, id: &str, file: &Path) -> Result<()> {
    let logs = driver.logs(id)?;
    let mut out =
        File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    for (i, log) in [&logs.stdout, &logs.stderr].into_iter().enumerate() {
        if i == 1 && logs.stderr == logs.stdout {
            break;
        }
        let mut f = File::open(log).with_context(|| format!("cannot open {}", log.display()))?;
        std::io::copy(&mut f, &mut out)?;
    }
    Ok(())
}

fn destroy_after_run(
    caller: &Caller,
    store: &Store,
    driver: &dyn Driver,
    data_dir: &Path,
    id: &str,
) -> Result<()> {
    driver
        .cleanup(id)
        .with_context(|| format!("cannot remove disposable instance {id}"))?;
    if let Some(spec) = store
        .instance(id)?
        .and_then(|r| crate::net::spec_of(&r.spec))
    {
        crate::net::unplug(data_dir, &spec)?;
    }
    store.delete_instance(&caller.user, id)?;
    Ok(())
}

/// Keep a failed run's instance: stopped, with a `failure` snapshot.
fn keep_failed(
    caller: &Caller,
    store: &Store,
    driver: &dyn Driver,
    id: &str,
    code: i32,
) -> Result<()> {
    let row = store
        .instance(id)?
        .ok_or_else(|| anyhow!("instance {id} vanished"))?;
    driver.stop(id, StopMode::Kill)?;
    let msg = format!("command exited with status {code}");
    transition(
        caller,
        store,
        &row,
        Event::Stop,
        StateChange {
            exit_code: Some(code),
            error: Some(&msg),
            ..Default::default()
        },
    )?;
    let info = snapshots_of(driver)?.create(id, "failure")?;
    store.insert_snapshot(
        &caller.user,
        &SnapshotRow {
            instance_id: id.to_string(),
            name: "failure".into(),
            created: vfarm_store::now(),
            size: info.size,
        },
    )?;
    Ok(())
}
