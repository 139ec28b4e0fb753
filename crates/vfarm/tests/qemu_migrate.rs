//! End-to-end test of `vfarm instance migrate`: a real VM (bookworm `--boot vm` image built by
//! vfarm, real QEMU under TCG where KVM does not work) moves between two data dirs on this
//! machine while a counter runs in the guest, first with a copied disk, then back with shared
//! storage. Needs root and the packages `scripts/setup.sh` installs; a missing component
//! fails the test with its name.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{assert_success, build_bootable, fresh_dir, live_qemus, text, vfarm};

fn json(out: &Output, what: &str) -> Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{}", text(out)))
}

/// The names of the instances a data dir's `instance ls` lists.
fn listed(data: &Path) -> Vec<(String, String)> {
    let v = json(&vfarm(data, &["instance", "ls", "--output", "json"]), "ls");
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("").to_string(),
                i["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// QEMU processes (not zombies) of `data`'s instances (a migrated VM may still name the
/// source's image files, so the instance dir is what tells).
fn qemus_of(data: &Path) -> Vec<String> {
    live_qemus(&format!("{}/qemu/instances/", data.display()))
}

/// The VM has left `data` completely: no QEMU, no instance dir (sockets, overlay, record),
/// not listed.
fn assert_left(data: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = qemus_of(data);
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU processes left in {}:\n{}",
            data.display(),
            alive.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = data.join("qemu/instances").join(id);
    assert!(
        !dir.exists(),
        "instance dir left at {}: {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    assert!(
        listed(data).is_empty(),
        "{} still lists: {:?}",
        data.display(),
        listed(data)
    );
}

/// The counter, or why it could not be read (the exec's status and stderr).
fn counter_or_why(data: &Path) -> Result<u64, String> {
    let out = vfarm(
        data,
        &["instance", "exec", "mig", "--", "cat", "/root/counter"],
    );
    if !out.status.success() {
        return Err(format!(
            "exec {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|e| format!("counter {text:?}: {e}"))
}

/// Polls the guest's counter until it is above `floor`; the deadline only keeps a broken
/// guest from hanging the test.
fn counter_above(data: &Path, floor: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let seen = counter_or_why(data);
        if let Some(n) = seen.as_ref().ok().filter(|n| **n > floor) {
            return *n;
        }
        if Instant::now() >= deadline {
            // Everything that tells a stuck guest from a stuck agent.
            let show = vfarm(data, &["instance", "show", "mig", "--output", "json"]);
            let console = vfarm(data, &["instance", "console", "mig"]);
            let console = String::from_utf8_lossy(&console.stdout).into_owned();
            let tail = &console[console.len().saturating_sub(2000)..];
            panic!(
                "{what}: the guest's counter did not get above {floor} (last read {seen:?})\n\
                 show: {}\nconsole tail:\n{tail}",
                String::from_utf8_lossy(&show.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Destroys the instance in both data dirs when the test ends, pass or fail.
struct Destroy<'a>(&'a Path, &'a Path);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = vfarm(self.0, &["instance", "destroy", "mig"]);
        let _ = vfarm(self.1, &["instance", "destroy", "mig"]);
    }
}

fn migrate(from: &Path, to: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "instance",
        "migrate",
        "mig",
        "--to",
        to.to_str().unwrap(),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    vfarm(from, &args)
}

#[test]
fn a_running_vm_moves_and_keeps_counting() {
    let root = fresh_dir("qemu-migrate");
    let src = root.join("node1");
    let dst = root.join("node2");
    std::fs::create_dir_all(&src).unwrap();
    build_bootable(&src, "vm", &[]);

    let v = json(
        &vfarm(
            &src,
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
                "mig",
                "--output",
                "json",
            ],
        ),
        "instance create",
    );
    let id = v["id"].as_str().unwrap().to_string();
    let destroy = Destroy(&src, &dst);

    // A file on the disk (flushed), and a counter that lives only in the guest's memory: the
    // agent's exec ends when the command's output pipes close, so the loop must not hold them.
    assert_success(
        &vfarm(
            &src,
            &[
                "instance",
                "exec",
                "mig",
                "--",
                "sh",
                "-c",
                "echo before-migration > /root/marker && sync",
            ],
        ),
        "write the marker",
    );
    assert_success(
        &vfarm(
            &src,
            &[
                "instance",
                "exec",
                "mig",
                "--",
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; done \
                 </dev/null >/dev/null 2>&1 &",
            ],
        ),
        "start the counter",
    );
    let before = counter_above(&src, 1, "before the migration");

    // Refusals change nothing: the same data dir, a file as destination, and a copied disk
    // of a VM with snapshots (they would be lost).
    let same = migrate(&src, &src, &[]);
    assert_eq!(same.status.code(), Some(2), "{}", text(&same));
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let not_dir = migrate(&src, &file, &[]);
    assert_eq!(not_dir.status.code(), Some(2), "{}", text(&not_dir));
    assert_success(
        &vfarm(&src, &["snapshot", "create", "mig", "s1"]),
        "snapshot",
    );
    // A checkpoint too: listed as an object of its own.
    let ck = json(
        &vfarm(&src, &["instance", "checkpoint", "mig", "--output", "json"]),
        "checkpoint",
    );
    let ck_file = ck["checkpoint"].as_str().unwrap().to_string();
    let cks = json(
        &vfarm(&src, &["checkpoint", "ls", "mig", "--output", "json"]),
        "checkpoint ls",
    );
    assert_eq!(cks[0]["file"], ck_file.as_str(), "{cks}");
    // The refusal names both, and commands that work: each is run below as printed.
    let refused = migrate(&src, &dst, &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let advice = [
        format!("vfarm snapshot rm {id} s1"),
        format!("vfarm checkpoint rm {id} {ck_file}"),
    ];
    for a in advice
        .iter()
        .map(String::as_str)
        .chain(["--shared-storage"])
    {
        assert!(
            text(&refused).contains(a),
            "the refusal does not name `{a}`: {}",
            text(&refused)
        );
    }
    assert!(listed(&dst).is_empty(), "refused, yet {:?}", listed(&dst));
    assert!(!dst.join("qemu/instances").join(&id).exists());
    for a in &advice {
        let words: Vec<&str> = a.split_whitespace().skip(1).collect();
        assert_success(&vfarm(&src, &words), a);
    }
    assert!(
        !Path::new(&ck_file).exists(),
        "checkpoint rm left {ck_file}"
    );
    let cks = json(
        &vfarm(&src, &["checkpoint", "ls", "mig", "--output", "json"]),
        "checkpoint ls",
    );
    assert_eq!(cks, serde_json::json!([]));
    let still = counter_above(&src, before, "after the refusals");

    // Copied storage.
    let m = json(&migrate(&src, &dst, &[]), "migrate (copied)");
    eprintln!("copied-storage migration: {m}");
    assert_eq!(m["id"], id.as_str(), "{m}");
    assert_eq!(m["storage"], "copied", "{m}");
    assert_eq!(m["state"], "running", "{m}");
    assert!(m["downtime_ms"].as_u64().is_some(), "{m}");
    assert!(m["total_ms"].as_u64().is_some_and(|t| t > 0), "{m}");
    assert!(m["ram_bytes"].as_u64().is_some_and(|b| b > 0), "{m}");
    assert!(m["disk_bytes"].as_u64().is_some(), "{m}");
    assert_left(&src, &id);
    assert_eq!(
        listed(&dst),
        vec![("mig".to_string(), "running".to_string())]
    );
    // The source no longer has it, and says where it went.
    let gone = vfarm(&src, &["instance", "console", "mig"]);
    assert_eq!(gone.status.code(), Some(3), "{}", text(&gone));
    assert!(
        text(&gone).contains(&format!("was migrated to {}", dst.display())),
        "console on the source does not say where the VM went: {}",
        text(&gone)
    );
    let at_dest = counter_above(&dst, 0, "right after the migration");
    assert!(
        at_dest >= still,
        "counter went back from {still} to {at_dest}: the guest did not move, it restarted"
    );
    counter_above(&dst, at_dest, "on the destination");

    // Shared storage, back again; a snapshot made on node2 comes along.
    assert_success(
        &vfarm(&dst, &["snapshot", "create", "mig", "s2"]),
        "snapshot",
    );
    let m = json(
        &migrate(&dst, &src, &["--shared-storage"]),
        "migrate (shared)",
    );
    eprintln!("shared-storage migration: {m}");
    assert_eq!(m["storage"], "shared", "{m}");
    assert_left(&dst, &id);
    assert_eq!(
        listed(&src),
        vec![("mig".to_string(), "running".to_string())]
    );
    let back = counter_above(&src, 0, "back on node1");
    assert!(
        back >= at_dest,
        "counter went back from {at_dest} to {back}"
    );
    counter_above(&src, back, "back on node1, counting");
    let snaps = json(
        &vfarm(&src, &["snapshot", "ls", "mig", "--output", "json"]),
        "snapshot ls",
    );
    assert!(
        snaps.to_string().contains("\"s2\""),
        "snapshot lost: {snaps}"
    );

    // The disk came along too: after a reboot the file written before the first move is there.
    assert_success(&vfarm(&src, &["instance", "stop", "mig"]), "stop");
    assert_success(&vfarm(&src, &["instance", "start", "mig"]), "start");
    let marker = vfarm(
        &src,
        &["instance", "exec", "mig", "--", "cat", "/root/marker"],
    );
    assert_success(&marker, "read the marker");
    assert_eq!(
        String::from_utf8_lossy(&marker.stdout).trim(),
        "before-migration"
    );

    assert_success(&vfarm(&src, &["instance", "destroy", "mig"]), "destroy");
    assert_left(&src, &id);
    assert_left(&dst, &id);
    // Its destroys would recreate the data dirs' stores.
    std::mem::forget(destroy);
    let _ = std::fs::remove_dir_all(&root);
}
