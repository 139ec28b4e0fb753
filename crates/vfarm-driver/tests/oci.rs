//! The oci driver against the real runtime, a real minbase rootfs and real overlay mounts.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use vfarm_driver::{wait_until_stopped, Driver, DriverError, ExecIo, Observed, StopMode};

fn exec_out(d: &dyn Driver, id: &str, argv: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let f = std::fs::File::create(&out).unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let code = d
        .exec()
        .expect("oci can exec")
        .exec(
            id,
            &argv,
            &[],
            ExecIo {
                stdin: Stdio::null(),
                stdout: f.into(),
                stderr: Stdio::inherit(),
            },
        )
        .unwrap();
    (code, std::fs::read_to_string(out).unwrap())
}

fn run_to_end(d: &dyn Driver, id: &str) -> Observed {
    d.start(id).unwrap();
    wait_until_stopped(d, id, Some(Duration::from_secs(60))).unwrap()
}

#[test]
fn probe_finds_a_working_runtime() {
    let d = driver();
    let r = d.probe().unwrap();
    assert!(r.usable, "{r:?}");
    assert!(!r.backend.is_empty());
    eprintln!("probe: {r:?}");
}

#[test]
fn runs_commands_and_reports_exit_status() {
    let d = driver();
    let ok = Inst::new(
        &d,
        &spec(&unique_id("cat"), &["cat", "/etc/debian_version"]),
    );
    assert_eq!(d.observe(&ok.id).unwrap(), Observed::Created);
    assert_eq!(run_to_end(&d, &ok.id), Observed::Exited { code: 0 });
    assert!(ok.stdout().starts_with("12."), "stdout: {:?}", ok.stdout());

    let seven = Inst::new(
        &d,
        &spec(&unique_id("exit7"), &["sh", "-c", "echo oops >&2; exit 7"]),
    );
    assert_eq!(run_to_end(&d, &seven.id), Observed::Exited { code: 7 });
    assert_eq!(seven.stderr(), "oops\n");

    // Starting again reruns the command in the same filesystem.
    let again = Inst::new(
        &d,
        &spec(
            &unique_id("again"),
            &["sh", "-c", "echo x >> /counter; wc -l < /counter"],
        ),
    );
    run_to_end(&d, &again.id);
    assert_eq!(run_to_end(&d, &again.id), Observed::Exited { code: 0 });
    assert_eq!(again.stdout(), "1\n2\n");
}

#[test]
fn kill_ends_a_long_command_and_cleanup_leaves_nothing() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("sleep"), &["sleep", "30"]));
    d.start(&i.id).unwrap();
    assert_eq!(d.observe(&i.id).unwrap(), Observed::Running);
    let t = Instant::now();
    let o = d.stop(&i.id, StopMode::Kill).unwrap();
    eprintln!("kill took {:?}", t.elapsed());
    assert_eq!(o, Observed::Exited { code: 137 });
    // Cleanup of a running instance works too (the Drop guard checks that nothing is left).
    let j = Inst::new(&d, &spec(&unique_id("sleep2"), &["sleep", "30"]));
    d.start(&j.id).unwrap();
}

#[test]
fn graceful_stop_of_the_idle_init() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("idle"), &[]));
    d.start(&i.id).unwrap();
    // Wait until the idle init has installed its SIGTERM trap (SigCgt bit 15), or a TERM sent
    // right after start meets an init without a handler and the stop becomes a kill.
    let begun = Instant::now();
    loop {
        let (_, out) = exec_out(&d, &i.id, &["sh", "-c", "grep SigCgt /proc/1/status"]);
        let mask =
            u64::from_str_radix(out.trim().trim_start_matches("SigCgt:").trim(), 16).unwrap();
        if mask & (1 << 14) != 0 {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "init never trapped TERM"
        );
    }
    let o = d
        .stop(
            &i.id,
            StopMode::Graceful {
                timeout: Duration::from_secs(10),
            },
        )
        .unwrap();
    assert_eq!(o, Observed::Exited { code: 0 });
    // Stopping a stopped instance is fine and changes nothing.
    assert_eq!(
        d.stop(&i.id, StopMode::Kill).unwrap(),
        Observed::Exited { code: 0 }
    );
}

#[test]
fn memory_hog_is_killed_inside_the_instance() {
    let d = driver();
    let mut s = spec(
        &unique_id("hog"),
        &["perl", "-e", "$x = 'x' x (300*1024*1024); print length($x)"],
    );
    s.memory = Some(64 << 20);
    let i = Inst::new(&d, &s);
    assert_eq!(run_to_end(&d, &i.id), Observed::Exited { code: 137 });
    assert_eq!(i.stdout(), "", "the hog must not have finished");
}

#[test]
fn fork_bomb_is_contained_by_the_pids_limit() {
    let d = driver();
    let mut s = spec(
        &unique_id("bomb"),
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo spawned all",
        ],
    );
    s.pids = Some(32);
    let i = Inst::new(&d, &s);
    let o = run_to_end(&d, &i.id);
    assert!(matches!(o, Observed::Exited { code } if code != 0), "{o:?}");
    assert!(i.stderr().contains("fork"), "stderr: {}", i.stderr());
    assert!(!i.stdout().contains("spawned all"));
}

#[test]
fn own_hostname_own_processes_no_network() {
    let d = driver();
    let mut s = spec(
        &unique_id("ns"),
        &[
            "sh",
            "-c",
            "hostname; ls /proc | grep -c '^[0-9]'; cat /proc/net/dev | grep -c :",
        ],
    );
    s.hostname = "node-7".into();
    let i = Inst::new(&d, &s);
    assert_eq!(run_to_end(&d, &i.id), Observed::Exited { code: 0 });
    let out = i.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "node-7");
    let procs: u32 = lines[1].parse().unwrap();
    assert!(
        procs <= 4,
        "sees {procs} processes: not its own pid namespace"
    );
    assert_eq!(lines[2], "1", "only loopback expected: {out}");
}

#[test]
fn host_network_on_request() {
    let d = driver();
    let mut s = spec(
        &unique_id("hostnet"),
        &["sh", "-c", "cat /proc/net/dev | grep -c :"],
    );
    s.network = vfarm_driver::Network::Host;
    let i = Inst::new(&d, &s);
    assert_eq!(run_to_end(&d, &i.id), Observed::Exited { code: 0 });
    let host = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .matches(':')
        .count();
    assert_eq!(i.stdout().trim(), host.to_string());
}

#[test]
fn limits_and_env_reach_the_cgroup_and_process() {
    let d = driver();
    let mut s = spec(&unique_id("lim"), &[]);
    s.cpus = Some(0.5);
    s.memory = Some(128 << 20);
    s.env = vec![("FOO".into(), "bar baz".into())];
    let i = Inst::new(&d, &s);
    d.start(&i.id).unwrap();
    let cg = std::path::Path::new("/sys/fs/cgroup");
    let mem = std::fs::read_to_string(
        cg.join("memory/vfarm")
            .join(&i.id)
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(mem.trim(), (128u64 << 20).to_string());
    let quota =
        std::fs::read_to_string(cg.join("cpu/vfarm").join(&i.id).join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "50000");
    let (code, out) = exec_out(&d, &i.id, &["sh", "-c", "echo \"$FOO\""]);
    assert_eq!((code, out.as_str()), (0, "bar baz\n"));
}

#[test]
fn lifecycle_pause_exec_snapshot_revert() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("life"), &[]));
    d.start(&i.id).unwrap();
    assert_eq!(
        exec_out(&d, &i.id, &["sh", "-c", "echo hi; exit 3"]),
        (3, "hi\n".into())
    );

    let p = d.pausable().unwrap();
    p.pause(&i.id).unwrap();
    assert_eq!(d.observe(&i.id).unwrap(), Observed::Paused);
    let e = d
        .exec()
        .unwrap()
        .exec(&i.id, &["true".into()], &[], ExecIo::inherit())
        .unwrap_err();
    assert!(e.to_string().contains("paused"), "{e}");
    p.resume(&i.id).unwrap();
    assert_eq!(d.observe(&i.id).unwrap(), Observed::Running);

    let snaps = d.snapshots().unwrap();
    exec_out(&d, &i.id, &["sh", "-c", "echo before > /root/kept"]);
    snaps.create(&i.id, "s1").unwrap();
    assert_eq!(
        d.observe(&i.id).unwrap(),
        Observed::Running,
        "snapshot keeps it running"
    );
    exec_out(
        &d,
        &i.id,
        &[
            "sh",
            "-c",
            "echo after > /root/new; echo changed > /root/kept; rm /etc/debian_version",
        ],
    );
    snaps.revert(&i.id, "s1").unwrap();
    assert_eq!(
        d.observe(&i.id).unwrap(),
        Observed::Running,
        "revert restarts a running instance"
    );
    let (_, out) = exec_out(
        &d,
        &i.id,
        &[
            "sh",
            "-c",
            "cat /root/kept; test -e /root/new && echo new-exists; cat /etc/debian_version",
        ],
    );
    assert!(out.starts_with("before\n12."), "after revert: {out:?}");

    // Snapshot of a stopped instance (the upper dir becomes a layer), then more changes,
    // then revert to each point.
    d.stop(&i.id, StopMode::Kill).unwrap();
    let before = snaps.create(&i.id, "stopped").unwrap();
    assert_eq!(before.name, "stopped");
    d.start(&i.id).unwrap();
    exec_out(
        &d,
        &i.id,
        &[
            "sh",
            "-c",
            "echo third > /root/kept; mkdir -p /opt/x; echo y > /opt/x/y",
        ],
    );
    assert_eq!(exec_out(&d, &i.id, &["cat", "/root/kept"]).1, "third\n");
    snaps.revert(&i.id, "stopped").unwrap();
    assert_eq!(
        exec_out(&d, &i.id, &["sh", "-c", "cat /root/kept; ls /opt"]).1,
        "before\n"
    );
    let names: Vec<String> = snaps
        .list(&i.id)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "stopped"]);
    snaps.remove(&i.id, "s1").unwrap();
    assert!(matches!(
        snaps.revert(&i.id, "s1"),
        Err(DriverError::NotFound { .. })
    ));
    assert!(matches!(
        snaps.create(&i.id, "stopped"),
        Err(DriverError::InvalidSpec { .. })
    ));
    assert!(matches!(
        snaps.create(&i.id, "../x"),
        Err(DriverError::InvalidSpec { .. })
    ));
}

#[test]
fn a_new_driver_reattaches_and_survives_a_killed_runtime() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("reattach"), &[]));
    d.start(&i.id).unwrap();
    // A fresh driver (a restarted service) sees the same truth.
    let d2 = driver();
    assert_eq!(d2.observe(&i.id).unwrap(), Observed::Running);
    assert!(d2.list().unwrap().contains(&i.id));
    // Kill -9 the runtime's foreground process: the container keeps running and is still
    // observed, stopped and cleaned up.
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("run --bundle .* {}$", i.id)])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).to_string();
    let runtime_pid = pids.lines().next().expect("runtime process found");
    std::process::Command::new("kill")
        .args(["-9", runtime_pid])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d2.observe(&i.id).unwrap(), Observed::Running);
    assert_eq!(
        exec_out(&d2, &i.id, &["echo", "still here"]).1,
        "still here\n"
    );
    let o = d2.stop(&i.id, StopMode::Kill).unwrap();
    assert!(
        matches!(o, Observed::Exited { .. } | Observed::Lost),
        "{o:?}"
    );
}

#[test]
fn cleanup_works_on_half_prepared_and_unknown_instances() {
    let d = driver();
    let id = unique_id("half");
    {
        let _i = Inst::new(&d, &spec(&id, &[]));
        d.start(&id).unwrap();
        // Lose the record: cleanup must still find the container and the mount.
        std::fs::remove_file(d.instance_dir(&id).join("runtime.json")).unwrap();
        assert!(matches!(d.observe(&id), Err(DriverError::NotFound { .. })));
    }
    assert_left_nothing(&d, &id);
    d.cleanup("t-never-existed").unwrap();
    assert!(matches!(
        d.start("t-never-existed"),
        Err(DriverError::NotFound { .. })
    ));
    assert!(matches!(
        d.cleanup("../etc"),
        Err(DriverError::InvalidSpec { .. })
    ));
}

#[test]
fn prepare_is_idempotent_and_refuses_a_different_spec() {
    let d = driver();
    let s = spec(&unique_id("idem"), &["true"]);
    let i = Inst::new(&d, &s);
    d.prepare(&s).unwrap();
    let mut other = s.clone();
    other.hostname = "different".into();
    assert!(matches!(
        d.prepare(&other),
        Err(DriverError::InvalidSpec { field: "id", .. })
    ));
    let mut noimage = spec(&unique_id("notar"), &["true"]);
    noimage.image.files.clear();
    assert!(matches!(
        d.prepare(&noimage),
        Err(DriverError::InvalidSpec { field: "image", .. })
    ));
    drop(i);
}

#[test]
fn runtime_start_failure_is_reported_with_its_message() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("nocmd"), &["/no/such/binary"]));
    let e = d.start(&i.id).unwrap_err();
    assert!(
        e.to_string().contains("no such file") || e.to_string().contains("/no/such/binary"),
        "{e}"
    );
}

/// Measures (does not assert) revert time for a small and a large change set.
#[test]
fn revert_time_does_not_depend_on_change_set_size() {
    let d = driver();
    for mb in [10, 200] {
        let i = Inst::new(&d, &spec(&unique_id("revert"), &[]));
        d.start(&i.id).unwrap();
        exec_out(
            &d,
            &i.id,
            &["sh", "-c", &format!("head -c {mb}M /dev/zero > /big")],
        );
        d.stop(&i.id, StopMode::Kill).unwrap();
        d.snapshots().unwrap().create(&i.id, "base").unwrap();
        d.start(&i.id).unwrap();
        exec_out(
            &d,
            &i.id,
            &["sh", "-c", &format!("head -c {mb}M /dev/zero > /big2")],
        );
        // A durable instance's unmount flushes the host file system; flush first so the
        // measurement is of the revert itself.
        std::process::Command::new("sync").status().unwrap();
        let t = Instant::now();
        d.snapshots().unwrap().revert(&i.id, "base").unwrap();
        eprintln!(
            "revert of a running instance with a {mb} MB change set (synced first): {:?}",
            t.elapsed()
        );
        assert_eq!(exec_out(&d, &i.id, &["sh", "-c", "ls /big*"]).1, "/big\n");
    }
}

/// Measures (does not assert) the phases of a disposable run of `true`.
#[test]
fn phases_of_a_disposable_run() {
    let d = driver();
    let mut rows = Vec::new();
    for n in 0..8 {
        let mut s = spec(&unique_id("true"), &["true"]);
        // Alternate durable and volatile (disposable) instances.
        s.volatile = n % 2 == 1;
        let t = Instant::now();
        d.prepare(&s).unwrap();
        let prepared = t.elapsed();
        d.start(&s.id).unwrap();
        let started = t.elapsed();
        let o = wait_until_stopped(&d, &s.id, Some(Duration::from_secs(30))).unwrap();
        let exited = t.elapsed();
        d.cleanup(&s.id).unwrap();
        let total = t.elapsed();
        assert_eq!(o, Observed::Exited { code: 0 });
        assert_left_nothing(&d, &s.id);
        if n > 0 {
            rows.push((prepared, started, exited, total));
        }
    }
    for (i, r) in rows.iter().enumerate() {
        // rows start at n = 1: odd n are volatile.
        let kind = if i % 2 == 0 { "volatile" } else { "durable" };
        eprintln!(
            "{kind}: prepare {:?} start {:?} exited {:?} cleaned {:?}",
            r.0, r.1, r.2, r.3
        );
    }
}

#[test]
fn graceful_stop_of_an_init_without_a_term_handler_kills_it() {
    let d = driver();
    let i = Inst::new(&d, &spec(&unique_id("noterm"), &["sleep", "300"]));
    d.start(&i.id).unwrap();
    // The runtime reports the container started just before its init execs the command.
    let begun = Instant::now();
    while exec_out(&d, &i.id, &["cat", "/proc/1/comm"]).1 != "sleep\n" {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "init never became sleep"
        );
    }
    let t = Instant::now();
    let o = d
        .stop(
            &i.id,
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .unwrap();
    eprintln!("graceful stop of `sleep` as init took {:?}", t.elapsed());
    assert_eq!(o, Observed::Exited { code: 137 }, "stderr: {}", i.stderr());
}

#[test]
fn user_namespace_on_request() {
    let d = driver();
    let mut s = spec(&unique_id("userns"), &["cat", "/proc/self/uid_map"]);
    s.user_namespace = true;
    let i = Inst::new(&d, &s);
    assert_eq!(run_to_end(&d, &i.id), Observed::Exited { code: 0 });
    let map: Vec<String> = i.stdout().split_whitespace().map(str::to_string).collect();
    assert_eq!(map, ["0", "0", "65536"], "own user namespace expected");
}

/// Runs `argv` on the host as `nobody`, with no capabilities; returns (exit code, stdout).
fn as_nobody(argv: &[&str]) -> (i32, String) {
    // Through a shell, so that even the program's path is looked up as nobody.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            "sh",
            "-c",
            "exec \"$@\"",
            "sh",
        ])
        .args(argv)
        .output()
        .expect("setpriv (util-linux) must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Issue 15, finding 1: root in an instance with an id range is an unprivileged host user, a
/// set-uid file made inside gives nobody on the host root, and seccomp is on.
#[test]
fn user_namespace_with_a_range_is_unprivileged_on_the_host() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = driver();
    let base = vfarm_driver::idmap::base_for(&data_dir(), "tenant-a").unwrap();
    assert!(base >= 1 << 20);
    let mut s = spec(
        &unique_id("userns-range"),
        &[
            "sh",
            "-c",
            "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id && cat /proc/self/uid_map \
             && grep Seccomp: /proc/self/status && id -u && stat -c %u /etc/passwd \
             && (unshare -U true 2>/dev/null; echo unshare=$?) && touch /root/mine \
             && echo ready && sleep 60",
        ],
    );
    s.user_namespace = true;
    s.id_base = base;
    let i = Inst::new(&d, &s);
    d.start(&i.id).unwrap();
    let begun = Instant::now();
    while !i.stdout().contains("ready") {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "instance never got ready; stdout: {} stderr: {}",
            i.stdout(),
            i.stderr()
        );
        if let Observed::Exited { code } = d.observe(&i.id).unwrap() {
            panic!(
                "exited {code}; stdout: {} stderr: {}",
                i.stdout(),
                i.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = i.stdout();
    let lines: Vec<&str> = out.lines().collect();
    let map: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"], "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"]
    );
    assert_eq!(lines[2], "0", "root inside");
    assert_eq!(lines[3], "0", "the image's files are root's inside: {out}");
    assert_ne!(lines[4], "unshare=0", "a nested user namespace was allowed");

    // From the host: the instance's processes run as the range's first id, not as root.
    let pid = std::fs::read_to_string(d.instance_dir(&i.id).join("run/container.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, [base; 4], "{uid_line}");

    // The set-uid copy belongs to the range on the host, not to root.
    let dir = d.instance_dir(&i.id);
    let upper_copy = dir.join("upper/tmp/suid-id");
    let meta = std::fs::metadata(&upper_copy).unwrap();
    assert_eq!(meta.uid(), base);
    assert_eq!(meta.mode() & 0o4000, 0o4000, "made set-uid inside");
    assert_eq!(
        std::fs::metadata(dir.join("upper/root/mine"))
            .unwrap()
            .uid(),
        base
    );
    // Nobody on the host even reaches the instance's files.
    let (code, _) = as_nobody(&["stat", upper_copy.to_str().unwrap()]);
    assert_ne!(code, 0, "nobody reached {}", upper_copy.display());
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // Opened up on purpose: still no root, through the upper dir (set-uid to the range) nor
    // through the mounted root (nosuid).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let (_, via_upper) = as_nobody(&[upper_copy.to_str().unwrap(), "-u"]);
    let mounted = dir.join("bundle/rootfs/tmp/suid-id");
    let (_, via_mount) = as_nobody(&[mounted.to_str().unwrap(), "-u"]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(via_upper, base.to_string());
    assert_eq!(via_mount, "65534", "the overlay mount must be nosuid");
    d.stop(&i.id, StopMode::Kill).unwrap();
}

/// A data dir the instance's unprivileged root cannot reach (below a 0700 directory) is
/// refused up front, naming the directory and the fix, instead of failing inside the runtime.
#[test]
fn a_data_dir_below_a_private_directory_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let private = cache_dir().join(format!("private-{}", std::process::id()));
    let data = private.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let d = vfarm_driver::oci::OciDriver::new(&data, vfarm_driver::oci::RuntimeChoice::Auto)
        .expect("an OCI runtime must work on this host");
    let mut s = spec(&unique_id("private"), &["true"]);
    s.user_namespace = true;
    s.id_base = vfarm_driver::idmap::base_for(&data, "tenant-p").unwrap();
    let err = d.prepare(&s).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&private);
    assert!(
        err.contains(&private.display().to_string())
            && err.contains("700")
            && err.contains("privileged"),
        "{err}"
    );
    assert!(!data.join("instances").join(&s.id).exists());
}
