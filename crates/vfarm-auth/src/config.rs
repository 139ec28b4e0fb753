//! `<data>/serve.toml`: who is an admin, the hostname pool, quotas. Unknown keys are refused
//! by name; a missing file means no admins, an empty pool and no quotas.
//!
//! ```toml
//! admins = [
//!   # a certificate subject from the CA that issued it, only (an owner key, as whoami shows)
//!   { subject = "/C=XX/O=Example/CN=Site Admin", issuer = "/C=XX/O=Example/CN=Example CA" },
//!   # a bare name: a token's user, a login name, or a certificate subject from any CA the
//!   # client CA directory trusts for it (its namespace)
//!   "operator",
//! ]
//! [[hostnames]]
//! name = "node01.example.org"
//! address = "192.0.2.11"          # optional
//! default_expiry = "1w"            # instances created without --expiry
//! [quotas.default]                 # every owner; absent fields are unlimited
//! instances = 10
//! cpus = 8
//! memory = "16G"
//! disk = "200G"
//! [quotas.owners."/C=XX/O=Example/CN=Alice"]
//! instances = 20                   # fields not given fall back to quotas.default
//! # keyed by a user as whoami shows it; a bare subject applies under any trusted issuer,
//! # "<subject> issuer=<issuer>" under that issuer only (and wins over the bare subject)
//! [trust]                          # the client CA directory (IGTF layout)
//! client_ca_dir = "/etc/grid-security/certificates"  # --client-ca-dir wins; vfarm doctor
//!                                  # reports each CA's CRL age from here
//! crl_missing = "refuse"           # or "warn": a CA in a chain without a current CRL
//! require_namespaces = true        # default: on when any CA there has namespace files
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{AuthError, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    admins: Vec<RawAdmin>,
    root_is_admin: Option<bool>,
    #[serde(default)]
    hostnames: Vec<RawHost>,
    #[serde(default)]
    quotas: RawQuotas,
    default_expiry: Option<String>,
    #[serde(default)]
    placement: RawPlacement,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    networks: Vec<vfarm_net::NetworkConfig>,
    default_network: Option<String>,
    hostname_quarantine: Option<String>,
    grid_subnets: Option<String>,
}

/// `"name"` or `{ subject = "...", issuer = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAdmin {
    Name(String),
    Cert(RawCertAdmin),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertAdmin {
    subject: String,
    issuer: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    client_ca_dir: Option<PathBuf>,
    crl_missing: Option<vfarm_imagelist::trust::CrlMissing>,
    require_namespaces: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    policy: Option<String>,
    cpu_ratio: Option<f64>,
    memory_ratio: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    default: Option<RawQuota>,
    default_memory: Option<String>,
    default_disk: Option<String>,
    #[serde(default)]
    owners: BTreeMap<String, RawQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    instances: Option<u64>,
    cpus: Option<f64>,
    memory: Option<String>,
    disk: Option<String>,
}

/// One owner's limits; `None` is unlimited. CPUs in thousandths, sizes in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    pub instances: Option<u64>,
    pub cpus_milli: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
}

impl Quota {
    fn or(self, fallback: Quota) -> Quota {
        Quota {
            instances: self.instances.or(fallback.instances),
            cpus_milli: self.cpus_milli.or(fallback.cpus_milli),
            memory_mib: self.memory_mib.or(fallback.memory_mib),
            disk_mib: self.disk_mib.or(fallback.disk_mib),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaConfig {
    pub default: Quota,
    pub owners: BTreeMap<String, Quota>,
    /// Memory limit (bytes) of an instance that asks for none (`[quotas] default_memory`);
    /// it counts against the memory quota. `None`: the driver's built-in default.
    pub default_memory: Option<u64>,
    /// Disk counted for an oci instance that asks for none (`[quotas] default_disk`).
    pub default_disk: Option<u64>,
}

impl QuotaConfig {
    /// The limits for `owner`: its own entry, field by field over the default. A certificate
    /// user's owner key (`<subject> issuer=<issuer>`) without an entry of its own takes the
    /// entry of its bare subject, if any.
    pub fn for_owner(&self, owner: &str) -> Quota {
        self.owners
            .get(owner)
            .or_else(|| {
                crate::identity::split_owner_key(owner).and_then(|(s, _)| self.owners.get(s))
            })
            .map(|q| q.or(self.default))
            .unwrap_or(self.default)
    }
}

/// A name of the hostname pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolEntry {
    pub name: String,
    pub address: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub admins: Vec<String>,
    /// `root_is_admin = false` takes admin rights from local root (the unix socket's uid 0
    /// and tokens of user `root`); unset means true.
    pub root_is_admin: Option<bool>,
    pub hostnames: Vec<PoolEntry>,
    pub quotas: QuotaConfig,
    /// Expiry of instances created without one (`default_expiry = "1w"`), in seconds.
    pub default_expiry_secs: Option<u64>,
    /// Several hosts: `[placement] policy = "spread" | "pack"`, and how far a node's CPUs and
    /// memory may be promised (`cpu_ratio = 4.0` over-commits CPUs fourfold).
    pub placement: vfarm_core::placement::Policy,
    pub ratios: vfarm_core::placement::Ratios,
    /// `[trust] client_ca_dir` (relative: to the config file's directory); `--client-ca-dir`
    /// of `vfarm serve` wins.
    pub client_ca_dir: Option<PathBuf>,
    /// `[trust] crl_missing`: refuse (default) or warn when a chain's CA has no current CRL.
    pub crl_missing: vfarm_imagelist::trust::CrlMissing,
    /// `[trust] require_namespaces`; `None` = on when the directory carries namespace files.
    pub require_namespaces: Option<bool>,
    /// `[[networks]]`: the site's instance networks (checked: names unique, fields valid).
    pub networks: Vec<vfarm_net::NetworkConfig>,
    /// The network instances created through the API join unless they ask for another or
    /// `none`: `default_network`, else the first of `networks`.
    pub default_network: Option<String>,
    /// How long a released pool hostname stays out of the pool (`hostname_quarantine =
    /// "10m"`, the default): the site's DNS caches still name the old instance.
    pub hostname_quarantine_secs: u64,
    /// `grid_subnets`: where grids' own networks take their /24s (a /24 or wider), skipping
    /// the configured networks' subnets and those up on the host.
    pub grid_subnets: vfarm_net::Subnet,
}

/// The default of `grid_subnets`.
pub const GRID_SUBNETS: &str = "10.250.0.0/16";

/// Whether `name` is of the form grids' own networks take (`g-<number>`), which
/// `[[networks]]` may not use.
pub fn is_grid_network(name: &str) -> bool {
    name.strip_prefix("g-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The default of `hostname_quarantine`.
pub const HOSTNAME_QUARANTINE_SECS: u64 = 600;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            admins: Vec::new(),
            hostnames: Vec::new(),
            quotas: QuotaConfig::default(),
            default_expiry_secs: None,
            placement: Default::default(),
            ratios: Default::default(),
            client_ca_dir: None,
            crl_missing: Default::default(),
            require_namespaces: None,
            root_is_admin: None,
            networks: Vec::new(),
            default_network: None,
            hostname_quarantine_secs: HOSTNAME_QUARANTINE_SECS,
            grid_subnets: vfarm_net::Subnet::parse("grid_subnets", GRID_SUBNETS)
                .expect("a valid default"),
        }
    }
}

impl ServeConfig {
    /// The default location in a data directory.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        data_dir.join("serve.toml")
    }

    /// Load `path`; a missing file is the empty configuration.
    pub fn load(path: &Path) -> Result<ServeConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ServeConfig::default()),
            Err(e) => Err(AuthError::io("read", path, e)),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig> {
        let err = |message: String| AuthError::Config {
            path: path.to_path_buf(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut seen = HashSet::new();
        let mut hostnames = Vec::new();
        for (i, h) in raw.hostnames.into_iter().enumerate() {
            crate::ca::check_hostname(&h.name)
                .map_err(|e| err(format!("hostnames[{i}].name: {e}")))?;
            let name = h.name.trim_end_matches('.').to_ascii_lowercase();
            if !seen.insert(name.clone()) {
                return Err(err(format!("hostnames[{i}].name `{name}` is listed twice")));
            }
            let address = match h.address {
                Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                    err(format!("hostnames[{i}].address `{a}` is not an IP address"))
                })?),
                None => None,
            };
            hostnames.push(PoolEntry { name, address });
        }
        let mut admins = Vec::new();
        for (i, a) in raw.admins.into_iter().enumerate() {
            match a {
                RawAdmin::Name(a) if a.trim().is_empty() => {
                    return Err(err(format!("admins[{i}] is empty")));
                }
                RawAdmin::Name(a) => admins.push(a),
                RawAdmin::Cert(c) => {
                    for (field, dn) in [("subject", &c.subject), ("issuer", &c.issuer)] {
                        if !dn.starts_with('/') {
                            return Err(err(format!(
                                "admins[{i}].{field} `{dn}` is not a one-line DN (/C=../CN=..)"
                            )));
                        }
                    }
                    admins.push(crate::identity::owner_key(&c.subject, &c.issuer));
                }
            }
        }
        let quota = |key: &str, q: RawQuota| -> Result<Quota> {
            let size = |field: &str, v: Option<String>| -> Result<Option<u64>> {
                v.map(|s| {
                    vfarm_core::parse_size(&s)
                        .map(|b| b.div_ceil(1 << 20))
                        .map_err(|why| err(format!("{key}.{field} `{s}`: {why}")))
                })
                .transpose()
            };
            let cpus_milli = match q.cpus {
                Some(c) if !(c.is_finite() && c >= 0.0) => {
                    return Err(err(format!("{key}.cpus `{c}` must be a number ≥ 0")))
                }
                Some(c) => Some((c * 1000.0).round() as u64),
                None => None,
            };
            Ok(Quota {
                instances: q.instances,
                cpus_milli,
                memory_mib: size("memory", q.memory)?,
                disk_mib: size("disk", q.disk)?,
            })
        };
        let default = match raw.quotas.default {
            Some(q) => quota("quotas.default", q)?,
            None => Quota::default(),
        };
        let mut owners = BTreeMap::new();
        for (owner, q) in raw.quotas.owners {
            let key = format!("quotas.owners.\"{owner}\"");
            owners.insert(owner, quota(&key, q)?);
        }
        let bytes = |field: &str, v: &Option<String>| -> Result<Option<u64>> {
            v.as_deref()
                .map(|s| {
                    vfarm_core::parse_size(s)
                        .map_err(|why| err(format!("quotas.{field} `{s}`: {why}")))
                })
                .transpose()
        };
        let default_memory = bytes("default_memory", &raw.quotas.default_memory)?;
        if default_memory.is_some_and(|m| m < vfarm_core::instance::MIN_MEMORY) {
            return Err(err("quotas.default_memory must be at least 4M".into()));
        }
        let default_disk = bytes("default_disk", &raw.quotas.default_disk)?;
        let default_expiry_secs = raw
            .default_expiry
            .map(|s| {
                vfarm_core::instance::parse_duration("default_expiry", &s)
                    .map_err(|e| err(format!("default_expiry `{s}`: {e}")))
            })
            .transpose()?;
        let placement = match &raw.placement.policy {
            Some(p) => p
                .parse()
                .map_err(|e| err(format!("placement.policy: {e}")))?,
            None => Default::default(),
        };
        let ratio = |key: &str, v: Option<f64>| -> Result<f64> {
            match v {
                None => Ok(1.0),
                Some(r) if r.is_finite() && r > 0.0 => Ok(r),
                Some(r) => Err(err(format!("placement.{key} `{r}` must be a number > 0"))),
            }
        };
        let ratios = vfarm_core::placement::Ratios {
            cpu: ratio("cpu_ratio", raw.placement.cpu_ratio)?,
            memory: ratio("memory_ratio", raw.placement.memory_ratio)?,
        };
        let client_ca_dir = raw.trust.client_ca_dir.map(|d| {
            path.parent()
                .filter(|_| d.is_relative())
                .map(|p| p.join(&d))
                .unwrap_or(d)
        });
        let mut names = HashSet::new();
        for (i, n) in raw.networks.iter().enumerate() {
            // Where the state lives does not matter for checking.
            if let Err(e) = vfarm_net::Network::new(n, Path::new("/")) {
                let msg = match e {
                    vfarm_net::NetError::Invalid { field, reason } => {
                        format!(
                            "{}: {reason}",
                            field.replacen("networks", &format!("networks[{i}]"), 1)
                        )
                    }
                    e => format!("networks[{i}]: {e}"),
                };
                return Err(err(msg));
            }
            if is_grid_network(&n.name) {
                return Err(err(format!(
                    "networks[{i}].name `{}`: names g-<number> are grids' own networks'",
                    n.name
                )));
            }
            if !names.insert(n.name.clone()) {
                return Err(err(format!(
                    "networks[{i}].name `{}` is defined twice",
                    n.name
                )));
            }
        }
        let default_network = match raw.default_network {
            Some(d) if d == "none" || names.contains(&d) => Some(d),
            Some(d) => {
                return Err(err(format!(
                    "default_network `{d}` is not one of networks ({}) nor `none`",
                    raw.networks
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            None => raw.networks.first().map(|n| n.name.clone()),
        };
        let hostname_quarantine_secs = match raw.hostname_quarantine {
            Some(s) if s == "0" => 0,
            Some(s) => vfarm_core::instance::parse_duration("hostname_quarantine", &s)
                .map_err(|e| err(format!("hostname_quarantine `{s}`: {e}")))?,
            None => HOSTNAME_QUARANTINE_SECS,
        };
        let grid_subnets = raw.grid_subnets.as_deref().unwrap_or(GRID_SUBNETS);
        let grid_subnets = vfarm_net::Subnet::parse("grid_subnets", grid_subnets)
            .map_err(|e| err(e.to_string()))?;
        if grid_subnets.prefix > 24 {
            return Err(err(format!(
                "grid_subnets `{grid_subnets}`: a /24 or wider (grids take a /24 each)"
            )));
        }
        Ok(ServeConfig {
            grid_subnets,
            networks: raw.networks,
            default_network,
            hostname_quarantine_secs,
            client_ca_dir,
            crl_missing: raw.trust.crl_missing.unwrap_or_default(),
            require_namespaces: raw.trust.require_namespaces,
            placement,
            ratios,
            default_expiry_secs,
            admins,
            root_is_admin: raw.root_is_admin,
            hostnames,
            quotas: QuotaConfig {
                default,
                owners,
                default_memory,
                default_disk,
            },
        })
    }

    /// Whether `user` (an identity's user) is listed; an owner key also by its bare subject.
    pub fn is_admin(&self, user: &str) -> bool {
        let subject = crate::identity::split_owner_key(user).map(|(s, _)| s);
        self.admins
            .iter()
            .any(|a| a == user || Some(a.as_str()) == subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ServeConfig> {
        ServeConfig::parse(t, Path::new("serve.toml"))
    }

    #[test]
    fn default_memory_and_disk() {
        let c = parse("[quotas]\ndefault_memory = \"1G\"\ndefault_disk = \"10G\"\n").unwrap();
        assert_eq!(
            (c.quotas.default_memory, c.quotas.default_disk),
            (Some(1 << 30), Some(10 << 30))
        );
        assert_eq!(parse("").unwrap().quotas.default_memory, None);
        for bad in [
            "default_memory = \"2M\"",
            "default_memory = \"lots\"",
            "default_disk = \"x\"",
        ] {
            let e = parse(&format!("[quotas]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("quotas.default_"), "{bad}: {e}");
        }
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
admins = ["/C=XX/O=T/CN=Admin"]
[[hostnames]]
name = "N1.example.org"
address = "192.0.2.1"
[[hostnames]]
name = "n2.example.org"
[quotas.default]
instances = 2
cpus = 1.5
memory = "1G"
[quotas.owners."/C=XX/O=T/CN=Alice"]
instances = 5
"#,
        )
        .unwrap();
        assert!(c.is_admin("/C=XX/O=T/CN=Admin"));
        assert_eq!(c.hostnames[0].name, "n1.example.org");
        assert_eq!(c.hostnames[1].address, None);
        let a = c.quotas.for_owner("/C=XX/O=T/CN=Alice");
        assert_eq!(
            (a.instances, a.cpus_milli, a.memory_mib, a.disk_mib),
            (Some(5), Some(1500), Some(1024), None)
        );
        assert_eq!(c.quotas.for_owner("bob").instances, Some(2));
        assert_eq!(parse("").unwrap(), ServeConfig::default());
    }

    #[test]
    fn admins_and_quotas_bound_to_an_issuer() {
        let c = parse(
            r#"
admins = [
  "/C=XX/O=A/CN=Any Issuer",
  { subject = "/C=XX/O=A/CN=Admin", issuer = "/C=XX/O=A/CN=CA A" },
]
[quotas.owners."/C=XX/O=A/CN=Alice"]
instances = 3
[quotas.owners."/C=XX/O=A/CN=Alice issuer=/C=XX/O=A/CN=CA A"]
instances = 7
"#,
        )
        .unwrap();
        let a = "/C=XX/O=A/CN=CA A";
        let b = "/C=XX/O=B/CN=CA B";
        let key = crate::identity::owner_key;
        assert!(c.is_admin(&key("/C=XX/O=A/CN=Admin", a)));
        assert!(!c.is_admin(&key("/C=XX/O=A/CN=Admin", b)));
        assert!(!c.is_admin("/C=XX/O=A/CN=Admin"));
        // A bare subject: any issuer (the trust store decides which may issue it).
        assert!(c.is_admin(&key("/C=XX/O=A/CN=Any Issuer", a)));
        assert!(c.is_admin(&key("/C=XX/O=A/CN=Any Issuer", b)));
        let q = |o: &str| c.quotas.for_owner(o).instances;
        assert_eq!(q(&key("/C=XX/O=A/CN=Alice", a)), Some(7));
        assert_eq!(q(&key("/C=XX/O=A/CN=Alice", b)), Some(3));
        assert_eq!(q("/C=XX/O=A/CN=Alice"), Some(3));
        for (t, want) in [
            (r#"admins = [{ subject = "/CN=x" }]"#, "admins"),
            (
                r#"admins = [{ subject = "/CN=x", issuer = "CA" }]"#,
                "admins[0].issuer",
            ),
            (r#"admins = [""]"#, "admins[0] is empty"),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (t, want) in [
            ("colour = 1", "colour"),
            ("[[hostnames]]\nname = \"a_b\"", "hostnames[0].name"),
            (
                "[[hostnames]]\nname = \"a\"\n[[hostnames]]\nname = \"A\"",
                "listed twice",
            ),
            (
                "[[hostnames]]\nname = \"a\"\naddress = \"x\"",
                "hostnames[0].address",
            ),
            ("[quotas.default]\nmemory = \"4X\"", "quotas.default.memory"),
            ("[quotas.default]\ncpus = -1.0", "quotas.default.cpus"),
            ("[quotas.default]\ngpus = 1", "gpus"),
        ] {
            let e = parse(t).unwrap_err();
            assert_eq!(e.code().as_str(), "invalid_config");
            assert!(e.to_string().contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn networks_are_checked_by_field() {
        let c = parse(
            r#"
default_network = "lab"
hostname_quarantine = "90s"
[[networks]]
name = "lan"
kind = "bridged"
subnet = "192.0.2.0/24"
bridge = "br0"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]
[[networks]]
name = "lab"
subnet = "10.77.0.0/24"
"#,
        )
        .unwrap();
        assert_eq!(c.networks.len(), 2);
        assert_eq!(c.default_network.as_deref(), Some("lab"));
        assert_eq!(c.hostname_quarantine_secs, 90);
        let c = parse("[[networks]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\n").unwrap();
        assert_eq!(c.default_network.as_deref(), Some("a"));
        assert_eq!(c.hostname_quarantine_secs, HOSTNAME_QUARANTINE_SECS);
        assert_eq!(parse("").unwrap().default_network, None);
        for (text, want) in [
            ("[[networks]]\nname = \"a\"\nsubnet = \"10.1.0.1/24\"", "networks[0].subnet"),
            (
                "[[networks]]\nname = \"a\"\nkind = \"bridged\"\nsubnet = \"10.1.0.0/24\"",
                "networks[0].bridge",
            ),
            (
                "[[networks]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\n[[networks]]\nname = \"a\"\nsubnet = \"10.2.0.0/24\"",
                "networks[1].name `a` is defined twice",
            ),
            (
                "default_network = \"b\"\n[[networks]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"",
                "default_network `b` is not one of networks (a)",
            ),
            ("hostname_quarantine = \"soon\"", "hostname_quarantine"),
            ("grid_subnets = \"10.250.0.0/25\"", "grid_subnets `10.250.0.0/25`"),
            ("grid_subnets = \"10.250.0.1/16\"", "grid_subnets"),
            (
                "[[networks]]\nname = \"g-1\"\nsubnet = \"10.1.0.0/24\"",
                "networks[0].name `g-1`",
            ),
            ("[[networks]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\nmtu = 9000", "unknown field `mtu`"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
