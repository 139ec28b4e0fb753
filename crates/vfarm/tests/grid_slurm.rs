//! The mini Slurm site of `examples/grids/slurm-site.toml` end to end (issue 19), in real oci
//! instances on the grid's own network, through a `vfarm serve`: its image built, the grid
//! up, both workers idle in `sinfo`, a batch job run on a worker whose output names that
//! worker's pool host name, and `grid down` leaving no member, hostname lease or network
//! piece.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fresh_dir, require, Server, Vf};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/grids")
        .join(name)
}

/// A /22 of the shared address space per test run for the grid's own network, apart from
/// the ones the `grids` binary takes (100.64–100.123).
fn grid_pool() -> String {
    let pid = std::process::id();
    format!("100.{}.{}.0/22", 124 + pid % 4, (pid / 4 % 64) * 4)
}

/// Takes down what the test made, also when it fails half-way: the grid, any instance left,
/// and the grid's network.
struct Cleanup {
    data: PathBuf,
    net: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let vf = Vf {
            data: self.data.clone(),
        };
        let _ = vf.run(&["grid", "down", "slurm-site"]);
        let ls = vf.run(&["--output", "json", "instance", "ls"]);
        if let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&ls.stdout) {
            for r in rows {
                let _ = vf.run(&["instance", "destroy", r["id"].as_str().unwrap()]);
            }
        }
        if let Some(n) = &self.net {
            let _ = vf.run(&["network", "down", n]);
        }
    }
}

/// `KEY=value` of `scontrol show …` output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn short(host: &str) -> &str {
    host.split('.').next().unwrap()
}

#[test]
fn the_slurm_site_runs_a_batch_job_on_a_worker_and_goes_down_leaving_nothing() {
    for t in ["ip", "nft", "dnsmasq", "runc", "mmdebstrap"] {
        require(t);
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let data = fresh_dir("grid-slurm");
    let vf = Vf { data: data.clone() };
    let mut cleanup = Cleanup {
        data: data.clone(),
        net: None,
    };
    // A site CA: every member gets a host certificate for its own name.
    vf.ok(&[
        "ca",
        "init",
        "--subject",
        "/DC=test/O=vfarm/CN=Slurm Grid Test CA",
    ]);
    let mut toml = format!("grid_subnets = \"{}\"\n", grid_pool());
    for i in 1..=4 {
        toml.push_str(&format!("[[hostnames]]\nname = \"s{i:02}.grid.test\"\n"));
    }
    std::fs::write(data.join("serve.toml"), toml).unwrap();

    // The image of the example's roles, built as `grid up` would (Debian's slurm-wlm and
    // munge, through mmdebstrap); `grid up` then finds it.
    let t = Instant::now();
    vf.ok(&[
        "image",
        "build",
        "--suite",
        "bookworm",
        "--package",
        "slurm-wlm",
        "--package",
        "munge",
    ]);
    let build_time = t.elapsed();
    step(&format!("image built: {build_time:?}"));

    let srv = Server::start(&data);
    let remote = |args: &[&str]| -> Value {
        let out = vf
            .cmd(&[&["--output", "json"], args].concat())
            .env("VFARM_SERVER", &srv.base)
            .env("VFARM_TOKEN", srv.token())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vfarm {args:?}: {}",
            common::text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let t = Instant::now();
    let g = remote(&["grid", "up", example("slurm-site.toml").to_str().unwrap()]);
    let up_time = t.elapsed();
    let net = g["network"].as_str().unwrap_or_default().to_string();
    if !net.is_empty() {
        cleanup.net = Some(net.clone());
    }
    step(&format!("grid up: {up_time:?} (network {net})"));
    assert_eq!(
        (g["name"].as_str(), g["state"].as_str()),
        (Some("slurm-site"), Some("up")),
        "{g}"
    );
    assert!(net.starts_with("g-"), "a network of the grid's own: {g}");
    let members = g["members"].as_array().unwrap().clone();
    let role = |r: &str| -> Vec<(String, String)> {
        members
            .iter()
            .filter(|m| m["role"] == r)
            .map(|m| {
                assert_eq!(m["state"], "running", "{m}");
                let host = m["hostname"].as_str().unwrap().to_string();
                assert!(host.ends_with(".grid.test"), "pool names: {m}");
                (m["instance_id"].as_str().unwrap().to_string(), host)
            })
            .collect()
    };
    let ctl = role("ctl");
    let wns = role("wn");
    assert_eq!((ctl.len(), wns.len()), (1, 2), "{g}");
    let ctl_id = ctl[0].0.as_str();

    // Each member's host certificate names it and verifies against the site CA (with its
    // CRL); after `grid down` none of them does.
    let certs = data.join("ca/certificates");
    let mut member_certs = Vec::new();
    for (id, host) in ctl.iter().chain(&wns) {
        let pem = vf.ok(&[
            "instance",
            "exec",
            id,
            "--",
            "cat",
            "/etc/grid-security/hostcert.pem",
        ]);
        let file = data.join(format!("{id}-hostcert.pem"));
        std::fs::write(&file, pem).unwrap();
        let subject = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&subject.stdout).contains(host.as_str()),
            "{host}: {subject:?}"
        );
        member_certs.push(file);
    }
    let verify = |file: &PathBuf| {
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CApath"])
            .arg(&certs)
            .arg(file)
            .output()
            .unwrap()
    };
    for f in &member_certs {
        let v = verify(f);
        assert!(v.status.success(), "{}: {v:?}", f.display());
    }
    step("each member's host certificate verifies against the site CA");

    // In the controller: a command's stdout, or a failure naming what the daemons logged.
    let logs = || {
        let mut s = String::new();
        let tail = |id: &str, log: &str| {
            let out = vf.run(&["instance", "exec", id, "--", "tail", "-n", "20", log]);
            common::text(&out)
        };
        s += &format!(
            "\n-- slurmctld.log:\n{}",
            tail(ctl_id, "/var/log/slurm-site/slurmctld.log")
        );
        let out = vf.run(&["instance", "logs", ctl_id]);
        s += &format!("\n-- controller console:\n{}", common::text(&out));
        for (id, host) in &wns {
            s += &format!(
                "\n-- {host} slurmd.log:\n{}",
                tail(id, "/var/log/slurm-site/slurmd.log")
            );
            let out = vf.run(&["instance", "logs", id]);
            s += &format!("\n-- {host} console:\n{}", common::text(&out));
        }
        s
    };
    let in_ctl = |args: &[&str]| {
        let out = vf.run(&[&["instance", "exec", ctl_id, "--"], args].concat());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            common::text(&out),
        )
    };

    // Both workers register with the controller and are idle.
    let deadline = Instant::now() + Duration::from_secs(120);
    // A dynamic node is named as its slurmd's host calls itself (here the full name).
    let idle = |out: &str, host: &str| {
        out.lines().any(|l| {
            l.trim() == format!("{host} idle") || l.trim() == format!("{} idle", short(host))
        })
    };
    loop {
        let (ok, out, all) = in_ctl(&["sinfo", "-h", "-N", "-o", "%N %T"]);
        if ok && wns.iter().all(|(_, h)| idle(&out, h)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers are not both idle in sinfo after 120 s: {all}{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    step("sinfo: both workers idle");

    // A batch job runs on a worker and its output names that worker.
    let t = Instant::now();
    let (ok, out, all) = in_ctl(&[
        "sbatch",
        "--parsable",
        "--output=/tmp/job-%j.out",
        "--wrap",
        "hostname",
    ]);
    assert!(ok, "sbatch: {all}{}", logs());
    let job = out.trim().split(';').next().unwrap().to_string();
    assert!(job.parse::<u64>().is_ok(), "sbatch printed {out:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let shown = loop {
        let (ok, out, all) = in_ctl(&["scontrol", "show", "job", &job]);
        assert!(ok, "scontrol show job {job}: {all}");
        match field(&out, "JobState") {
            Some("COMPLETED") => break out,
            Some("PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING") => {}
            other => panic!("job {job} is {other:?}: {out}{}", logs()),
        }
        assert!(
            Instant::now() < deadline,
            "job {job} not completed after 120 s: {out}{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let job_time = t.elapsed();
    let batch_host = field(&shown, "BatchHost").unwrap_or_default().to_string();
    assert_eq!(
        field(&shown, "NodeList"),
        Some(batch_host.as_str()),
        "{shown}"
    );
    let (wn_id, wn_host) = wns
        .iter()
        .find(|(_, h)| h == &batch_host || short(h) == batch_host)
        .unwrap_or_else(|| panic!("job {job} ran on {batch_host:?}, not a worker: {shown}"));
    let out = vf.ok(&[
        "instance",
        "exec",
        wn_id,
        "--",
        "cat",
        &format!("/tmp/job-{job}.out"),
    ]);
    assert!(
        out.trim() == wn_host || out.trim() == short(wn_host),
        "job {job} on {wn_host} printed {out:?}"
    );
    step(&format!(
        "first job {job}: {job_time:?}, ran on {wn_host}, printed {:?}",
        out.trim()
    ));

    // Down leaves nothing of the grid.
    let t = Instant::now();
    let out = vf
        .cmd(&["grid", "down", "slurm-site"])
        .env("VFARM_SERVER", &srv.base)
        .env("VFARM_TOKEN", srv.token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    step(&format!("grid down: {:?}", t.elapsed()));
    assert_eq!(vf.json(&["grid", "ls"]), Value::Array(vec![]));
    assert_eq!(vf.json(&["instance", "ls"]), Value::Array(vec![]));
    let store = common::store_of(&data);
    assert!(store.hostname_leases().unwrap().is_empty());
    assert_eq!(common::net_pieces(&net), Vec::<String>::new());
    for f in &member_certs {
        let v = verify(f);
        assert!(
            !v.status.success(),
            "{} still verifies after grid down: {v:?}",
            f.display()
        );
    }
    eprintln!(
        "slurm site: image build {build_time:?}, grid up {up_time:?}, first job {job_time:?}"
    );
}
