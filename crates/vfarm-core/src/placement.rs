//! Placement: which host takes a new instance. Pure: the store hands in every host's
//! capacity and what is already placed there (inside the transaction that records the
//! choice, so two concurrent creates cannot both take the last share), and this module
//! decides.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How hosts are filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The host with the most free CPU share (then memory) first: load spread evenly.
    #[default]
    Spread,
    /// The fullest host that still fits first: whole hosts stay free (for draining, big VMs).
    Pack,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            _ => Err(format!("unknown placement policy `{s}` (spread or pack)")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Spread => "spread",
            Policy::Pack => "pack",
        })
    }
}

/// How far a host's reported capacity may be promised. 1.0 never promises more than there
/// is; batch sites often over-commit CPUs (idle worker nodes) but rarely memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Ratios {
    fn default() -> Ratios {
        Ratios {
            cpu: 1.0,
            memory: 1.0,
        }
    }
}

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    /// Up (heartbeat recent) and not drained.
    pub schedulable: bool,
    /// Why not, for the refusal message ("down", "drained").
    pub unschedulable_reason: Option<String>,
    /// Drivers it runs, with capabilities: `oci`, `qemu`, `qemu:kvm`, `qemu:snapshots`, …
    pub features: Vec<String>,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    /// Already placed there.
    pub used_cpus_milli: u64,
    pub used_memory_mib: u64,
    /// The QEMU accelerator its VMs get (`kvm`, `tcg`) as its node measured it; `None`: not
    /// reported (a node older than the verdicts, or no QEMU).
    pub accelerator: Option<String>,
}

/// The chosen host and why, for the instance's record and the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub host: String,
    pub reason: String,
}

/// What the new instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cpus_milli: u64,
    pub memory_mib: u64,
    /// Every one must be in the host's `features`.
    pub features: Vec<String>,
    /// `--host`: only this one.
    pub pinned: Option<String>,
}

/// No host can take the instance: one line per host saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no host can take it: {}", if reasons.is_empty() { "no host has joined (vfarm host add NAME)".to_string() } else { reasons.join("; ") })]
pub struct Refusal {
    pub reasons: Vec<String>,
    /// `--host` named a host that does not exist.
    pub unknown_host: Option<String>,
}

/// The host for `req` among `hosts`, by `policy`, without promising more than `ratios` of any
/// host's capacity.
pub fn choose(
    hosts: &[Candidate],
    req: &Request,
    policy: Policy,
    ratios: Ratios,
) -> Result<String, Refusal> {
    place(hosts, req, policy, ratios).map(|p| p.host)
}

/// As [`choose`], with the reason. A qemu instance goes to a host whose accelerator is KVM
/// when one fits: TCG emulates every instruction, an order of magnitude slower.
pub fn place(
    hosts: &[Candidate],
    req: &Request,
    policy: Policy,
    ratios: Ratios,
) -> Result<Placement, Refusal> {
    if let Some(p) = &req.pinned {
        if !hosts.iter().any(|h| &h.name == p) {
            return Err(Refusal {
                reasons: vec![format!("{p}: no such host")],
                unknown_host: Some(p.clone()),
            });
        }
    }
    let mut reasons = Vec::new();
    // (free cpu share after placing, free memory after placing, name)
    let mut fits: Vec<(f64, f64, &str)> = Vec::new();
    let mut kvm: Vec<&str> = Vec::new();
    for h in hosts {
        if req.pinned.as_ref().is_some_and(|p| p != &h.name) {
            continue;
        }
        if !h.schedulable {
            reasons.push(format!(
                "{}: {}",
                h.name,
                h.unschedulable_reason
                    .as_deref()
                    .unwrap_or("not schedulable")
            ));
            continue;
        }
        if let Some(f) = req.features.iter().find(|f| !h.features.contains(f)) {
            reasons.push(format!("{}: has no {f}", h.name));
            continue;
        }
        let cpu_cap = h.cpus_milli as f64 * ratios.cpu;
        let mem_cap = h.memory_mib as f64 * ratios.memory;
        let cpu_free = cpu_cap - (h.used_cpus_milli + req.cpus_milli) as f64;
        let mem_free = mem_cap - (h.used_memory_mib + req.memory_mib) as f64;
        if cpu_free < 0.0 {
            reasons.push(format!(
                "{}: {} of {} CPUs promised, {} more asked",
                h.name,
                milli(h.used_cpus_milli),
                milli(cpu_cap as u64),
                milli(req.cpus_milli)
            ));
            continue;
        }
        if mem_free < 0.0 {
            reasons.push(format!(
                "{}: {} of {} MiB memory promised, {} more asked",
                h.name, h.used_memory_mib, mem_cap as u64, req.memory_mib
            ));
            continue;
        }
        // Compare hosts of different sizes by the share left, not by absolute amounts.
        let cpu_share = if cpu_cap > 0.0 {
            cpu_free / cpu_cap
        } else {
            0.0
        };
        let mem_share = if mem_cap > 0.0 {
            mem_free / mem_cap
        } else {
            0.0
        };
        fits.push((cpu_share, mem_share, &h.name));
        if h.accelerator.as_deref() == Some(crate::doctor::ACCEL_KVM) {
            kvm.push(&h.name);
        }
    }
    let wants_vm = req.features.iter().any(|f| f == "qemu");
    let mut why_kvm = None;
    if wants_vm && !kvm.is_empty() && kvm.len() < fits.len() {
        let others: Vec<&str> = fits
            .iter()
            .map(|f| f.2)
            .filter(|n| !kvm.contains(n))
            .collect();
        why_kvm = Some(format!(
            "KVM works there ({} would emulate with TCG)",
            others.join(", ")
        ));
        fits.retain(|f| kvm.contains(&f.2));
    }
    let by_free = |a: &(f64, f64, &str), b: &(f64, f64, &str)| {
        a.0.total_cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            // Ties: the name decides, so placement is repeatable.
            .then_with(|| b.2.cmp(a.2))
    };
    let best = match policy {
        Policy::Spread => fits.iter().max_by(|a, b| by_free(a, b)),
        Policy::Pack => fits.iter().min_by(|a, b| by_free(a, b)),
    };
    let Some(best) = best else {
        return Err(Refusal {
            reasons,
            unknown_host: None,
        });
    };
    let mut reason = if req.pinned.is_some() {
        "pinned with --host".to_string()
    } else {
        format!(
            "{policy}: {:.0}% of its CPUs free after this one",
            best.0 * 100.0
        )
    };
    if let Some(k) = why_kvm {
        reason = format!("{k}; {reason}");
    }
    Ok(Placement {
        host: best.2.to_string(),
        reason,
    })
}

fn milli(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{:.2}", m as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, cpus: u64, used: u64) -> Candidate {
        Candidate {
            name: name.into(),
            schedulable: true,
            unschedulable_reason: None,
            features: vec!["oci".into(), "qemu".into()],
            cpus_milli: cpus * 1000,
            memory_mib: 4096,
            used_cpus_milli: used * 1000,
            used_memory_mib: 0,
            accelerator: None,
        }
    }

    fn req(cpus: u64) -> Request {
        Request {
            cpus_milli: cpus * 1000,
            memory_mib: 256,
            features: vec!["oci".into()],
            pinned: None,
        }
    }

    #[test]
    fn spread_takes_the_emptiest_and_pack_the_fullest_that_fits() {
        let hosts = [host("a", 4, 3), host("b", 4, 1), host("c", 4, 2)];
        let r = Ratios::default();
        assert_eq!(choose(&hosts, &req(1), Policy::Spread, r).unwrap(), "b");
        assert_eq!(choose(&hosts, &req(1), Policy::Pack, r).unwrap(), "a");
        // a is full for 2 CPUs: pack takes the next fullest.
        assert_eq!(choose(&hosts, &req(2), Policy::Pack, r).unwrap(), "c");
    }

    #[test]
    fn spread_fills_evenly_over_many_placements() {
        let mut hosts = vec![host("a", 8, 0), host("b", 8, 0), host("c", 8, 0)];
        for _ in 0..12 {
            let name = choose(&hosts, &req(1), Policy::Spread, Ratios::default()).unwrap();
            hosts
                .iter_mut()
                .find(|h| h.name == name)
                .unwrap()
                .used_cpus_milli += 1000;
        }
        let used: Vec<u64> = hosts.iter().map(|h| h.used_cpus_milli / 1000).collect();
        assert_eq!(used, vec![4, 4, 4]);
    }

    #[test]
    fn never_promises_beyond_the_ratio() {
        let hosts = [host("a", 2, 2)];
        let e = choose(&hosts, &req(1), Policy::Spread, Ratios::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no host can take it: a: 2 of 2 CPUs promised, 1 more asked"
        );
        let over = Ratios {
            cpu: 2.0,
            memory: 1.0,
        };
        assert_eq!(choose(&hosts, &req(1), Policy::Spread, over).unwrap(), "a");
        let full = [host("a", 2, 4)];
        assert!(choose(&full, &req(1), Policy::Spread, over).is_err());
    }

    #[test]
    fn features_down_hosts_and_pins() {
        let mut down = host("a", 4, 0);
        down.schedulable = false;
        down.unschedulable_reason = Some("down".into());
        let mut oci_only = host("b", 4, 0);
        oci_only.features = vec!["oci".into()];
        let hosts = [down, oci_only, host("c", 4, 3)];
        let mut kvm = req(1);
        kvm.features = vec!["qemu".into()];
        assert_eq!(
            choose(&hosts, &kvm, Policy::Spread, Ratios::default()).unwrap(),
            "c"
        );
        kvm.features = vec!["qemu:kvm".into()];
        let e = choose(&hosts, &kvm, Policy::Spread, Ratios::default()).unwrap_err();
        assert_eq!(
            e.reasons,
            vec!["a: down", "b: has no qemu:kvm", "c: has no qemu:kvm"]
        );
        let mut pin = req(1);
        pin.pinned = Some("c".into());
        assert_eq!(
            choose(&hosts, &pin, Policy::Spread, Ratios::default()).unwrap(),
            "c"
        );
        pin.pinned = Some("zz".into());
        let e = choose(&hosts, &pin, Policy::Spread, Ratios::default()).unwrap_err();
        assert_eq!(e.unknown_host.as_deref(), Some("zz"));
        pin.pinned = Some("a".into());
        let e = choose(&hosts, &pin, Policy::Spread, Ratios::default()).unwrap_err();
        assert_eq!(e.to_string(), "no host can take it: a: down");
    }

    #[test]
    fn a_vm_prefers_a_kvm_host_and_says_why() {
        let mut kvm = host("k", 4, 3);
        kvm.accelerator = Some("kvm".into());
        let mut tcg = host("t", 4, 0);
        tcg.accelerator = Some("tcg".into());
        let hosts = [tcg.clone(), kvm.clone()];
        let mut vm = req(1);
        vm.features = vec!["qemu".into()];
        // Spread alone would take the emptier TCG host.
        let p = place(&hosts, &vm, Policy::Spread, Ratios::default()).unwrap();
        assert_eq!(p.host, "k");
        assert_eq!(
            p.reason,
            "KVM works there (t would emulate with TCG); spread: 0% of its CPUs free after this one"
        );
        // Containers do not care about the accelerator.
        let p = place(&hosts, &req(1), Policy::Spread, Ratios::default()).unwrap();
        assert_eq!(p.host, "t");
        assert!(!p.reason.contains("KVM"), "{}", p.reason);
        // A full KVM host: the VM still runs, under TCG, and the reason does not claim KVM.
        let full = [tcg, host_with_accel("k", 4, 4, "kvm")];
        let p = place(&full, &vm, Policy::Spread, Ratios::default()).unwrap();
        assert_eq!(p.host, "t");
        assert!(!p.reason.contains("KVM"), "{}", p.reason);
    }

    fn host_with_accel(name: &str, cpus: u64, used: u64, accel: &str) -> Candidate {
        let mut h = host(name, cpus, used);
        h.accelerator = Some(accel.into());
        h
    }

    #[test]
    fn no_hosts_says_how_to_add_one() {
        let e = choose(&[], &req(1), Policy::Spread, Ratios::default()).unwrap_err();
        assert!(e.to_string().contains("vfarm host add"), "{e}");
    }
}
