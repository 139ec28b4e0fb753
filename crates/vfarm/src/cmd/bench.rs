//! `vfarm bench overhead`: the same workloads natively, in an OCI instance and in a VM.
//!
//! Environments are driven through the public CLI (this binary as a subprocess), exactly as a
//! user would: `instance create`, `instance cp` of the `vfarm-workload` binary, `instance
//! exec`, `instance destroy`, and `vfarm run -- true` for start-up. Statistics, the report and
//! the chart live in `vfarm-bench`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use vfarm_bench::{DriverRun, Machine, Report, Row};

use crate::ctx::Ctx;

const DRIVERS: [&str; 3] = ["native", "oci", "qemu"];
const WORKLOADS: [&str; 6] = ["cpu", "cpu-all", "io", "mmu", "startup", "net"];
/// Where the workload binary goes inside an environment.
const GUEST_BIN: &str = "/vfarm-workload";
/// No single step of a bench may hang the run: a VM exec that stops answering is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// The whole three-driver run is meant to fit in this (the VM defaults are chosen for it).
const BUDGET_SECS: f64 = 15.0 * 60.0;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Measure virtualisation overhead: the same workloads natively, in an OCI instance and
    /// in a VM; median, min, max, spread and overhead relative to native.
    #[command(after_help = "Examples:
  vfarm bench overhead --drivers native,oci,qemu --output json
  vfarm bench overhead --drivers native,oci --repeat 10 --chart overhead.svg
  vfarm bench overhead --workloads cpu,mmu --cpu-events 200000 --repeat 3

Workloads: cpu (Monte Carlo particle transport, one thread), cpu-all (the same on all cores),
io (write with fsync, read back uncached), mmu (page faults), startup (`vfarm run -- true`;
time to a ready instance is reported beside it), net (TCP over loopback).
Under TCG (no working KVM) the VM's overhead is CPU emulation, and the report says so.")]
    Overhead(Box<OverheadArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct OverheadArgs {
    /// Environments, comma-separated: native (the baseline, always needed), oci, qemu.
    #[arg(long, value_delimiter = ',', default_value = "native,oci,qemu")]
    pub drivers: Vec<String>,
    /// Image for oci (and qemu unless --vm-image). Default: the bookworm `--boot vm` image,
    /// built on demand with tar and qcow2 formats so it serves both drivers.
    #[arg(long)]
    pub image: Option<String>,
    /// Bootable image for qemu (default: --image).
    #[arg(long)]
    pub vm_image: Option<String>,
    /// Workloads, comma-separated: cpu, cpu-all, io, mmu, startup, net.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cpu,cpu-all,io,mmu,startup,net"
    )]
    pub workloads: Vec<String>,
    /// Boot profile of the VM: fast (minimal init + guest agent) or full (systemd,
    /// cloud-init, sshd; needs an image with them). Passed to `instance create` and `run`.
    #[arg(long, default_value = "fast", value_parser = ["fast", "full"])]
    pub vm_profile: String,
    /// Repetitions of each workload natively and in OCI.
    #[arg(long, default_value_t = 5)]
    pub repeat: u32,
    /// Repetitions in the VM.
    #[arg(long, default_value_t = 5)]
    pub vm_repeat: u32,
    /// Write a grouped bar chart (SVG) of performance relative to native.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Also write the report as a Markdown section (for BENCHMARKS.md; benches/run-all.sh).
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
    /// cpu/cpu-all: particle events per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub cpu_events: u64,
    /// cpu/cpu-all events in the VM (default: a fifth of --cpu-events, to fit under TCG).
    #[arg(long)]
    pub vm_cpu_events: Option<u64>,
    /// io: bytes written and read back per run (K, M, G).
    #[arg(long, default_value = "1G")]
    pub io_size: String,
    /// io size in the VM (its disk is the image's, with a few hundred MB free).
    #[arg(long, default_value = "128M")]
    pub vm_io_size: String,
    /// mmu: page faults per run.
    #[arg(long, default_value_t = 10_000)]
    pub mmu_faults: u64,
    /// net: bytes sent over loopback per run.
    #[arg(long, default_value = "1G")]
    pub net_size: String,
    /// net size in the VM.
    #[arg(long, default_value = "128M")]
    pub vm_net_size: String,
    /// The workload binary (default: `vfarm-workload` next to this vfarm).
    #[arg(long, value_name = "PATH")]
    pub workload_bin: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, cmd: BenchCmd) -> Result<i32> {
    match cmd {
        BenchCmd::Overhead(a) => overhead(ctx, &a),
    }
}

/// A bad argument: exit status 2, the field named (code `invalid_argument`).
#[derive(Debug)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{}: {}", self.field.replace('_', "-"), self.reason)
    }
}
impl std::error::Error for Invalid {}

fn invalid(field: &'static str, reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Invalid {
        field,
        reason: reason.into(),
    })
}

/// Validated sizes and choices.
struct Plan {
    drivers: Vec<String>,
    vm_profile: String,
    workloads: Vec<String>,
    native: Sizes,
    vm: Sizes,
}

#[derive(Clone, PartialEq)]
struct Sizes {
    cpu_events: u64,
    io_size: u64,
    mmu_faults: u64,
    net_size: u64,
}

fn size(field: &'static str, v: &str) -> Result<u64> {
    match vfarm_workload::parse_size(v) {
        Some(0) => Err(invalid(field, "must be greater than 0")),
        Some(n) => Ok(n),
        None => Err(invalid(
            field,
            format!("`{v}` is not a size (e.g. 64M, 1G)"),
        )),
    }
}

fn plan(a: &OverheadArgs) -> Result<Plan> {
    let mut drivers = Vec::new();
    for d in &a.drivers {
        let d = d.trim();
        if !DRIVERS.contains(&d) {
            return Err(invalid(
                "drivers",
                format!("unknown driver `{d}` (known: {})", DRIVERS.join(", ")),
            ));
        }
        if !drivers.iter().any(|x| x == d) {
            drivers.push(d.to_string());
        }
    }
    if !drivers.iter().any(|d| d == "native") {
        return Err(invalid(
            "drivers",
            "must include native: overheads are measured against it",
        ));
    }
    // Native first: every comparison needs its figures.
    drivers.sort_by_key(|d| DRIVERS.iter().position(|x| x == d));
    let mut workloads = Vec::new();
    for w in &a.workloads {
        let w = w.trim();
        if !WORKLOADS.contains(&w) {
            return Err(invalid(
                "workloads",
                format!("unknown workload `{w}` (known: {})", WORKLOADS.join(", ")),
            ));
        }
        if !workloads.iter().any(|x| x == w) {
            workloads.push(w.to_string());
        }
    }
    if a.repeat == 0 {
        return Err(invalid("repeat", "must be at least 1"));
    }
    if a.vm_repeat == 0 {
        return Err(invalid("vm_repeat", "must be at least 1"));
    }
    if a.cpu_events == 0 {
        return Err(invalid("cpu_events", "must be greater than 0"));
    }
    if a.mmu_faults == 0 {
        return Err(invalid("mmu_faults", "must be greater than 0"));
    }
    let native = Sizes {
        cpu_events: a.cpu_events,
        io_size: size("io_size", &a.io_size)?,
        mmu_faults: a.mmu_faults,
        net_size: size("net_size", &a.net_size)?,
    };
    let vm = Sizes {
        cpu_events: match a.vm_cpu_events {
            Some(0) => return Err(invalid("vm_cpu_events", "must be greater than 0")),
            Some(n) => n,
            None => (a.cpu_events / 5).max(1),
        },
        io_size: size("vm_io_size", &a.vm_io_size)?,
        mmu_faults: a.mmu_faults,
        net_size: size("vm_net_size", &a.vm_net_size)?,
    };
    if let Some(c) = &a.chart {
        if c.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(invalid(
                "chart",
                format!("{}: must end in .svg", c.display()),
            ));
        }
    }
    Ok(Plan {
        drivers,
        vm_profile: a.vm_profile.clone(),
        workloads,
        native,
        vm,
    })
}

/// The workload binary's arguments for one workload (`None`: not run through the binary).
fn workload_args(w: &str, s: &Sizes) -> Option<Vec<String>> {
    let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect());
    match w {
        "cpu" => v(&[
            "cpu",
            "--events",
            &s.cpu_events.to_string(),
            "--threads",
            "1",
        ]),
        "cpu-all" => v(&[
            "cpu",
            "--events",
            &s.cpu_events.to_string(),
            "--threads",
            "0",
        ]),
        "io" => v(&["io", "--size", &s.io_size.to_string(), "--dir", "/var/tmp"]),
        "mmu" => v(&["mmu", "--faults", &s.mmu_faults.to_string()]),
        "net" => v(&["net", "--size", &s.net_size.to_string()]),
        _ => None,
    }
}

/// A finished subprocess.
struct Out {
    status: i32,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Out {
    fn ok(self, what: &str) -> Result<Out> {
        if self.status != 0 {
            bail!(
                "{what} failed (exit {}): {}",
                self.status,
                last_lines(&self.stderr, 4)
            );
        }
        Ok(self)
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Run `cmd` with its output captured, killed after `timeout`.
fn run_cmd(mut cmd: Command, timeout: Duration) -> Result<Out> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = start.elapsed().as_secs_f64();
    use std::os::unix::process::ExitStatusExt;
    Ok(Out {
        status: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        secs,
    })
}

/// This vfarm as a subprocess on the same data dir.
fn vfarm(ctx: &Ctx, args: &[&str]) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find this vfarm binary")?;
    let mut c = Command::new(exe);
    c.arg("--data-dir")
        .arg(&ctx.data_dir)
        .env_remove("VFARM_OUTPUT")
        .args(args);
    Ok(c)
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// An environment that runs the workload binary.
enum Env {
    Native { bin: PathBuf },
    Instance { name: String },
}

impl Env {
    fn command(&self, ctx: &Ctx, args: &[String]) -> Result<Command> {
        Ok(match self {
            Env::Native { bin } => {
                let mut c = Command::new(bin);
                c.args(args);
                c
            }
            Env::Instance { name } => {
                let mut c = vfarm(ctx, &["instance", "exec", name, "--", GUEST_BIN])?;
                c.args(args);
                c
            }
        })
    }
}

/// Destroys the benchmark instance however the run ends (it also has an expiry, for a
/// killed vfarm).
struct Destroy<'a> {
    ctx: &'a Ctx,
    name: String,
}

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        progress(&format!("destroying {}", self.name));
        match vfarm(self.ctx, &["instance", "destroy", &self.name])
            .and_then(|c| run_cmd(c, STEP_TIMEOUT))
        {
            // 3: never created (its create failed before recording it).
            Ok(o) if o.status == 0 || o.status == 3 => {}
            Ok(o) => eprintln!(
                "vfarm: warning: cannot destroy bench instance {}: {}",
                self.name,
                last_lines(&o.stderr, 3)
            ),
            Err(e) => eprintln!(
                "vfarm: warning: cannot destroy bench instance {}: {e:#}",
                self.name
            ),
        }
    }
}

/// One run of the workload binary, parsed.
struct WorkOut {
    metrics: Vec<(String, f64, String, bool)>,
    checksum: String,
}

fn parse_line(stdout: &str) -> Result<WorkOut> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow!("no JSON line in the workload's output: {stdout:?}"))?;
    let v: Value = serde_json::from_str(line).context("the workload's JSON line")?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or_else(|| anyhow!("no metrics in {line}"))?
        .iter()
        .map(|m| {
            Ok((
                m["name"].as_str().context("metric name")?.to_string(),
                m["value"].as_f64().context("metric value")?,
                m["unit"].as_str().unwrap_or("").to_string(),
                m["higher_is_better"].as_bool().unwrap_or(true),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(WorkOut {
        metrics,
        checksum: v["checksum"].as_str().unwrap_or_default().to_string(),
    })
}

fn run_workload(ctx: &Ctx, env: &Env, args: &[String]) -> Result<WorkOut> {
    let o = run_cmd(env.command(ctx, args)?, STEP_TIMEOUT)?
        .ok(&format!("vfarm-workload {}", args.join(" ")))?;
    parse_line(&o.stdout)
}

/// Rows being collected: (metric, driver) → row.
#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn get(&mut self, workload: &str, driver: &DriverRun) -> &mut Row {
        if let Some(i) = self
            .0
            .iter()
            .position(|r| r.workload == workload && r.driver == driver.name)
        {
            return &mut self.0[i];
        }
        self.0.push(Row {
            workload: workload.into(),
            driver: driver.name.clone(),
            accelerator: driver.accelerator.clone(),
            ..Default::default()
        });
        self.0.last_mut().expect("just pushed")
    }
}

fn read_load() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        load_before: read_load(),
        load_after: [0.0; 3],
    }
}

fn workload_bin(a: &OverheadArgs) -> Result<PathBuf> {
    let bin = match &a.workload_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this vfarm binary")?
            .with_file_name("vfarm-workload"),
    };
    if !bin.is_file() {
        return Err(anyhow::Error::new(
            vfarm_driver::DriverError::HostNotReady {
                driver: "native",
                reason: format!(
                    "{} does not exist: build it with the vfarm package (`cargo build -p vfarm`) \
                 or give --workload-bin",
                    bin.display()
                ),
            },
        ));
    }
    Ok(bin)
}

/// The default image: bookworm with the VM boot profile, as tar (oci) and qcow2 (qemu).
fn default_image(ctx: &Ctx) -> Result<String> {
    progress("building (or finding) the default image: bookworm --boot vm, tar + qcow2");
    let c = vfarm(
        ctx,
        &[
            "image", "build", "--suite", "bookworm", "--boot", "vm", "--format", "tar", "--format",
            "qcow2", "--output", "json",
        ],
    )?;
    let o =
        run_cmd(c, Duration::from_secs(1800))?.ok("vfarm image build (the default bench image)")?;
    let v: Value = serde_json::from_str(&o.stdout).context("vfarm image build --output json")?;
    v["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("vfarm image build printed no id: {}", o.stdout))
}

/// Create the instance, copy the workload in, and learn its accelerator.
fn set_up(
    ctx: &Ctx,
    drv: &mut DriverRun,
    image: &str,
    bin: &Path,
    name: &str,
    vm_profile: &str,
) -> Result<()> {
    let start = Instant::now();
    let mut args = vec!["instance", "create"];
    args.extend(driver_flags(&drv.name, vm_profile));
    args.extend(["--image", image, "--name", name, "--expiry", "2h"]);
    // A VM gets one vCPU unless told: give it the host's cores so cpu-all compares like with
    // like (containers are not limited by default).
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    if drv.name == "qemu" {
        args.extend(["--cpus", &cores]);
    }
    let c = vfarm(ctx, &args)?;
    run_cmd(c, STEP_TIMEOUT)?.ok(&format!("vfarm instance create --driver {}", drv.name))?;
    let c = vfarm(
        ctx,
        &[
            "instance",
            "cp",
            &bin.to_string_lossy(),
            &format!("{name}:{GUEST_BIN}"),
        ],
    )?;
    run_cmd(c, STEP_TIMEOUT)?.ok("vfarm instance cp of the workload binary")?;
    drv.ready_secs = Some(start.elapsed().as_secs_f64());
    if drv.name == "qemu" {
        let c = vfarm(ctx, &["instance", "show", name, "--output", "json"])?;
        let o = run_cmd(c, STEP_TIMEOUT)?.ok("vfarm instance show")?;
        let v: Value =
            serde_json::from_str(&o.stdout).context("vfarm instance show --output json")?;
        // `show` puts the VM's details at the top level (older versions: under "vm").
        let vm = if v["accel"].is_string() { &v } else { &v["vm"] };
        drv.accelerator = vm["accel"].as_str().map(String::from);
        drv.accelerator_note = vm["accel_note"].as_str().map(String::from);
        if drv.accelerator.is_none() {
            bail!("vfarm instance show reported no accelerator for VM {name}");
        }
    }
    Ok(())
}

/// `--driver X`, and for a VM its boot profile.
fn driver_flags<'a>(driver: &'a str, vm_profile: &'a str) -> Vec<&'a str> {
    let mut f = vec!["--driver", driver];
    if driver == "qemu" {
        f.extend(["--profile", vm_profile]);
    }
    f
}

/// Checksums native computed, per workload argument list.
type References = BTreeMap<String, String>;

#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx,
    plan: &Plan,
    drv: &DriverRun,
    env: &Env,
    sizes: &Sizes,
    image: Option<&str>,
    rows: &mut Rows,
    refs: &mut References,
    failures: &mut Vec<String>,
) {
    for w in &plan.workloads {
        if w == "startup" {
            startup(ctx, drv, image, &plan.vm_profile, rows, failures);
            continue;
        }
        let Some(args) = workload_args(w, sizes) else {
            continue;
        };
        for i in 0..drv.repeat {
            progress(&format!(
                "{} {w} run {}/{}: vfarm-workload {}",
                drv.label(),
                i + 1,
                drv.repeat,
                args.join(" ")
            ));
            match run_workload(ctx, env, &args) {
                Ok(out) => {
                    for (metric, value, unit, higher) in out.metrics {
                        let r = rows.get(&metric, drv);
                        r.unit = unit;
                        r.higher_is_better = higher;
                        r.samples.push(value);
                        r.checksum = Some(out.checksum.clone());
                    }
                    if drv.name == "native" {
                        refs.insert(args.join(" "), out.checksum.clone());
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    // Networking is measured where it exists; its absence is not a failure.
                    if w != "net" {
                        failures.push(format!("{} {w}: {msg}", drv.name));
                    }
                    for metric in metric_names(w) {
                        rows.get(metric, drv).error = Some(msg.clone());
                    }
                    break;
                }
            }
        }
    }
}

fn metric_names(w: &str) -> &'static [&'static str] {
    match w {
        "cpu" => &["cpu"],
        "cpu-all" => &["cpu-all"],
        "io" => &["io-write", "io-read"],
        "mmu" => &["mmu"],
        "net" => &["net"],
        _ => &[],
    }
}

/// `startup`: a finished `true` job, per driver (natively: spawning `true`).
fn startup(
    ctx: &Ctx,
    drv: &DriverRun,
    image: Option<&str>,
    vm_profile: &str,
    rows: &mut Rows,
    failures: &mut Vec<String>,
) {
    for i in 0..drv.repeat {
        progress(&format!(
            "{} startup run {}/{}",
            drv.label(),
            i + 1,
            drv.repeat
        ));
        let cmd = match (drv.name.as_str(), image) {
            ("native", _) => Ok(Command::new("true")),
            (d, Some(img)) => {
                let mut args = vec!["run"];
                args.extend(driver_flags(d, vm_profile));
                args.extend(["--image", img, "--", "true"]);
                vfarm(ctx, &args)
            }
            (d, None) => Err(anyhow!("no image for driver {d}")),
        };
        let res = cmd
            .and_then(|c| run_cmd(c, STEP_TIMEOUT))
            .and_then(|o| o.ok(&format!("vfarm run --driver {} -- true", drv.name)));
        let r = rows.get("startup", drv);
        r.unit = "s".into();
        r.higher_is_better = false;
        match res {
            Ok(o) => r.samples.push(o.secs),
            Err(e) => {
                let msg = format!("{e:#}");
                failures.push(format!("{} startup: {msg}", drv.name));
                r.error = Some(msg);
                break;
            }
        }
    }
}

fn overhead(ctx: &Ctx, a: &OverheadArgs) -> Result<i32> {
    let plan = plan(a)?;
    let bin = workload_bin(a)?;
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut report = Report {
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        ..Default::default()
    };
    if let Some(w) = report.machine.quiet_warning(report.machine.load_before) {
        eprintln!("vfarm: warning: {w}");
        report.warnings.push(format!("before the run: {w}"));
    }
    let needs_image = plan.drivers.iter().any(|d| d != "native");
    let image = match (&a.image, needs_image) {
        (Some(i), _) => Some(i.clone()),
        (None, true) => Some(default_image(ctx)?),
        (None, false) => None,
    };
    let vm_image = a.vm_image.clone().or_else(|| image.clone());

    let mut rows = Rows::default();
    let mut refs = References::new();
    let mut failures = Vec::new();
    let pid = std::process::id();
    for d in &plan.drivers {
        let vm = d == "qemu";
        let sizes = if vm { &plan.vm } else { &plan.native };
        let img = if vm { vm_image.clone() } else { image.clone() };
        let mut drv = DriverRun {
            name: d.clone(),
            image: img.clone().filter(|_| d != "native"),
            repeat: if vm { a.vm_repeat } else { a.repeat },
            params: plan
                .workloads
                .iter()
                .filter_map(|w| Some((w.clone(), workload_args(w, sizes)?.join(" "))))
                .collect(),
            ..Default::default()
        };
        let t0 = Instant::now();
        if d == "native" {
            let env = Env::Native { bin: bin.clone() };
            measure(
                ctx,
                &plan,
                &drv,
                &env,
                sizes,
                None,
                &mut rows,
                &mut refs,
                &mut failures,
            );
        } else {
            let name = format!("vfarm-bench-{d}-{pid}");
            progress(&format!(
                "setting up {d}: instance {name} of image {}",
                img.as_deref().unwrap_or("?")
            ));
            let guard = Destroy {
                ctx,
                name: name.clone(),
            };
            match set_up(
                ctx,
                &mut drv,
                img.as_deref().unwrap_or_default(),
                &bin,
                &name,
                &plan.vm_profile,
            ) {
                Ok(()) => {
                    if plan.workloads.iter().any(|w| w == "startup") {
                        let r = rows.get("ready", &drv);
                        r.unit = "s".into();
                        r.higher_is_better = false;
                        r.samples.extend(drv.ready_secs);
                    }
                    let env = Env::Instance { name: name.clone() };
                    measure(
                        ctx,
                        &plan,
                        &drv,
                        &env,
                        sizes,
                        img.as_deref(),
                        &mut rows,
                        &mut refs,
                        &mut failures,
                    );
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    failures.push(format!("{d}: {msg}"));
                    // Every figure of this environment is missing for the same reason.
                    for w in &plan.workloads {
                        let names: &[&str] = if w == "startup" {
                            &["startup"]
                        } else {
                            metric_names(w)
                        };
                        for m in names {
                            rows.get(m, &drv).error = Some(format!("set-up failed: {msg}"));
                        }
                    }
                    drv.error = Some(msg);
                }
            }
            drop(guard);
        }
        progress(&format!(
            "{} done in {:.0} s",
            drv.label(),
            t0.elapsed().as_secs_f64()
        ));
        report.drivers.push(drv);
    }

    // Reference checksums for parameters native did not run (the VM's smaller sizes).
    if report
        .drivers
        .iter()
        .any(|d| d.name == "qemu" && d.error.is_none())
        && plan.vm != plan.native
    {
        let env = Env::Native { bin: bin.clone() };
        for w in &plan.workloads {
            let Some(args) = workload_args(w, &plan.vm) else {
                continue;
            };
            let key = args.join(" ");
            if refs.contains_key(&key) {
                continue;
            }
            progress(&format!("native reference checksum: vfarm-workload {key}"));
            match run_workload(ctx, &env, &args) {
                Ok(o) => {
                    refs.insert(key, o.checksum);
                }
                Err(e) => failures.push(format!("native reference {w}: {e:#}")),
            }
        }
    }
    for drv in &report.drivers {
        for w in &plan.workloads {
            let Some(key) = drv.params.get(w) else {
                continue;
            };
            for m in metric_names(w) {
                if let Some(r) = rows
                    .0
                    .iter_mut()
                    .find(|r| r.workload == *m && r.driver == drv.name)
                {
                    if drv.name != "native" {
                        if let (Some(c), Some(reference)) = (&r.checksum, refs.get(key)) {
                            r.checksum_matches_native = Some(c == reference);
                        }
                    }
                }
            }
        }
    }

    report.results = rows.0;
    report.finish();
    report.machine.load_after = read_load();
    report.finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    report.duration_secs = clock.elapsed().as_secs_f64();
    notes(&mut report, &plan, a);
    if let Some(w) = report.machine.quiet_warning(report.machine.load_after) {
        report.warnings.push(format!("after the run: {w}"));
    }
    for f in &failures {
        report.warnings.push(format!("failed: {f}"));
    }
    if report.duration_secs > BUDGET_SECS {
        report.warnings.push(format!(
            "the run took {:.1} min, over the {:.0}-minute budget: lower --vm-repeat, \
             --vm-io-size or --vm-cpu-events",
            report.duration_secs / 60.0,
            BUDGET_SECS / 60.0
        ));
    }
    if !report.checksums_agree() {
        report.warnings.push(
            "a checksum differs from native's for the same parameters: that environment did \
             not compute the same thing"
                .into(),
        );
    }
    // A chart that cannot be drawn must not lose the figures: warn, print, exit 1.
    if let Some(path) = &a.chart {
        match vfarm_bench::chart::write_svg(&report, path) {
            Ok(()) => progress(&format!("chart written to {}", path.display())),
            Err(e) => {
                eprintln!("vfarm: warning: --chart: {e}");
                report.warnings.push(format!("--chart: {e}"));
                failures.push(format!("chart: {e}"));
            }
        }
    }
    if let Some(path) = &a.markdown {
        // The command as a reader would type it: without this run's data dir and Markdown file.
        let mut command = vec!["vfarm".to_string()];
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--data-dir" | "--markdown" => {
                    args.next();
                }
                a if a.starts_with("--data-dir=") || a.starts_with("--markdown=") => {}
                _ => command.push(arg),
            }
        }
        std::fs::write(path, report.markdown_section(&command.join(" ")))
            .with_context(|| format!("--markdown {}", path.display()))?;
    }
    if ctx.json() {
        ctx.print_json(&report)?;
    } else {
        print!("{}", report.table());
    }
    Ok(if failures.is_empty() && report.checksums_agree() {
        0
    } else {
        1
    })
}

fn notes(report: &mut Report, plan: &Plan, a: &OverheadArgs) {
    let mut notes = Vec::new();
    notes.push(
        "overhead = extra time for the same work relative to native (for rates: native/driver \
         − 1); `relative` is the performance as a fraction of native; spread = ±(max−min)/2 of \
         the median"
            .to_string(),
    );
    if let Some(q) = report.drivers.iter().find(|d| d.name == "qemu") {
        match q.accelerator.as_deref() {
            Some("tcg") => notes.push(format!(
                "qemu ran under TCG (software emulation{}): its overhead is emulation of the \
                 CPU, not the cost of hardware virtualisation; with working KVM expect a few \
                 percent for cpu",
                q.accelerator_note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            )),
            Some(acc) => notes.push(format!("qemu ran with accelerator {}", acc.to_uppercase())),
            None => {}
        }
        if plan.vm != plan.native || a.vm_repeat != a.repeat {
            notes.push(format!(
                "to finish within 15 minutes under TCG the VM ran smaller workloads: cpu {} \
                 events (native {}), io {} (native {}; the VM's disk is the image's), net {} \
                 (native {}), {} repeats (native {}); rates are per event or byte, and \
                 checksums are compared with a native run of the same size",
                plan.vm.cpu_events,
                plan.native.cpu_events,
                vfarm_core::size::ByteSize(plan.vm.io_size),
                vfarm_core::size::ByteSize(plan.native.io_size),
                vfarm_core::size::ByteSize(plan.vm.net_size),
                vfarm_core::size::ByteSize(plan.native.net_size),
                a.vm_repeat,
                a.repeat
            ));
        }
    }
    if plan.workloads.iter().any(|w| w == "startup") {
        notes.push(
            "startup: wall time of `vfarm run --driver X -- true` (natively: spawning `true`); \
             ready: `vfarm instance create` + `instance cp` of the workload until it runs"
                .into(),
        );
    }
    if plan.workloads.iter().any(|w| w == "cpu-all") {
        notes.push(
            "cpu-all uses every core the environment sees; the VM gets as many vCPUs as the \
             host has cores"
                .into(),
        );
    }
    report.notes = notes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: OverheadArgs,
    }

    fn args(s: &str) -> OverheadArgs {
        T::try_parse_from(std::iter::once("t").chain(s.split_whitespace()))
            .unwrap()
            .a
    }

    fn field(e: anyhow::Error) -> &'static str {
        e.downcast_ref::<Invalid>().expect("an Invalid").field
    }

    #[test]
    fn plan_orders_drivers_and_scales_the_vm() {
        let p = plan(&args("--drivers qemu,native,oci --cpu-events 1000")).unwrap();
        assert_eq!(p.drivers, ["native", "oci", "qemu"]);
        assert_eq!(p.vm.cpu_events, 200);
        assert_eq!(p.native.io_size, 1 << 30);
        assert_eq!(p.vm.io_size, 128 << 20);
    }

    #[test]
    fn bad_arguments_name_the_field() {
        assert_eq!(
            field(plan(&args("--drivers oci")).err().unwrap()),
            "drivers"
        );
        assert_eq!(
            field(plan(&args("--drivers native,xen")).err().unwrap()),
            "drivers"
        );
        assert_eq!(
            field(plan(&args("--workloads cpu,gpu")).err().unwrap()),
            "workloads"
        );
        assert_eq!(field(plan(&args("--repeat 0")).err().unwrap()), "repeat");
        assert_eq!(
            field(plan(&args("--io-size lots")).err().unwrap()),
            "io_size"
        );
        assert_eq!(field(plan(&args("--chart x.png")).err().unwrap()), "chart");
        let e = plan(&args("--vm-io-size 0")).err().unwrap();
        assert_eq!(e.to_string(), "--vm-io-size: must be greater than 0");
    }

    #[test]
    fn workload_lines_are_parsed() {
        let line = vfarm_workload::run(
            &workload_args(
                "cpu",
                &Sizes {
                    cpu_events: 50,
                    io_size: 1,
                    mmu_faults: 1,
                    net_size: 1,
                },
            )
            .unwrap(),
        )
        .unwrap()
        .to_string();
        let w = parse_line(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(w.metrics.len(), 1);
        assert_eq!(w.metrics[0].0, "cpu");
        assert_eq!(w.metrics[0].2, "events/s");
        assert_eq!(w.checksum.len(), 16);
        assert!(parse_line("no json here").is_err());
    }
}
