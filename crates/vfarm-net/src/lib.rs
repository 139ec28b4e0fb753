//! Instance networks (issue 18, first part): what a `nat` network is, and the host work that
//! makes one real — a bridge of vfarm's own with the subnet's gateway address, masquerading
//! and isolation rules in an nftables table of vfarm's own, a dnsmasq that answers for the
//! instances' names on that bridge only, and a veth pair into each attached network namespace
//! with its leased address.
//!
//! Everything vfarm creates is named so (`vfbr-<net>`, `vfh-<key>`, table `ip vfarm_<net>`),
//! and `down`/`detach` remove exactly that; the host's own interfaces and rules are never
//! touched. The real tools of the field do the work: iproute2 (`ip`), `nft`, `dnsmasq`.
//!
//! # Layout (under the state dir given to [`Network::new`])
//!
//! ```text
//! <name>/leases.json      key → address (under leases.lock)
//! <name>/hosts            the names dnsmasq answers for (addn-hosts; reloaded on SIGHUP)
//! <name>/dnsmasq.pid
//! ip_forward.prev         the host's ip_forward before vfarm set it (restored by the last down)
//! ```

mod addr;
mod host;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use addr::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad configuration or request: names the field.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A tool is missing or refused: names the tool and what to install.
    #[error("{tool} failed: {detail}")]
    Host { tool: &'static str, detail: String },
    #[error("network {network}: no free address left in {subnet}")]
    Exhausted { network: String, subnet: String },
    #[error("network {network}: {what}: {source}")]
    Io {
        network: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// A network as the admin defines it (`[[networks]]` in serve.toml). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// a-z 0-9 -, at most 10 characters (it names the bridge: `vfbr-<name>`).
    pub name: String,
    /// The subnet vfarm hands addresses out of; its first address is the gateway (the host).
    pub subnet: String,
    /// Refuse forwarding between this network and vfarm's other networks.
    #[serde(default = "yes")]
    pub isolated: bool,
    /// Masquerade the instances' outbound traffic (egress to the host's networks).
    #[serde(default = "yes")]
    pub nat: bool,
}

fn yes() -> bool {
    true
}

/// A validated network and where its state lives.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub subnet: Subnet,
    pub isolated: bool,
    pub nat: bool,
    dir: PathBuf,
    state_dir: PathBuf,
}

/// What an attached namespace got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The resolver for the instance: dnsmasq on the gateway address.
    pub nameserver: Ipv4Addr,
    /// The host end of the veth pair.
    pub host_ifname: String,
}

impl Network {
    /// Check `c` and place its state below `state_dir`.
    pub fn new(c: &NetworkConfig, state_dir: &Path) -> Result<Network> {
        let ok = !c.name.is_empty()
            && c.name.len() <= 10
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.name.starts_with('-');
        if !ok {
            return Err(NetError::Invalid {
                field: "networks.name",
                reason: format!(
                    "`{}` must be 1-10 characters of a-z 0-9 -, not starting with -",
                    c.name
                ),
            });
        }
        Ok(Network {
            name: c.name.clone(),
            subnet: Subnet::parse("networks.subnet", &c.subnet)?,
            isolated: c.isolated,
            nat: c.nat,
            dir: state_dir.join(&c.name),
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// The bridge vfarm makes for this network.
    pub fn bridge(&self) -> String {
        format!("vfbr-{}", self.name)
    }

    fn table(&self) -> String {
        format!("vfarm_{}", self.name.replace('-', "_"))
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError + '_ {
        let what = what.into();
        move |source| NetError::Io {
            network: self.name.clone(),
            what,
            source,
        }
    }

    /// Make the network real on this host (idempotent): bridge, rules, DNS.
    pub fn up(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("state dir"))?;
        let br = self.bridge();
        if !host::link_exists(&br) {
            host::ip(&["link", "add", "name", &br, "type", "bridge"])?;
        }
        let gw = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix);
        if !host::ip_out(&["-4", "-o", "addr", "show", "dev", &br])?.contains(&gw) {
            host::ip(&["addr", "add", &gw, "dev", &br])?;
        }
        host::ip(&["link", "set", &br, "up"])?;
        host::enable_forwarding(&self.state_dir)?;
        host::nft_apply(&self.ruleset())?;
        let hosts = self.dir.join("hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, "").map_err(self.io("hosts file"))?;
        }
        host::dnsmasq_start(
            &br,
            self.subnet.gateway(),
            &hosts,
            &self.dir.join("dnsmasq.pid"),
        )
    }

    /// The nftables table of this network, replaced whole on every `up`.
    fn ruleset(&self) -> String {
        let (t, br, sub) = (self.table(), self.bridge(), self.subnet);
        let mut fwd = String::new();
        if self.isolated {
            // Neither to nor from vfarm's other bridges; the host's own interfaces are fine.
            fwd.push_str(&format!(
                "    iifname \"{br}\" oifname \"vfbr-*\" oifname != \"{br}\" drop\n    \
                 oifname \"{br}\" iifname \"vfbr-*\" iifname != \"{br}\" drop\n"
            ));
        }
        let nat = if self.nat {
            format!(
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                 ip saddr {sub} oifname != \"{br}\" masquerade\n  }}\n"
            )
        } else {
            String::new()
        };
        format!(
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n{nat}  chain forward {{\n    \
             type filter hook forward priority filter; policy accept;\n{fwd}  }}\n}}\n"
        )
    }

    /// Remove what `up` made: dnsmasq, the rules, the bridge (attached veths go with it).
    pub fn down(&self) -> Result<()> {
        host::dnsmasq_stop(&self.dir.join("dnsmasq.pid"));
        host::nft_delete_table(&self.table())?;
        if host::link_exists(&self.bridge()) {
            host::ip(&["link", "del", &self.bridge()])?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        host::restore_forwarding(&self.state_dir)
    }

    /// Lease an address for `key` (an instance id) and put the veth pair between the bridge
    /// and the network namespace at `netns` (a path, e.g. `/run/netns/NAME`): `eth0` inside,
    /// with the address, loopback up and the default route through the gateway. `hostname` is
    /// what the network's DNS answers with that address.
    pub fn attach(&self, key: &str, netns: &Path, hostname: &str) -> Result<Lease> {
        check_key(key)?;
        let address = self.lease(key, hostname)?;
        let host_if = host_ifname(key);
        let peer = format!("vfp-{}", &host_if[4..]);
        let ns = netns.display().to_string();
        let r = (|| -> Result<()> {
            if host::link_exists(&host_if) {
                host::ip(&["link", "del", &host_if])?;
            }
            host::ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
            ])?;
            host::ip(&["link", "set", &peer, "netns", &ns])?;
            host::ip(&["link", "set", &host_if, "master", &self.bridge(), "up"])?;
            let cidr = format!("{address}/{}", self.subnet.prefix);
            let gw = self.subnet.gateway().to_string();
            for args in [
                vec!["link", "set", &peer, "name", "eth0"],
                vec!["addr", "add", &cidr, "dev", "eth0"],
                vec!["link", "set", "eth0", "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", "default", "via", &gw],
            ] {
                host::ip_in(&ns, &args)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = self.detach(key);
            return Err(e);
        }
        Ok(Lease {
            address,
            prefix: self.subnet.prefix,
            gateway: self.subnet.gateway(),
            nameserver: self.subnet.gateway(),
            host_ifname: host_if,
        })
    }

    /// Undo `attach` (idempotent): the host end of the veth (its peer goes with it), the
    /// name and the lease.
    pub fn detach(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let host_if = host_ifname(key);
        if host::link_exists(&host_if) {
            host::ip(&["link", "del", &host_if])?;
        }
        self.release(key)
    }

    /// The addresses leased now, by key.
    pub fn leases(&self) -> Result<BTreeMap<String, (Ipv4Addr, String)>> {
        let _l = self.lock()?;
        self.read_leases()
    }

    fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("state dir"))?;
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("leases.lock"))
            .map_err(self.io("leases.lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io("leases.lock")(e.into()))?;
        Ok(f)
    }

    fn read_leases(&self) -> Result<BTreeMap<String, (Ipv4Addr, String)>> {
        match std::fs::read(self.dir.join("leases.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NetError::Io {
                network: self.name.clone(),
                what: "leases.json".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.io("leases.json")(e)),
        }
    }

    /// Record the leases and the DNS names they answer to, then tell dnsmasq.
    fn write_leases(&self, leases: &BTreeMap<String, (Ipv4Addr, String)>) -> Result<()> {
        let tmp = self.dir.join("leases.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(leases).expect("leases serialise"),
        )
        .and_then(|_| std::fs::rename(&tmp, self.dir.join("leases.json")))
        .map_err(self.io("leases.json"))?;
        let hosts: String = leases
            .values()
            .map(|(a, name)| format!("{a} {name} {}\n", name.split('.').next().unwrap_or(name)))
            .collect();
        let tmp = self.dir.join("hosts.tmp");
        std::fs::write(&tmp, hosts)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join("hosts")))
            .map_err(self.io("hosts"))?;
        host::dnsmasq_reload(&self.dir.join("dnsmasq.pid"));
        Ok(())
    }

    fn lease(&self, key: &str, hostname: &str) -> Result<Ipv4Addr> {
        let _l = self.lock()?;
        let mut leases = self.read_leases()?;
        if let Some((a, _)) = leases.get(key) {
            return Ok(*a);
        }
        let taken: BTreeSet<Ipv4Addr> = leases.values().map(|(a, _)| *a).collect();
        let a = self
            .subnet
            .free(&taken)
            .ok_or_else(|| NetError::Exhausted {
                network: self.name.clone(),
                subnet: self.subnet.to_string(),
            })?;
        leases.insert(key.to_string(), (a, hostname.to_string()));
        self.write_leases(&leases)?;
        Ok(a)
    }

    fn release(&self, key: &str) -> Result<()> {
        let _l = self.lock()?;
        let mut leases = self.read_leases()?;
        if leases.remove(key).is_some() {
            self.write_leases(&leases)?;
        }
        Ok(())
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 64
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NetError::Invalid {
            field: "instance",
            reason: format!("`{key}` is not a plain id"),
        });
    }
    Ok(())
}

/// `vfh-` and 11 characters of a hash of the key (interface names hold 15).
fn host_ifname(key: &str) -> String {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("vfh-{:011x}", h & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, subnet: &str) -> NetworkConfig {
        NetworkConfig {
            name: name.into(),
            subnet: subnet.into(),
            isolated: true,
            nat: true,
        }
    }

    #[test]
    fn config_is_checked_by_field() {
        let d = Path::new("/nonexistent");
        assert!(Network::new(&cfg("lab", "10.9.0.0/24"), d).is_ok());
        for (c, field) in [
            (cfg("Lab", "10.9.0.0/24"), "networks.name"),
            (cfg("much-too-long", "10.9.0.0/24"), "networks.name"),
            (cfg("lab", "10.9.0.1/24"), "networks.subnet"),
        ] {
            match Network::new(&c, d) {
                Err(NetError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        let e = toml_like(r#"{"name":"x","subnet":"10.0.0.0/24","bridge":"br0"}"#);
        assert!(e.contains("unknown field `bridge`"), "{e}");
    }

    fn toml_like(json: &str) -> String {
        serde_json::from_str::<NetworkConfig>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rules_isolate_and_masquerade_by_name() {
        let n = Network::new(&cfg("lab-1", "10.9.0.0/24"), Path::new("/x")).unwrap();
        let r = n.ruleset();
        assert!(r.contains("table ip vfarm_lab_1 {"), "{r}");
        assert!(
            r.contains("ip saddr 10.9.0.0/24 oifname != \"vfbr-lab-1\" masquerade"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"vfbr-lab-1\" oifname \"vfbr-*\""),
            "{r}"
        );
        let open = Network::new(
            &NetworkConfig {
                isolated: false,
                nat: false,
                ..cfg("open", "10.8.0.0/24")
            },
            Path::new("/x"),
        )
        .unwrap();
        let r = open.ruleset();
        assert!(!r.contains("masquerade") && !r.contains("drop"), "{r}");
        assert_eq!(host_ifname("abc").len(), 15);
        assert_ne!(host_ifname("abc"), host_ifname("abd"));
    }
}
