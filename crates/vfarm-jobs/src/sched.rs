//! Capacity accounting and the scheduler.
//!
//! **Order.** Among the queued jobs that may start, the scheduler takes:
//! 1. the highest priority first (strictly: a lower priority never starts while a higher
//!    one that fits waits);
//! 2. among equal priorities, the job whose owner has the lowest **usage**;
//! 3. then the oldest submission, then the lowest id.
//!
//! **Usage (fair share).** An owner's usage is CPU-seconds with exponential decay:
//! every job that ended within the last `window` counts `cpus × run time × 0.5^(age / half_life)`
//! where `age` is the time since it ended; every job still holding capacity counts
//! `cpus × time since it was claimed` undecayed. Each start decided in the same round adds
//! `cpus × start_charge` to the owner, so owners with equal history alternate instead of one
//! taking every free slot. An owner who ran much recently therefore yields to one who did not,
//! and forgets it with the half-life.
//!
//! **Capacity.** A claimed job holds its CPUs, memory and one instance slot of its driver
//! from claim until its end is recorded; the sum over held jobs never exceeds the host's
//! capacity. A job that does not fit in the free CPUs or memory stops the round (no
//! backfill, so a big job is not starved by a stream of small ones); a job held back only by
//! its queue's `max_running` or its driver's slots is skipped and the next one considered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What this host can hold at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus_milli: u64,
    pub memory_mib: u64,
    /// Instance slots per driver (`oci`, `qemu`); a driver not listed has none.
    pub slots: BTreeMap<String, u32>,
}

impl Capacity {
    pub fn slots_for(&self, driver: &str) -> u32 {
        self.slots.get(driver).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FairShare {
    pub window_secs: u64,
    pub half_life_secs: u64,
    pub start_charge_cpu_secs: f64,
}

impl Default for FairShare {
    fn default() -> Self {
        FairShare {
            window_secs: 86_400,
            half_life_secs: 3600,
            start_charge_cpu_secs: 1.0,
        }
    }
}

/// A queued job the scheduler may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub owner: String,
    pub queue: String,
    pub priority: i32,
    pub submitted_ms: i64,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub driver: String,
}

/// A job holding capacity (starting or running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub id: i64,
    pub owner: String,
    pub queue: String,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub driver: String,
    /// When it was claimed.
    pub since_ms: i64,
}

/// A finished job, for the usage history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub owner: String,
    pub cpus_milli: u64,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One start decision, with the facts it was made on (recorded with the claim, so the order
/// can be checked afterwards).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pick {
    pub id: i64,
    pub owner: String,
    pub priority: i32,
    /// The picked owner's usage (CPU-seconds) at the decision.
    pub usage: f64,
    /// Usage of every other owner who had a startable job of the same priority then.
    pub rivals: BTreeMap<String, f64>,
}

/// Usage per owner at `now_ms`, as the module documentation defines it.
pub fn usage_by_owner(
    history: &[UsageRecord],
    active: &[Active],
    now_ms: i64,
    fs: &FairShare,
) -> BTreeMap<String, f64> {
    let mut u: BTreeMap<String, f64> = BTreeMap::new();
    let window_start = now_ms - (fs.window_secs as i64).saturating_mul(1000);
    let half_life = (fs.half_life_secs.max(1)) as f64;
    for h in history {
        if h.end_ms <= window_start || h.end_ms < h.start_ms {
            continue;
        }
        let run = (h.end_ms - h.start_ms.max(window_start)) as f64 / 1000.0;
        let age = ((now_ms - h.end_ms).max(0)) as f64 / 1000.0;
        let cpus = h.cpus_milli as f64 / 1000.0;
        *u.entry(h.owner.clone()).or_default() += cpus * run * 0.5f64.powf(age / half_life);
    }
    for a in active {
        let run = ((now_ms - a.since_ms).max(0)) as f64 / 1000.0;
        *u.entry(a.owner.clone()).or_default() += a.cpus_milli as f64 / 1000.0 * run;
    }
    u
}

/// Which queued jobs to start now, in order. Never returns a set whose resources, added to
/// `active`, exceed `cap`; respects per-queue `max_running`.
pub fn pick(
    queued: &[Candidate],
    active: &[Active],
    cap: &Capacity,
    max_running: &BTreeMap<String, u32>,
    usage: &BTreeMap<String, f64>,
    fs: &FairShare,
) -> Vec<Pick> {
    let mut free_cpu = cap
        .cpus_milli
        .saturating_sub(active.iter().map(|a| a.cpus_milli).sum());
    let mut free_mem = cap
        .memory_mib
        .saturating_sub(active.iter().map(|a| a.memory_mib).sum());
    let mut slots: BTreeMap<&str, u32> = BTreeMap::new();
    let mut per_queue: BTreeMap<&str, u32> = BTreeMap::new();
    for a in active {
        *slots.entry(a.driver.as_str()).or_default() += 1;
        *per_queue.entry(a.queue.as_str()).or_default() += 1;
    }
    let mut usage = usage.clone();
    let mut remaining: Vec<&Candidate> = queued.iter().collect();
    let mut out = Vec::new();
    loop {
        let startable = |c: &Candidate| {
            slots.get(c.driver.as_str()).copied().unwrap_or(0) < cap.slots_for(&c.driver)
                && max_running
                    .get(&c.queue)
                    .is_none_or(|m| per_queue.get(c.queue.as_str()).copied().unwrap_or(0) < *m)
        };
        let u = |o: &str| usage.get(o).copied().unwrap_or(0.0);
        let best = remaining.iter().filter(|c| startable(c)).min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(u(&a.owner).total_cmp(&u(&b.owner)))
                .then(a.submitted_ms.cmp(&b.submitted_ms))
                .then(a.id.cmp(&b.id))
        });
        let Some(&best) = best else { break };
        if best.cpus_milli > free_cpu || best.memory_mib > free_mem {
            break;
        }
        let rivals = remaining
            .iter()
            .filter(|c| startable(c))
            .filter(|c| c.priority == best.priority && c.owner != best.owner)
            .map(|c| (c.owner.clone(), u(&c.owner)))
            .collect();
        out.push(Pick {
            id: best.id,
            owner: best.owner.clone(),
            priority: best.priority,
            usage: u(&best.owner),
            rivals,
        });
        free_cpu -= best.cpus_milli;
        free_mem -= best.memory_mib;
        *slots.entry(best.driver.as_str()).or_default() += 1;
        *per_queue.entry(best.queue.as_str()).or_default() += 1;
        *usage.entry(best.owner.clone()).or_default() +=
            best.cpus_milli as f64 / 1000.0 * fs.start_charge_cpu_secs;
        remaining.retain(|c| c.id != best.id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(cpus: u64, mem: u64, oci: u32) -> Capacity {
        Capacity {
            cpus_milli: cpus,
            memory_mib: mem,
            slots: [("oci".to_string(), oci), ("qemu".to_string(), 1)].into(),
        }
    }

    fn job(id: i64, owner: &str, prio: i32, cpus: u64) -> Candidate {
        Candidate {
            id,
            owner: owner.into(),
            queue: "batch".into(),
            priority: prio,
            submitted_ms: id,
            cpus_milli: cpus,
            memory_mib: 100,
            driver: "oci".into(),
        }
    }

    fn ids(p: &[Pick]) -> Vec<i64> {
        p.iter().map(|p| p.id).collect()
    }

    #[test]
    fn priority_first_then_submission_order() {
        let q = [
            job(1, "a", 0, 1000),
            job(2, "a", 5, 1000),
            job(3, "a", 5, 1000),
        ];
        let p = pick(
            &q,
            &[],
            &cap(2000, 1000, 8),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &FairShare::default(),
        );
        assert_eq!(ids(&p), [2, 3]);
    }

    #[test]
    fn an_owner_who_ran_much_yields_to_one_who_did_not() {
        let q = [
            job(1, "heavy", 0, 1000),
            job(2, "heavy", 0, 1000),
            job(3, "light", 0, 1000),
        ];
        let hist = [UsageRecord {
            owner: "heavy".into(),
            cpus_milli: 1000,
            start_ms: 0,
            end_ms: 600_000,
        }];
        let fs = FairShare::default();
        let u = usage_by_owner(&hist, &[], 600_000, &fs);
        assert!((u["heavy"] - 600.0).abs() < 1e-9);
        let p = pick(&q, &[], &cap(1000, 1000, 8), &BTreeMap::new(), &u, &fs);
        assert_eq!(ids(&p), [3]);
        assert_eq!(p[0].rivals["heavy"], 600.0);
        // Priority still wins over fair share.
        let q2 = [job(1, "heavy", 1, 1000), job(3, "light", 0, 1000)];
        assert_eq!(
            ids(&pick(
                &q2,
                &[],
                &cap(1000, 1000, 8),
                &BTreeMap::new(),
                &u,
                &fs
            )),
            [1]
        );
    }

    #[test]
    fn usage_decays_with_the_half_life_and_leaves_the_window() {
        let fs = FairShare {
            window_secs: 7200,
            half_life_secs: 3600,
            start_charge_cpu_secs: 1.0,
        };
        let rec = |end_s: i64| UsageRecord {
            owner: "o".into(),
            cpus_milli: 2000,
            start_ms: (end_s - 100) * 1000,
            end_ms: end_s * 1000,
        };
        let now = 10_000_000;
        let fresh = usage_by_owner(&[rec(now / 1000)], &[], now, &fs)["o"];
        let hour = usage_by_owner(&[rec(now / 1000 - 3600)], &[], now, &fs)["o"];
        assert!((fresh - 200.0).abs() < 1e-9);
        assert!((hour - 100.0).abs() < 1e-9, "{hour}");
        assert!(usage_by_owner(&[rec(now / 1000 - 7300)], &[], now, &fs).is_empty());
        let act = Active {
            id: 9,
            owner: "r".into(),
            queue: "batch".into(),
            cpus_milli: 500,
            memory_mib: 1,
            driver: "oci".into(),
            since_ms: now - 10_000,
        };
        assert!((usage_by_owner(&[], &[act], now, &fs)["r"] - 5.0).abs() < 1e-9);
    }

    #[test]
    fn equal_owners_alternate_within_a_round() {
        let q: Vec<_> = (1..=6)
            .map(|i| job(i, if i <= 3 { "a" } else { "b" }, 0, 500))
            .collect();
        let p = pick(
            &q,
            &[],
            &cap(2000, 1000, 8),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &FairShare::default(),
        );
        let owners: Vec<_> = p.iter().map(|p| p.owner.as_str()).collect();
        assert_eq!(owners, ["a", "b", "a", "b"]);
    }

    #[test]
    fn a_big_job_blocks_smaller_ones_but_limits_only_skip() {
        let q = [job(1, "a", 5, 2000), job(2, "a", 0, 500)];
        let active = [Active {
            id: 7,
            owner: "x".into(),
            queue: "batch".into(),
            cpus_milli: 1000,
            memory_mib: 10,
            driver: "oci".into(),
            since_ms: 0,
        }];
        let fs = FairShare::default();
        assert!(pick(
            &q,
            &active,
            &cap(2000, 1000, 8),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &fs
        )
        .is_empty());
        // Queue limit: job 1's queue is full, so job 2 (another queue) goes.
        let mut q = q.to_vec();
        q[1].queue = "other".into();
        let lim = [("batch".to_string(), 1u32)].into();
        assert_eq!(
            ids(&pick(
                &q,
                &active,
                &cap(2000, 1000, 8),
                &lim,
                &BTreeMap::new(),
                &fs
            )),
            [2]
        );
        // Driver slots: none free for oci.
        assert!(pick(
            &q,
            &active,
            &cap(4000, 1000, 1),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &fs
        )
        .is_empty());
    }

    /// Property: for random queues, active sets and capacities, the picked jobs plus the
    /// active ones never exceed any capacity dimension, and priorities are non-increasing.
    #[test]
    fn never_exceeds_capacity() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let drivers = ["oci", "qemu"];
            let c = Capacity {
                cpus_milli: rng.u64(500..8000),
                memory_mib: rng.u64(256..8192),
                slots: [
                    ("oci".to_string(), rng.u32(0..6)),
                    ("qemu".to_string(), rng.u32(0..3)),
                ]
                .into(),
            };
            let mk = |rng: &mut fastrand::Rng, id: i64| Candidate {
                id,
                owner: ["a", "b", "c"][rng.usize(0..3)].into(),
                queue: ["q1", "q2"][rng.usize(0..2)].into(),
                priority: rng.i32(-2..3),
                submitted_ms: rng.i64(0..1000),
                cpus_milli: rng.u64(100..3000),
                memory_mib: rng.u64(10..3000),
                driver: drivers[rng.usize(0..2)].into(),
            };
            let active: Vec<Active> = (0..rng.usize(0..4))
                .map(|i| {
                    let j = mk(&mut rng, 1000 + i as i64);
                    Active {
                        id: j.id,
                        owner: j.owner,
                        queue: j.queue,
                        cpus_milli: j.cpus_milli / 2,
                        memory_mib: j.memory_mib / 2,
                        driver: j.driver,
                        since_ms: 0,
                    }
                })
                .collect();
            let queued: Vec<Candidate> = (0..rng.usize(0..30))
                .map(|i| mk(&mut rng, i as i64))
                .collect();
            let lim: BTreeMap<String, u32> = [("q1".to_string(), rng.u32(0..5))].into();
            let picks = pick(
                &queued,
                &active,
                &c,
                &lim,
                &BTreeMap::new(),
                &FairShare::default(),
            );
            let chosen: Vec<&Candidate> = picks
                .iter()
                .map(|p| queued.iter().find(|q| q.id == p.id).unwrap())
                .collect();
            let cpu: u64 = active.iter().map(|a| a.cpus_milli).sum::<u64>()
                + chosen.iter().map(|c| c.cpus_milli).sum::<u64>();
            let mem: u64 = active.iter().map(|a| a.memory_mib).sum::<u64>()
                + chosen.iter().map(|c| c.memory_mib).sum::<u64>();
            if !chosen.is_empty() {
                assert!(cpu <= c.cpus_milli, "cpu {cpu} > {}", c.cpus_milli);
                assert!(mem <= c.memory_mib, "mem {mem} > {}", c.memory_mib);
            }
            for d in drivers {
                let n = active.iter().filter(|a| a.driver == d).count()
                    + chosen.iter().filter(|c| c.driver == d).count();
                let before = active.iter().filter(|a| a.driver == d).count();
                assert!(n as u32 <= c.slots_for(d).max(before as u32), "{d}: {n}");
            }
            let q1 = active.iter().filter(|a| a.queue == "q1").count()
                + chosen.iter().filter(|c| c.queue == "q1").count();
            let q1_before = active.iter().filter(|a| a.queue == "q1").count();
            assert!(q1 as u32 <= lim["q1"].max(q1_before as u32));
            let mut ids: Vec<i64> = picks.iter().map(|p| p.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), picks.len(), "a job picked twice");
        }
    }
}
