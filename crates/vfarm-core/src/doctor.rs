//! What `vfarm doctor` reports: per capability, whether it works on this host, measured, and
//! the one command that fixes it when it does not. The probing lives in the binary; these are
//! the plain records a node also sends in its heartbeat, so the control can place by them.

use serde::{Deserialize, Serialize};

/// One capability's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `oci`, `qemu`, `builds`, `slurm`, `database`.
    pub capability: String,
    pub ok: bool,
    /// What works (`runc 1.1.5`, `TCG (KVM refused)`) or why not, in one line.
    pub verdict: String,
    /// One line per thing checked, refusals of alternatives included.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The one command that makes it work, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The QEMU accelerator a host's VMs get.
pub const ACCEL_KVM: &str = "kvm";
pub const ACCEL_TCG: &str = "tcg";

/// Every capability of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// `kvm`, `tcg`, or none when QEMU cannot run at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// The database opens and at least one driver (oci or qemu) runs an instance.
    pub core_ok: bool,
    pub elapsed_ms: u64,
    /// Each CA of the service's client CA directory (`[trust] client_ca_dir` of serve.toml)
    /// and its CRL; empty when none is configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<CrlStatus>,
}

/// One CA of the client CA directory and its CRL, as `vfarm doctor` sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlStatus {
    /// The CA's subject, one-line form.
    pub ca: String,
    /// `current`, `missing` (no CRL issued by this CA in the directory) or `expired` (past
    /// its nextUpdate): the last two refuse the CA's users unless `crl_missing = "warn"`.
    pub status: String,
    /// RFC 3339 times from the CRL (the newest, when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    /// now − lastUpdate and nextUpdate − now (negative: expired), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<i64>,
}

pub const CRL_CURRENT: &str = "current";
pub const CRL_MISSING: &str = "missing";
pub const CRL_EXPIRED: &str = "expired";

impl Report {
    pub fn check(&self, capability: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.capability == capability)
    }

    /// What "the core works" means: the state store opens and one driver runs instances.
    pub fn core_works(checks: &[Check]) -> bool {
        let ok = |c: &str| checks.iter().any(|x| x.capability == c && x.ok);
        ok("database") && (ok("oci") || ok("qemu"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(capability: &str, ok: bool) -> Check {
        Check {
            capability: capability.into(),
            ok,
            verdict: String::new(),
            notes: vec![],
            fix: None,
        }
    }

    #[test]
    fn the_core_is_the_database_and_one_driver() {
        let mut c = vec![
            check("database", true),
            check("oci", false),
            check("qemu", true),
        ];
        assert!(Report::core_works(&c));
        c[2].ok = false;
        assert!(!Report::core_works(&c));
        c[1].ok = true;
        assert!(Report::core_works(&c));
        c[0].ok = false;
        assert!(!Report::core_works(&c));
    }

    #[test]
    fn an_old_report_without_optional_fields_still_reads() {
        let r: Report = serde_json::from_str(
            r#"{"checks":[{"capability":"oci","ok":true,"verdict":"runc"}],"core_ok":false,"elapsed_ms":3}"#,
        )
        .unwrap();
        assert_eq!(r.accelerator, None);
        assert!(r.check("oci").unwrap().notes.is_empty());
        assert!(r.check("qemu").is_none());
    }
}
