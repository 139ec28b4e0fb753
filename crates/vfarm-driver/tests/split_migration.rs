//! Live migration in separate steps between two `QemuDriver`s on two data dirs, the way two
//! node agents run it: everything that goes between the sides is serialised to JSON and read
//! back, and the destination uses its own copy of the image. Real components: an image built
//! by the vfarm CLI (mmdebstrap, `--boot vm --format qcow2`), QEMU under TCG (KVM is not used:
//! it does not work on every host these tests run on), the image's own guest agent. A missing
//! component fails the test with its name; nothing is skipped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vfarm_driver::qemu::{
    AccelChoice, IncomingOptions, QemuDriver, SendOptions, SshInfo, Storage, SWITCHOVER_TIMEOUT,
};
use vfarm_driver::{
    BootProfile, Driver, DriverError, ExecIo, ImageFile, ImageInput, InstanceSpec, Network,
    Observed, StopMode, VmSetup,
};

mod vmimage;

use vmimage::{build_image, require};

/// The fast profile's bootable bookworm image (the same build as `tests/qemu.rs`, so either
/// test answers the other from the CLI's cache).
fn image() -> &'static ImageInput {
    static IMAGE: OnceLock<ImageInput> = OnceLock::new();
    IMAGE.get_or_init(|| build_image(&["--variant", "minbase"]))
}

/// The full profile's image: systemd, cloud-init and sshd (as `vfarm`'s `qemu_full` test
/// builds it).
fn full_image() -> &'static ImageInput {
    static IMAGE: OnceLock<ImageInput> = OnceLock::new();
    IMAGE.get_or_init(|| build_image(&["--group", "ssh-server", "--package", "cloud-init"]))
}

/// The destination node's own copy of the image (as its repository would hold it after a
/// pull): the disk and the kernel, copied into `dir`.
fn own_copy(img: &ImageInput, dir: &Path) -> ImageInput {
    std::fs::create_dir_all(dir).unwrap();
    let copy = |from: &Path| {
        let to = dir.join(from.file_name().unwrap());
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        to
    };
    ImageInput {
        id: img.id.clone(),
        files: img
            .files
            .iter()
            .filter(|f| f.format == vfarm_core::Format::Qcow2)
            .map(|f| ImageFile {
                format: f.format,
                path: copy(&f.path),
            })
            .collect(),
        kernel: img.kernel.as_deref().map(copy),
        initrd: img.initrd.as_deref().map(copy),
    }
}

fn spec(id: &str, image: &ImageInput) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        image: image.clone(),
        hostname: "migrant".into(),
        cpus: Some(1.0),
        memory: Some(256 << 20),
        pids: None,
        disk: Some(2 << 30),
        env: vec![],
        command: vec![],
        network: Network::None,
        user_namespace: false,
        id_base: 0,
        volatile: false,
        vm: Default::default(),
    }
}

/// Two VMs at once would only slow each other down on a small host.
fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one side sends the other, through JSON as over the node API.
fn wire<T: Serialize + DeserializeOwned>(v: &T) -> T {
    let text = serde_json::to_string(v).expect("serialise");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("read back {text}: {e}"))
}

/// Pids of live (not zombie) processes whose command line mentions `needle`.
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
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        if zombie {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// No process of `dir` is left (a killed QEMU may take a moment to go).
fn assert_no_process(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes of {} left: {left:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command in the guest; returns (status, stdout, stderr).
fn exec(d: &QemuDriver, id: &str, argv: &[&str]) -> (i32, String, String) {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let code = d
        .exec()
        .expect("the qemu driver can exec")
        .exec(
            id,
            &argv,
            &[],
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

/// Polls the guest's counter until it is above `floor`; the deadline only keeps a broken
/// guest from hanging the test.
fn counter_above(d: &QemuDriver, id: &str, floor: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, out, err) = exec(d, id, &["cat", "/root/counter"]);
        let seen = out.trim().parse::<u64>();
        if let Some(n) = seen.as_ref().ok().filter(|n| code == 0 && **n > floor) {
            return *n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the guest's counter did not get above {floor} (status {code}, {out:?}, \
             {err:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the instance on both sides when the test ends, pass or fail.
struct Cleanup<'a>(&'a QemuDriver, &'a QemuDriver, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.abort_incoming(&self.2);
        let _ = self.1.abort_incoming(&self.2);
        let _ = self.0.cleanup(&self.2);
        let _ = self.1.cleanup(&self.2);
    }
}

#[test]
fn copied_storage_through_json_and_an_aborted_destination() {
    let _one = one_vm_at_a_time();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("split-migration-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (adir, bdir) = (root.join("node-a"), root.join("node-b"));
    let a = QemuDriver::new(&adir, AccelChoice::Tcg);
    let b = QemuDriver::new(&bdir, AccelChoice::Tcg);
    let id = format!("mig-{:x}", std::process::id());
    let spec = spec(&id, image());
    let b_image = own_copy(image(), &root.join("node-b-images"));
    let _cleanup = Cleanup(&a, &b, id.clone());

    a.prepare(&spec).expect("prepare");
    let t = Instant::now();
    if let Err(e) = a.start(&id) {
        let log = std::fs::read_to_string(a.logs(&id).unwrap().stdout).unwrap_or_default();
        panic!("start: {e}\nconsole:\n{log}");
    }
    println!("boot-to-agent (TCG): {:.2} s", t.elapsed().as_secs_f64());
    // A file on the disk (flushed), and a counter that lives only in the guest's memory: the
    // agent's exec ends when the command's output pipes close, so the loop must not hold them.
    let (code, _, err) = exec(
        &a,
        &id,
        &["sh", "-c", "echo before-migration > /root/marker && sync"],
    );
    assert_eq!(code, 0, "marker: {err}");
    let (code, _, err) = exec(
        &a,
        &id,
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; done \
             </dev/null >/dev/null 2>&1 &",
        ],
    );
    assert_eq!(code, 0, "counter: {err}");
    let before = counter_above(&a, &id, 1, "before any migration");

    // Another address than 127.0.0.1, as a node's own address would be: QEMU must listen
    // there, not on a fixed loopback address.
    let listen: IpAddr = "127.0.0.2".parse().unwrap();
    let incoming_opts = IncomingOptions {
        storage: Storage::Copied,
        dest_image: Some(b_image.clone()),
        listen,
    };

    // 1. The destination is prepared, then aborted: the source never notices.
    let src = wire(&a.migration_source(&id, Storage::Copied).expect("source"));
    assert!(src.was_running);
    let inc = wire(
        &b.prepare_incoming(&src, &incoming_opts)
            .expect("prepare incoming"),
    );
    assert!(
        inc.nbd.is_some_and(|a| a.ip() == listen) && inc.ram.ip() == listen,
        "copied storage exports the disk, both on {listen}: {inc:?}"
    );
    let e = b.observe(&id).unwrap_err();
    assert!(e.to_string().contains("migrat"), "{e}");
    assert!(
        !processes_mentioning(&b.instance_dir(&id)).is_empty(),
        "the incoming QEMU did not outlive prepare_incoming"
    );
    b.abort_incoming(&id).expect("abort incoming");
    assert!(!b.instance_dir(&id).exists(), "destination dir left");
    assert_no_process(&b.instance_dir(&id), "after the abort");
    // Sending to the aborted destination fails and the source recovers.
    let e = a
        .send_migration(&id, &inc, &SendOptions::default())
        .unwrap_err();
    println!("send to an aborted destination: {e}");
    assert_eq!(a.observe(&id).unwrap(), Observed::Running);
    let still = counter_above(&a, &id, before, "after the failed send");

    // 2. The real move.
    let t = Instant::now();
    let src = wire(&a.migration_source(&id, Storage::Copied).expect("source"));
    let json_bytes = serde_json::to_string(&src).unwrap().len();
    let inc = wire(
        &b.prepare_incoming(&src, &incoming_opts)
            .expect("prepare incoming"),
    );
    let sent = wire(
        &a.send_migration(&id, &inc, &SendOptions::default())
            .expect("send"),
    );
    // Sent, not yet completed: the source is neither a normal instance nor gone.
    let e = a.observe(&id).unwrap_err();
    assert!(e.to_string().contains("migrat"), "{e}");
    b.finish_incoming(&id, sent.was_running, SWITCHOVER_TIMEOUT)
        .expect("finish incoming");
    let warnings = a.complete_outgoing(&id).expect("complete outgoing");
    let total = t.elapsed();
    assert!(warnings.is_empty(), "{warnings:?}");
    println!(
        "split migration (copied storage, 256 MiB guest, TCG): downtime {} ms, RAM phase {} ms, \
         send {} ms, total {} ms, RAM stream {} bytes, disk {} bytes, source JSON {} bytes",
        sent.downtime_ms,
        sent.ram_migration_ms,
        sent.send_ms,
        total.as_millis(),
        sent.ram_bytes,
        sent.disk_bytes,
        json_bytes
    );
    assert!(sent.ram_bytes > 0, "{sent:?}");

    // The source has nothing left of it.
    assert!(!a.instance_dir(&id).exists(), "source dir left");
    assert!(matches!(a.observe(&id), Err(DriverError::NotFound { .. })));
    assert_no_process(&a.instance_dir(&id), "source after completion");
    // The destination runs the same guest: its counter goes on from where it was.
    assert_eq!(b.observe(&id).unwrap(), Observed::Running);
    let at_dest = counter_above(&b, &id, 0, "right after the migration");
    assert!(
        at_dest >= still,
        "counter went back from {still} to {at_dest}: the guest did not move, it restarted"
    );
    counter_above(&b, &id, at_dest, "on the destination");
    // Nothing of the destination's instance refers to the source's data dir.
    let record = std::fs::read_to_string(b.instance_dir(&id).join("runtime.json")).unwrap();
    assert!(
        !record.contains(adir.to_str().unwrap()),
        "the destination's record still names the source's files:\n{record}"
    );

    // It boots again from the destination's own files, with the disk it was given.
    b.stop(
        &id,
        StopMode::Graceful {
            timeout: Duration::from_secs(60),
        },
    )
    .expect("stop");
    b.start(&id).expect("start again on the destination");
    let (code, out, err) = exec(&b, &id, &["cat", "/root/marker"]);
    assert_eq!((code, out.trim()), (0, "before-migration"), "{err}");

    b.cleanup(&id).expect("cleanup");
    assert!(!b.instance_dir(&id).exists());
    assert_no_process(&b.instance_dir(&id), "after cleanup");
    let _ = std::fs::remove_dir_all(&root);
}

/// An ed25519 key pair in `dir` (no passphrase).
fn keygen(dir: &Path) -> PathBuf {
    require("ssh-keygen", "openssh-client");
    let key = dir.join("id_test");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vfarm-test", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// `hostname` over SSH as `vfarm instance ssh` runs it (host key checked strictly against the
/// instance's own known_hosts), retried while sshd is not reachable yet.
fn ssh_hostname(info: &SshInfo) -> String {
    require("ssh", "openssh-client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(info.ssh_args(None, &["hostname".to_string()]))
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // A host key mismatch is a failure at once, not a reason to wait.
        assert!(
            Instant::now() < deadline && !err.contains("HOST IDENTIFICATION"),
            "ssh {info:?} failed ({}): {err}",
            out.status
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The full profile: the cloud-init seed (a read-only disk in the instance dir) and the SSH
/// host keys vfarm recorded from the guest travel with the VM, and sshd answers on the
/// destination's own forwarded port, checked strictly against the carried known_hosts. The
/// destination has no image copy of its own here: the source's files serve (one machine).
#[test]
fn full_profile_seed_and_ssh_move_with_the_vm() {
    let _one = one_vm_at_a_time();
    // The image first (a build of minutes on a fresh target dir), then the scratch files.
    let image = full_image();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("split-migration-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let (adir, bdir) = (root.join("node-a"), root.join("node-b"));
    let a = QemuDriver::new(&adir, AccelChoice::Tcg);
    let b = QemuDriver::new(&bdir, AccelChoice::Tcg);
    let id = format!("migf-{:x}", std::process::id());
    let key = keygen(&root);
    let mut spec = spec(&id, image);
    spec.memory = Some(512 << 20);
    spec.vm = VmSetup {
        profile: BootProfile::Full,
        user: None,
        ssh_authorized_keys: vec![std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()],
        ssh_identity: Some(key.clone()),
        files: vec![],
    };
    let _cleanup = Cleanup(&a, &b, id.clone());

    a.prepare(&spec).expect("prepare");
    let t = Instant::now();
    if let Err(e) = a.start(&id) {
        let log = std::fs::read_to_string(a.logs(&id).unwrap().stdout).unwrap_or_default();
        panic!("start: {e}\nconsole:\n{log}");
    }
    println!(
        "full profile boot until sshd answers (TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let before = a
        .info(&id)
        .unwrap()
        .ssh
        .expect("ssh info of a full-profile VM");
    assert_eq!(ssh_hostname(&before), "migrant");
    let seed = std::fs::read(a.instance_dir(&id).join("seed.img")).expect("the source's seed");

    // A paused VM moves paused.
    a.pausable().unwrap().pause(&id).expect("pause");
    let src = wire(&a.migration_source(&id, Storage::Copied).expect("source"));
    assert!(!src.was_running);
    let inc = wire(
        &b.prepare_incoming(
            &src,
            &IncomingOptions {
                storage: Storage::Copied,
                dest_image: None,
                listen: "127.0.0.1".parse().unwrap(),
            },
        )
        .expect("prepare incoming"),
    );
    let sent = wire(
        &a.send_migration(&id, &inc, &SendOptions::default())
            .expect("send"),
    );
    b.finish_incoming(&id, sent.was_running, SWITCHOVER_TIMEOUT)
        .expect("finish incoming");
    let warnings = a.complete_outgoing(&id).expect("complete outgoing");
    assert!(warnings.is_empty(), "{warnings:?}");
    println!(
        "split migration (full profile, paused, copied storage, 512 MiB guest, TCG): downtime {} ms, \
         RAM phase {} ms, RAM stream {} bytes, disk {} bytes",
        sent.downtime_ms, sent.ram_migration_ms, sent.ram_bytes, sent.disk_bytes
    );
    assert!(!a.instance_dir(&id).exists(), "source dir left");
    assert!(!sent.was_running);

    assert_eq!(b.observe(&id).unwrap(), Observed::Paused);
    b.pausable().unwrap().resume(&id).expect("resume");
    assert_eq!(b.observe(&id).unwrap(), Observed::Running);
    let after = b.info(&id).unwrap().ssh.expect("ssh info after the move");
    assert!(
        after.known_hosts.starts_with(b.instance_dir(&id)),
        "{after:?}"
    );
    let moved_seed = std::fs::read(b.instance_dir(&id).join("seed.img")).expect("moved seed");
    assert!(moved_seed == seed, "the seed disk changed on the way");
    assert_eq!(ssh_hostname(&after), "migrant");
    let record = std::fs::read_to_string(b.instance_dir(&id).join("runtime.json")).unwrap();
    assert!(
        !record.contains(adir.to_str().unwrap()),
        "the destination's record still names the source's files:\n{record}"
    );

    b.cleanup(&id).expect("cleanup");
    assert_no_process(&b.instance_dir(&id), "after cleanup");
    let _ = std::fs::remove_dir_all(&root);
}
