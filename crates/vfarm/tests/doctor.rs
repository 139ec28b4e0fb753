//! `vfarm doctor` against this machine's real tools, and with a PATH that lacks some of them.

mod common;

use common::{fresh_dir, require, text, vfarm_cmd};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A PATH directory holding links to every program of the system PATH except `without`.
fn path_without(name: &str, without: &[&str]) -> PathBuf {
    let dir = fresh_dir(name).join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for d in std::env::split_paths(SYSTEM_PATH) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name();
            if without.iter().any(|w| n == *w) || dir.join(&n).exists() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), dir.join(&n)).unwrap();
        }
    }
    dir
}

fn doctor(data: &Path, path: &Path, json: bool) -> (Output, Duration) {
    let t = Instant::now();
    let mut c = vfarm_cmd(data);
    c.env("PATH", path)
        .env_remove("VFARM_DATABASE")
        .arg("doctor");
    if json {
        c.args(["--output", "json"]);
    }
    let out = c.output().expect("run vfarm doctor");
    (out, t.elapsed())
}

fn check<'a>(report: &'a Value, capability: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == capability)
        .unwrap_or_else(|| panic!("no {capability} check in {report}"))
}

#[test]
fn doctor_measures_this_host_in_under_ten_seconds() {
    for tool in [
        "runc",
        "qemu-system-x86_64",
        "qemu-img",
        "busybox",
        "mmdebstrap",
    ] {
        require(tool);
    }
    let data = fresh_dir("doctor-here");
    let (out, took) = doctor(&data, Path::new(SYSTEM_PATH), true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(took < Duration::from_secs(10), "doctor took {took:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["core_ok"], true);
    let oci = check(&r, "oci");
    assert_eq!(oci["ok"], true, "{oci}");
    let verdict = oci["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("runc") || verdict.starts_with("crun"),
        "{verdict}"
    );
    let notes = oci["notes"].to_string();
    if notes.contains("cgroups: hybrid") {
        // crun cannot run containers there, installed or not.
        assert!(verdict.starts_with("runc"), "{verdict}");
        assert!(
            notes.contains("crun") && notes.contains("cgroups in hybrid mode"),
            "{notes}"
        );
    }
    let qemu = check(&r, "qemu");
    assert_eq!(qemu["ok"], true, "{qemu}");
    match r["accelerator"].as_str() {
        Some("kvm") => assert_eq!(qemu["verdict"], "KVM"),
        Some("tcg") => {
            assert!(
                qemu["verdict"].as_str().unwrap().starts_with("TCG"),
                "{qemu}"
            );
            assert!(
                qemu["notes"].to_string().contains("KVM refused: "),
                "{qemu}"
            );
        }
        other => panic!("no accelerator verdict ({other:?}): {r}"),
    }
    assert_eq!(check(&r, "builds")["ok"], true);
    let db = check(&r, "database");
    assert_eq!(db["ok"], true, "{db}");
    assert!(
        db["verdict"].as_str().unwrap().starts_with("SQLite"),
        "{db}"
    );
    // Slurm is reported either way, and its failure names a fix.
    let slurm = check(&r, "slurm");
    assert!(slurm["ok"] == true || slurm["fix"].is_string(), "{slurm}");
}

#[test]
fn without_qemu_the_package_to_install_is_named_and_the_core_still_works() {
    require("runc");
    let path = path_without("doctor-noqemu", &["qemu-system-x86_64"]);
    let data = fresh_dir("doctor-noqemu-data");
    let (out, _) = doctor(&data, &path, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "oci still works: {}",
        text(&out)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = check(&r, "qemu");
    assert_eq!(qemu["ok"], false, "{qemu}");
    assert_eq!(qemu["verdict"], "not installed: qemu-system-x86_64");
    assert_eq!(qemu["fix"], "apt-get install qemu-system-x86");
    assert!(r.get("accelerator").is_none(), "{r}");
    // The table says the same to a person.
    let (out, _) = doctor(&data, &path, false);
    let t = text(&out);
    assert!(t.contains("fix: apt-get install qemu-system-x86"), "{t}");
    assert!(t.contains("core: works"), "{t}");
}

#[test]
fn with_no_driver_the_exit_code_says_the_core_does_not_work() {
    let path = fresh_dir("doctor-empty-path");
    let data = fresh_dir("doctor-empty-data");
    let (out, _) = doctor(&data, &path, true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["core_ok"], false);
    for c in r["checks"].as_array().unwrap() {
        assert!(
            c["ok"] == true || c["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "a failed check without a fix: {c}"
        );
    }
    assert_eq!(check(&r, "oci")["fix"], "apt-get install runc");
    assert_eq!(
        check(&r, "qemu")["fix"],
        "apt-get install qemu-system-x86 qemu-utils busybox-static"
    );
    assert_eq!(
        check(&r, "builds")["fix"],
        "apt-get install mmdebstrap qemu-utils e2fsprogs"
    );
    assert_eq!(check(&r, "slurm")["fix"], "apt-get install slurm-client");
}

#[test]
fn an_unreachable_database_is_named_without_its_password_with_the_fix() {
    let path = fresh_dir("doctor-db-path");
    let data = fresh_dir("doctor-db-data");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let out = vfarm_cmd(&data)
        .env("PATH", &path)
        .env(
            "VFARM_DATABASE",
            "postgres://vfarm:s3cret@127.0.0.1:1/vfarm",
        )
        .args(["doctor", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains("s3cret"), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = check(&r, "database");
    assert_eq!(db["ok"], false, "{db}");
    assert!(
        db["verdict"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL at postgres://vfarm:***@127.0.0.1:1/vfarm"),
        "{db}"
    );
    assert_eq!(
        db["fix"],
        "start PostgreSQL or correct --database / VFARM_DATABASE"
    );
}

/// With a client CA directory in serve.toml, the report carries each CA's CRL (age,
/// nextUpdate) in `--output json`, and a missing CRL fails the `trust` check with the fix.
#[test]
fn crl_ages_of_the_configured_client_ca_directory() {
    let path = fresh_dir("doctor-crl-path");
    let data = fresh_dir("doctor-crl-data");
    let ca = vfarm_auth::ca::SiteCa::init(
        &data.join("test-ca"),
        "/C=XX/O=vfarm test/CN=Doctor CA",
        30,
        chrono::Utc::now(),
    )
    .unwrap();
    let dir = ca.certificates_dir();
    std::fs::write(
        data.join("serve.toml"),
        format!("[trust]\nclient_ca_dir = \"{}\"\n", dir.display()),
    )
    .unwrap();
    let (out, _) = doctor(&data, &path, true);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = check(&r, "trust");
    assert_eq!(t["ok"], true, "{t}");
    let crls = r["crls"].as_array().unwrap();
    assert_eq!(crls.len(), 1, "{r}");
    assert_eq!(crls[0]["ca"], "/C=XX/O=vfarm test/CN=Doctor CA");
    assert_eq!(crls[0]["status"], "current");
    assert!(crls[0]["age_seconds"].as_i64().unwrap() >= 0, "{r}");
    assert!(crls[0]["remaining_seconds"].as_i64().unwrap() > 0, "{r}");
    assert!(crls[0]["next_update"].is_string(), "{r}");

    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "r0") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let (out, _) = doctor(&data, &path, true);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = check(&r, "trust");
    assert_eq!(t["ok"], false, "{t}");
    assert_eq!(r["crls"][0]["status"], "missing", "{r}");
    let fix = t["fix"].as_str().unwrap();
    assert!(
        fix.contains("fetch-crl") && fix.contains("crl_missing"),
        "{fix}"
    );
    // The table says it to a person too.
    let (out, _) = doctor(&data, &path, false);
    let t = text(&out);
    assert!(t.contains("Doctor CA: no CRL"), "{t}");
    assert!(t.contains("fix: run fetch-crl"), "{t}");
}
