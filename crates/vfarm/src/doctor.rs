//! `vfarm doctor`: what this machine can run, and why not. Each capability is measured with
//! the probe its driver trusts (a test container for the OCI runtime, a test guest for KVM),
//! not guessed from what is installed, and each failure names the one command that fixes it.
//! Nodes send the same report in their heartbeat, so the control places VMs by it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vfarm_core::doctor::{
    Check, CrlStatus, Report, ACCEL_KVM, ACCEL_TCG, CRL_CURRENT, CRL_EXPIRED, CRL_MISSING,
};
use vfarm_driver::oci::{select_runtime, RuntimeChoice};
use vfarm_qemu::probe::{probe_kvm, KvmFailure, ProbeConfig};
use vfarm_qemu::tools::{find_in_path, Tool, BUSYBOX_STATIC, QEMU_IMG, QEMU_SYSTEM_X86_64};

use crate::ctx::Ctx;

/// The KVM probe's budget here: a working KVM boots the test guest in well under a second,
/// and the whole report must come back in under 10 s.
const KVM_TIMEOUT: Duration = Duration::from_secs(5);
const SLURM_TIMEOUT: Duration = Duration::from_secs(4);

const MMDEBSTRAP: Tool = Tool {
    name: "mmdebstrap",
    package: "mmdebstrap",
};
const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
};
const SCONTROL: Tool = Tool {
    name: "scontrol",
    package: "slurm-client",
};

fn install(tool: &Tool) -> String {
    format!("apt-get install {}", tool.package)
}

/// Every check, run side by side (the slow ones, OCI and KVM, overlap).
pub fn report(ctx: &Ctx) -> Report {
    let began = Instant::now();
    let data = ctx.data_dir.clone();
    let mut checks = std::thread::scope(|s| {
        let oci = s.spawn(|| oci(&data));
        let qemu = s.spawn(|| qemu(&data));
        let slurm = s.spawn(slurm);
        let (qemu, accel) = qemu.join().expect("qemu check");
        let checks = vec![
            oci.join().expect("oci check"),
            qemu,
            builds(),
            slurm.join().expect("slurm check"),
            database(ctx),
        ];
        (checks, accel)
    });
    let mut crls = Vec::new();
    if let Some((c, list)) = trust(&crate::cmd::serve::config_path(ctx), chrono::Utc::now()) {
        checks.0.push(c);
        crls = list;
    }
    let core_ok = Report::core_works(&checks.0);
    Report {
        checks: std::mem::take(&mut checks.0),
        accelerator: checks.1,
        core_ok,
        elapsed_ms: began.elapsed().as_millis() as u64,
        crls,
    }
}

/// The client CA directory the service config names (`[trust] client_ca_dir`): each CA's
/// CRL, its age and nextUpdate. A CA without a current CRL refuses its users unless
/// `crl_missing = "warn"`; the check fails then, with the fix. `None`: no directory named.
pub fn trust(config: &Path, now: chrono::DateTime<chrono::Utc>) -> Option<(Check, Vec<CrlStatus>)> {
    let fail = |verdict: String, fix: String| {
        Some((
            Check {
                fix: Some(fix),
                ..check("trust", false, verdict, vec![])
            },
            vec![],
        ))
    };
    let config = match vfarm_auth::ServeConfig::load(config) {
        Ok(c) => c,
        Err(e) => return fail(format!("{e}"), format!("correct {}", config.display())),
    };
    let dir = config.client_ca_dir.as_ref()?;
    let store = match vfarm_imagelist::TrustStore::load(dir) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                format!("client CA directory {}: {e}", dir.display()),
                format!(
                    "install the CA certificates in {} (IGTF layout), or correct [trust] \
                     client_ca_dir",
                    dir.display()
                ),
            )
        }
    };
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut list = Vec::new();
    let mut notes = Vec::new();
    for ca in store.cas() {
        let name = vfarm_imagelist::trust::oneline(ca.subject_name());
        let newest = store
            .crls_for(&name)
            .into_iter()
            .filter_map(|c| {
                let last = vfarm_imagelist::trust::asn1_to_utc(c.last_update())?;
                let next = c
                    .next_update()
                    .and_then(vfarm_imagelist::trust::asn1_to_utc);
                Some((last, next))
            })
            .max_by_key(|(last, _)| *last);
        let st = match newest {
            None => CrlStatus {
                ca: name,
                status: CRL_MISSING.into(),
                last_update: None,
                next_update: None,
                age_seconds: None,
                remaining_seconds: None,
            },
            Some((last, next)) => CrlStatus {
                ca: name,
                // A CRL without nextUpdate is never current (RFC 5280 requires the field).
                status: if next.is_some_and(|n| n > now) {
                    CRL_CURRENT
                } else {
                    CRL_EXPIRED
                }
                .into(),
                last_update: Some(rfc(last)),
                next_update: next.map(rfc),
                age_seconds: Some((now - last).num_seconds()),
                remaining_seconds: next.map(|n| (n - now).num_seconds()),
            },
        };
        notes.push(match st.status.as_str() {
            CRL_MISSING => format!("{}: no CRL", st.ca),
            _ => format!(
                "{}: CRL {} ({} old, nextUpdate {}{})",
                st.ca,
                st.status,
                age(st.age_seconds.unwrap_or(0)),
                st.next_update.as_deref().unwrap_or("none"),
                match st.remaining_seconds {
                    Some(r) if r > 0 => format!(", in {}", age(r)),
                    Some(r) => format!(", {} ago", age(-r)),
                    None => String::new(),
                }
            ),
        });
        list.push(st);
    }
    let bad = list.iter().filter(|c| c.status != CRL_CURRENT).count();
    let warn = config.crl_missing == vfarm_imagelist::trust::CrlMissing::Warn;
    let dir_s = dir.display();
    let c = if bad == 0 {
        check(
            "trust",
            true,
            format!("{} CA(s) in {dir_s}, every CRL current", list.len()),
            notes,
        )
    } else if warn {
        check(
            "trust",
            true,
            format!(
                "{bad} of {} CA(s) in {dir_s} without a current CRL: their users are let in                  (crl_missing = \"warn\")",
                list.len()
            ),
            notes,
        )
    } else {
        Check {
            fix: Some(format!(
                "run fetch-crl (apt-get install fetch-crl) to update the CRLs in {dir_s}, or \
                 set crl_missing = \"warn\" under [trust] in serve.toml"
            )),
            ..check(
                "trust",
                false,
                format!(
                    "{bad} of {} CA(s) in {dir_s} without a current CRL: their users are refused",
                    list.len()
                ),
                notes,
            )
        }
    };
    Some((c, list))
}

/// `3d 4h`, `5h 2m`, `40s`: a duration for people.
fn age(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{secs}s")
    }
}

/// `vfarm doctor`: exit 0 when the core works (the database opens and one driver runs
/// instances), 1 otherwise.
pub fn run(ctx: &Ctx) -> anyhow::Result<i32> {
    let r = report(ctx);
    if ctx.json() {
        ctx.print_json(&r)?;
    } else {
        print_checks(&r);
        println!(
            "core: {} ({:.1} s)",
            if r.core_ok {
                "works"
            } else {
                "does not work: the database must open and oci or qemu must work"
            },
            r.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(if r.core_ok { 0 } else { 1 })
}

/// The table, with each check's notes and fix under it.
pub fn print_checks(r: &Report) {
    println!("{:<10} {:<4} VERDICT", "CAPABILITY", "OK");
    for c in &r.checks {
        println!(
            "{:<10} {:<4} {}",
            c.capability,
            if c.ok { "yes" } else { "no" },
            c.verdict
        );
        for n in &c.notes {
            println!("{:<15} {n}", "");
        }
        if let Some(f) = &c.fix {
            println!("{:<15} fix: {f}", "");
        }
    }
}

fn check(capability: &str, ok: bool, verdict: String, notes: Vec<String>) -> Check {
    Check {
        capability: capability.into(),
        ok,
        verdict,
        notes,
        fix: None,
    }
}

/// `unified`, `hybrid` or `legacy`, from where cgroup2 is mounted: crun refuses hybrid hosts.
fn cgroup_mode() -> &'static str {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cg2_at = |dir: &str| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == dir && f[2] == "cgroup2"
        })
    };
    if cg2_at("/sys/fs/cgroup") {
        "unified"
    } else if cg2_at("/sys/fs/cgroup/unified") {
        "hybrid"
    } else {
        "legacy"
    }
}

fn oci(data: &Path) -> Check {
    let mode = cgroup_mode();
    let mut notes = Vec::new();
    let chosen = select_runtime(
        &RuntimeChoice::Auto,
        &data.join("oci/probe"),
        &mut notes,
        false,
    );
    // crun 1.8 refuses every container on hybrid cgroups; say so next to its own words, or
    // instead of them when it is not installed (installing it would not help).
    if mode == "hybrid" {
        for n in notes.iter_mut() {
            if n.contains("crun: refused") {
                n.push_str(" (cgroups in hybrid mode)");
            } else if n.starts_with("crun: not found") {
                n.push_str("; it would be refused anyway: cgroups in hybrid mode");
            }
        }
    }
    notes.push(format!("cgroups: {mode}"));
    match chosen {
        Ok(rt) => check("oci", true, format!("{} ({})", rt.name, rt.version), notes),
        Err(_) => Check {
            fix: Some("apt-get install runc".into()),
            ..check(
                "oci",
                false,
                "no OCI runtime runs a test container".into(),
                notes,
            )
        },
    }
}

/// QEMU's verdict and the accelerator its VMs would get.
fn qemu(data: &Path) -> (Check, Option<String>) {
    let mut notes = Vec::new();
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for tool in [QEMU_SYSTEM_X86_64, QEMU_IMG, BUSYBOX_STATIC] {
        match tool.find() {
            Ok(p) => found.push(p),
            Err(_) => missing.push(tool),
        }
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|t| t.name).collect();
        let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        let c = Check {
            fix: Some(format!("apt-get install {}", packages.join(" "))),
            ..check(
                "qemu",
                false,
                format!("not installed: {}", names.join(", ")),
                notes,
            )
        };
        return (c, None);
    }
    let Some(kernel) = vfarm_driver::qemu::host_kernel() else {
        notes
            .push("no /boot/vmlinuz-*: KVM is probed with the first image's kernel instead".into());
        return (
            check("qemu", true, "works; KVM not probed yet".into(), notes),
            None,
        );
    };
    let cfg = ProbeConfig {
        qemu: found[0].clone(),
        kernel,
        busybox: found[2].clone(),
        // The driver's own cache: a verdict found here is the one instances get.
        state_dir: data.join("qemu/probe"),
        timeout: KVM_TIMEOUT,
        refresh: false,
        cpu: None,
    };
    match probe_kvm(&cfg) {
        Ok(v) if v.usable => {
            notes.push(format!(
                "test guest booted under KVM in {} ms",
                v.elapsed_ms
            ));
            (
                check("qemu", true, "KVM".into(), notes),
                Some(ACCEL_KVM.into()),
            )
        }
        Ok(v) => {
            let why = v
                .failure
                .as_ref()
                .map_or("unknown".to_string(), |f| f.to_string());
            notes.push(format!("KVM refused: {why}"));
            notes.push("VMs run under TCG emulation (slower, but they run)".into());
            let fix = match v.failure {
                Some(KvmFailure::NoDevice) => Some(
                    "modprobe kvm_intel (or kvm_amd), or enable virtualisation in the firmware"
                        .into(),
                ),
                _ => None,
            };
            let c = Check {
                fix,
                ..check("qemu", true, "TCG (KVM refused)".into(), notes)
            };
            (c, Some(ACCEL_TCG.into()))
        }
        Err(e) => {
            notes.push(format!("KVM probe failed: {e}"));
            (
                check("qemu", true, "TCG (KVM not probed)".into(), notes),
                Some(ACCEL_TCG.into()),
            )
        }
    }
}

/// A tool counts when it runs, not merely when it is on PATH.
fn runs(path: &PathBuf, arg: &str) -> Result<String, String> {
    let out = Command::new(path)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    let text = if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    let first = String::from_utf8_lossy(text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if out.status.success() {
        Ok(first)
    } else {
        Err(format!("`{arg}` failed ({}): {first}", out.status))
    }
}

fn builds() -> Check {
    let mut notes = Vec::new();
    let mut fixes = Vec::new();
    for (tool, arg) in [
        (MMDEBSTRAP, "--version"),
        (QEMU_IMG, "--version"),
        (MKFS_EXT4, "-V"),
    ] {
        match tool.find() {
            Ok(p) => match runs(&p, arg) {
                Ok(v) => notes.push(format!("{}: {v}", tool.name)),
                Err(e) => {
                    notes.push(format!("{}: {e}", tool.name));
                    fixes.push(tool.package);
                }
            },
            Err(_) => {
                notes.push(format!("{}: not installed", tool.name));
                fixes.push(tool.package);
            }
        }
    }
    // dnf builds Rocky/Alma/Fedora images when present; Debian images need none of it.
    match find_in_path("dnf") {
        Some(p) => notes.push(format!(
            "dnf: {} (RPM-based images)",
            runs(&p, "--version").unwrap_or_else(|e| e)
        )),
        None => notes.push("dnf: not installed (only needed for RPM-based images)".into()),
    }
    if fixes.is_empty() {
        check("builds", true, "ok".into(), notes)
    } else {
        Check {
            fix: Some(format!("apt-get install {}", fixes.join(" "))),
            ..check("builds", false, "image builds cannot run".into(), notes)
        }
    }
}

fn slurm() -> Check {
    if SCONTROL.find().is_err() {
        return Check {
            fix: Some(install(&SCONTROL)),
            ..check(
                "slurm",
                false,
                "not installed (needed only for `job submit --backend slurm`)".into(),
                vec![],
            )
        };
    }
    match vfarm_slurm::Slurm::new(None)
        .with_timeout(SLURM_TIMEOUT)
        .ping()
    {
        Ok(info) => check(
            "slurm",
            true,
            format!("controller answers: {} node(s)", info.nodes.len()),
            vec![],
        ),
        Err(e) => Check {
            fix: Some(
                "set SLURM_CONF to the cluster's slurm.conf, or start a private one-node cluster: \
                 scripts/slurm-cluster.sh start DIR"
                    .into(),
            ),
            ..check(
                "slurm",
                false,
                "controller unreachable".into(),
                // The tool's last line holds its verdict; the lines before are its path there.
                vec![e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string()],
            )
        },
    }
}

fn database(ctx: &Ctx) -> Check {
    let what = match crate::ctx::database() {
        Some(url) => format!("PostgreSQL at {}", without_password(&url)),
        None => format!("SQLite {}", ctx.data_dir.join("state.db").display()),
    };
    match ctx.store().and_then(|s| Ok(s.schema_version()?)) {
        Ok(v) => check("database", true, format!("{what} (schema {v})"), vec![]),
        Err(e) => Check {
            fix: Some(if crate::ctx::database().is_some() {
                "start PostgreSQL or correct --database / VFARM_DATABASE".into()
            } else {
                format!(
                    "make {} writable, or choose another with --data-dir",
                    ctx.data_dir.display()
                )
            }),
            ..check("database", false, format!("{what}: {e:#}"), vec![])
        },
    }
}

/// A connection URL fit to print: the password replaced.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Current, expired (past nextUpdate) and missing CRLs, and what `crl_missing` changes.
    #[test]
    fn crl_ages_of_the_client_ca_directory() {
        let d = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let ca =
            vfarm_auth::ca::SiteCa::init(&d.path().join("ca"), "/C=XX/O=t/CN=CA", 90, now).unwrap();
        let config = d.path().join("serve.toml");
        // No directory named: no check at all.
        assert!(trust(&config, now).is_none());
        let dir = ca.certificates_dir();
        std::fs::write(
            &config,
            format!("[trust]\nclient_ca_dir = \"{}\"\n", dir.display()),
        )
        .unwrap();
        let (c, crls) = trust(&config, now).unwrap();
        assert!(c.ok, "{c:?}");
        assert_eq!(crls.len(), 1);
        assert_eq!(crls[0].ca, "/C=XX/O=t/CN=CA");
        assert_eq!(crls[0].status, CRL_CURRENT);
        assert!(crls[0].age_seconds.unwrap() >= 0);
        assert!(crls[0].remaining_seconds.unwrap() > 20 * 86_400);
        assert!(crls[0].next_update.is_some());
        // Forty days on, the CRL (30 days) is past its nextUpdate.
        let later = now + chrono::Duration::days(40);
        let (c, crls) = trust(&config, later).unwrap();
        assert!(!c.ok, "{c:?}");
        assert_eq!(crls[0].status, CRL_EXPIRED);
        assert!(crls[0].remaining_seconds.unwrap() < 0);
        let fix = c.fix.unwrap();
        assert_eq!(
            fix,
            format!(
                "run fetch-crl (apt-get install fetch-crl) to update the CRLs in {}, or set \
                 crl_missing = \"warn\" under [trust] in serve.toml",
                dir.display()
            )
        );
        assert!(c.notes[0].contains("expired"), "{:?}", c.notes);
        // Missing: no CRL of that CA in the directory.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "r0") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let (c, crls) = trust(&config, now).unwrap();
        assert!(!c.ok, "{c:?}");
        assert_eq!(crls[0].status, CRL_MISSING);
        assert_eq!(
            (crls[0].age_seconds, crls[0].next_update.as_deref()),
            (None, None)
        );
        // crl_missing = "warn" lets the CA's users in: the check passes and says so.
        std::fs::write(
            &config,
            format!(
                "[trust]\nclient_ca_dir = \"{}\"\ncrl_missing = \"warn\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let (c, _) = trust(&config, now).unwrap();
        assert!(c.ok && c.verdict.contains("warn"), "{c:?}");
        // A directory that is not there: the check fails, naming it.
        std::fs::write(&config, "[trust]\nclient_ca_dir = \"nowhere\"\n").unwrap();
        let (c, _) = trust(&config, now).unwrap();
        assert!(!c.ok && c.verdict.contains("nowhere"), "{c:?}");
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .ends_with("or correct [trust] client_ca_dir"),
            "{c:?}"
        );
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            without_password("postgres://vfarm:secret@db.example/vfarm"),
            "postgres://vfarm:***@db.example/vfarm"
        );
        assert_eq!(without_password("postgres://db/x"), "postgres://db/x");
    }
}
