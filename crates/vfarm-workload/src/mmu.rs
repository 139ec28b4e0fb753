//! The seed's MMU microbenchmark: page faults by mapping anonymous memory, touching every page
//! (one fault each) and unmapping it again, repeated until the requested number of faults.

use std::time::Instant;

use crate::rng::splitmix64;
use crate::{Line, Result, WorkloadError};

pub const DEFAULT_FAULTS: u64 = 10_000;
/// Pages per mapping: large enough that mmap/munmap calls do not dominate, small enough to
/// stay far below any memory limit.
pub const DEFAULT_PAGES: u64 = 256;

#[derive(Debug, Clone)]
pub struct Params {
    pub faults: u64,
    pub pages: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    pub secs: f64,
    /// Minor faults the kernel counted for this process during the run (at least `faults`).
    pub minor_faults: u64,
    pub checksum: u64,
}

impl Outcome {
    pub fn line(&self) -> Line {
        Line::new("mmu", self.checksum, self.secs)
            .param_num("faults", self.params.faults)
            .param_num("pages", self.params.pages)
            .param_num("minor_faults_counted", self.minor_faults)
            .metric(
                "mmu",
                self.params.faults as f64 / self.secs.max(1e-9),
                "faults/s",
                true,
            )
    }
}

fn page_size() -> usize {
    // Every Linux target vfarm runs on uses 4 KiB base pages; sysconf would need unsafe.
    4096
}

pub fn run(p: &Params) -> Result<Outcome> {
    let page = page_size();
    let before = minor_faults();
    let start = Instant::now();
    let mut left = p.faults;
    let mut sum = 0u64;
    while left > 0 {
        let pages = left.min(p.pages) as usize;
        let mut m = Mapping::new(pages * page)?;
        let mem = m.bytes();
        for i in 0..pages {
            // A write fault on each fresh page.
            mem[i * page] = (i as u8) ^ 0x5a;
        }
        for i in 0..pages {
            sum = sum.wrapping_add(mem[i * page] as u64);
        }
        drop(m);
        left -= pages as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let minor = minor_faults().saturating_sub(before);
    Ok(Outcome {
        params: p.clone(),
        secs,
        minor_faults: minor,
        checksum: splitmix64(sum ^ (p.faults << 20) ^ p.pages),
    })
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    #[allow(unsafe_code)]
    fn new(len: usize) -> Result<Mapping> {
        // SAFETY: a fresh anonymous mapping aliases nothing; failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(WorkloadError::Io {
                what: format!("mmap of {len} bytes"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    #[allow(unsafe_code)]
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` readable/writable bytes owned by `self` until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no borrow outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// This process's minor page faults so far (0 if unavailable).
#[allow(unsafe_code)]
fn minor_faults() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_minflt.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_taken_and_counted() {
        let p = Params {
            faults: 1000,
            pages: 64,
        };
        let o = run(&p).unwrap();
        // The kernel counts at least one minor fault per touched page.
        assert!(o.minor_faults >= 1000, "{o:?}");
        assert_eq!(o.checksum, run(&p).unwrap().checksum);
        assert_ne!(
            o.checksum,
            run(&Params {
                faults: 999,
                pages: 64
            })
            .unwrap()
            .checksum
        );
    }
}
