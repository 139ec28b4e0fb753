//! End-to-end tests of `--driver qemu` through the real binary: a bootable bookworm image
//! built by vfarm, booted by real QEMU (TCG on hosts where KVM does not work), commands run
//! through the real guest agent. Needs root and the packages `scripts/setup.sh` installs;
//! a missing component fails the test with its name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{
    assert_success, build_bootable, fresh_dir, live_qemus, one_vm, require, text, vfarm, vfarm_cmd,
};

struct Fixture {
    data: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let data = fresh_dir("qemu-cli");
        build_bootable(&data, "vm", &[]);
        Fixture { data }
    })
}

/// Nothing of this data dir may be left running: no QEMU process, no instance record.
fn assert_nothing_left(data: &Path) {
    let ls = vfarm(data, &["instance", "ls", "--output", "json"]);
    assert_success(&ls, "instance ls");
    let v: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(0), "instances left: {v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = live_qemus(data.to_str().unwrap());
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU processes left:\n{}",
            alive.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_passes_output_exit_status_and_timeout_through() {
    let f = fixture();
    let _vm = one_vm();
    let console = f.data.join("run-console.log");
    let out = vfarm(
        &f.data,
        &[
            "run",
            "--driver",
            "qemu",
            "--image",
            "vm",
            "--console-log",
            console.to_str().unwrap(),
            "--",
            "cat",
            "/etc/debian_version",
        ],
    );
    assert_success(&out, "run cat");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.trim().starts_with("12."),
        "not a bookworm version: {version:?}"
    );
    // The VM is gone, its boot messages are kept.
    let boot = std::fs::read_to_string(&console).unwrap();
    assert!(boot.contains("starting qemu-ga"), "console log: {boot:?}");

    let out = vfarm(
        &f.data,
        &[
            "run",
            "--driver",
            "qemu",
            "--image",
            "vm",
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));

    let t0 = Instant::now();
    let out = vfarm(
        &f.data,
        &[
            "run",
            "--driver",
            "qemu",
            "--image",
            "vm",
            "--timeout",
            "5s",
            "--",
            "sleep",
            "600",
        ],
    );
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(text(&out).contains("timed out"), "{}", text(&out));
    assert!(
        took < Duration::from_secs(300),
        "the timeout did not end the run ({took:?})"
    );
    eprintln!("qemu run with --timeout 5s took {took:?} (boot included)");
    assert_nothing_left(&f.data);
}

#[test]
fn forcing_kvm_answers_instead_of_hanging() {
    let f = fixture();
    let _vm = one_vm();
    let out = vfarm(
        &f.data,
        &[
            "run", "--driver", "qemu", "--accel", "kvm", "--image", "vm", "--", "true",
        ],
    );
    // Where KVM works the run succeeds; where it does not (these machines), the answer is a
    // clear refusal — never a hang (the test harness would time out).
    if !out.status.success() {
        assert!(
            text(&out).contains("KVM does not work on this host"),
            "{}",
            text(&out)
        );
        assert_eq!(
            out.status.code(),
            Some(4),
            "host-not-ready exit code: {}",
            text(&out)
        );
    }
    assert_nothing_left(&f.data);
}

#[test]
fn instance_lifecycle_with_snapshot_revert() {
    let f = fixture();
    let _vm = one_vm();
    let out = vfarm(
        &f.data,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--profile",
            "fast",
            "--image",
            "vm",
            "--name",
            "v1",
            "--output",
            "json",
        ],
    );
    assert_success(&out, "instance create");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["driver"], "qemu", "{v}");
    let exec = |args: &[&str]| {
        let mut a = vec!["instance", "exec", "v1", "--"];
        a.extend_from_slice(args);
        vfarm(&f.data, &a)
    };
    assert_success(&exec(&["true"]), "exec true");
    // Files in and out through the guest agent: parents made, mode kept, content exact.
    let host_in = f.data.join("cp-in.sh");
    std::fs::write(&host_in, "#!/bin/sh\necho staged\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host_in, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_success(
        &vfarm(
            &f.data,
            &[
                "instance",
                "cp",
                host_in.to_str().unwrap(),
                "v1:/opt/new/run.sh",
            ],
        ),
        "cp in",
    );
    let ran = exec(&["/opt/new/run.sh"]);
    assert_success(&ran, "run the copied script");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "staged\n");
    let host_out = f.data.join("cp-out.txt");
    assert_success(
        &vfarm(
            &f.data,
            &[
                "instance",
                "cp",
                "v1:/etc/debian_version",
                host_out.to_str().unwrap(),
            ],
        ),
        "cp out",
    );
    assert!(std::fs::read_to_string(&host_out)
        .unwrap()
        .starts_with("12."));
    let missing = vfarm(
        &f.data,
        &["instance", "cp", "v1:/no/such", host_out.to_str().unwrap()],
    );
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    assert_success(
        &vfarm(&f.data, &["snapshot", "create", "v1", "clean"]),
        "snapshot create",
    );
    assert_success(
        &exec(&["sh", "-c", "echo changed > /root/marker && sync"]),
        "write marker",
    );
    assert_success(&exec(&["test", "-f", "/root/marker"]), "marker exists");
    assert_success(
        &vfarm(&f.data, &["snapshot", "revert", "v1", "clean"]),
        "snapshot revert",
    );
    let gone = exec(&["test", "-f", "/root/marker"]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "marker survived the revert: {}",
        text(&gone)
    );
    assert_success(&vfarm(&f.data, &["instance", "pause", "v1"]), "pause");
    assert_success(&vfarm(&f.data, &["instance", "resume", "v1"]), "resume");
    assert_success(&exec(&["true"]), "exec after resume");
    assert_success(&vfarm(&f.data, &["instance", "destroy", "v1"]), "destroy");
    assert_nothing_left(&f.data);
}

/// Destroys the instance when the test ends, pass or fail, so a failed assertion leaves no
/// VM running.
struct Destroy<'a>(&'a Path, &'static str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = vfarm(self.0, &["instance", "destroy", self.1]);
    }
}

fn show(data: &Path, instance: &str) -> Value {
    let out = vfarm(data, &["instance", "show", instance, "--output", "json"]);
    assert_success(&out, "instance show");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The guest's counter, or `None` while the file is not written yet.
fn counter(data: &Path, instance: &str) -> Option<u64> {
    let out = vfarm(
        data,
        &["instance", "exec", instance, "--", "cat", "/root/counter"],
    );
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Polls the counter until it is above `floor` (the guest's loop is alive); the deadline only
/// keeps a broken guest from hanging the test.
fn counter_above(data: &Path, instance: &str, floor: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let seen = counter(data, instance);
        if let Some(n) = seen.filter(|n| *n > floor) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the guest's counter did not get above {floor} (last read {seen:?})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn checkpoint_restore_console_and_stats() {
    let f = fixture();
    let _vm = one_vm();
    let d = f.data.as_path();
    let out = vfarm(
        d,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--profile",
            "fast",
            "--image",
            "vm",
            "--name",
            "ck",
            "--output",
            "json",
        ],
    );
    assert_success(&out, "instance create");
    let _destroy = Destroy(d, "ck");

    // The serial console has the boot's output.
    let out = vfarm(d, &["instance", "console", "ck"]);
    assert_success(&out, "console");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "empty console after boot"
    );

    // Measured use of a running VM.
    let v = show(d, "ck");
    assert!(
        matches!(v["accel"].as_str(), Some("kvm" | "tcg")),
        "no accel: {v}"
    );
    assert!(v.get("accel_note").is_some(), "no accel_note: {v}");
    let stats = &v["stats"];
    assert!(
        stats["cpu_time_secs"].as_f64().is_some_and(|c| c > 0.0),
        "no CPU time: {v}"
    );
    assert!(stats["uptime_secs"].as_f64().is_some(), "no uptime: {v}");
    assert!(stats["rss_bytes"].as_u64().is_some_and(|r| r > 0), "{v}");
    assert!(
        stats["block"].as_array().is_some_and(|b| !b.is_empty()),
        "{v}"
    );
    let table = vfarm(d, &["instance", "show", "ck"]);
    assert_success(&table, "show");
    assert!(text(&table).contains("cpu "), "{}", text(&table));

    // A counter in the guest. The agent's exec ends when the command has exited and its
    // output pipes are closed, so the background loop must not hold them.
    let out = vfarm(
        d,
        &[
            "instance",
            "exec",
            "ck",
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.2; done \
             </dev/null >/dev/null 2>&1 &",
        ],
    );
    assert_success(&out, "start the counter");
    let before = counter_above(d, "ck", 1, "before the checkpoint");

    // Checkpoint and stop: the VM ends, the instance is stopped.
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ck-{}.vmstate", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let out = vfarm(
        d,
        &[
            "instance",
            "checkpoint",
            "ck",
            "--to",
            file.to_str().unwrap(),
            "--stop",
            "--output",
            "json",
        ],
    );
    assert_success(&out, "checkpoint --stop");
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["state"], "stopped", "{c}");
    assert!(c["size"].as_u64().is_some_and(|s| s > 0), "{c}");
    assert!(file.is_file(), "no state file at {}", file.display());
    assert_eq!(show(d, "ck")["state"], "stopped");
    assert!(
        show(d, "ck").get("stats").is_none(),
        "stats of a stopped VM"
    );
    let refused = vfarm(d, &["instance", "exec", "ck", "--", "true"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));

    // Restore: the guest continues where it was (the counter did not start over, and its
    // loop, which lives only in the guest's memory, runs on).
    let out = vfarm(
        d,
        &[
            "instance",
            "restore",
            "ck",
            "--from",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert_success(&out, "restore");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "running", "{r}");
    let at_restore = counter_above(d, "ck", 0, "right after the restore");
    assert!(
        at_restore >= before,
        "counter went back from {before} to {at_restore}: the guest did not resume"
    );
    let after = counter_above(d, "ck", at_restore, "after the restore");
    assert!(after > before, "{after} <= {before}");
    assert_eq!(show(d, "ck")["state"], "running");

    // A checkpoint without --stop keeps the VM running; restore defaults to the newest.
    let out = vfarm(d, &["instance", "checkpoint", "ck", "--output", "json"]);
    assert_success(&out, "checkpoint");
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["state"], "running", "{c}");
    assert_success(
        &vfarm(d, &["instance", "exec", "ck", "--", "true"]),
        "exec after a checkpoint",
    );
    assert_success(&vfarm(d, &["instance", "restore", "ck"]), "restore newest");
    assert_eq!(show(d, "ck")["state"], "running");

    // console --follow prints what is added and ends when the instance stops.
    let mut follow = vfarm_cmd(d)
        .args(["instance", "console", "ck", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vfarm console --follow");
    assert_success(
        &vfarm(
            d,
            &[
                "instance",
                "exec",
                "ck",
                "--",
                "sh",
                "-c",
                "echo follow-marker > /dev/console",
            ],
        ),
        "write to the console",
    );
    assert_success(&vfarm(d, &["instance", "stop", "ck", "--force"]), "stop");
    // Bounded, so a follow that never ends fails the test instead of hanging it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while follow.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = follow.kill();
            let _ = follow.wait();
            panic!("console --follow did not end when the instance stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = follow.wait_with_output().unwrap();
    assert_success(&out, "console --follow");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("follow-marker"),
        "{}",
        text(&out)
    );

    assert_success(&vfarm(d, &["instance", "destroy", "ck"]), "destroy");
    // The --to file is the caller's; the default one went with the instance.
    std::fs::remove_file(&file).unwrap();
    assert_nothing_left(d);
}

#[test]
fn vms_outlive_a_killed_service_and_are_found_again() {
    let f = fixture();
    let _vm = one_vm();
    let d = &f.data;
    let server = common::Server::start(d);
    let out = vfarm(
        d,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--profile",
            "fast",
            "--image",
            "vm",
            "--name",
            "sv",
            "--expiry",
            "1h",
        ],
    );
    assert_success(&out, "instance create");
    let _g = Destroy(d, "sv");
    let pid_before = show(d, "sv")["stats"]["pid"].clone();
    assert!(
        pid_before.is_u64(),
        "no QEMU pid in show: {}",
        show(d, "sv")
    );
    // Child::kill is SIGKILL: the service gets no chance to clean anything up.
    drop(server);
    let v = show(d, "sv");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["stats"]["pid"], pid_before, "{v}");
    let server = common::Server::start(d);
    let health = reqwest::blocking::get(format!("{}/healthz", server.base)).unwrap();
    assert!(
        health.status().is_success(),
        "restarted service: {health:?}"
    );
    let echoed = vfarm(d, &["instance", "exec", "sv", "--", "echo", "still-here"]);
    assert_success(&echoed, "exec after the service restarted");
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "still-here\n");
    assert_eq!(show(d, "sv")["stats"]["pid"], pid_before);
    assert_success(&vfarm(d, &["instance", "destroy", "sv"]), "destroy");
    assert_nothing_left(d);
}

/// Acceptance 4 of issue 25: in a terminal, `instance create --driver qemu` shows its
/// current step while it waits (and clears it for the result); in a pipe, or with
/// `--output json`, it prints the result only.
#[test]
fn instance_create_shows_its_steps_in_a_terminal_only() {
    require("tmux");
    let f = fixture();
    let _vm = one_vm();
    let server = format!("vfarm-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let o = Command::new("tmux")
            .args(["-L", &server])
            .args(args)
            .output()
            .expect("run tmux");
        assert_success(&o, &format!("tmux {args:?}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let create = |name: &str| {
        format!(
            "{} instance create --driver qemu --profile fast --image vm --name {name}",
            env!("CARGO_BIN_EXE_vfarm")
        )
    };
    // `exec cat` keeps the pane (a terminal) open after the command, to read its last screen.
    let script = format!(
        "env -u CI -u VFARM_OUTPUT VFARM_DATA_DIR={} {}; echo vfarm-exit=$?; exec cat",
        f.data.display(),
        create("tty")
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "200",
        "-y",
        "40",
        &script,
    ]);
    struct Kill<'a>(&'a str);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["-L", self.0, "kill-server"])
                .status();
        }
    }
    let _kill = Kill(&server);
    let screen = || tmux(&["capture-pane", "-p", "-t", "t"]);
    let begun = Instant::now();
    let mut saw_step = false;
    let last = loop {
        let s = screen();
        saw_step |= s.contains("booting the VM");
        if s.contains("vfarm-exit=") {
            break s;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(600),
            "instance create still running after 10 min:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(last.contains("vfarm-exit=0"), "{last}");
    assert!(
        saw_step,
        "no step shown while the VM booted; last screen:\n{last}"
    );
    assert!(
        last.contains("(tty) running") && !last.contains("booting the VM"),
        "the result is not alone on the last screen:\n{last}"
    );
    assert_success(&vfarm(&f.data, &["instance", "destroy", "tty"]), "destroy");

    // A pipe: the result line only, nothing on stderr; JSON: one document.
    for (name, json) in [("piped", false), ("json", true)] {
        let mut args: Vec<String> = create(name).split(' ').skip(1).map(String::from).collect();
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        let out = vfarm_cmd(&f.data)
            .args(&args)
            .env_remove("CI")
            .output()
            .unwrap();
        assert_success(&out, &format!("instance create ({name})"));
        assert!(out.stderr.is_empty(), "{name}: stderr: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if json {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["state"], "running", "{v}");
        } else {
            assert!(stdout.contains("(piped) running"), "{stdout}");
        }
        assert_success(&vfarm(&f.data, &["instance", "destroy", name]), "destroy");
    }
    assert_nothing_left(&f.data);
}
