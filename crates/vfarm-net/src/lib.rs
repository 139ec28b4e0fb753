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

/// How instances of a network reach the world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A bridge and subnet of vfarm's own, masqueraded outbound, DNS by dnsmasq.
    #[default]
    Nat,
    /// An existing bridge the site attached to its LAN: instances take their pool hostname's
    /// address, the LAN's gateway and resolvers (the vNode model).
    Bridged,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nat => "nat",
            Kind::Bridged => "bridged",
        }
    }
}

/// A network as the admin defines it (`[[networks]]` in serve.toml). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// a-z 0-9 -, at most 10 characters (it names the bridge: `vfbr-<name>`).
    pub name: String,
    #[serde(default)]
    pub kind: Kind,
    /// nat: the subnet vfarm hands addresses out of; its first address is the gateway (the
    /// host). bridged: the LAN's subnet (its prefix is the instances').
    pub subnet: String,
    /// nat: refuse forwarding between this network and vfarm's other networks.
    #[serde(default = "yes")]
    pub isolated: bool,
    /// nat: masquerade the instances' outbound traffic (egress to the host's networks).
    #[serde(default = "yes")]
    pub nat: bool,
    /// bridged: the site's bridge on the LAN (`br0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// bridged: the LAN's router (no default route without it).
    #[serde(default)]
    pub gateway: Option<String>,
    /// bridged: the LAN's resolvers.
    #[serde(default)]
    pub dns: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A validated network and where its state lives.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub kind: Kind,
    pub subnet: Subnet,
    pub isolated: bool,
    pub nat: bool,
    bridge: String,
    gateway: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    config: NetworkConfig,
    dir: PathBuf,
    state_dir: PathBuf,
}

/// What an attached instance got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Whose lease it is (an instance id).
    pub key: String,
    pub network: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The default route (nat: the host's address on the bridge).
    pub gateway: Option<Ipv4Addr>,
    /// The resolvers for the instance (nat: dnsmasq on the gateway address).
    pub nameservers: Vec<Ipv4Addr>,
    /// Stable per instance, so a guest's interface keeps its identity across restarts and
    /// migrations.
    pub mac: String,
    /// The host's end: the veth of a namespace, or the tap of a VM.
    pub host_ifname: String,
}

/// What an instance is attached by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link<'a> {
    /// A veth pair into the network namespace at this path (`eth0` inside, configured).
    Netns(&'a Path),
    /// A tap device on the bridge for a VM (the guest configures its own address).
    Tap,
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
        let subnet = Subnet::parse("networks.subnet", &c.subnet)?;
        let invalid = |field, reason: String| NetError::Invalid { field, reason };
        let v4 = |field, s: &str| -> Result<Ipv4Addr> {
            s.parse()
                .map_err(|_| invalid(field, format!("`{s}` is not an IPv4 address")))
        };
        let dns = c
            .dns
            .iter()
            .map(|d| v4("networks.dns", d))
            .collect::<Result<Vec<_>>>()?;
        let gateway = c
            .gateway
            .as_deref()
            .map(|g| v4("networks.gateway", g))
            .transpose()?;
        let bridge = match (c.kind, &c.bridge) {
            (Kind::Nat, None) => format!("vfbr-{}", c.name),
            (Kind::Nat, Some(_)) => {
                return Err(invalid(
                    "networks.bridge",
                    format!(
                        "network `{}` is nat: vfarm makes its own bridge; set kind = \"bridged\" \
                         to use the site's",
                        c.name
                    ),
                ))
            }
            (Kind::Bridged, None) => {
                return Err(invalid(
                    "networks.bridge",
                    format!(
                    "network `{}` is bridged: name the site's bridge on the LAN (bridge = \"br0\")",
                    c.name
                ),
                ))
            }
            (Kind::Bridged, Some(b)) => {
                let ok = !b.is_empty()
                    && b.len() <= 15
                    && !b.starts_with("vfbr-")
                    && b.bytes()
                        .all(|x| x.is_ascii_alphanumeric() || b"-_.".contains(&x));
                if !ok {
                    return Err(invalid(
                        "networks.bridge",
                        format!("`{b}` is not an interface name of the site's (1-15 characters, not vfbr-*)"),
                    ));
                }
                b.clone()
            }
        };
        if c.kind == Kind::Nat && (gateway.is_some() || !dns.is_empty()) {
            return Err(invalid(
                "networks.gateway",
                format!(
                    "network `{}` is nat: the host is its gateway and resolver; gateway and dns \
                     are for bridged networks",
                    c.name
                ),
            ));
        }
        if let Some(g) = gateway.filter(|g| !subnet.contains(*g)) {
            return Err(invalid(
                "networks.gateway",
                format!("{g} is not in the subnet {subnet}"),
            ));
        }
        Ok(Network {
            name: c.name.clone(),
            kind: c.kind,
            subnet,
            isolated: c.isolated,
            nat: c.nat,
            bridge,
            gateway,
            dns,
            config: c.clone(),
            dir: state_dir.join(&c.name),
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// The definition it was made from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The bridge instances sit on: vfarm's own (`vfbr-<name>`) or the site's.
    pub fn bridge(&self) -> String {
        self.bridge.clone()
    }

    /// The default route the instances get.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match self.kind {
            Kind::Nat => Some(self.subnet.gateway()),
            Kind::Bridged => self.gateway,
        }
    }

    /// The resolvers the instances get.
    pub fn nameservers(&self) -> Vec<Ipv4Addr> {
        match self.kind {
            Kind::Nat => vec![self.subnet.gateway()],
            Kind::Bridged => self.dns.clone(),
        }
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

    /// Make the network real on this host (idempotent). nat: bridge, rules, DNS. bridged:
    /// the site's bridge must exist; vfarm adds nothing to it but the instances' links.
    pub fn up(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("state dir"))?;
        self.claim()?;
        let br = self.bridge();
        if self.kind == Kind::Bridged {
            if !host::link_exists(&br) {
                return Err(NetError::Invalid {
                    field: "networks.bridge",
                    reason: format!(
                        "network `{}`: this host has no bridge `{br}`; create it and attach the \
                         LAN interface to it (ip link add {br} type bridge; ip link set eth0 \
                         master {br}), or use kind = \"nat\"",
                        self.name
                    ),
                });
            }
            return Ok(());
        }
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

    /// The state dir is the host's (bridges are): a network of this name that another data
    /// dir brought up with another subnet or bridge must not be joined silently. The
    /// definition is kept, so the network can be acted on without the config (`load`).
    fn claim(&self) -> Result<()> {
        let p = self.dir.join("definition.json");
        if let Some(old) = Network::load(&self.state_dir, &self.name)? {
            if (old.kind, old.subnet, &old.bridge) != (self.kind, self.subnet, &self.bridge) {
                return Err(NetError::Invalid {
                    field: "networks.name",
                    reason: format!(
                        "network `{}` is already up on this host as {} {} on {} (another \
                         serve.toml?); give this one another name, or take the other down \
                         (vfarm network down {})",
                        self.name,
                        old.kind.as_str(),
                        old.subnet,
                        old.bridge,
                        self.name
                    ),
                });
            }
        }
        let text = serde_json::to_vec_pretty(&self.config).expect("config serialises");
        // Whole or not at all: others read it meanwhile (`load`, choosing a grid's network).
        let tmp = self
            .dir
            .join(format!(".definition.json.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(self.io("definition.json"))?;
        std::fs::rename(&tmp, &p).map_err(self.io("definition.json"))
    }

    /// The network `name` as `up` last defined it on this host, if it is up.
    pub fn load(state_dir: &Path, name: &str) -> Result<Option<Network>> {
        let p = state_dir.join(name).join("definition.json");
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetError::Io {
                    network: name.to_string(),
                    what: "definition.json".into(),
                    source,
                })
            }
        };
        let c: NetworkConfig = serde_json::from_slice(&bytes).map_err(|e| NetError::Io {
            network: name.to_string(),
            what: "definition.json".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Network::new(&c, state_dir).map(Some)
    }

    /// Whether `up` has made this network real on this host.
    pub fn is_up(&self) -> bool {
        self.dir.join("definition.json").exists() && host::link_exists(&self.bridge())
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

    /// Remove what `up` made: dnsmasq, the rules, the bridge (attached links go with it). A
    /// bridged network's bridge is the site's: only vfarm's links on it are removed.
    pub fn down(&self) -> Result<()> {
        if self.kind == Kind::Bridged {
            for key in self.leases()?.into_keys() {
                self.detach(&key)?;
            }
            let _ = std::fs::remove_dir_all(&self.dir);
            return Ok(());
        }
        host::dnsmasq_stop(&self.dir.join("dnsmasq.pid"));
        host::nft_delete_table(&self.table())?;
        if host::link_exists(&self.bridge()) {
            host::ip(&["link", "del", &self.bridge()])?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        host::restore_forwarding(&self.state_dir)
    }

    /// Lease an address for `key` (an instance id; the same key gets the same address again)
    /// and attach it by `link`. `hostname` is what the network's DNS answers with that
    /// address; `want` the address of the instance's pool hostname, taken when it lies in the
    /// subnet (bridged networks take only that).
    pub fn attach(
        &self,
        key: &str,
        link: Link<'_>,
        hostname: &str,
        want: Option<Ipv4Addr>,
    ) -> Result<Lease> {
        let lease = self.lease(key, hostname, want)?;
        let r = match link {
            Link::Netns(ns) => self.plug_netns(&lease, ns),
            Link::Tap => self.plug_tap(&lease),
        };
        if let Err(e) = r {
            let _ = self.detach(key);
            return Err(e);
        }
        Ok(lease)
    }

    fn plug_netns(&self, lease: &Lease, netns: &Path) -> Result<()> {
        let host_if = &lease.host_ifname;
        let peer = format!("vfp-{}", &host_if[4..]);
        let ns = netns.display().to_string();
        if host::link_exists(host_if) {
            // Plugged already (the peer lives and dies with it): a running instance keeps its
            // link when the service starts again.
            return Ok(());
        }
        host::ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", &peer,
        ])?;
        host::ip(&["link", "set", &peer, "netns", &ns])?;
        host::ip(&["link", "set", host_if, "master", &self.bridge(), "up"])?;
        let cidr = format!("{}/{}", lease.address, lease.prefix);
        let mut steps = vec![
            vec!["link", "set", &peer, "name", "eth0"],
            vec!["link", "set", "eth0", "address", &lease.mac],
            vec!["addr", "add", &cidr, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ];
        let gw = lease.gateway.map(|g| g.to_string());
        if let Some(gw) = &gw {
            steps.push(vec!["route", "add", "default", "via", gw]);
        }
        for args in steps {
            host::ip_in(&ns, &args)?;
        }
        Ok(())
    }

    fn plug_tap(&self, lease: &Lease) -> Result<()> {
        let tap = &tap_ifname(&lease.key);
        if !host::link_exists(tap) {
            host::ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        }
        host::ip(&["link", "set", tap, "master", &self.bridge(), "up"])
    }

    /// Undo `attach` (idempotent): the host's end of the link (a veth's peer goes with it),
    /// the name and the lease.
    pub fn detach(&self, key: &str) -> Result<()> {
        remove_links(key)?;
        self.release(key)
    }

    /// Detach every key that `live` does not know (instances destroyed while the service was
    /// down), and remove links of vfarm's on the bridge that no lease accounts for. Returns
    /// the keys detached.
    pub fn reconcile(&self, live: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for key in self.leases()?.into_keys() {
            if !live(&key) {
                self.detach(&key)?;
                gone.push(key);
            }
        }
        let leases = self.leases()?;
        let ours: BTreeSet<String> = leases
            .keys()
            .flat_map(|k| [host_ifname(k), tap_ifname(k)])
            .collect();
        for l in host::links_on(&self.bridge())? {
            if (l.starts_with("vfh-") || l.starts_with("vft-")) && !ours.contains(&l) {
                host::ip(&["link", "del", &l])?;
            }
        }
        Ok(gone)
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

    /// Lease an address for `key` without attaching anything (the same key gets the same
    /// address again); see [`Network::attach`].
    pub fn lease(&self, key: &str, hostname: &str, want: Option<Ipv4Addr>) -> Result<Lease> {
        check_key(key)?;
        let _l = self.lock()?;
        let mut leases = self.read_leases()?;
        let address = match leases.get(key) {
            Some((a, _)) => *a,
            None => {
                let taken: BTreeSet<Ipv4Addr> = leases.values().map(|(a, _)| *a).collect();
                let a = match (self.kind, want.filter(|w| self.subnet.contains(*w))) {
                    (_, Some(w)) if taken.contains(&w) => {
                        return Err(NetError::Invalid {
                            field: "address",
                            reason: format!("{w} is leased on network `{}` already", self.name),
                        })
                    }
                    (_, Some(w)) => w,
                    (Kind::Nat, None) => {
                        self.subnet
                            .free(&taken)
                            .ok_or_else(|| NetError::Exhausted {
                                network: self.name.clone(),
                                subnet: self.subnet.to_string(),
                            })?
                    }
                    (Kind::Bridged, None) => {
                        return Err(NetError::Invalid {
                            field: "hostname",
                            reason: format!(
                                "network `{}` is bridged: an instance on it takes the address of \
                                 its pool hostname, and `{hostname}` has none in {} (give the \
                                 [[hostnames]] entries addresses in that subnet)",
                                self.name, self.subnet
                            ),
                        })
                    }
                };
                leases.insert(key.to_string(), (a, hostname.to_string()));
                self.write_leases(&leases)?;
                a
            }
        };
        Ok(Lease {
            key: key.to_string(),
            network: self.name.clone(),
            address,
            prefix: self.subnet.prefix,
            gateway: self.gateway(),
            nameservers: self.nameservers(),
            mac: mac_of(key),
            host_ifname: host_ifname(key),
        })
    }

    /// Give the address back (idempotent), without touching links.
    pub fn release(&self, key: &str) -> Result<()> {
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

fn hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `vfh-` and 11 characters of a hash of the key (interface names hold 15).
fn host_ifname(key: &str) -> String {
    format!("vfh-{:011x}", hash(key) & 0xfff_ffff_ffff)
}

/// Where the networks' state (definitions, leases, DNS names) lives: the host's, as the
/// bridges are, so it goes away at a reboot with them; and one directory per network
/// namespace, as bridges, taps and rules are (nodes sharing a filesystem but each in a
/// namespace of its own bring up networks of the same name with different bridges).
pub fn state_dir() -> PathBuf {
    // The initial namespace's inode is fixed (PROC_NET_INIT_INO); /proc/1 may not be
    // readable (a container without CAP_SYS_PTRACE), so it is only a second opinion.
    const INIT: &str = "4026531833";
    let root = Path::new("/run/vfarm");
    let inode = |p: &str| {
        // "net:[4026532301]": the namespace's inode, stable while it exists.
        std::fs::read_link(p).ok().map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
    };
    match inode("/proc/self/ns/net") {
        Some(me) if me != INIT && Some(&me) != inode("/proc/1/ns/net").as_ref() => {
            root.join(format!("net-ns{me}"))
        }
        _ => root.join("net"),
    }
}

/// A VM's tap: `vft-` and the same hash.
pub fn tap_ifname(key: &str) -> String {
    format!("vft-{:011x}", hash(key) & 0xfff_ffff_ffff)
}

/// QEMU's locally administered prefix and three bytes of the key's hash.
pub fn mac_of(key: &str) -> String {
    let h = hash(key).to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[5], h[6], h[7])
}

/// The named network namespace vfarm makes for an oci instance (`ip netns` layout).
pub fn netns_path(key: &str) -> PathBuf {
    Path::new("/run/netns").join(format!("vfi-{key}"))
}

/// Remove the links vfarm made for `key` on any bridge (a network no longer configured).
pub fn remove_links(key: &str) -> Result<()> {
    check_key(key)?;
    for l in [host_ifname(key), tap_ifname(key)] {
        if host::link_exists(&l) {
            host::ip(&["link", "del", &l])?;
        }
    }
    Ok(())
}

/// Make the instance's network namespace (idempotent).
pub fn netns_add(key: &str) -> Result<PathBuf> {
    check_key(key)?;
    let p = netns_path(key);
    if !p.exists() {
        host::ip(&["netns", "add", &format!("vfi-{key}")])?;
    }
    Ok(p)
}

/// Remove the instance's network namespace (idempotent).
pub fn netns_del(key: &str) -> Result<()> {
    check_key(key)?;
    if netns_path(key).exists() {
        host::ip(&["netns", "del", &format!("vfi-{key}")])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, subnet: &str) -> NetworkConfig {
        NetworkConfig {
            name: name.into(),
            kind: Kind::Nat,
            subnet: subnet.into(),
            isolated: true,
            nat: true,
            bridge: None,
            gateway: None,
            dns: Vec::new(),
        }
    }

    fn bridged(bridge: Option<&str>, gateway: Option<&str>) -> NetworkConfig {
        NetworkConfig {
            kind: Kind::Bridged,
            bridge: bridge.map(String::from),
            gateway: gateway.map(String::from),
            dns: vec!["192.0.2.53".into()],
            ..cfg("lan", "192.0.2.0/24")
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
            (bridged(None, None), "networks.bridge"),
            (bridged(Some("vfbr-x"), None), "networks.bridge"),
            (
                bridged(Some("br0"), Some("198.51.100.1")),
                "networks.gateway",
            ),
            (bridged(Some("br0"), Some("gw")), "networks.gateway"),
            (
                NetworkConfig {
                    bridge: Some("br0".into()),
                    ..cfg("lab", "10.9.0.0/24")
                },
                "networks.bridge",
            ),
            (
                NetworkConfig {
                    dns: vec!["10.9.0.53".into()],
                    ..cfg("lab", "10.9.0.0/24")
                },
                "networks.gateway",
            ),
        ] {
            match Network::new(&c, d) {
                Err(NetError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        let e = toml_like(r#"{"name":"x","subnet":"10.0.0.0/24","brige":"br0"}"#);
        assert!(e.contains("unknown field `brige`"), "{e}");
        let lan = Network::new(&bridged(Some("br0"), Some("192.0.2.1")), d).unwrap();
        assert_eq!(lan.bridge(), "br0");
        assert_eq!(lan.gateway(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            lan.nameservers(),
            vec!["192.0.2.53".parse::<Ipv4Addr>().unwrap()]
        );
        let nat = Network::new(&cfg("lab", "10.9.0.0/24"), d).unwrap();
        assert_eq!(nat.bridge(), "vfbr-lab");
        assert_eq!(nat.nameservers(), vec![nat.subnet.gateway()]);
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
        assert_eq!(tap_ifname("abc").len(), 15);
        assert_ne!(host_ifname("abc"), host_ifname("abd"));
        assert_eq!(mac_of("abc"), mac_of("abc"));
        assert_ne!(mac_of("abc"), mac_of("abd"));
        assert!(mac_of("abc").starts_with("52:54:00:"));
    }
}
