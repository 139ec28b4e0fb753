//! An oci instance's resource use, from its cgroup `/vfarm/<id>` (cgroup v1 controllers as on
//! hybrid hosts, or the v2 unified tree) and, with a network namespace of its own, its
//! interfaces' counters. Reading files only: cheap enough to sample hundreds every interval.

use std::path::Path;
use std::time::Duration;

use crate::Usage;

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat): the value of `key`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// v1 memory limits say "no limit" as a huge page-rounded number.
const V1_UNLIMITED: u64 = 1 << 62;

/// Usage of cgroup `/vfarm/<id>` under `root` (normally `/sys/fs/cgroup`); `None` when the
/// cgroup does not exist (the instance is not running). `host_cpus` stands in for an instance
/// without a CPU quota.
pub(crate) fn cgroup_usage(root: &Path, id: &str, host_cpus: f64) -> Option<Usage> {
    let rel = Path::new("vfarm").join(id);
    let v2 = root.join(&rel);
    if v2.join("cgroup.controllers").exists() && v2.join("cpu.stat").exists() {
        return v2_usage(&v2, host_cpus);
    }
    v1_usage(root, &rel, host_cpus)
}

fn v1_usage(root: &Path, rel: &Path, host_cpus: f64) -> Option<Usage> {
    let ctl = |names: &[&str]| {
        names
            .iter()
            .map(|n| root.join(n).join(rel))
            .find(|p| p.is_dir())
    };
    let cpuacct = ctl(&["cpuacct", "cpu,cpuacct"])?;
    let cpu_ns = read_u64(&cpuacct.join("cpuacct.usage"))?;
    let cpus = ctl(&["cpu", "cpu,cpuacct"])
        .and_then(|d| {
            let quota = read(&d.join("cpu.cfs_quota_us"))?
                .trim()
                .parse::<i64>()
                .ok()?;
            let period = read_u64(&d.join("cpu.cfs_period_us"))?;
            (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
        })
        .unwrap_or(host_cpus);
    let (mut memory_bytes, mut memory_limit_bytes) = (0, None);
    if let Some(m) = ctl(&["memory"]) {
        let usage = read_u64(&m.join("memory.usage_in_bytes")).unwrap_or(0);
        // What `free` calls used: page cache the kernel drops first is not the instance's.
        let inactive = read(&m.join("memory.stat"))
            .and_then(|s| keyed(&s, "total_inactive_file"))
            .unwrap_or(0);
        memory_bytes = usage.saturating_sub(inactive);
        memory_limit_bytes =
            read_u64(&m.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED);
    }
    let (mut rd, mut wr) = (0, 0);
    if let Some(b) = ctl(&["blkio"]) {
        let text = read(&b.join("blkio.throttle.io_service_bytes_recursive"))
            .or_else(|| read(&b.join("blkio.throttle.io_service_bytes")))
            .unwrap_or_default();
        (rd, wr) = blkio_v1(&text);
    }
    Some(Usage {
        cpu_time: Duration::from_nanos(cpu_ns),
        cpus,
        memory_bytes,
        memory_limit_bytes,
        disk_read_bytes: rd,
        disk_write_bytes: wr,
        net_rx_bytes: None,
        net_tx_bytes: None,
    })
}

/// (read, written) bytes from v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` lines.
fn blkio_v1(text: &str) -> (u64, u64) {
    let (mut rd, mut wr) = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, op, n] = f[..] {
            let n: u64 = n.parse().unwrap_or(0);
            match op {
                "Read" => rd += n,
                "Write" => wr += n,
                _ => {}
            }
        }
    }
    (rd, wr)
}

fn v2_usage(dir: &Path, host_cpus: f64) -> Option<Usage> {
    let usec = keyed(&read(&dir.join("cpu.stat"))?, "usage_usec")?;
    let cpus = read(&dir.join("cpu.max"))
        .and_then(|s| {
            let mut f = s.split_whitespace();
            let quota: f64 = f.next()?.parse().ok()?;
            let period: f64 = f.next()?.parse().ok()?;
            (period > 0.0).then(|| quota / period)
        })
        .unwrap_or(host_cpus);
    let current = read_u64(&dir.join("memory.current")).unwrap_or(0);
    let inactive = read(&dir.join("memory.stat"))
        .and_then(|s| keyed(&s, "inactive_file"))
        .unwrap_or(0);
    let (mut rd, mut wr) = (0, 0);
    // `MAJ:MIN rbytes=N wbytes=N rios=N …` per device.
    for l in read(&dir.join("io.stat")).unwrap_or_default().lines() {
        for kv in l.split_whitespace().skip(1) {
            match kv.split_once('=') {
                Some(("rbytes", n)) => rd += n.parse::<u64>().unwrap_or(0),
                Some(("wbytes", n)) => wr += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    Some(Usage {
        cpu_time: Duration::from_micros(usec),
        cpus,
        memory_bytes: current.saturating_sub(inactive),
        memory_limit_bytes: read_u64(&dir.join("memory.max")),
        disk_read_bytes: rd,
        disk_write_bytes: wr,
        net_rx_bytes: None,
        net_tx_bytes: None,
    })
}

/// (received, sent) bytes of every interface but `lo` in `/proc/<pid>/net/dev` text.
pub(crate) fn net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

/// The network counters of process `pid`'s network namespace; `None` when that is the host's
/// (an instance on the host network has no traffic of its own to count).
pub(crate) fn net_of(pid: i32) -> Option<(u64, u64)> {
    static HOST: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| std::fs::read_link("/proc/1/ns/net").ok());
    let mine = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    if Some(&mine) == host.as_ref() {
        return None;
    }
    Some(net_dev(&read(Path::new(&format!("/proc/{pid}/net/dev")))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn v1_controllers_as_on_a_hybrid_host() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "cpuacct/vfarm/i1/cpuacct.usage", "2500000000\n");
        write(r, "cpu/vfarm/i1/cpu.cfs_quota_us", "150000\n");
        write(r, "cpu/vfarm/i1/cpu.cfs_period_us", "100000\n");
        write(r, "memory/vfarm/i1/memory.usage_in_bytes", "10485760\n");
        write(
            r,
            "memory/vfarm/i1/memory.stat",
            "cache 0\ntotal_inactive_file 2097152\n",
        );
        write(r, "memory/vfarm/i1/memory.limit_in_bytes", "268435456\n");
        write(
            r,
            "blkio/vfarm/i1/blkio.throttle.io_service_bytes",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 1\n8:0 Total 12288\nTotal 12289\n",
        );
        let u = cgroup_usage(r, "i1", 2.0).unwrap();
        assert_eq!(u.cpu_time, Duration::from_millis(2500));
        assert_eq!(u.cpus, 1.5);
        assert_eq!(u.memory_bytes, 8 << 20);
        assert_eq!(u.memory_limit_bytes, Some(256 << 20));
        assert_eq!((u.disk_read_bytes, u.disk_write_bytes), (4097, 8192));
        // No quota, no limit: the host's CPUs, no limit.
        write(r, "cpu/vfarm/i1/cpu.cfs_quota_us", "-1\n");
        write(
            r,
            "memory/vfarm/i1/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let u = cgroup_usage(r, "i1", 2.0).unwrap();
        assert_eq!((u.cpus, u.memory_limit_bytes), (2.0, None));
        // No cgroup: not running.
        assert_eq!(cgroup_usage(r, "i2", 2.0), None);
    }

    #[test]
    fn v2_unified_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "vfarm/i1/cgroup.controllers", "cpu io memory pids\n");
        write(
            r,
            "vfarm/i1/cpu.stat",
            "usage_usec 1500000\nuser_usec 1000000\n",
        );
        write(r, "vfarm/i1/cpu.max", "max 100000\n");
        write(r, "vfarm/i1/memory.current", "4194304\n");
        write(r, "vfarm/i1/memory.stat", "anon 1\ninactive_file 1048576\n");
        write(r, "vfarm/i1/memory.max", "max\n");
        write(
            r,
            "vfarm/i1/io.stat",
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n",
        );
        let u = cgroup_usage(r, "i1", 4.0).unwrap();
        assert_eq!(u.cpu_time, Duration::from_millis(1500));
        assert_eq!(u.cpus, 4.0);
        assert_eq!((u.memory_bytes, u.memory_limit_bytes), (3 << 20, None));
        assert_eq!((u.disk_read_bytes, u.disk_write_bytes), (101, 202));
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:  999 9 0 0 0 0 0 0  999 9 0 0 0 0 0 0\n  \
             eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  \
             eth1: 1 1 0 0 0 0 0 0 2 1 0 0 0 0 0 0\n";
        assert_eq!(net_dev(text), (1001, 2002));
    }
}
