//! Sequential file I/O as in the seed's "writing a 1 GB file": write with fsync, then read the
//! file back after dropping it from the page cache, so the read reaches the (virtual) disk.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use crate::rng::splitmix64;
use crate::{Line, Result, WorkloadError};

pub const DEFAULT_SIZE: u64 = 1 << 30;
pub const DEFAULT_BLOCK: u64 = 1 << 20;
/// On disk in containers and VMs alike (`/tmp` may be a tmpfs).
pub const DEFAULT_DIR: &str = "/var/tmp";

#[derive(Debug, Clone)]
pub struct Params {
    pub size: u64,
    pub block: u64,
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    pub write_secs: f64,
    pub read_secs: f64,
    /// Whether the kernel accepted dropping the file's pages before the read.
    pub cache_dropped: bool,
    pub checksum: u64,
}

impl Outcome {
    pub fn line(&self) -> Line {
        let mb = self.params.size as f64 / 1e6;
        Line::new("io", self.checksum, self.write_secs + self.read_secs)
            .param_num("size", self.params.size)
            .param_num("block", self.params.block)
            .param_str("dir", &self.params.dir.to_string_lossy())
            .param_str(
                "cache_dropped",
                if self.cache_dropped { "yes" } else { "no" },
            )
            .metric("io-write", mb / self.write_secs.max(1e-9), "MB/s", true)
            .metric("io-read", mb / self.read_secs.max(1e-9), "MB/s", true)
    }
}

/// Block `i`'s content: a fixed pattern with the block number stamped in, so a misplaced or
/// stale block changes the checksum.
fn fill(buf: &mut [u8], pattern: &[u8], i: u64) {
    buf.copy_from_slice(&pattern[..buf.len()]);
    let stamp = i.to_le_bytes();
    let n = stamp.len().min(buf.len());
    buf[..n].copy_from_slice(&stamp[..n]);
}

/// Word-wise hash of a block (fast enough not to dominate a disk read).
fn hash_block(buf: &[u8], i: u64) -> u64 {
    let mut h = splitmix64(i);
    let mut words = buf.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).rotate_left(5);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).rotate_left(3);
    }
    splitmix64(h)
}

pub fn run(p: &Params) -> Result<Outcome> {
    let path = p
        .dir
        .join(format!("vfarm-workload-io-{}.dat", std::process::id()));
    let _cleanup = Remove(path.clone());
    let block = p.block.min(p.size) as usize;
    let pattern: Vec<u8> = (0..block)
        .map(|j| (splitmix64(j as u64) & 0xff) as u8)
        .collect();
    let mut buf = vec![0u8; block];
    let blocks = p.size.div_ceil(block as u64);
    let len_of = |i: u64| -> usize { (p.size - i * block as u64).min(block as u64) as usize };

    let mut expect = 0u64;
    let start = Instant::now();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(WorkloadError::io(format!("create {}", path.display())))?;
    for i in 0..blocks {
        let b = &mut buf[..len_of(i)];
        fill(b, &pattern, i);
        f.write_all(b)
            .map_err(WorkloadError::io(format!("write {}", path.display())))?;
        expect = expect.wrapping_add(hash_block(b, i));
    }
    f.sync_all()
        .map_err(WorkloadError::io(format!("fsync {}", path.display())))?;
    let write_secs = start.elapsed().as_secs_f64();
    let cache_dropped = drop_cache(&f);
    drop(f);

    let start = Instant::now();
    let mut f = File::open(&path).map_err(WorkloadError::io(format!("open {}", path.display())))?;
    let mut got = 0u64;
    for i in 0..blocks {
        let b = &mut buf[..len_of(i)];
        f.read_exact(b)
            .map_err(WorkloadError::io(format!("read {}", path.display())))?;
        got = got.wrapping_add(hash_block(b, i));
    }
    let read_secs = start.elapsed().as_secs_f64();
    if got != expect {
        return Err(WorkloadError::Check {
            what: format!("{} read back differs from what was written", path.display()),
        });
    }
    Ok(Outcome {
        params: p.clone(),
        write_secs,
        read_secs,
        cache_dropped,
        checksum: splitmix64(got ^ p.size),
    })
}

/// Drop the file's (clean, just synced) pages from the page cache.
#[allow(unsafe_code)]
fn drop_cache(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for this call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

struct Remove(PathBuf);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_back_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("vfw-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Params {
            size: 3 * 65536 + 17,
            block: 65536,
            dir: dir.clone(),
        };
        let a = run(&p).unwrap();
        let b = run(&p).unwrap();
        assert_eq!(a.checksum, b.checksum);
        assert!(a.write_secs > 0.0 && a.read_secs > 0.0);
        let other = run(&Params {
            size: p.size + 1,
            ..p.clone()
        })
        .unwrap();
        assert_ne!(a.checksum, other.checksum);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let p = Params {
            size: 10,
            block: 10,
            dir: "/nonexistent/vfarm-workload".into(),
        };
        let e = run(&p).unwrap_err();
        assert_eq!(e.code().as_str(), "io_error");
        assert!(e.to_string().contains("/nonexistent/vfarm-workload"), "{e}");
    }
}
