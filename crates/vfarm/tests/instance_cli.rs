//! Black-box tests of `vfarm instance`, `vfarm snapshot` and `vfarm run` against the real
//! OCI runtime and a real Debian minbase image. Missing components fail loudly.

mod common;

use common::{fresh_dir, tmp, unique, Vf};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

impl Vf {
    /// A data dir with the minbase image imported as `minbase`.
    fn new(name: &str) -> Vf {
        let data = tmp().join(name);
        common::remove_at_exit(&data);
        Vf::with_minbase(data)
    }

    /// The data dir shared by most tests (so the image is imported and unpacked once).
    fn shared() -> &'static Vf {
        static V: OnceLock<Vf> = OnceLock::new();
        V.get_or_init(|| Vf::new("cli-tests-data"))
    }

    fn state(&self, inst: &str) -> Value {
        self.json(&["instance", "show", inst])
    }
}

/// Destroys the instance when the test ends, pass or fail.
struct Guard<'a>(&'a Vf, String);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["instance", "destroy", &self.1]);
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn assert_nothing_left(data: &Path) {
    let inst = data.join("instances");
    let left: Vec<_> = std::fs::read_dir(&inst)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance dirs left: {left:?}");
    let state = data.join("oci/state");
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*inst.to_string_lossy()),
        "mounts left under {}",
        inst.display()
    );
}

#[test]
fn run_prints_passes_exit_status_times_out_and_leaves_nothing() {
    let vf = Vf::new(&unique("cli-run"));
    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--",
        "cat",
        "/etc/debian_version",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("12."));

    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--",
        "sh",
        "-c",
        "echo to-stderr >&2; exit 7",
    ]);
    assert_eq!(code(&o), 7);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to-stderr\n");

    let t = Instant::now();
    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--timeout",
        "2s",
        "--",
        "sleep",
        "30",
    ]);
    let took = t.elapsed();
    eprintln!("timeout run took {took:?}");
    assert_eq!(code(&o), 124);
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out after 2s"));
    assert!(
        took < Duration::from_secs(20),
        "a 2 s timeout took {took:?}"
    );

    assert_eq!(vf.json(&["instance", "ls"]), serde_json::json!([]));
    assert_nothing_left(&vf.data);
    let _ = std::fs::remove_dir_all(&vf.data);
}

#[test]
fn limits_hostname_and_isolation() {
    let vf = Vf::shared();
    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--memory",
        "64M",
        "--",
        "perl",
        "-e",
        "$x = 'x' x (300*1024*1024); print 'survived'",
    ]);
    assert_eq!(
        code(&o),
        137,
        "memory hog: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("survived"));
    // The host is fine: the next run works.
    assert_eq!(
        vf.ok(&["run", "--image", "minbase", "--", "echo", "ok"]),
        "ok\n"
    );

    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--pids",
        "32",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo all-spawned",
    ]);
    assert_ne!(code(&o), 0);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fork"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("all-spawned"));

    let out = vf.ok(&[
        "run",
        "--image",
        "minbase",
        "--hostname",
        "node-9",
        "--",
        "sh",
        "-c",
        "hostname; ls /proc | grep -c '^[0-9]'",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "node-9");
    assert!(
        lines[1].parse::<u32>().unwrap() <= 4,
        "sees other processes: {out}"
    );
}

#[test]
fn lifecycle_through_the_cli_with_json() {
    let vf = Vf::shared();
    let name = unique("life");
    let v = vf.json(&[
        "instance", "create", "--image", "minbase", "--name", &name, "--memory", "256M",
        "--expiry", "2h",
    ]);
    let _g = Guard(vf, name.clone());
    assert_eq!(v["state"], "running");
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["hostname"], name.as_str());
    assert_eq!(v["driver"], "oci");
    assert!(v["expires"].is_string() && v["owner"].is_string());
    let id = v["id"].as_str().unwrap().to_string();

    let o = vf.run(&[
        "instance",
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(
        (code(&o), &*String::from_utf8_lossy(&o.stdout)),
        (5, "out\n")
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    assert_eq!(vf.json(&["instance", "pause", &name])["state"], "paused");
    let o = vf.run(&["instance", "exec", &name, "--", "true"]);
    assert_eq!(code(&o), 2, "exec on a paused instance is refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("paused"));
    let o = vf.run(&["instance", "exec", &name, "--output", "json", "--", "true"]);
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(err["error"]["code"], "illegal_state");
    assert_eq!(vf.json(&["instance", "resume", &name])["state"], "running");

    vf.ok(&[
        "instance",
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo kept > /root/kept",
    ]);
    assert_eq!(
        vf.json(&["snapshot", "create", &name, "before"])["name"],
        "before"
    );
    vf.ok(&[
        "instance",
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo x > /root/new-file",
    ]);
    assert_eq!(
        vf.json(&["snapshot", "revert", &name, "before"])["state"],
        "running"
    );
    let o = vf.run(&["instance", "exec", &name, "--", "ls", "/root"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "kept\n",
        "the file written after the snapshot is gone"
    );
    let snaps = vf.json(&["snapshot", "ls", &name]);
    assert_eq!(snaps[0]["name"], "before");

    let shown = vf.state(&id[..6]);
    assert_eq!(shown["id"], id.as_str());
    assert!(shown["uptime_secs"].is_number());
    let listed = vf.json(&["instance", "ls"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id.as_str() && i["state"] == "running"));

    assert_eq!(vf.json(&["instance", "stop", &name])["state"], "stopped");
    let o = vf.run(&["instance", "pause", &name]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot pause an instance that is stopped"));
    assert_eq!(vf.json(&["instance", "start", &name])["state"], "running");
    assert_eq!(
        vf.json(&["instance", "destroy", &name])["state"],
        "destroyed"
    );
    let o = vf.run(&["instance", "show", &name]);
    assert_eq!(code(&o), 3, "a destroyed instance is not found");
    assert!(!vf.data.join("instances").join(&id).exists());
}

#[test]
fn bad_requests_name_the_field() {
    let vf = Vf::shared();
    for (args, needle) in [
        (vec!["--memory", "lots"], "memory"),
        (vec!["--expiry", "soon"], "expiry"),
        (vec!["--hostname", "bad_host"], "hostname"),
        (vec!["--env", "NOEQUALS"], "env"),
        (vec!["--cpus", "0"], "cpus"),
    ] {
        let mut a = vec!["instance", "create", "--image", "minbase"];
        a.extend(args);
        let o = vf.run(&a);
        assert_eq!(code(&o), 2, "{a:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = vf.run(&["instance", "create", "--image", "no-such-image"]);
    assert_ne!(code(&o), 0);
    let o = vf.run(&["instance", "start", "no-such-instance"]);
    assert_eq!(code(&o), 3);
}

#[test]
fn killed_cli_and_dead_processes_are_reconciled() {
    // Its own data dir: it looks for "the" unnamed running instance.
    let vf = &Vf::new(&unique("cli-kill"));
    let short = unique("short");
    let long = unique("long");
    vf.ok(&[
        "instance",
        "create",
        "--image",
        "minbase",
        "--name",
        &short,
        "--",
        "sh",
        "-c",
        "sleep 1; exit 5",
    ]);
    let _g1 = Guard(vf, short.clone());
    vf.ok(&["instance", "create", "--image", "minbase", "--name", &long]);
    let _g2 = Guard(vf, long.clone());

    // A `vfarm run` killed with SIGKILL mid-run: its instance keeps running and is listed.
    let mut child = vf
        .cmd(&["run", "--image", "minbase", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let begun = Instant::now();
    let run_id = loop {
        let ls = vf.json(&["instance", "ls"]);
        let found = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"].is_null() && i["state"] == "running")
            .map(|i| i["id"].as_str().unwrap().to_string());
        if let Some(id) = found {
            break id;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "run instance never showed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _g3 = Guard(vf, run_id.clone());
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    assert_eq!(vf.state(&short)["state"], "failed");
    assert_eq!(vf.state(&short)["exit_code"], 5);
    assert_eq!(vf.state(&long)["state"], "running");
    assert_eq!(vf.state(&run_id)["state"], "running");
    assert!(
        vf.state(&run_id)["expires"].is_string(),
        "a disposable instance always expires"
    );

    for i in [&short, &long, &run_id] {
        let id = vf.state(i)["id"].as_str().unwrap().to_string();
        vf.ok(&["instance", "destroy", i]);
        assert!(!vf.data.join("instances").join(&id).exists());
        assert!(!vf.data.join("oci/state").join(&id).exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&id), "mount of {id} left");
    }
    // The guards' destroys would otherwise recreate the store in the removed dir.
    drop((_g1, _g2, _g3));
    assert_nothing_left(&vf.data);
    let _ = std::fs::remove_dir_all(&vf.data);
}

#[test]
fn keep_on_failure_leaves_an_inspectable_instance() {
    let vf = Vf::shared();
    let o = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--keep-on-failure",
        "--",
        "sh",
        "-c",
        "echo broken > /root/state; echo failing; exit 3",
    ]);
    assert_eq!(code(&o), 3);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "failing\n");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let id = err
        .split_whitespace()
        .skip_while(|w| *w != "instance")
        .nth(1)
        .expect("the message names the instance")
        .to_string();
    let _g = Guard(vf, id.clone());
    assert!(err.contains(&format!("vfarm instance exec {id}")), "{err}");
    let v = vf.state(&id);
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["snapshots"][0]["name"], "failure");
    vf.ok(&["instance", "start", &id]);
    assert_eq!(
        vf.ok(&["instance", "exec", &id, "--", "cat", "/root/state"]),
        "broken\n"
    );
    // A successful run with --keep-on-failure keeps nothing (counted in a data dir of its
    // own: the shared one has other tests' instances coming and going).
    let own = Vf::with_minbase(fresh_dir("keep-ok"));
    assert_eq!(
        own.ok(&[
            "run",
            "--image",
            "minbase",
            "--keep-on-failure",
            "--",
            "echo",
            "fine"
        ]),
        "fine\n"
    );
    assert_eq!(own.json(&["instance", "ls"]), serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&own.data);
}

#[test]
fn expired_instances_are_reaped() {
    let vf = Vf::shared();
    let name = unique("exp");
    vf.ok(&[
        "instance", "create", "--image", "minbase", "--name", &name, "--expiry", "1s",
    ]);
    let _g = Guard(vf, name.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let r = vf.json(&["instance", "reap"]);
    let id = r["reaped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|_| true)
        .cloned();
    assert!(id.is_some(), "{r}");
    assert_eq!(code(&vf.run(&["instance", "show", &name])), 3);
}

#[test]
fn logs_show_the_main_process_output() {
    let vf = Vf::shared();
    let name = unique("logs");
    vf.ok(&[
        "instance",
        "create",
        "--image",
        "minbase",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        "echo hello; echo oops >&2",
    ]);
    let _g = Guard(vf, name.clone());
    let begun = Instant::now();
    while vf.state(&name)["state"] == "running" {
        assert!(begun.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(vf.state(&name)["state"], "stopped");
    let o = vf.run(&["instance", "logs", &name]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
}

#[test]
fn interrupted_run_kills_and_removes_its_instance() {
    use std::io::{BufRead, BufReader};
    let vf = Vf::shared();
    let mut child = vf
        .cmd(&["run", "--image", "minbase", "--", "sleep", "300"])
        .env("VFARM_LOG", "vfarm=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The debug log says when the command runs, and in which instance.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let id = loop {
        let line = lines.next().expect("run ended before starting").unwrap();
        if line.contains("run: started") {
            let at = line.find("instance=").expect("instance field") + "instance=".len();
            let id: String = line[at..]
                .chars()
                .filter(|c| c.is_ascii_hexdigit())
                .take(12)
                .collect();
            break id;
        }
    };
    let _g = Guard(vf, id.clone());
    assert_eq!(vf.state(&id)["state"], "running");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert_eq!(
        code(&vf.run(&["instance", "show", &id])),
        3,
        "the instance is gone"
    );
    assert!(!vf.data.join("instances").join(&id).exists());
}

#[test]
fn checkpoint_is_refused_and_console_follows_for_oci() {
    let vf = Vf::shared();
    let name = unique("console");
    vf.ok(&[
        "instance",
        "create",
        "--image",
        "minbase",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        "echo hello; sleep 1; echo bye",
    ]);
    let _g = Guard(vf, name.clone());
    // Only a VM has memory state to save: a clear refusal with the stable code, whatever
    // the container's state.
    for args in [
        vec!["instance", "checkpoint", name.as_str(), "--stop"],
        vec!["instance", "restore", name.as_str()],
    ] {
        let mut a = args.clone();
        a.extend(["--output", "json"]);
        let o = vf.run(&a);
        assert_eq!(
            code(&o),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(err["error"]["code"], "unsupported", "{err}");
    }
    // --follow prints the main process's output as it comes and ends with it.
    let out = vf.ok(&["instance", "console", &name, "--follow"]);
    assert_eq!(out, "hello\nbye\n");
    assert_eq!(vf.state(&name)["state"], "stopped");
    assert_eq!(vf.ok(&["instance", "console", &name]), "hello\nbye\n");
}

#[test]
fn files_copy_in_and_out_and_runs_stage_them() {
    let vf = Vf::shared();
    let dir = tmp().join(unique("stage"));
    std::fs::create_dir_all(&dir).unwrap();
    common::remove_at_exit(&dir);
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$(cat input.txt) from $(pwd)\" > result.txt\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("input.txt"), "hello").unwrap();

    // run: inputs staged into the working directory, the script keeps its mode, the output
    // comes back; relative guest paths are relative to --workdir.
    let arg = |a: &str, b: &str| format!("{}:{b}", dir.join(a).display());
    let out = dir.join("result.txt");
    let (i1, i2) = (arg("job.sh", "job.sh"), arg("input.txt", "input.txt"));
    let o = format!("result.txt:{}", out.display());
    vf.ok(&[
        "run",
        "--image",
        "minbase",
        "--workdir",
        "/scratch/job",
        "--copy-in",
        &i1,
        "--copy-in",
        &i2,
        "--copy-out",
        &o,
        "--",
        "./job.sh",
    ]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "hello from /scratch/job\n"
    );
    // A missing output makes an otherwise successful run fail, naming the file.
    let missing = format!("/nowhere.txt:{}", dir.join("n").display());
    let r = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--copy-out",
        &missing,
        "--",
        "true",
    ]);
    assert_eq!(code(&r), 1);
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nowhere.txt"));
    // Bad staging arguments are refused before anything is made.
    let r = vf.run(&[
        "run",
        "--image",
        "minbase",
        "--copy-in",
        "a:b:c",
        "--",
        "true",
    ]);
    assert_eq!(code(&r), 2);
    assert!(String::from_utf8_lossy(&r.stderr).contains("copy-in"));

    // instance cp both ways on a running instance; an absolute symlink in the instance
    // resolves inside it, never on the host.
    let name = unique("cp");
    vf.ok(&["instance", "create", "--image", "minbase", "--name", &name]);
    let _g = Guard(vf, name.clone());
    let dst = format!("{name}:/deep/new/dir/in.txt");
    vf.ok(&[
        "instance",
        "cp",
        dir.join("input.txt").to_str().unwrap(),
        &dst,
    ]);
    assert_eq!(
        vf.ok(&[
            "instance",
            "exec",
            &name,
            "--",
            "cat",
            "/deep/new/dir/in.txt"
        ]),
        "hello"
    );
    let host_marker = dir.join("host-only");
    std::fs::write(&host_marker, "host").unwrap();
    let link_target = host_marker.to_str().unwrap();
    vf.ok(&[
        "instance",
        "exec",
        &name,
        "--",
        "ln",
        "-s",
        link_target,
        "/escape",
    ]);
    let r = vf.run(&[
        "instance",
        "cp",
        &format!("{name}:/escape"),
        dir.join("esc").to_str().unwrap(),
    ]);
    assert_ne!(
        code(&r),
        0,
        "a symlink to a host path must not reach the host file"
    );
    assert!(!dir.join("esc").exists());
    vf.ok(&[
        "instance",
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo guest > /tmp/g",
    ]);
    let back = dir.join("g");
    vf.ok(&[
        "instance",
        "cp",
        &format!("{name}:/tmp/g"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "guest\n");
    let r = vf.run(&[
        "instance",
        "cp",
        &format!("{name}:/no/such"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(code(&r), 3);
    let r = vf.run(&["instance", "cp", "/a", "/b"]);
    assert_eq!(code(&r), 2);
}
