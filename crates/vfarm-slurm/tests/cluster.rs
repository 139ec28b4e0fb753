//! Against a real one-node Slurm cluster (munged + slurmctld + slurmd from Debian's
//! slurm-wlm) started per test by scripts/slurm-cluster.sh. Without Slurm installed every
//! test fails naming the missing binary.

use std::path::Path;
use std::time::{Duration, Instant};

use vfarm_slurm::testcluster::TestCluster;
use vfarm_slurm::{image_features, merge_node_features, BatchJob, ImageMeta, Slurm, SlurmState};

fn cluster() -> TestCluster {
    TestCluster::start().unwrap_or_else(|e| panic!("{e}"))
}

fn job(c: &TestCluster, name: &str, argv: &[&str]) -> BatchJob {
    let work = c.dir().join("jobs").join(name);
    std::fs::create_dir_all(&work).unwrap();
    BatchJob::new(name, work, argv.iter().map(|s| s.to_string()).collect())
}

fn wait_for(slurm: &Slurm, id: u64, what: &str, ok: impl Fn(&SlurmState) -> bool) -> SlurmState {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = slurm.state(id).unwrap();
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never {what}; last state {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn exit_code_arguments_environment_and_output() {
    let c = cluster();
    let slurm = c.slurm();
    let mut j = job(
        &c,
        "args",
        &[
            "sh",
            "-c",
            r#"for a in "$@"; do echo "arg=[$a]"; done; echo "FOO=[$FOO]"; echo "QUOTE=[$QUOTE]"; echo to-stderr >&2; pwd; exit 3"#,
            "sh",
            "a b",
            "it's",
            "$HOME",
        ],
    );
    j.env = vec![
        ("FOO".into(), "bar baz".into()),
        ("QUOTE".into(), "don't `expand` $this".into()),
    ];
    let id = slurm.submit(&j).unwrap();
    let info = slurm.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(
        info.state,
        SlurmState::Failed {
            exit_code: 3,
            signal: 0,
            reason: "NonZeroExitCode".into()
        },
        "{info:?}"
    );
    assert_eq!(info.exit_code, 3);
    let out = read(&j.stdout);
    assert_eq!(
        out,
        format!(
            "arg=[a b]\narg=[it's]\narg=[$HOME]\nFOO=[bar baz]\nQUOTE=[don't `expand` $this]\n{}\n",
            j.workdir.display()
        )
    );
    assert_eq!(read(&j.stderr), "to-stderr\n");
    assert_eq!(info.stdout.as_deref(), j.stdout.to_str());

    // Exit 0 is Completed.
    let ok = job(&c, "ok", &["true"]);
    let id = slurm.submit(&ok).unwrap();
    let info = slurm.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(info.state, SlurmState::Completed { exit_code: 0 });
}

#[test]
fn wall_time_limit_is_timeout() {
    let c = cluster();
    let slurm = c.slurm();
    // One minute is Slurm's smallest limit (minute resolution); the controller checks limits
    // every 30 s, so this takes 60-100 s.
    let mut j = job(&c, "slow", &["sleep", "600"]);
    j.time_limit = Some(Duration::from_secs(60));
    let t0 = Instant::now();
    let id = slurm.submit(&j).unwrap();
    let info = slurm.wait(id, Duration::from_secs(240)).unwrap();
    assert_eq!(info.state, SlurmState::Timeout, "{info:?}");
    eprintln!("timeout reported after {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn cancel_pending_and_running() {
    let c = cluster();
    let slurm = c.slurm();
    let cpus = slurm.ping().unwrap().nodes[0].cpus;
    let mut big = job(&c, "hog", &["sleep", "600"]);
    big.cpus = cpus;
    let running = slurm.submit(&big).unwrap();
    wait_for(&slurm, running, "running", |s| {
        matches!(s, SlurmState::Running { .. })
    });
    let mut waiting = big.clone();
    waiting.name = "waiter".into();
    let pending = slurm.submit(&waiting).unwrap();
    let s = slurm.state(pending).unwrap();
    assert!(matches!(s, SlurmState::Pending { .. }), "{s:?}");

    slurm.cancel(pending).unwrap();
    let s = wait_for(&slurm, pending, "cancelled", |s| s.is_terminal());
    assert_eq!(s, SlurmState::Cancelled);

    slurm.cancel(running).unwrap();
    let s = wait_for(&slurm, running, "cancelled", |s| s.is_terminal());
    assert_eq!(s, SlurmState::Cancelled);
    // Cancelling again is a no-op; an unknown id is named.
    slurm.cancel(running).unwrap();
    let e = slurm.cancel(999_999).unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_job_not_found", "{e}");
    let e = slurm.state(999_999).unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_job_not_found", "{e}");
}

#[test]
fn unknown_feature_is_refused_at_submit() {
    let c = cluster();
    let slurm = c.slurm();
    let mut j = job(&c, "nowhere", &["true"]);
    j.features = vec!["vfarm-os-nosuch-1-x86_64".into()];
    let e = slurm.submit(&j).unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_submit_refused", "{e}");
    assert!(
        e.to_string().contains("Invalid feature specification"),
        "{e}"
    );
    // Bad input never reaches Slurm.
    j.features = vec!["a|b".into()];
    let e = slurm.submit(&j).unwrap_err();
    assert_eq!(e.code().as_str(), "invalid_job", "{e}");
    assert!(e.to_string().contains("features"), "{e}");
    // More CPUs than the node has: refused too, not left pending forever.
    let mut j = job(&c, "huge", &["true"]);
    j.cpus = 4096;
    let e = slurm.submit(&j).unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_submit_refused", "{e}");
}

#[test]
fn node_features_route_jobs() {
    let c = cluster();
    let slurm = c.slurm();
    let info = slurm.ping().unwrap();
    assert_eq!(info.nodes.len(), 1, "{info:?}");
    let node = info.nodes[0].clone();
    assert!(node.cpus >= 1 && node.memory_mib > 0, "{node:?}");
    assert!(node.is_usable(), "{node:?}");

    let feats = image_features(&[ImageMeta {
        id: Some("4f2a9c0d1e2b3a4c5d6e7f80".into()),
        os: "debian".into(),
        os_version: "12".into(),
        arch: "x86_64".into(),
    }]);
    let want = merge_node_features(&node.features, &feats);
    slurm.set_node_features(&node.name, &want).unwrap();
    let after = slurm.ping().unwrap();
    let n = after.node(&node.name).unwrap();
    assert_eq!(n.features, want);
    assert_eq!(n.active_features, want);
    assert!(n
        .features
        .contains(&"vfarm-os-debian-12-x86_64".to_string()));

    // slurmctld keeps them when slurmd restarts (node reboot, upgrade).
    c.restart_slurmd().unwrap();
    let n = slurm.ping().unwrap().node(&node.name).unwrap().clone();
    assert_eq!(n.features, want, "after a slurmd restart");
    assert!(n.is_usable(), "{n:?}");

    let mut j = job(&c, "routed", &["true"]);
    j.features = vec!["vfarm-os-debian-12-x86_64".into()];
    let id = slurm.submit(&j).unwrap();
    let done = slurm.wait(id, Duration::from_secs(60)).unwrap();
    assert_eq!(done.state, SlurmState::Completed { exit_code: 0 });
    assert_eq!(done.node.as_deref(), Some(node.name.as_str()));

    let e = slurm.set_node_features("no-such-node", &want).unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_node_not_found", "{e}");
    let e = slurm
        .set_node_features(&node.name, &["bad feature".to_string()])
        .unwrap_err();
    assert_eq!(e.code().as_str(), "invalid_job", "{e}");

    // Clearing works too.
    slurm.set_node_features(&node.name, &[]).unwrap();
    assert!(slurm
        .ping()
        .unwrap()
        .node(&node.name)
        .unwrap()
        .features
        .is_empty());
}

#[test]
fn unreachable_controller_is_classified() {
    let mut c = cluster();
    let slurm = c.slurm().with_timeout(Duration::from_secs(60));
    c.stop().unwrap();
    let e = slurm.ping().unwrap_err();
    assert_eq!(e.code().as_str(), "slurm_unreachable", "{e}");
    assert!(e.is_retryable());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Measurements for BENCHMARKS.md: submit → running latency, and 20 trivial jobs end to end.
#[test]
fn measure_latency_and_throughput() {
    let c = cluster();
    let slurm = c.slurm();
    let mut lat = Vec::new();
    for i in 0..5 {
        let j = job(&c, &format!("lat{i}"), &["sleep", "1"]);
        let t0 = Instant::now();
        let id = slurm.submit(&j).unwrap();
        let submitted = t0.elapsed();
        wait_for(&slurm, id, "running", |s| {
            matches!(s, SlurmState::Running { .. }) || s.is_terminal()
        });
        lat.push(t0.elapsed().as_secs_f64());
        eprintln!("sbatch took {:.3} s", submitted.as_secs_f64());
        slurm.wait(id, Duration::from_secs(60)).unwrap();
    }
    eprintln!(
        "submit -> running: median {:.3} s, min {:.3} s, max {:.3} s (5 samples)",
        median(lat.clone()),
        lat.iter().cloned().fold(f64::MAX, f64::min),
        lat.iter().cloned().fold(0.0, f64::max)
    );

    let t0 = Instant::now();
    let ids: Vec<u64> = (0..20)
        .map(|i| slurm.submit(&job(&c, &format!("t{i}"), &["true"])).unwrap())
        .collect();
    let submit_all = t0.elapsed();
    for id in &ids {
        let info = slurm.wait(*id, Duration::from_secs(300)).unwrap();
        assert_eq!(
            info.state,
            SlurmState::Completed { exit_code: 0 },
            "{info:?}"
        );
    }
    let total = t0.elapsed().as_secs_f64();
    eprintln!(
        "20 trivial jobs: submitted in {:.2} s, all completed after {:.2} s ({:.2} jobs/s)",
        submit_all.as_secs_f64(),
        total,
        20.0 / total
    );
}
