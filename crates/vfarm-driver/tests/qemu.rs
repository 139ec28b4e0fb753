//! The qemu driver against the real components: an image built by the vfarm CLI (mmdebstrap,
//! `--boot vm --format qcow2`), QEMU under TCG (KVM where it really works), the image's own
//! qemu-guest-agent. A missing component fails the test with its name; nothing is skipped.
//! The VM tests take a shared lock: one VM at a time on a small host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vfarm_driver::qemu::{AccelChoice, AfterCheckpoint, QemuDriver};
use vfarm_driver::{
    Driver, DriverError, ExecIo, ImageInput, InstanceSpec, Network, Observed, StopMode,
};

mod vmimage;

use vmimage::build_image;

/// A bootable bookworm image, built through the CLI once per target dir (later runs are
/// answered from the CLI's cache).
fn image() -> &'static ImageInput {
    static IMAGE: OnceLock<ImageInput> = OnceLock::new();
    IMAGE.get_or_init(|| build_image(&["--variant", "minbase"]))
}

fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn data_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-driver-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn unique_id(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "q-{prefix}-{:x}",
        (n as u64) ^ u64::from(std::process::id())
    )
}

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        image: image().clone(),
        hostname: "vmnode".into(),
        cpus: Some(1.0),
        memory: Some(512 << 20),
        pids: None,
        disk: Some(2 << 30),
        env: vec![("VFARM_TEST".into(), "from-spec".into())],
        command: vec![],
        network: Network::None,
        user_namespace: false,
        id_base: 0,
        volatile: false,
        vm: Default::default(),
    }
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Whether a pid no longer runs. A daemonized QEMU belongs to the host's init once it exits,
/// which may leave it a zombie for a while: that counts as gone.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Cleans the instance up when the test ends, pass or fail; on success checks that nothing
/// (process, socket, overlay, record) is left.
struct Inst<'a> {
    d: &'a QemuDriver,
    id: String,
    sockets: Vec<PathBuf>,
}

impl<'a> Inst<'a> {
    fn new(d: &'a QemuDriver, s: &InstanceSpec) -> Inst<'a> {
        let mut i = Inst {
            d,
            id: s.id.clone(),
            sockets: Vec::new(),
        };
        d.prepare(s).expect("prepare");
        let info = d.info(&s.id).unwrap();
        i.sockets = [Some(info.qmp_socket), info.qga_socket]
            .into_iter()
            .flatten()
            .collect();
        i
    }
}

impl Drop for Inst<'_> {
    fn drop(&mut self) {
        let r = self.d.cleanup(&self.id);
        if std::thread::panicking() {
            return;
        }
        r.expect("cleanup");
        let dir = self.d.instance_dir(&self.id);
        assert!(!dir.exists(), "{} left behind", dir.display());
        for s in &self.sockets {
            assert!(!s.exists(), "socket {} left behind", s.display());
        }
        assert_eq!(processes_mentioning(&dir), Vec::<i32>::new());
        assert!(!self.d.list().unwrap().contains(&self.id));
    }
}

/// Runs a command in the guest; returns (status, stdout, stderr).
fn exec(d: &dyn Driver, id: &str, argv: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let code = d
        .exec()
        .expect("the qemu driver can exec")
        .exec(
            id,
            &argv,
            &env,
            ExecIo {
                stdin: Stdio::null(),
                stdout: out.try_clone().unwrap().into(),
                stderr: err.try_clone().unwrap().into(),
            },
        )
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    };
    (code, read(out), read(err))
}

fn start_timed(d: &QemuDriver, id: &str, what: &str) {
    let t = Instant::now();
    if let Err(e) = d.start(id) {
        let log = std::fs::read_to_string(d.logs(id).unwrap().stdout).unwrap_or_default();
        panic!("start: {e}\nconsole:\n{log}");
    }
    println!("{what}: boot-to-agent {:.2} s", t.elapsed().as_secs_f64());
}

#[test]
fn lifecycle_exec_pause_snapshots_checkpoint_stop_cleanup() {
    let _one = one_vm_at_a_time();
    let d = QemuDriver::new(&data_dir(), AccelChoice::Auto);
    let id = unique_id("life");
    let s = spec(&id);
    let inst = Inst::new(&d, &s);
    let info = d.info(&id).unwrap();
    println!(
        "accel: {:?}{}",
        info.accel,
        info.accel_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    assert_eq!((info.vcpus, info.memory_mib), (1, 512));
    assert_eq!(d.observe(&id).unwrap(), Observed::Created);
    // Idempotent with the same spec; a different one is refused.
    d.prepare(&s).expect("prepare again");
    let mut other = s.clone();
    other.memory = Some(1 << 30);
    assert_eq!(
        d.prepare(&other).unwrap_err().code().as_str(),
        "invalid_spec"
    );
    assert_eq!(d.list().unwrap().iter().filter(|x| **x == id).count(), 1);
    // The overlay is grown to the requested size.
    let img = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&info.disk)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&img.stdout).unwrap();
    assert_eq!(v["virtual-size"].as_u64(), Some(2 << 30));

    start_timed(&d, &id, "first boot");
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    // Starting a running VM is fine.
    d.start(&id).unwrap();

    let (code, out, err) = exec(&d, &id, &["cat", "/etc/debian_version"], &[]);
    assert_eq!(code, 0, "stderr: {err}");
    let version = out.trim();
    println!("/etc/debian_version: {version}");
    assert!(
        version.starts_with("12"),
        "not a bookworm version: {version:?}"
    );
    let (code, _, _) = exec(&d, &id, &["sh", "-c", "exit 7"], &[]);
    assert_eq!(code, 7);
    let (code, out, err) = exec(
        &d,
        &id,
        &["sh", "-c", "echo $VFARM_TEST $EXTRA; echo oops >&2; exit 3"],
        &[("EXTRA", "from-exec")],
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "from-spec from-exec\n", "oops\n")
    );
    // Input from a file reaches the command.
    let mut input = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut input, b"through stdin\n").unwrap();
    std::io::Seek::rewind(&mut input).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let code = d
        .exec()
        .unwrap()
        .exec(
            &id,
            &["tr".into(), "a-z".into(), "A-Z".into()],
            &[],
            ExecIo {
                stdin: input.into(),
                stdout: out.reopen().unwrap().into(),
                stderr: Stdio::null(),
            },
        )
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(out.path()).unwrap(),
        "THROUGH STDIN\n"
    );
    let (_, host, _) = exec(&d, &id, &["cat", "/proc/sys/kernel/hostname"], &[]);
    assert_eq!(host.trim(), "vmnode");
    let (_, cpus, _) = exec(&d, &id, &["nproc"], &[]);
    assert_eq!(cpus.trim(), "1");

    // Pause / resume.
    let p = d.pausable().expect("the qemu driver can pause");
    p.pause(&id).unwrap();
    assert_eq!(d.observe(&id).unwrap(), Observed::Paused);
    let e = d
        .exec()
        .unwrap()
        .exec(&id, &["true".to_string()], &[], ExecIo::inherit())
        .unwrap_err();
    assert!(e.to_string().contains("paused"), "{e}");
    p.resume(&id).unwrap();
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    let t = Instant::now();
    assert_eq!(exec(&d, &id, &["true"], &[]).0, 0);
    println!("exec of `true`: {:.3} s", t.elapsed().as_secs_f64());

    // A snapshot of the running VM (memory + disk), a file written after it, a revert.
    let snaps = d.snapshots().expect("the qemu driver has snapshots");
    let t = Instant::now();
    let info = snaps.create(&id, "s1").unwrap();
    println!(
        "snapshot (running, savevm): {:.2} s, {} MB of state",
        t.elapsed().as_secs_f64(),
        info.size >> 20
    );
    assert!(info.size > 0, "a running VM's snapshot holds its memory");
    assert_eq!(
        snaps.create(&id, "s1").unwrap_err().code().as_str(),
        "invalid_spec"
    );
    let (code, _, err) = exec(&d, &id, &["sh", "-c", "echo x > /root/after; sync"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exec(&d, &id, &["test", "-e", "/root/after"], &[]).0, 0);
    let t = Instant::now();
    snaps.revert(&id, "s1").unwrap();
    println!(
        "revert (running, loadvm, disk {} GiB): {:.3} s",
        s.disk.unwrap() >> 30,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    assert_eq!(
        exec(&d, &id, &["test", "-e", "/root/after"], &[]).0,
        1,
        "the file written after the snapshot must be gone"
    );
    // The guest's file systems were thawed after the revert: writes work.
    assert_eq!(exec(&d, &id, &["sh", "-c", "echo y > /root/y"], &[]).0, 0);
    assert_eq!(
        snaps.revert(&id, "nope").unwrap_err().code().as_str(),
        "not_found"
    );

    // Measured stats.
    let st = d.vm_stats(&id).unwrap();
    println!(
        "stats: cpu {:.2} s, rss {} MB, uptime {:.1} s, disk0 read {} KB written {} KB",
        st.cpu_time.as_secs_f64(),
        st.rss_bytes >> 20,
        st.uptime.as_secs_f64(),
        st.block.iter().map(|b| b.rd_bytes).sum::<u64>() >> 10,
        st.block.iter().map(|b| b.wr_bytes).sum::<u64>() >> 10,
    );
    assert!(st.cpu_time > Duration::ZERO && st.rss_bytes > 0);
    assert_eq!(st.status, "running");
    let disk0 = st
        .block
        .iter()
        .find(|b| b.device == "disk0")
        .expect("disk0 in the block stats");
    assert!(disk0.rd_bytes > 0, "the guest read its root disk");
    // The same figures through the driver boundary's `stats` capability (what the service
    // samples): the VM's vCPUs and memory as its CPUs and limit.
    let u = d.stats().expect("qemu measures").usage(&id).unwrap();
    assert_eq!((u.cpus, u.memory_limit_bytes), (1.0, Some(512 << 20)));
    assert!(u.cpu_time >= st.cpu_time && u.memory_bytes > 0 && u.disk_read_bytes > 0);

    // Checkpoint to a file (the VM keeps running), diverge, restore.
    let ckdir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ckfile = ckdir.path().join("vm.state");
    assert_eq!(
        exec(
            &d,
            &id,
            &["sh", "-c", "echo kept > /root/marker; sync"],
            &[]
        )
        .0,
        0
    );
    let ck = d
        .checkpoint(&id, &ckfile, AfterCheckpoint::Continue)
        .expect("checkpoint");
    println!(
        "checkpoint: {:.2} s paused, {} MB",
        ck.elapsed.as_secs_f64(),
        ck.size >> 20
    );
    assert!(ckfile.is_file() && ck.size > 0);
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    assert_eq!(
        exec(
            &d,
            &id,
            &["sh", "-c", "rm /root/marker; echo z > /root/later; sync"],
            &[]
        )
        .0,
        0
    );
    let t = Instant::now();
    d.restore(&id, &ckfile).expect("restore");
    println!("restore: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    let (code, out, _) = exec(&d, &id, &["cat", "/root/marker"], &[]);
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    assert_eq!(exec(&d, &id, &["test", "-e", "/root/later"], &[]).0, 1);
    assert_eq!(
        d.checkpoints(&id).unwrap(),
        [ckfile.canonicalize().unwrap()]
    );
    d.forget_checkpoint(&id, &ckfile).unwrap();
    assert!(d.checkpoints(&id).unwrap().is_empty());
    assert_eq!(
        d.restore(&id, &ckfile).unwrap_err().code().as_str(),
        "not_found"
    );
    let img = Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(d.info(&id).unwrap().disk)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&img.stdout);
    assert!(!listing.contains("vfarm-ckpt-"), "{listing}");
    assert!(listing.contains("s1"), "{listing}");

    // Graceful stop: the guest flushes through the agent, then QEMU quits.
    let t = Instant::now();
    let o = d
        .stop(
            &id,
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .unwrap();
    println!("graceful stop: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(o, Observed::Exited { code: 0 });
    assert_eq!(d.observe(&id).unwrap(), Observed::Exited { code: 0 });
    assert_eq!(
        d.stop(&id, StopMode::Kill).unwrap(),
        Observed::Exited { code: 0 }
    );

    // A snapshot of the stopped VM is disk only; reverting a running VM to it reboots it.
    snaps.create(&id, "s2").unwrap();
    start_timed(&d, &id, "second boot");
    let (_, out, _) = exec(&d, &id, &["cat", "/root/y"], &[]);
    assert_eq!(out, "y\n", "the disk survived the stop");
    assert_eq!(
        exec(&d, &id, &["sh", "-c", "echo q > /root/after2; sync"], &[]).0,
        0
    );
    let t = Instant::now();
    snaps.revert(&id, "s2").unwrap();
    println!(
        "revert (running VM to a disk-only snapshot: kill, qemu-img snapshot -a, boot): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(d.observe(&id).unwrap(), Observed::Running);
    assert_eq!(exec(&d, &id, &["test", "-e", "/root/after2"], &[]).0, 1);

    let names: Vec<String> = snaps
        .list(&id)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    snaps.remove(&id, "s1").unwrap();
    let names: Vec<String> = snaps
        .list(&id)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s2"]);

    assert_eq!(
        d.stop(&id, StopMode::Kill).unwrap(),
        Observed::Exited { code: 137 }
    );
    // Reverting a stopped VM is the qcow2 metadata switch alone.
    let t = Instant::now();
    snaps.revert(&id, "s2").unwrap();
    println!(
        "revert (stopped, qemu-img snapshot -a): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(d.observe(&id).unwrap(), Observed::Exited { code: 137 });
    drop(inst);
    assert_eq!(d.observe(&id).unwrap_err().code().as_str(), "not_found");
}

/// Prints (does not assert) how long a revert takes with a small and a large disk, each with
/// the same 64 MB written after the snapshot: the disk part of a revert is qcow2 metadata.
#[test]
fn revert_time_with_small_and_large_disks() {
    let _one = one_vm_at_a_time();
    let d = QemuDriver::new(&data_dir(), AccelChoice::Auto);
    for gib in [2u64, 64] {
        let id = unique_id(&format!("revert{gib}"));
        let mut s = spec(&id);
        s.disk = Some(gib << 30);
        let inst = Inst::new(&d, &s);
        start_timed(&d, &id, &format!("boot ({gib} GiB disk)"));
        let snaps = d.snapshots().unwrap();
        snaps.create(&id, "base").unwrap();
        let (code, _, err) = exec(
            &d,
            &id,
            &[
                "sh",
                "-c",
                "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null && sync",
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let t = Instant::now();
        snaps.revert(&id, "base").unwrap();
        let live = t.elapsed();
        assert_eq!(exec(&d, &id, &["test", "-e", "/root/big"], &[]).0, 1);
        d.stop(&id, StopMode::Kill).unwrap();
        let t = Instant::now();
        snaps.revert(&id, "base").unwrap();
        println!(
            "{gib} GiB disk, 64 MB written after the snapshot: revert running (loadvm) {:.3} s, \
             stopped (qemu-img snapshot -a) {:.3} s",
            live.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        drop(inst);
    }
}

#[test]
fn a_new_driver_reattaches_to_a_running_vm() {
    let _one = one_vm_at_a_time();
    let id = unique_id("reattach");
    let first = QemuDriver::new(&data_dir(), AccelChoice::Auto);
    let s = spec(&id);
    first.prepare(&s).expect("prepare");
    // Whatever happens below, the VM goes away.
    let later = QemuDriver::new(&data_dir(), AccelChoice::Auto);
    let inst = Inst {
        d: &later,
        id: id.clone(),
        sockets: {
            let i = first.info(&id).unwrap();
            [Some(i.qmp_socket), i.qga_socket]
                .into_iter()
                .flatten()
                .collect()
        },
    };
    start_timed(&first, &id, "boot");
    let pid = first.info(&id).unwrap().pid.expect("QEMU runs");
    drop(first);

    assert!(later.list().unwrap().contains(&id));
    assert_eq!(later.observe(&id).unwrap(), Observed::Running);
    assert_eq!(later.info(&id).unwrap().pid, Some(pid));
    let (code, out, _) = exec(&later, &id, &["cat", "/etc/hostname"], &[]);
    println!("exec after re-attach: {code} {out:?}");
    assert_eq!(code, 0);

    // Checkpoint and stop, then restore through yet another driver object.
    assert_eq!(
        exec(&later, &id, &["sh", "-c", "echo before > /root/ck"], &[]).0,
        0
    );
    let ckdir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ckfile = ckdir.path().join("vm.state");
    later
        .checkpoint(&id, &ckfile, AfterCheckpoint::Stop)
        .expect("checkpoint and stop");
    assert_eq!(later.observe(&id).unwrap(), Observed::Exited { code: 0 });
    assert!(
        process_gone(pid),
        "QEMU (pid {pid}) is gone after the checkpoint"
    );
    let third = QemuDriver::new(&data_dir(), AccelChoice::Auto);
    third.restore(&id, &ckfile).expect("restore");
    assert_eq!(later.observe(&id).unwrap(), Observed::Running);
    let (code, out, _) = exec(&later, &id, &["cat", "/root/ck"], &[]);
    assert_eq!((code, out.as_str()), (0, "before\n"));
    let pid = later.info(&id).unwrap().pid.expect("QEMU runs");

    // A paused VM still stops gracefully (it is resumed so the guest can flush).
    later.pausable().unwrap().pause(&id).unwrap();
    assert_eq!(later.observe(&id).unwrap(), Observed::Paused);
    assert_eq!(
        later
            .stop(
                &id,
                StopMode::Graceful {
                    timeout: Duration::from_secs(60)
                }
            )
            .unwrap(),
        Observed::Exited { code: 0 }
    );
    assert!(process_gone(pid), "QEMU (pid {pid}) is gone");

    // QEMU killed behind the driver's back: the driver reports it lost, not exited.
    third.restore(&id, &ckfile).expect("restore again");
    let pid = later.info(&id).unwrap().pid.expect("QEMU runs");
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let begun = Instant::now();
    while !process_gone(pid) && begun.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(later.observe(&id).unwrap(), Observed::Lost);
    drop(inst);
}

#[test]
fn sockets_move_to_a_short_dir_when_the_data_dir_is_long() {
    let _one = one_vm_at_a_time();
    let long = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("a-data-dir-whose-path-is-too-long-for-a-unix-socket-address-of-108-bytes");
    let d = QemuDriver::new(&long, AccelChoice::Auto);
    let id = unique_id("longpath");
    let inst = Inst::new(&d, &spec(&id));
    let info = d.info(&id).unwrap();
    assert!(
        !info.qmp_socket.starts_with(d.instance_dir(&id)),
        "{} should not be in the instance dir",
        info.qmp_socket.display()
    );
    start_timed(&d, &id, "boot (long data dir)");
    assert_eq!(exec(&d, &id, &["true"], &[]).0, 0);
    let sock_dir = info.qmp_socket.parent().unwrap().to_path_buf();
    assert!(sock_dir.is_dir());
    drop(inst);
    assert!(!sock_dir.exists(), "{} left behind", sock_dir.display());
    let _ = std::fs::remove_dir_all(&long);
}

#[test]
fn forced_kvm_fails_clearly_where_kvm_does_not_work() {
    let _one = one_vm_at_a_time();
    image();
    // A fresh data dir: no cached verdict, the probe really boots its test guest.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().to_path_buf();
    let id = unique_id("kvm");
    let s = spec(&id);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    let worker = {
        let data = data.clone();
        let s = s.clone();
        std::thread::spawn(move || {
            let d = QemuDriver::new(&data, AccelChoice::Kvm);
            let r = d.prepare(&s);
            let info = r.as_ref().ok().map(|_| d.info(&s.id).unwrap());
            let _ = d.cleanup(&s.id);
            tx.send((r, info)).unwrap();
        })
    };
    // A hang here is the failure this test exists for: give up loudly instead of waiting.
    let (r, info) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("forcing KVM must answer, not hang");
    worker.join().unwrap();
    println!(
        "forced KVM answered after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let d = QemuDriver::new(&data, AccelChoice::Kvm);
    match r {
        Err(e @ DriverError::HostNotReady { .. }) => {
            println!("forced KVM: {e}");
            assert!(
                e.to_string().contains("KVM does not work on this host"),
                "{e}"
            );
            assert!(
                !d.instance_dir(&id).exists(),
                "nothing is made when the accelerator is refused"
            );
        }
        // A host where KVM works: the VM is prepared for KVM.
        Ok(()) => assert_eq!(info.unwrap().accel, vfarm_driver::qemu::Accel::Kvm),
        Err(e) => panic!("expected HostNotReady, got {e:?}"),
    }
    // The probe's verdict is reported by probe() too, without hanging (cached).
    let report = d.probe().unwrap();
    println!("probe: usable={} notes={:?}", report.usable, report.notes);
    assert_eq!(report.driver, "qemu");
}

#[test]
fn cleanup_of_unknown_and_half_prepared_instances_and_spec_checks() {
    let d = QemuDriver::new(&data_dir(), AccelChoice::Tcg);
    d.cleanup("never-was").expect("cleanup of an unknown id");
    assert_eq!(
        d.observe("never-was").unwrap_err().code().as_str(),
        "not_found"
    );
    assert_eq!(
        d.cleanup("bad/id").unwrap_err().code().as_str(),
        "invalid_spec"
    );

    // Half-prepared: a directory with an overlay and a stray socket, no record.
    let id = unique_id("half");
    let dir = d.instance_dir(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("disk.qcow2"), b"partial").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("qmp.sock")).unwrap();
    assert!(!d.list().unwrap().contains(&id));
    d.cleanup(&id).expect("cleanup of a half-prepared instance");
    assert!(!dir.exists());

    // Specs the driver refuses before making anything.
    let mut s = spec(&unique_id("bad"));
    s.command = vec!["sleep".into(), "1".into()];
    assert_eq!(d.prepare(&s).unwrap_err().code().as_str(), "invalid_spec");
    let mut s = spec(&unique_id("bad"));
    s.image.kernel = None;
    assert!(d.prepare(&s).unwrap_err().to_string().contains("--boot vm"));
    let mut s = spec(&unique_id("bad"));
    s.memory = Some(16 << 20);
    assert_eq!(d.prepare(&s).unwrap_err().code().as_str(), "invalid_spec");
    let mut s = spec(&unique_id("bad"));
    s.disk = Some(1 << 20);
    let e = d.prepare(&s).unwrap_err();
    assert_eq!(e.code().as_str(), "invalid_spec", "{e}");
    assert!(!d.instance_dir(&s.id).join("runtime.json").exists());
    d.cleanup(&s.id).unwrap();
    assert!(!d.instance_dir(&s.id).exists());
}
