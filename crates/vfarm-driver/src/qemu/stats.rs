//! Measured resource use of a VM: the QEMU process as the host kernel accounts it
//! (`/proc/<pid>/stat`, `/proc/<pid>/status`) plus the guest disk's counters from QMP.

use std::time::Duration;

use serde::Serialize;

pub use vfarm_qemu::qmp::BlockStats;

/// Linux reports process times in clock ticks of `USER_HZ`, which the kernel ABI fixes at 100
/// on x86_64 whatever the kernel's internal `HZ` is.
const USER_HZ: u64 = 100;

/// What a running VM costs right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmStats {
    /// The QEMU process.
    pub pid: i32,
    /// QEMU's run state (`running`, `paused`, …).
    pub status: String,
    /// Host CPU time used by QEMU (user + system, all vCPU and I/O threads) since it started.
    pub cpu_time: Duration,
    /// Host memory resident for QEMU: the guest's touched RAM plus QEMU's own.
    pub rss_bytes: u64,
    /// Since QEMU started (a restored checkpoint counts from the restore).
    pub uptime: Duration,
    /// Per guest disk: bytes and operations read, written, flushed.
    #[serde(skip)]
    pub block: Vec<BlockStats>,
    /// The NIC's counters as the guest counts them (see `QemuDriver::net_stats`); `None`
    /// without a NIC, while the guest is paused, or when its agent does not answer.
    pub net: Option<super::NetStats>,
}

/// (cpu time, start time after boot) from the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(stat: &str) -> Option<(Duration, Duration)> {
    let s = crate::process::parse_stat(stat)?;
    Some((
        ticks_to_duration(s.utime + s.stime),
        ticks_to_duration(s.start_time),
    ))
}

fn ticks_to_duration(t: u64) -> Duration {
    Duration::from_millis(t * 1000 / USER_HZ)
}

/// `VmRSS` from the text of `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Seconds since the host booted, from `/proc/uptime`.
pub(crate) fn host_uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "1234 (qemu-system (x)) S 1 1233 1233 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 123456 1000000 5000 18446744073709551615";
        let (cpu, start) = parse_stat(stat).unwrap();
        assert_eq!(cpu, Duration::from_secs(3));
        assert_eq!(start, Duration::from_millis(1_234_560));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn rss_line() {
        let status = "Name:\tqemu\nVmPeak:\t  9000 kB\nVmRSS:\t  204800 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(204_800 * 1024));
        assert_eq!(parse_rss("Name:\tx\n"), None);
    }
}
