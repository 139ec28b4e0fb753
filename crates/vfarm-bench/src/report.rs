//! The overhead report: what ran where, every sample, the statistics and the comparison with
//! native. Serialised as the `--output json` document; rendered as a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{overhead, Stats};

/// The machine the figures were measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
    pub cpu_model: String,
    pub kernel: String,
    /// 1/5/15-minute load averages before and after the run.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

impl Machine {
    /// A machine is quiet when its 1-minute load average is below half its cores: other work
    /// then shares little CPU time with the benchmark.
    pub fn quiet_warning(&self, load: [f64; 3]) -> Option<String> {
        let limit = (self.cores.max(1) as f64) * 0.5;
        (load[0] > limit).then(|| {
            format!(
                "the machine is not quiet: load average {:.2} {:.2} {:.2} on {} core(s) \
                 (quiet means below {limit:.1}); figures are noisy and overheads may be overstated",
                load[0], load[1], load[2], self.cores
            )
        })
    }
}

/// One environment the workloads ran in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverRun {
    /// native, oci or qemu.
    pub name: String,
    /// For VMs: kvm or tcg, as the driver reports it.
    pub accelerator: Option<String>,
    /// Why that accelerator (e.g. why KVM was not usable).
    pub accelerator_note: Option<String>,
    pub image: Option<String>,
    /// Repetitions of each workload in this environment.
    pub repeat: u32,
    /// The workload arguments used here (they may be smaller for a VM, to fit the time).
    pub params: BTreeMap<String, String>,
    /// Time to a ready instance (create → running, with the workload copied in), seconds.
    pub ready_secs: Option<f64>,
    /// Set when the environment could not be set up; its rows then carry errors too.
    pub error: Option<String>,
}

impl DriverRun {
    /// The name with the accelerator, as printed beside VM figures: `qemu (TCG)`.
    pub fn label(&self) -> String {
        match &self.accelerator {
            Some(a) => format!("{} ({})", self.name, a.to_uppercase()),
            None => self.name.clone(),
        }
    }
}

/// One metric of one workload in one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Metric name: cpu, cpu-all, io-write, io-read, mmu, net, startup, ready.
    pub workload: String,
    pub driver: String,
    pub accelerator: Option<String>,
    pub unit: String,
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
    pub stats: Option<Stats>,
    /// Performance relative to native (1 = native); absent for native itself.
    pub relative: Option<f64>,
    /// Extra time for the same work vs native, percent.
    pub overhead_pct: Option<f64>,
    /// The workload's checksum (identical parameters give identical checksums anywhere).
    pub checksum: Option<String>,
    /// Whether it equals the native checksum for the same parameters.
    pub checksum_matches_native: Option<bool>,
    pub error: Option<String>,
}

/// The whole `vfarm bench overhead` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub started: String,
    pub finished: String,
    pub duration_secs: f64,
    pub machine: Machine,
    pub drivers: Vec<DriverRun>,
    pub results: Vec<Row>,
    /// Interpretation that belongs with the figures (TCG is emulation, reduced VM sizes…).
    pub notes: Vec<String>,
    /// Things that make the figures less trustworthy (a busy machine, failed environments).
    pub warnings: Vec<String>,
}

impl Report {
    /// Fill in statistics and the comparison with native for every row.
    pub fn finish(&mut self) {
        for r in &mut self.results {
            r.stats = Stats::of(&r.samples);
        }
        let natives: Vec<(String, f64)> = self
            .results
            .iter()
            .filter(|r| r.driver == "native")
            .filter_map(|r| Some((r.workload.clone(), r.stats.as_ref()?.median)))
            .collect();
        for r in &mut self.results {
            if r.driver == "native" {
                continue;
            }
            let native = natives.iter().find(|(w, _)| *w == r.workload).map(|x| x.1);
            let o = match (native, &r.stats) {
                (Some(n), Some(s)) => overhead(n, s.median, r.higher_is_better),
                _ => None,
            };
            r.relative = o.map(|o| o.relative);
            r.overhead_pct = o.map(|o| o.overhead_pct);
        }
    }

    /// Workload names in first-seen order.
    pub fn workloads(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.results {
            if !out.contains(&r.workload) {
                out.push(r.workload.clone());
            }
        }
        out
    }

    pub fn driver(&self, name: &str) -> Option<&DriverRun> {
        self.drivers.iter().find(|d| d.name == name)
    }

    /// Every checksum that was compared agrees with native.
    pub fn checksums_agree(&self) -> bool {
        self.results
            .iter()
            .all(|r| r.checksum_matches_native != Some(false))
    }

    /// The table for people: one line per workload and driver, then notes and warnings.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "vfarm bench overhead — {} — {} core(s), {}, {:.1} GiB, kernel {}",
            self.started,
            m.cores,
            if m.cpu_model.is_empty() {
                "unknown CPU"
            } else {
                &m.cpu_model
            },
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.kernel
        );
        let _ = writeln!(
            out,
            "load average {:.2} before, {:.2} after; {:.0} s in all",
            m.load_before[0], m.load_after[0], self.duration_secs
        );
        for d in &self.drivers {
            let params: Vec<String> = d.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "  {:<12} repeat {}{}{}{}",
                d.label(),
                d.repeat,
                d.ready_secs
                    .map(|s| format!(", ready in {}", human(s, "s")))
                    .unwrap_or_default(),
                if params.is_empty() {
                    String::new()
                } else {
                    format!(", {}", params.join(" "))
                },
                d.error
                    .as_deref()
                    .map(|e| format!(" — FAILED: {e}"))
                    .unwrap_or_default()
            );
        }
        out.push('\n');
        let header = [
            "workload",
            "driver",
            "median",
            "min",
            "max",
            "spread",
            "vs native",
            "checksum",
        ];
        let mut lines: Vec<[String; 8]> = Vec::new();
        for w in self.workloads() {
            for r in self.results.iter().filter(|r| r.workload == w) {
                let label = self
                    .driver(&r.driver)
                    .map(DriverRun::label)
                    .unwrap_or_else(|| r.driver.clone());
                let (med, min, max, spread) = match &r.stats {
                    Some(s) => (
                        human(s.median, &r.unit),
                        human(s.min, &r.unit),
                        human(s.max, &r.unit),
                        format!("±{:.1}%", s.spread_pct / 2.0),
                    ),
                    None => (
                        r.error
                            .as_deref()
                            .map_or_else(|| "no result".into(), |e| clip(e, 60)),
                        String::new(),
                        String::new(),
                        String::new(),
                    ),
                };
                let vs = match (r.driver.as_str(), r.overhead_pct, r.relative) {
                    ("native", _, _) => "baseline".into(),
                    (_, Some(o), Some(rel)) => vs_native(o, rel),
                    _ => "—".into(),
                };
                let ck = match r.checksum_matches_native {
                    Some(true) => "same".into(),
                    Some(false) => "DIFFERS".into(),
                    None => r.checksum.as_deref().map_or("—".into(), |c| {
                        if r.driver == "native" {
                            c.chars().take(8).collect()
                        } else {
                            "—".into()
                        }
                    }),
                };
                lines.push([w.clone(), label, med, min, max, spread, vs, ck]);
            }
        }
        let mut widths = header.map(|h| h.chars().count());
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let row = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
                let pad = w - c.chars().count();
                // Names left-aligned, figures right-aligned.
                if i < 2 || i == 7 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                s.push_str("  ");
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", row(&header.map(String::from)));
        for l in &lines {
            let _ = writeln!(out, "{}", row(l));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "note: {n}");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }

    /// A markdown table (for BENCHMARKS.md): workload, then one column per driver with the
    /// median, spread and overhead.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let drivers: Vec<&DriverRun> = self.drivers.iter().collect();
        let _ = write!(out, "| workload | unit |");
        for d in &drivers {
            let _ = write!(out, " {} |", d.label());
        }
        out.push('\n');
        let _ = write!(out, "|---|---|");
        for _ in &drivers {
            out.push_str("---|");
        }
        out.push('\n');
        for w in self.workloads() {
            let unit = self
                .results
                .iter()
                .find(|r| r.workload == w)
                .map(|r| r.unit.clone())
                .unwrap_or_default();
            let _ = write!(out, "| {w} | {unit} |");
            for d in &drivers {
                let cell = self
                    .results
                    .iter()
                    .find(|r| r.workload == w && r.driver == d.name)
                    .map(|r| {
                        // Rates carry their unit in the unit column; times read best scaled.
                        let u = if r.unit == "s" { "s" } else { "" };
                        (r, u)
                    })
                    .map(|(r, u)| match (&r.stats, r.overhead_pct, r.relative) {
                        (Some(s), Some(o), Some(rel)) => format!(
                            "{} ±{:.1}% ({})",
                            human(s.median, u),
                            s.spread_pct / 2.0,
                            if o >= 1000.0 {
                                vs_native(o, rel)
                            } else {
                                format!("{o:+.1}%")
                            }
                        ),
                        (Some(s), _, _) => {
                            format!("{} ±{:.1}%", human(s.median, u), s.spread_pct / 2.0)
                        }
                        (None, _, _) => r.error.as_deref().map_or("—".into(), |e| clip(e, 80)),
                    })
                    .unwrap_or_else(|| "—".into());
                let _ = write!(out, " {} |", cell.replace('|', "/"));
            }
            out.push('\n');
        }
        out
    }
}

impl Report {
    /// The whole BENCHMARKS.md section body: when, where, how to reproduce, the table, the
    /// notes and warnings.
    pub fn markdown_section(&self, command: &str) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Reproduce (as root): `{command}`. Measured {} on {} core(s) ({}), {:.0} GiB, \
             kernel {}; load average {:.2} before, {:.2} after; {:.0} s in all.\n",
            self.started,
            m.cores,
            if m.cpu_model.is_empty() {
                "unknown CPU"
            } else {
                &m.cpu_model
            },
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.kernel,
            m.load_before[0],
            m.load_after[0],
            self.duration_secs
        );
        let _ = writeln!(
            out,
            "Median ±half the range over the repeats, and in brackets the overhead vs native \
             (extra time for the same work)."
        );
        out.push('\n');
        out.push_str(&self.markdown());
        out.push('\n');
        for d in &self.drivers {
            let extra: Vec<String> = [
                d.ready_secs.map(|s| format!("ready in {}", human(s, "s"))),
                d.error.as_ref().map(|e| format!("FAILED: {e}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let _ = writeln!(
                out,
                "- {}: {} repeat(s){}",
                d.label(),
                d.repeat,
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("; {}", extra.join("; "))
                }
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "- note: {n}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "- warning: {w}");
        }
        out
    }
}

/// The comparison with native: percent, or for orders of magnitude (start-up against
/// spawning a process) the ratio of times, which reads better.
fn vs_native(overhead_pct: f64, relative: f64) -> String {
    if overhead_pct >= 1000.0 {
        format!("{:.0}× the time", 1.0 / relative)
    } else {
        format!("{overhead_pct:+.1}% ({relative:.3}×)")
    }
}

/// The first `n` characters of a (long) message, for a table cell.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

/// A figure with about four significant digits and SI prefixes for large rates.
pub fn human(v: f64, unit: &str) -> String {
    let sep = if unit.is_empty() { "" } else { " " };
    if !v.is_finite() {
        return "—".into();
    }
    let (scaled, prefix) = if unit == "s" {
        if v < 1.0 {
            return format!("{:.1} ms", v * 1000.0);
        }
        (v, "")
    } else if v.abs() >= 1e9 {
        (v / 1e9, "G")
    } else if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if scaled.abs() >= 100.0 {
        0
    } else if scaled.abs() >= 10.0 {
        1
    } else {
        2
    };
    if prefix.is_empty() {
        format!("{scaled:.digits$}{sep}{unit}")
    } else {
        format!("{scaled:.digits$} {prefix}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: &str, d: &str, samples: &[f64], higher: bool) -> Row {
        Row {
            workload: w.into(),
            driver: d.into(),
            unit: if higher {
                "events/s".into()
            } else {
                "s".into()
            },
            higher_is_better: higher,
            samples: samples.to_vec(),
            ..Default::default()
        }
    }

    fn sample() -> Report {
        let mut r = Report {
            started: "2026-11-22T02:00:00Z".into(),
            machine: Machine {
                cores: 2,
                ..Default::default()
            },
            drivers: vec![
                DriverRun {
                    name: "native".into(),
                    repeat: 3,
                    ..Default::default()
                },
                DriverRun {
                    name: "oci".into(),
                    repeat: 3,
                    ..Default::default()
                },
                DriverRun {
                    name: "qemu".into(),
                    accelerator: Some("tcg".into()),
                    repeat: 2,
                    ..Default::default()
                },
            ],
            results: vec![
                row("cpu", "native", &[100.0, 102.0, 98.0], true),
                row("cpu", "oci", &[99.0, 97.0, 101.0], true),
                row("cpu", "qemu", &[10.0, 12.0], true),
                row("startup", "native", &[0.001, 0.002, 0.001], false),
                row("startup", "oci", &[0.05, 0.06, 0.04], false),
            ],
            ..Default::default()
        };
        r.results.push(Row {
            error: Some("exec failed".into()),
            ..row("startup", "qemu", &[], false)
        });
        r.finish();
        r
    }

    #[test]
    fn finish_computes_stats_and_overheads_against_native() {
        let r = sample();
        let oci = &r.results[1];
        assert_eq!(oci.stats.as_ref().unwrap().median, 99.0);
        assert!((oci.relative.unwrap() - 0.99).abs() < 1e-12);
        assert!((oci.overhead_pct.unwrap() - (100.0 / 99.0 - 1.0) * 100.0).abs() < 1e-9);
        let q = &r.results[2];
        assert!((q.relative.unwrap() - 0.11).abs() < 1e-12);
        assert!(
            r.results[0].overhead_pct.is_none(),
            "native has no overhead"
        );
        let st = &r.results[4];
        assert!((st.relative.unwrap() - 0.02).abs() < 1e-12);
        assert!(r.results[5].stats.is_none() && r.results[5].relative.is_none());
    }

    #[test]
    fn table_shows_accelerator_errors_and_overheads() {
        let t = sample().table();
        assert!(t.contains("qemu (TCG)"), "{t}");
        assert!(t.contains("exec failed"), "{t}");
        assert!(t.contains("baseline"), "{t}");
        assert!(t.contains("+1.0%"), "{t}");
        // Each workload/driver pair is one line.
        assert_eq!(
            t.lines().filter(|l| l.starts_with("cpu ")).count(),
            3,
            "{t}"
        );
    }

    #[test]
    fn markdown_has_a_column_per_driver() {
        let md = sample().markdown();
        let first = md.lines().next().unwrap();
        assert_eq!(first, "| workload | unit | native | oci | qemu (TCG) |");
        assert!(md
            .lines()
            .any(|l| l.starts_with("| startup |") && l.contains("exec failed")));
    }

    #[test]
    fn markdown_section_names_the_command_and_warnings() {
        let mut r = sample();
        r.warnings.push("busy".into());
        let md = r.markdown_section("vfarm bench overhead --drivers native,oci,qemu");
        assert!(
            md.starts_with("Reproduce (as root): `vfarm bench overhead --drivers native,oci,qemu`")
        );
        assert!(md.contains("| workload | unit |"));
        assert!(md.contains("- qemu (TCG): 2 repeat(s)"), "{md}");
        assert!(md.contains("- warning: busy"));
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn checksum_disagreement_is_reported() {
        let mut r = sample();
        assert!(r.checksums_agree());
        r.results[1].checksum_matches_native = Some(false);
        assert!(!r.checksums_agree());
        assert!(r.table().contains("DIFFERS"));
    }

    #[test]
    fn quiet_machine_check() {
        let m = Machine {
            cores: 2,
            ..Default::default()
        };
        assert!(m.quiet_warning([0.5, 0.1, 0.1]).is_none());
        let w = m.quiet_warning([3.2, 2.0, 1.0]).unwrap();
        assert!(w.contains("3.20") && w.contains("2 core"), "{w}");
    }

    #[test]
    fn human_figures() {
        assert_eq!(human(1_234_567.0, "events/s"), "1.23 Mevents/s");
        assert_eq!(human(0.0584, "s"), "58.4 ms");
        assert_eq!(human(2.5, "s"), "2.50 s");
        assert_eq!(human(812.3, "MB/s"), "812 MB/s");
    }
}
