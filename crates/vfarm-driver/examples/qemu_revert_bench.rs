//! Bench helper for `benches/qemu.sh`: snapshot revert of a qemu instance with a 1 GB and a
//! 20 GB disk, through the driver (the CLI has no disk-size flag). Measures, never asserts.
//!
//!   qemu_revert_bench IMAGE_DIR DATA_DIR [REPS]
//!
//! IMAGE_DIR is a `--boot vm` image's directory (disk.qcow2, rootfs.tar, vmlinuz). Per size:
//! - disk revert: the VM is stopped, its disk has a disk-only snapshot, and since the snapshot
//!   the guest wrote and synced 32 MiB; the revert (`qemu-img snapshot -a`) is timed, boot
//!   excluded;
//! - memory revert: the VM runs, the snapshot was taken with `savevm`, and since then the guest
//!   wrote and synced 32 MiB; the revert (`loadvm`, no reboot) is timed.
//!
//! Prints one line per measurement: `revert <size> <disk|memory> <ms>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use vfarm_core::Format;
use vfarm_driver::qemu::{AccelChoice, QemuDriver};
use vfarm_driver::{Driver, ExecIo, ImageFile, ImageInput, InstanceSpec, Network, StopMode};

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: qemu_revert_bench IMAGE_DIR DATA_DIR [REPS]".into());
    }
    let image = PathBuf::from(&args[1]);
    let data = PathBuf::from(&args[2]);
    let reps: usize = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(5);
    let d = QemuDriver::new(&data, AccelChoice::Auto);
    for (label, gib) in [("1G", 1u64), ("20G", 20)] {
        let id = format!("revert-bench-{label}");
        let _ = d.cleanup(&id);
        d.prepare(&spec(&image, &id, gib << 30)?)?;
        let out = bench(&d, &id, label, reps);
        d.cleanup(&id)?;
        out?;
    }
    Ok(())
}

fn bench(d: &QemuDriver, id: &str, label: &str, reps: usize) -> R<()> {
    let stop = StopMode::Graceful {
        timeout: Duration::from_secs(30),
    };
    d.start(id)?;
    sh(
        d,
        id,
        "dd if=/dev/urandom of=/root/base bs=1M count=16 2>/dev/null && sync",
    )?;
    d.stop(id, stop)?;
    let snaps = d.snapshots().ok_or("no snapshots")?;
    snaps.create(id, "disk")?;
    for _ in 0..reps {
        d.start(id)?;
        sh(
            d,
            id,
            "dd if=/dev/urandom of=/root/junk bs=1M count=32 2>/dev/null && sync",
        )?;
        d.stop(id, stop)?;
        let t = Instant::now();
        snaps.revert(id, "disk")?;
        println!("revert {label} disk {:.1}", ms(t));
    }
    d.start(id)?;
    snaps.create(id, "memory")?;
    for _ in 0..reps {
        sh(
            d,
            id,
            "dd if=/dev/urandom of=/root/junk bs=1M count=32 2>/dev/null && sync",
        )?;
        let t = Instant::now();
        snaps.revert(id, "memory")?;
        println!("revert {label} memory {:.1}", ms(t));
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn sh(d: &QemuDriver, id: &str, script: &str) -> R<()> {
    let exec = d.exec().ok_or("no exec")?;
    let argv = ["sh", "-c", script].map(String::from);
    let io = ExecIo {
        stdin: Stdio::null(),
        stdout: Stdio::null(),
        stderr: Stdio::inherit(),
    };
    match exec.exec(id, &argv, &[], io)? {
        0 => Ok(()),
        c => Err(format!("`{script}` exited with {c}").into()),
    }
}

fn spec(image: &Path, id: &str, disk: u64) -> R<InstanceSpec> {
    let file = |name: &str, format| ImageFile {
        format,
        path: image.join(name),
    };
    Ok(InstanceSpec {
        id: id.to_string(),
        image: ImageInput {
            id: image
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("image dir has no name")?
                .to_string(),
            files: vec![
                file("disk.qcow2", Format::Qcow2),
                file("rootfs.tar", Format::Tar),
            ],
            kernel: Some(image.join("vmlinuz")),
            initrd: None,
        },
        hostname: id.to_string(),
        cpus: None,
        memory: Some(256 << 20),
        pids: None,
        disk: Some(disk),
        env: Vec::new(),
        command: Vec::new(),
        network: Network::None,
        user_namespace: false,
        id_base: 0,
        volatile: false,
        // The fast profile (the default), as `vfarm run` uses.
        vm: Default::default(),
    })
}
