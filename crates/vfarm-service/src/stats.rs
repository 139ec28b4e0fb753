//! Measured use of every instance this service runs, side by side (the XenCenter overview):
//! the service samples each running instance through its driver's `stats` capability at a
//! fixed interval and keeps a short history, from which `instance ls --stats`, the web UI and
//! `/metrics` show rates now and avg/max over the window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vfarm_driver::Usage;

use crate::caller::Caller;
use crate::env::Env;
use crate::instances::Drivers;

/// How often `vfarm serve` samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per instance: 5 minutes at [`INTERVAL`].
pub const HISTORY: usize = 60;

/// Figures of one interval (or averaged/maxed over the window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rates {
    /// CPU use in % of one CPU (an instance busy on 2 CPUs shows 200).
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_read_kbps: f64,
    pub disk_write_kbps: f64,
    /// Absent when the driver cannot count the instance's own traffic.
    pub net_rx_kbps: Option<f64>,
    pub net_tx_kbps: Option<f64>,
}

/// Totals since the instance started, at the last sample (`/metrics` exports them as
/// counters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    pub cpu_seconds: f64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// One instance's row of the overview.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceUsage {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub driver: String,
    /// The machine that runs it (this service's host name).
    pub host: String,
    /// CPUs it may use.
    pub cpus: f64,
    /// At the last sample.
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// The last interval; absent until two samples exist.
    pub now: Option<Rates>,
    /// Over the window ([`Self::window_secs`]): mean, and the largest interval's.
    pub avg: Option<Rates>,
    pub max: Option<Rates>,
    pub window_secs: f64,
    /// Every interval of the window, oldest first (sparklines).
    pub history: Vec<Rates>,
    pub last: Option<Totals>,
}

struct Track {
    name: String,
    owner: String,
    driver: String,
    samples: VecDeque<(Instant, Usage)>,
}

/// The history of every instance sampled. Shared by the sampling thread and readers.
pub struct Sampler {
    host: String,
    tracks: Mutex<HashMap<String, Track>>,
}

fn rates(a: &(Instant, Usage), b: &(Instant, Usage)) -> Rates {
    let secs = b.0.duration_since(a.0).as_secs_f64().max(1e-3);
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let kb = |x: u64, y: u64| per_s(x, y) / 1024.0;
    let (u, v) = (&a.1, &b.1);
    Rates {
        cpu_percent: v.cpu_time.saturating_sub(u.cpu_time).as_secs_f64() / secs * 100.0,
        memory_bytes: v.memory_bytes,
        disk_read_kbps: kb(u.disk_read_bytes, v.disk_read_bytes),
        disk_write_kbps: kb(u.disk_write_bytes, v.disk_write_bytes),
        net_rx_kbps: u.net_rx_bytes.zip(v.net_rx_bytes).map(|(x, y)| kb(x, y)),
        net_tx_kbps: u.net_tx_bytes.zip(v.net_tx_bytes).map(|(x, y)| kb(x, y)),
    }
}

fn mean_max(h: &[Rates]) -> (Rates, Rates) {
    let n = h.len().max(1) as f64;
    let opt_sum = |f: fn(&Rates) -> Option<f64>| {
        h.iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.iter().sum::<f64>())
    };
    let opt_max = |f: fn(&Rates) -> Option<f64>| {
        h.iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(0.0, f64::max))
    };
    let avg = Rates {
        cpu_percent: h.iter().map(|r| r.cpu_percent).sum::<f64>() / n,
        memory_bytes: (h.iter().map(|r| r.memory_bytes as f64).sum::<f64>() / n) as u64,
        disk_read_kbps: h.iter().map(|r| r.disk_read_kbps).sum::<f64>() / n,
        disk_write_kbps: h.iter().map(|r| r.disk_write_kbps).sum::<f64>() / n,
        net_rx_kbps: opt_sum(|r| r.net_rx_kbps).map(|s| s / n),
        net_tx_kbps: opt_sum(|r| r.net_tx_kbps).map(|s| s / n),
    };
    let max = Rates {
        cpu_percent: h.iter().map(|r| r.cpu_percent).fold(0.0, f64::max),
        memory_bytes: h.iter().map(|r| r.memory_bytes).max().unwrap_or(0),
        disk_read_kbps: h.iter().map(|r| r.disk_read_kbps).fold(0.0, f64::max),
        disk_write_kbps: h.iter().map(|r| r.disk_write_kbps).fold(0.0, f64::max),
        net_rx_kbps: opt_max(|r| r.net_rx_kbps),
        net_tx_kbps: opt_max(|r| r.net_tx_kbps),
    };
    (avg, max)
}

/// This machine's name, as the `host` of what it runs.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            host: host_name(),
            tracks: Mutex::new(HashMap::new()),
        }
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sample every running or paused instance this service runs (not those placed on nodes:
    /// each node samples its own). Instances gone or stopped leave the overview. Returns how
    /// many were measured.
    pub fn sample(&self, env: &Env) -> anyhow::Result<usize> {
        self.sample_with(env, &mut Drivers::new(env))
    }

    /// [`sample`](Self::sample) with drivers kept between rounds (the sampling thread's).
    pub fn sample_with(&self, env: &Env, drivers: &mut Drivers<'_>) -> anyhow::Result<usize> {
        let store = env.store()?;
        let placed = store.instance_hosts()?;
        // Only the live rows, without their specs: a service keeps thousands of stopped ones.
        let mut rows = Vec::new();
        for state in ["running", "paused"] {
            let filter = vfarm_store::instances::InstanceFilter {
                state: Some(state.into()),
                ..Default::default()
            };
            rows.extend(store.instances_page(&filter, None, None, true)?.items);
        }
        rows.retain(|r| !placed.contains_key(&r.id));
        let mut measured = Vec::with_capacity(rows.len());
        for r in &rows {
            let Ok(d) = drivers.get(&r.driver) else {
                continue;
            };
            let Some(s) = d.stats() else { continue };
            // Not found: another service sharing the database runs it. Any other failure
            // (stopped meanwhile) just skips this round.
            match s.usage(&r.id) {
                Ok(u) => measured.push((r, Instant::now(), u)),
                Err(e) => tracing::debug!("no usage of {}: {e}", r.id),
            }
        }
        let n = measured.len();
        let mut tracks = self.tracks();
        let live: std::collections::HashSet<&str> =
            measured.iter().map(|(r, _, _)| r.id.as_str()).collect();
        tracks.retain(|id, _| live.contains(id.as_str()));
        for (r, at, u) in measured {
            let t = tracks.entry(r.id.clone()).or_insert_with(|| Track {
                name: r.name.clone().unwrap_or_default(),
                owner: r.owner.clone(),
                driver: r.driver.clone(),
                samples: VecDeque::with_capacity(HISTORY + 1),
            });
            // A restart resets the totals: the history before it is another run's.
            if t.samples
                .back()
                .is_some_and(|(_, p)| u.cpu_time < p.cpu_time)
            {
                t.samples.clear();
            }
            t.samples.push_back((at, u));
            while t.samples.len() > HISTORY + 1 {
                t.samples.pop_front();
            }
        }
        Ok(n)
    }

    /// Every sampled instance, by id.
    pub fn overview(&self) -> Vec<InstanceUsage> {
        let tracks = self.tracks();
        let mut out: Vec<InstanceUsage> = tracks
            .iter()
            .map(|(id, t)| {
                let s: Vec<&(Instant, Usage)> = t.samples.iter().collect();
                let history: Vec<Rates> = s.windows(2).map(|w| rates(w[0], w[1])).collect();
                let (avg, max) = if history.is_empty() {
                    (None, None)
                } else {
                    let (a, m) = mean_max(&history);
                    (Some(a), Some(m))
                };
                let last = s.last().map(|(_, u)| u);
                InstanceUsage {
                    id: id.clone(),
                    name: t.name.clone(),
                    owner: t.owner.clone(),
                    driver: t.driver.clone(),
                    host: self.host.clone(),
                    cpus: last.map_or(0.0, |u| u.cpus),
                    memory_bytes: last.map_or(0, |u| u.memory_bytes),
                    memory_limit_bytes: last.and_then(|u| u.memory_limit_bytes),
                    now: history.last().copied(),
                    avg,
                    max,
                    window_secs: match (s.first(), s.last()) {
                        (Some(a), Some(b)) => b.0.duration_since(a.0).as_secs_f64(),
                        _ => 0.0,
                    },
                    history,
                    last: last.map(|u| Totals {
                        cpu_seconds: u.cpu_time.as_secs_f64(),
                        disk_read_bytes: u.disk_read_bytes,
                        disk_write_bytes: u.disk_write_bytes,
                        net_rx_bytes: u.net_rx_bytes,
                        net_tx_bytes: u.net_tx_bytes,
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// [`overview`](Self::overview) of what `caller` may see.
    pub fn overview_for(&self, caller: &Caller) -> Vec<InstanceUsage> {
        let mut v = self.overview();
        v.retain(|u| caller.may_access(&u.owner));
        v
    }
}

/// Sample every [`INTERVAL`] on a thread of its own for as long as the process runs.
pub fn spawn_sampler(env: &Env) -> std::sync::Arc<Sampler> {
    let sampler = std::sync::Arc::new(Sampler::new());
    let (env, s) = (env.fresh(), sampler.clone());
    std::thread::Builder::new()
        .name("stats-sampler".into())
        .spawn(move || {
            let mut drivers = Drivers::new(&env);
            loop {
                let t = Instant::now();
                if let Err(e) = s.sample_with(&env, &mut drivers) {
                    tracing::warn!("stats sampler: {e:#}");
                }
                // A fixed rate: the time a round took comes off the wait.
                std::thread::sleep(INTERVAL.saturating_sub(t.elapsed()));
            }
        })
        .expect("spawn the stats sampler");
    sampler
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64, cpu_ms: u64, rd: u64) -> (Instant, Usage) {
        (
            base + Duration::from_secs(secs),
            Usage {
                cpu_time: Duration::from_millis(cpu_ms),
                cpus: 2.0,
                memory_bytes: 1 << 20,
                disk_read_bytes: rd,
                ..Usage::default()
            },
        )
    }

    #[test]
    fn rates_and_window_figures() {
        let b = Instant::now();
        // One CPU busy for 5 s, then idle; 10 KiB/s read in the first interval.
        let r1 = rates(&at(b, 0, 0, 0), &at(b, 5, 5000, 51200));
        assert!((r1.cpu_percent - 100.0).abs() < 1e-9, "{r1:?}");
        assert!((r1.disk_read_kbps - 10.0).abs() < 1e-9);
        assert_eq!(r1.net_rx_kbps, None);
        let r2 = rates(&at(b, 5, 5000, 51200), &at(b, 10, 5000, 51200));
        assert_eq!(r2.cpu_percent, 0.0);
        let (avg, max) = mean_max(&[r1, r2]);
        assert!((avg.cpu_percent - 50.0).abs() < 1e-9);
        assert!((max.cpu_percent - 100.0).abs() < 1e-9);
        assert!((avg.disk_read_kbps - 5.0).abs() < 1e-9);
    }
}
