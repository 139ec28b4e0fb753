//! Bench helper for `benches/qemu.sh`: the "bare QEMU" baseline. Boots KERNEL with the KVM
//! probe's busybox initramfs (its init prints a marker and powers off at once) on microvm
//! under TCG, through `probe::test_boot`, the same path the accelerator probe takes. Measures,
//! never asserts.
//!
//!   bare_boot KERNEL [REPS]
//!
//! Prints `bare_boot <seconds>` per boot: from the start of `test_boot` (which also writes
//! the ~1 MB initramfs, a few ms) until QEMU has exited.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vfarm_qemu::probe::{test_boot, ProbeConfig};
use vfarm_qemu::tools::{BUSYBOX_STATIC, QEMU_SYSTEM_X86_64};
use vfarm_qemu::Accel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = PathBuf::from(args.next().ok_or("usage: bare_boot KERNEL [REPS]")?);
    let reps: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let state = tempfile::tempdir()?;
    let cfg = ProbeConfig {
        qemu: QEMU_SYSTEM_X86_64.find()?,
        kernel,
        busybox: BUSYBOX_STATIC.find()?,
        state_dir: state.path().to_path_buf(),
        timeout: Duration::from_secs(120),
        refresh: true,
        cpu: None,
    };
    for _ in 0..reps {
        let t = Instant::now();
        if let Some(failure) = test_boot(&cfg, Accel::Tcg)? {
            return Err(format!("the bare guest did not boot: {failure:?}").into());
        }
        println!("bare_boot {:.3}", t.elapsed().as_secs_f64());
    }
    Ok(())
}
