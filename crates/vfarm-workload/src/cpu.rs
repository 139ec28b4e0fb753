//! A CPU-bound Monte Carlo particle-transport kernel in the spirit of the Geant4 event
//! simulation of the seed slides: particles enter a stack of material slabs, fly exponentially
//! distributed distances, scatter (losing energy, changing direction) or are absorbed, and the
//! energy deposited per slab is tallied. Every event has its own random stream derived from
//! (seed, event number), so the checksum is the same for any thread count.

use std::time::Instant;

use crate::rng::{ln, splitmix64, Rng};
use crate::Line;

pub const DEFAULT_EVENTS: u64 = 1_000_000;
pub const DEFAULT_SEED: u64 = 20_061_127;

/// Tally resolution: deposited energy is summed as fixed-point integers (2^-32 MeV), so
/// partial sums from threads add up identically in any order.
const FIXED: f64 = 4_294_967_296.0;
/// Particles below this energy (MeV) deposit the rest locally.
const CUTOFF: f64 = 0.01;
/// Safety bound on steps per event (never reached with these materials).
const MAX_STEPS: u32 = 100_000;

/// A slab: thickness (cm), total macroscopic cross-section at 1 MeV (1/cm), and the
/// probability that a collision absorbs.
struct Slab {
    thickness: f64,
    sigma: f64,
    absorb: f64,
}

/// Alternating light and dense layers, like a sampling calorimeter.
const SLABS: [Slab; 8] = [
    Slab {
        thickness: 0.5,
        sigma: 0.4,
        absorb: 0.05,
    },
    Slab {
        thickness: 0.2,
        sigma: 2.5,
        absorb: 0.20,
    },
    Slab {
        thickness: 0.5,
        sigma: 0.4,
        absorb: 0.05,
    },
    Slab {
        thickness: 0.2,
        sigma: 2.5,
        absorb: 0.20,
    },
    Slab {
        thickness: 0.5,
        sigma: 0.4,
        absorb: 0.05,
    },
    Slab {
        thickness: 0.2,
        sigma: 2.5,
        absorb: 0.20,
    },
    Slab {
        thickness: 1.0,
        sigma: 0.8,
        absorb: 0.10,
    },
    Slab {
        thickness: 1.0,
        sigma: 1.6,
        absorb: 0.30,
    },
];

#[derive(Debug, Clone)]
pub struct Params {
    pub events: u64,
    /// 0 = all available cores.
    pub threads: usize,
    pub seed: u64,
}

/// Tallies of a set of events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    /// Energy deposited per slab, fixed point.
    pub deposit: [u64; SLABS.len()],
    pub transmitted: u64,
    pub reflected: u64,
    pub absorbed: u64,
    pub collisions: u64,
    /// Order-independent sum of per-event hashes.
    pub event_hash: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        for (a, b) in self.deposit.iter_mut().zip(o.deposit.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.transmitted += o.transmitted;
        self.reflected += o.reflected;
        self.absorbed += o.absorbed;
        self.collisions += o.collisions;
        self.event_hash = self.event_hash.wrapping_add(o.event_hash);
    }

    pub fn checksum(&self) -> u64 {
        let mut h = self.event_hash;
        for v in self.deposit.iter().chain(
            [
                self.transmitted,
                self.reflected,
                self.absorbed,
                self.collisions,
            ]
            .iter(),
        ) {
            h = splitmix64(h ^ v);
        }
        h
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    pub threads: usize,
    pub tally: Tally,
    pub secs: f64,
}

impl Outcome {
    pub fn line(&self) -> Line {
        let rate = self.params.events as f64 / self.secs.max(1e-9);
        let name = if self.params.threads == 1 {
            "cpu"
        } else {
            "cpu-all"
        };
        Line::new("cpu", self.tally.checksum(), self.secs)
            .param_num("events", self.params.events)
            .param_num("threads", self.threads as u64)
            .param_num("seed", self.params.seed)
            .metric(name, rate, "events/s", true)
    }
}

/// Simulate one event and add it to `t`.
fn event(seed: u64, n: u64, t: &mut Tally) {
    let mut rng = Rng::new(seed, n);
    let mut slab = 0usize;
    let mut x = 0.0f64; // depth inside the current slab
    let mut mu = 1.0f64; // direction cosine: enters head-on
    let mut energy = 1.0f64;
    let mut collisions = 0u64;
    let mut end = 0u64;
    for _ in 0..MAX_STEPS {
        let s = &SLABS[slab];
        // Cross-sections grow at low energy (as photo-absorption does).
        let sigma = s.sigma * (1.0 + 0.3 / (energy + 0.05));
        let dist = -ln(rng.uniform()) / sigma;
        let to_boundary = if mu > 0.0 {
            (s.thickness - x) / mu
        } else if mu < 0.0 {
            -x / mu
        } else {
            f64::INFINITY
        };
        if dist >= to_boundary {
            // Crossing: the exponential is memoryless, so resample in the next slab.
            if mu > 0.0 {
                if slab + 1 == SLABS.len() {
                    t.transmitted += 1;
                    end = 1;
                    break;
                }
                slab += 1;
                x = 0.0;
            } else {
                if slab == 0 {
                    t.reflected += 1;
                    end = 2;
                    break;
                }
                slab -= 1;
                x = SLABS[slab].thickness;
            }
            continue;
        }
        x += dist * mu;
        collisions += 1;
        if rng.uniform() < s.absorb {
            t.deposit[slab] = t.deposit[slab].wrapping_add((energy * FIXED) as u64);
            t.absorbed += 1;
            end = 3;
            break;
        }
        // Scatter: lose part of the energy locally, new isotropic direction.
        let kept = energy * (0.55 + 0.45 * rng.uniform());
        t.deposit[slab] = t.deposit[slab].wrapping_add(((energy - kept) * FIXED) as u64);
        energy = kept;
        mu = 2.0 * rng.uniform() - 1.0;
        if energy < CUTOFF {
            t.deposit[slab] = t.deposit[slab].wrapping_add((energy * FIXED) as u64);
            t.absorbed += 1;
            end = 4;
            break;
        }
    }
    t.collisions += collisions;
    let quantised_x = (x * 1e6) as u64;
    t.event_hash = t.event_hash.wrapping_add(splitmix64(
        n ^ (collisions << 40) ^ (end << 36) ^ ((slab as u64) << 32) ^ quantised_x,
    ));
}

/// Events `first, first + step, …` below `events`.
fn chunk(seed: u64, events: u64, first: u64, step: u64) -> Tally {
    let mut t = Tally::default();
    let mut n = first;
    while n < events {
        event(seed, n, &mut t);
        n += step;
    }
    t
}

pub fn run(p: &Params) -> Outcome {
    let threads = if p.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        p.threads
    };
    let start = Instant::now();
    let tally = if threads == 1 {
        chunk(p.seed, p.events, 0, 1)
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|i| s.spawn(move || chunk(p.seed, p.events, i, threads as u64)))
                .collect();
            let mut total = Tally::default();
            for h in handles {
                total.add(&h.join().expect("a worker thread panicked"));
            }
            total
        })
    };
    Outcome {
        params: p.clone(),
        threads,
        tally,
        secs: start.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(events: u64, threads: usize, seed: u64) -> Params {
        Params {
            events,
            threads,
            seed,
        }
    }

    #[test]
    fn every_event_ends_once_and_physics_is_plausible() {
        let o = run(&p(5000, 1, DEFAULT_SEED));
        let t = &o.tally;
        assert_eq!(t.transmitted + t.reflected + t.absorbed, 5000);
        // Each outcome happens with these materials; deposits go into every slab.
        assert!(
            t.transmitted > 0 && t.reflected > 0 && t.absorbed > 0,
            "{t:?}"
        );
        assert!(t.deposit.iter().all(|&d| d > 0), "{t:?}");
        assert!(t.collisions > 5000, "{t:?}");
    }

    #[test]
    fn checksum_is_independent_of_threads_and_depends_on_seed_and_count() {
        let one = run(&p(3000, 1, 42)).tally;
        let three = run(&p(3000, 3, 42)).tally;
        assert_eq!(one, three);
        assert_eq!(one.checksum(), three.checksum());
        assert_ne!(one.checksum(), run(&p(3000, 1, 43)).tally.checksum());
        assert_ne!(one.checksum(), run(&p(2999, 1, 42)).tally.checksum());
    }

    #[test]
    fn line_names_the_variant() {
        let l = run(&p(100, 2, 1)).line().to_string();
        assert!(l.contains("\"name\":\"cpu-all\""), "{l}");
        assert!(l.contains("\"threads\":2"), "{l}");
    }
}
