//! End-to-end tests with the real components: an image built by the vfarm CLI (mmdebstrap),
//! QEMU under TCG, the image's own qemu-guest-agent. A missing component fails the test with
//! its name; nothing is skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vfarm_qemu::probe::{choose_accel, probe_kvm, test_boot, AccelChoice, ProbeConfig};
use vfarm_qemu::qga::{ExecRequest, ExitKind, GuestAgent};
use vfarm_qemu::tools::{Tool, BUSYBOX_STATIC, QEMU_IMG, QEMU_SYSTEM_X86_64};
use vfarm_qemu::{
    build_args, create_overlay, fast_initramfs, fast_vm_config, spawn_daemonized, Accel,
    DiskFormat, Error, HostFwd, InitramfsRequest, KillOnDrop, QemuProcess, Qmp, RunFiles, UserNet,
};

fn require(tool: Tool) -> PathBuf {
    tool.find()
        .unwrap_or_else(|e| panic!("this end-to-end test needs a missing component: {e}"))
}

/// `<target>/debug/deps/e2e-…` → `<target>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The workspace's `vfarm` binary from this target directory, built first if it is not there.
fn vfarm_binary() -> PathBuf {
    let target = target_dir();
    let bin = target.join("debug").join("vfarm");
    if !bin.is_file() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "vfarm"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&workspace)
            .status()
            .expect("cannot run cargo to build the vfarm binary");
        assert!(
            status.success(),
            "building the vfarm binary failed ({status})"
        );
    }
    assert!(bin.is_file(), "vfarm binary missing at {}", bin.display());
    bin
}

#[derive(Debug)]
struct BuiltImage {
    kernel: PathBuf,
    qcow2: PathBuf,
    rootfs: PathBuf,
    os_version: String,
}

/// Builds (or finds, on later runs: the CLI answers an identical spec from its cache) a
/// bootable bookworm image in a data directory under the target directory. Shared by the
/// tests of this binary, built once.
fn image() -> &'static BuiltImage {
    static IMAGE: OnceLock<BuiltImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let data_dir = target_dir().join("vfarm-e2e-data");
        let out = Command::new(vfarm_binary())
            .args([
                "image",
                "build",
                "--suite",
                "bookworm",
                "--variant",
                "minbase",
                "--boot",
                "vm",
                "--format",
                "qcow2",
                "--output",
                "json",
            ])
            .env("VFARM_DATA_DIR", &data_dir)
            .output()
            .expect("cannot run the vfarm binary");
        assert!(
            out.status.success(),
            "vfarm image build failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("vfarm image build --output json");
        let artifact = |format: &str| -> PathBuf {
            v["artifacts"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["format"] == format))
                .and_then(|x| x["path"].as_str())
                .unwrap_or_else(|| panic!("no {format} artifact in {v}"))
                .into()
        };
        BuiltImage {
            kernel: v["kernel"]
                .as_str()
                .unwrap_or_else(|| panic!("no kernel in {v}"))
                .into(),
            qcow2: artifact("qcow2"),
            rootfs: artifact("tar"),
            os_version: v["os_version"].as_str().unwrap_or("").to_string(),
        }
    })
}

/// Pids of processes whose command line mentions `needle` (the run directory): after a test
/// there must be none.
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

/// A free loopback port for the SSH forward (the guest needs no SSH for this test, but the
/// forward must not break the boot).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn fast_profile_boots_to_guest_agent_runs_commands_and_cleans_up() {
    let qemu = require(QEMU_SYSTEM_X86_64);
    let qemu_img = require(QEMU_IMG);
    let busybox = require(BUSYBOX_STATIC);
    let img = image();

    let initramfs_req = InitramfsRequest {
        rootfs: img.rootfs.clone(),
        kernel_version: None,
        busybox,
        cache_dir: target_dir().join("vfarm-e2e-data").join("fast-initramfs"),
    };
    let initrd = fast_initramfs(&initramfs_req).expect("fast initramfs");
    println!(
        "fast initramfs for kernel {}: {} modules, built now: {}",
        initrd.kernel_version,
        initrd.modules.len(),
        initrd.built
    );
    assert!(initrd.modules.iter().any(|m| m.ends_with("virtio_blk.ko")));
    let again = fast_initramfs(&initramfs_req).unwrap();
    assert!(
        !again.built,
        "the second request for the same kernel must be a cache hit"
    );

    let run_dir = tempfile::Builder::new()
        .prefix("vfarm-e2e-")
        .tempdir()
        .unwrap();
    let files = RunFiles::in_dir(run_dir.path());
    // Kills QEMU if anything below fails; the tempdir then removes the files.
    let guard = KillOnDrop::new(&files.pidfile);

    let overlay = create_overlay(
        &qemu_img,
        &img.qcow2,
        DiskFormat::Qcow2,
        &files.disk,
        Some(1 << 30),
    )
    .expect("overlay");
    assert_eq!(overlay.virtual_size, 1 << 30);

    let cfg = fast_vm_config(
        "e2e-fast",
        Accel::Tcg,
        &img.kernel,
        &initrd.path,
        &files,
        Some(UserNet {
            hostfwd: vec![HostFwd::ssh(free_port())],
            restrict: false,
        }),
    );
    let args = build_args(&cfg).unwrap();
    let started = Instant::now();
    let proc = spawn_daemonized(&qemu, &args, &files.pidfile).expect("QEMU starts");
    let daemonized = started.elapsed();

    let mut qmp = Qmp::connect_retry(
        &files.qmp_socket,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .expect("QMP");
    assert!(qmp.query_status().unwrap().running);

    let ready = GuestAgent::wait_ready(
        &files.qga_socket,
        Duration::from_secs(180),
        Duration::from_secs(20),
    );
    let mut ga = match ready {
        Ok(ga) => ga,
        Err(e) => {
            let log = std::fs::read_to_string(&files.serial_log).unwrap_or_default();
            panic!("guest agent never answered: {e}\nconsole:\n{log}");
        }
    };
    let boot_to_ping = started.elapsed();
    println!(
        "boot-to-ping (TCG, microvm, fast initramfs): {:.2} s (QEMU daemonized after {:.2} s)",
        boot_to_ping.as_secs_f64(),
        daemonized.as_secs_f64()
    );

    let out = ga
        .exec(
            &ExecRequest::new("cat", &["/etc/debian_version"]),
            Duration::from_secs(60),
        )
        .expect("guest-exec cat");
    assert_eq!(
        out.exit,
        ExitKind::Code(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8(out.stdout).unwrap();
    let version = version.trim();
    println!("/etc/debian_version in the guest: {version}");
    assert!(
        !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "not a Debian version: {version:?}"
    );
    if !img.os_version.is_empty() {
        assert!(
            version.starts_with(&img.os_version),
            "{version} vs image {}",
            img.os_version
        );
    }

    let out = ga
        .exec(
            &ExecRequest::new("sh", &["-c", "exit 7"]),
            Duration::from_secs(60),
        )
        .expect("guest-exec sh");
    assert_eq!(out.exit, ExitKind::Code(7));

    let mut with_input = ExecRequest::new("sh", &["-c", "cat; echo err >&2"]);
    with_input.stdin = Some(b"from the host\n".to_vec());
    let out = ga.exec(&with_input, Duration::from_secs(60)).unwrap();
    assert_eq!(out.stdout, b"from the host\n");
    assert_eq!(out.stderr, b"err\n");

    let os = ga.osinfo().unwrap();
    assert_eq!(os.id.as_deref(), Some("debian"));

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    ga.write_file("/tmp/vfarm-e2e.bin", &payload).unwrap();
    assert_eq!(ga.read_file("/tmp/vfarm-e2e.bin").unwrap(), payload);
    match ga.file_open("/no/such/file", "r") {
        Err(Error::GuestAgent { .. }) => {}
        other => panic!("opening a missing guest file must fail, got {other:?}"),
    }

    let frozen = ga.fsfreeze_freeze().unwrap();
    assert!(frozen >= 1, "the root file system must be frozen");
    assert_eq!(ga.fsfreeze_status().unwrap(), "frozen");
    assert_eq!(ga.fsfreeze_thaw().unwrap(), frozen);

    let stats = qmp.query_blockstats().unwrap();
    let disk = stats
        .iter()
        .find(|s| s.device == "disk0")
        .expect("disk0 in blockstats");
    assert!(disk.rd_bytes > 0, "the guest read its root disk");

    qmp.stop().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, "paused");
    qmp.cont().unwrap();
    assert!(qmp.query_status().unwrap().running);
    let info = qmp.human_monitor_command("info name").unwrap();
    assert!(info.contains("e2e-fast"), "{info}");
    ga.ping().unwrap();

    // An internal snapshot of the running VM (memory + the overlay), then a revert: a file
    // written after the snapshot is gone, and the agent's stream resynchronises after the
    // guest jumped back in time.
    let t = Instant::now();
    qmp.hmp_silent("savevm e2e-snap").unwrap();
    println!("savevm: {:.2} s", t.elapsed().as_secs_f64());
    ga.write_file("/root/after-snapshot", b"x").unwrap();
    let t = Instant::now();
    qmp.hmp_silent("loadvm e2e-snap").unwrap();
    println!("loadvm: {:.2} s", t.elapsed().as_secs_f64());
    match ga.file_open("/root/after-snapshot", "r") {
        Err(Error::GuestAgent { .. }) => {}
        other => panic!("the file written after the snapshot must be gone, got {other:?}"),
    }
    match qmp.hmp_silent("loadvm no-such-snapshot") {
        Err(Error::Qmp { class, .. }) => assert_eq!(class, "HmpError"),
        other => panic!("loading a missing snapshot must fail, got {other:?}"),
    }
    // A failed loadvm leaves the VM paused (QEMU stops it before loading and restarts it only
    // on success): the caller has to resume it.
    assert_eq!(qmp.query_status().unwrap().status, "restore-vm");
    qmp.cont().unwrap();
    let snaps = qmp.human_monitor_command("info snapshots").unwrap();
    assert!(snaps.contains("e2e-snap"), "{snaps}");

    // Accepted by QEMU; the fast profile's guest has no ACPI listener and keeps running.
    qmp.system_powerdown().unwrap();
    ga.ping().unwrap();

    // Checkpoint the running VM to a file (a migration to `exec:`), end QEMU, and restore the
    // checkpoint into a new QEMU (an incoming migration) that carries on where the guest was.
    ga.write_file("/root/before-checkpoint", b"kept").unwrap();
    let state = run_dir.path().join("checkpoint.state");
    let t = Instant::now();
    qmp.migrate(&format!("exec:cat > {}", state.display()))
        .unwrap();
    let info = qmp
        .wait_migration(Duration::from_secs(120))
        .expect("checkpoint");
    println!(
        "checkpoint: {:.2} s, {} MB, QEMU says {:?} ms",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&state)
            .map(|m| m.len() >> 20)
            .unwrap_or(0),
        info.total_time
    );
    assert_eq!(qmp.query_status().unwrap().status, "postmigrate");
    drop(ga);
    qmp.quit().expect("quit");
    proc.wait_gone(Duration::from_secs(30))
        .expect("QEMU exits after quit");

    let mut restore = cfg.clone();
    restore.incoming = Some(format!("exec:cat {}", state.display()));
    let t = Instant::now();
    let proc = spawn_daemonized(&qemu, &build_args(&restore).unwrap(), &files.pidfile)
        .expect("QEMU starts for the restore");
    let mut qmp = Qmp::connect_retry(
        &files.qmp_socket,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .expect("QMP after restore");
    qmp.wait_status("running", Duration::from_secs(120))
        .expect("the restored VM runs");
    let mut ga = GuestAgent::wait_ready(
        &files.qga_socket,
        Duration::from_secs(60),
        Duration::from_secs(20),
    )
    .expect("guest agent after restore");
    println!("restore to ping: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(ga.read_file("/root/before-checkpoint").unwrap(), b"kept");
    ga.ping().unwrap();
    std::fs::remove_file(&state).unwrap();

    qmp.quit().expect("quit");
    proc.wait_gone(Duration::from_secs(30))
        .expect("QEMU exits after quit");
    guard.disarm();

    assert_eq!(QemuProcess::from_pidfile(&files.pidfile).unwrap(), None);
    files.remove_all().unwrap();
    assert_eq!(files.existing(), Vec::<PathBuf>::new());
    assert_eq!(processes_mentioning(run_dir.path()), Vec::<i32>::new());
    assert!(!files.disk.exists(), "overlay removed");
    // The image itself is untouched by the VM's writes.
    assert!(img.qcow2.is_file());
}

#[test]
fn kvm_probe_gives_a_verdict_instead_of_hanging() {
    let qemu = require(QEMU_SYSTEM_X86_64);
    let busybox = require(BUSYBOX_STATIC);
    let img = image();
    let state = tempfile::Builder::new()
        .prefix("vfarm-probe-")
        .tempdir()
        .unwrap();
    let cfg = ProbeConfig {
        qemu,
        kernel: img.kernel.clone(),
        busybox,
        state_dir: state.path().to_path_buf(),
        timeout: ProbeConfig::DEFAULT_TIMEOUT,
        refresh: true,
        cpu: None,
    };
    let verdict = probe_kvm(&cfg).expect("probe");
    println!(
        "KVM probe: usable={} failure={:?} after {} ms",
        verdict.usable, verdict.failure, verdict.elapsed_ms
    );
    assert!(!verdict.cached);
    assert_eq!(verdict.usable, verdict.failure.is_none());

    // The verdict is cached for this host boot.
    let cached = probe_kvm(&ProbeConfig {
        refresh: false,
        ..cfg.clone()
    })
    .unwrap();
    assert!(cached.cached);
    assert_eq!(cached.usable, verdict.usable);

    let auto = choose_accel(AccelChoice::Auto, &cfg_cached(&cfg)).unwrap();
    let forced = choose_accel(AccelChoice::Kvm, &cfg_cached(&cfg));
    if verdict.usable {
        assert_eq!(auto.accel, Accel::Kvm);
        assert_eq!(forced.unwrap().accel, Accel::Kvm);
    } else {
        assert_eq!(auto.accel, Accel::Tcg);
        println!("{}", auto.fallback_note().unwrap());
        let err = forced.expect_err("forcing an unusable KVM must fail");
        assert!(matches!(err, Error::KvmUnusable { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("KVM does not work on this host: "),
            "{err}"
        );
        println!("forced KVM: {err}");
    }

    // QEMU's default CPU model under KVM: where nested virtualisation is broken this is the
    // case in which QEMU starts and the guest hangs, so the probe must end it at its timeout.
    let default_model = ProbeConfig {
        cpu: Some("qemu64".into()),
        timeout: Duration::from_secs(5),
        ..cfg.clone()
    };
    let v = probe_kvm(&default_model).expect("probe with qemu64");
    println!(
        "KVM probe (-cpu qemu64): usable={} failure={:?} after {} ms",
        v.usable, v.failure, v.elapsed_ms
    );
    assert_eq!(v.usable, v.failure.is_none());
    if let Some(f) = &v.failure {
        println!("{}", Error::KvmUnusable { reason: f.clone() });
    }

    // The probe's own machinery (kernel, initramfs, marker on the console, exit) under TCG,
    // so the "usable" branch is exercised on hosts where KVM never works.
    let tcg = ProbeConfig {
        timeout: Duration::from_secs(120),
        ..cfg.clone()
    };
    let t = Instant::now();
    let failure = test_boot(&tcg, Accel::Tcg).expect("TCG test boot");
    println!(
        "probe guest under TCG: {failure:?} after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        failure, None,
        "the probe's test guest must boot and power off under TCG"
    );

    // The probe's test guests are gone, and so are their scratch files.
    assert_eq!(processes_mentioning(state.path()), Vec::<i32>::new());
    let left: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("kvm-probe.json")]);
}

fn cfg_cached(cfg: &ProbeConfig) -> ProbeConfig {
    ProbeConfig {
        refresh: false,
        ..cfg.clone()
    }
}
