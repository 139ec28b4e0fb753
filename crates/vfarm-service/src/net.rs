//! Instance networks (issue 18): the site's `[[networks]]` (serve.toml) made real on this host
//! with vfarm-net, instances attached to them, and what destroyed instances left removed.
//!
//! An instance's attachment is decided when it is recorded (the network and the leased
//! address go into its driver spec), made real when it is prepared or started (oci: a named
//! network namespace with a veth; qemu: a tap on the bridge), and undone when it is destroyed.
//! The kernel objects outlive `vfarm serve`, so a killed service finds its instances still
//! answering; at start it brings the networks up again and removes leftovers.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result};
use vfarm_auth::config::is_grid_network;
use vfarm_auth::ServeConfig;
use vfarm_driver::{Attachment, Driver, InstanceSpec, Network as DriverNet};
use vfarm_net::{Link, Network, NetworkConfig};
use vfarm_proto::ErrorCode;

use crate::env::Env;
use crate::error::ServiceError;
use crate::instances::Net;

/// The network `c` defines, with its state in [`vfarm_net::state_dir`].
pub fn network(c: &NetworkConfig) -> Result<Network> {
    Ok(Network::new(c, &vfarm_net::state_dir())?)
}

/// The network `name`: the site's or a grid's own.
pub fn find(cfg: &ServeConfig, name: &str) -> Result<Network, ServiceError> {
    let c = config_of(cfg, name).ok_or_else(|| unknown(cfg, name))?;
    network(&c).map_err(ServiceError::from_anyhow)
}

/// The definition of network `name`, where every network is found: serve.toml's
/// `[[networks]]`, or a grid's own (`g-<n>`): as `up` made it on this host while it is up
/// (a changed `grid_subnets` does not move it), else the n-th /24 of `grid_subnets` (after
/// a reboot took the host's state).
pub fn config_of(cfg: &ServeConfig, name: &str) -> Option<NetworkConfig> {
    if let Some(c) = cfg.networks.iter().find(|n| n.name == name) {
        return Some(c.clone());
    }
    if !is_grid_network(name) {
        return None;
    }
    if let Ok(Some(n)) = Network::load(&vfarm_net::state_dir(), name) {
        return Some(n.config().clone());
    }
    let index: u32 = name[2..].parse().ok()?;
    grid_subnet(cfg.grid_subnets, index).map(|s| own_config(name, s))
}

/// Every network instances here may be on: the site's and this service's grids' own.
pub fn all(store: &vfarm_store::Store, cfg: &ServeConfig) -> Result<Vec<NetworkConfig>> {
    let mut out = cfg.networks.clone();
    for g in store.grids_in(&["creating", "up", "deleting", "failed"])? {
        if let Some(c) = g
            .network
            .filter(|n| is_grid_network(n))
            .and_then(|n| config_of(cfg, &n))
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// The `index`-th /24 of `pool`.
fn grid_subnet(pool: vfarm_net::Subnet, index: u32) -> Option<vfarm_net::Subnet> {
    (u64::from(index) < 1u64 << (24 - pool.prefix)).then(|| vfarm_net::Subnet {
        network: Ipv4Addr::from(u32::from(pool.network) + (index << 8)),
        prefix: 24,
    })
}

/// A grid's own network: nat, isolated from vfarm's other networks, masqueraded outbound.
fn own_config(name: &str, subnet: vfarm_net::Subnet) -> NetworkConfig {
    NetworkConfig {
        name: name.to_string(),
        kind: vfarm_net::Kind::Nat,
        subnet: subnet.to_string(),
        isolated: true,
        nat: true,
        bridge: None,
        gateway: None,
        dns: Vec::new(),
    }
}

/// Held while a grid's network is chosen and made: two grids' `up`s (of this service or
/// another on the host) must not take one subnet.
pub fn grid_lock() -> Result<std::fs::File> {
    let dir = vfarm_net::state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("grids.lock"))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(f)
}

/// A new grid's own network (under [`grid_lock`]): the first `g-<n>` whose name is free
/// and whose /24 of `grid_subnets` overlaps neither the site's networks, the store's grids'
/// nor any network up on this host.
pub fn new_grid_network(store: &vfarm_store::Store, cfg: &ServeConfig) -> Result<NetworkConfig> {
    let mut taken = Vec::new();
    let mut names = std::collections::HashSet::new();
    for c in all(store, cfg)? {
        names.insert(c.name.clone());
        taken.push(c.subnet);
    }
    let dir = vfarm_net::state_dir();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(Some(n)) = Network::load(&dir, &name) {
            taken.push(n.config().subnet.clone());
        }
        // Taken even when its definition cannot be read (yet).
        names.insert(name);
    }
    let taken: Vec<vfarm_net::Subnet> = taken
        .iter()
        .filter_map(|s| vfarm_net::Subnet::parse("subnet", s).ok())
        .collect();
    (0u32..)
        .map_while(|i| grid_subnet(cfg.grid_subnets, i).map(|s| (format!("g-{i}"), s)))
        .find(|(name, s)| !names.contains(name) && !taken.iter().any(|t| t.overlaps(s)))
        .map(|(name, s)| own_config(&name, s))
        .ok_or_else(|| {
            ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "no free /24 left in grid_subnets {} for the grid's own network (widen \
                     it in serve.toml, or take grids down)",
                    cfg.grid_subnets
                ),
            )
            .with_field("grid_subnets")
            .into()
        })
}

fn unknown(cfg: &ServeConfig, name: &str) -> ServiceError {
    let known: Vec<&str> = cfg.networks.iter().map(|n| n.name.as_str()).collect();
    ServiceError::bad_request(
        "network",
        if known.is_empty() {
            format!(
                "no network `{name}`: this site defines none (add a [[networks]] table to \
                 serve.toml, see docs/guide/networks.md)"
            )
        } else {
            format!(
                "no network `{name}`; the site's are: {} (or none)",
                known.join(", ")
            )
        },
    )
}

/// The network a new instance joins: the one named, the site's default for `Net::Default`
/// (API and UI creates), or none.
pub fn choose(cfg: &ServeConfig, net: &Net) -> Result<Option<Network>, ServiceError> {
    let name = match net {
        Net::None | Net::Host => return Ok(None),
        Net::Named(n) if n == "none" => return Ok(None),
        Net::Named(n) if is_grid_network(n) => {
            return Err(ServiceError::bad_request(
                "network",
                format!("`{n}` is a grid's own network: only that grid's members are on it"),
            ))
        }
        Net::Named(n) | Net::Grid(n) => n.as_str(),
        Net::Default => match cfg.default_network.as_deref() {
            None | Some("none") => return Ok(None),
            Some(d) => d,
        },
    };
    find(cfg, name).map(Some)
}

/// Lease an address on `net` for instance `id` (the pool address `want` when it lies in the
/// subnet) and say how the driver attaches it.
pub fn lease(
    net: &Network,
    id: &str,
    driver_kind: &str,
    hostname: &str,
    want: Option<IpAddr>,
) -> Result<Attachment> {
    let want = want.and_then(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    let l = net.lease(id, hostname, want)?;
    Ok(Attachment {
        network: l.network,
        address: l.address,
        prefix: l.prefix,
        gateway: l.gateway,
        nameservers: l.nameservers,
        mac: l.mac,
        link: if driver_kind == "qemu" {
            vfarm_net::tap_ifname(id)
        } else {
            l.host_ifname
        },
        bridge: net.bridge(),
    })
}

/// The network an instance is on, as it is up on this host (its definition is kept there,
/// whichever config file brought it up); brought up from the data dir's serve.toml if not.
fn configured(data_dir: &Path, a: &Attachment) -> Result<Network> {
    if let Some(n) = Network::load(&vfarm_net::state_dir(), &a.network)? {
        return Ok(n);
    }
    let cfg = ServeConfig::load(&ServeConfig::default_path(data_dir))?;
    find(&cfg, &a.network)
        .map_err(|e| anyhow::anyhow!("{}", e.message))
        .with_context(|| format!("the instance is on network `{}`", a.network))
}

/// Make the instance's network ready (prepare, and the service's start; idempotent): the
/// network up and the recorded address leased (DNS answers for the name); a VM's tap on the
/// bridge. An oci instance's veth is made by its runtime hook at every start (the driver's).
pub fn plug(data_dir: &Path, spec: &InstanceSpec) -> Result<()> {
    let Some(a) = spec.network.attachment() else {
        return Ok(());
    };
    let net = configured(data_dir, a)?;
    net.up()?;
    if a.link.starts_with("vft-") {
        net.attach(&spec.id, Link::Tap, &spec.hostname, Some(a.address))?;
    } else {
        net.lease(&spec.id, &spec.hostname, Some(a.address))?;
    }
    Ok(())
}

/// Write `/etc/resolv.conf` and `/etc/hosts` into a prepared oci instance on a network.
pub fn place_files(driver: &dyn Driver, spec: &InstanceSpec) -> Result<()> {
    let Some(a) = spec.network.attachment() else {
        return Ok(());
    };
    if driver.kind() != "oci" {
        return Ok(());
    }
    let files = crate::staging::files_of(driver)?;
    let dir = tempfile::tempdir()?;
    let short = spec.hostname.split('.').next().unwrap_or(&spec.hostname);
    let resolv: String = a
        .nameservers
        .iter()
        .map(|n| format!("nameserver {n}\n"))
        .collect();
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{} {short}\n",
        a.address, spec.hostname
    );
    for (name, text, dst) in [
        ("resolv.conf", resolv, "/etc/resolv.conf"),
        ("hosts", hosts, "/etc/hosts"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        files.copy_in(&spec.id, &p, dst)?;
    }
    Ok(())
}

/// Undo the attachment (destroy, a failed create; idempotent): the links, the namespace, the
/// lease. A network since removed from serve.toml still loses the instance's links.
pub fn unplug(data_dir: &Path, spec: &InstanceSpec) -> Result<()> {
    let Some(a) = spec.network.attachment() else {
        return Ok(());
    };
    match configured(data_dir, a) {
        Ok(net) => net.detach(&spec.id)?,
        Err(_) => vfarm_net::remove_links(&spec.id)?,
    }
    Ok(())
}

/// Undo whatever attachment `key` has on this host's configured networks, without its spec
/// (a VM whose incoming migration was given up: it has no record here).
pub fn unplug_key(data_dir: &Path, key: &str) -> Result<()> {
    let cfg = ServeConfig::load(&ServeConfig::default_path(data_dir))?;
    // Grids' own networks too: those up on this host (their state says so).
    let grids = std::fs::read_dir(vfarm_net::state_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_grid_network(n));
    for name in cfg.networks.iter().map(|c| c.name.clone()).chain(grids) {
        if let Some(net) = Network::load(&vfarm_net::state_dir(), &name)? {
            net.detach(key)?;
        }
    }
    vfarm_net::remove_links(key)?;
    Ok(())
}

/// Give back a record's address without touching links: a control's record of an instance
/// that runs on a node (the node undoes its own attachment).
pub fn forget(spec_json: &str) {
    let Some(spec) = spec_of(spec_json) else {
        return;
    };
    if let Some(a) = spec.network.attachment() {
        if let Ok(Some(net)) = Network::load(&vfarm_net::state_dir(), &a.network) {
            let _ = net.release(&spec.id);
        }
    }
}

/// The placement feature of a host on network `name` (nodes advertise one per network).
pub fn feature(name: &str) -> String {
    format!("net:{name}")
}

/// The spec of a recorded instance, for its attachment.
pub fn spec_of(spec_json: &str) -> Option<InstanceSpec> {
    serde_json::from_str(spec_json).ok()
}

/// At service start: bring every configured network up, and detach what instances destroyed
/// while the service was down left behind (leases, veths, taps, namespaces). Returns one line
/// per network for the log.
pub fn reconcile(env: &Env, cfg: &ServeConfig) -> Result<Vec<String>> {
    let store = env.store()?;
    let rows = store.instances()?;
    let ids: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut report = Vec::new();
    for c in &all(&store, cfg)? {
        let net = network(c)?;
        net.up()
            .with_context(|| format!("cannot bring network `{}` up", c.name))?;
        let gone = net.reconcile(&|k| ids.contains(k))?;
        report.push(format!(
            "network {} ({}, {}, bridge {}): {} leases, {} left over removed",
            c.name,
            net.kind.as_str(),
            net.subnet,
            net.bridge(),
            net.leases()?.len(),
            gone.len()
        ));
    }
    // This machine's instances get their links back if a reboot took them (a running one
    // keeps what it has: plugging is idempotent).
    for row in &rows {
        if crate::instances::here(&store, row).is_err() {
            continue;
        }
        if let Some(spec) = spec_of(&row.spec).filter(|s| s.network.attachment().is_some()) {
            if let Err(e) = plug(&env.data_dir, &spec) {
                tracing::warn!("cannot put instance {} back on its network: {e:#}", row.id);
            }
        }
    }
    Ok(report)
}

/// What an instance view shows of its network.
pub struct NetView {
    pub network: String,
    pub address: Ipv4Addr,
    /// `ssh USER@TARGET` for a full-profile VM (it runs sshd).
    pub ssh_user: Option<String>,
}

/// The network part of a recorded spec (read without the rest: listings show it per row).
pub fn view_of(spec_json: &str) -> Option<NetView> {
    #[derive(serde::Deserialize)]
    struct Vm {
        #[serde(default)]
        profile: vfarm_driver::BootProfile,
        #[serde(default)]
        user: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct NetOnly {
        #[serde(default)]
        network: DriverNet,
        vm: Option<Vm>,
    }
    let n: NetOnly = serde_json::from_str(spec_json).ok()?;
    let a = n.network.attachment()?;
    let ssh_user =
        n.vm.filter(|v| v.profile == vfarm_driver::BootProfile::Full)
            .map(|v| {
                v.user
                    .unwrap_or_else(|| vfarm_driver::qemu::DEFAULT_USER.to_string())
            });
    Some(NetView {
        network: a.network.clone(),
        address: a.address,
        ssh_user,
    })
}

/// A network as `network ls/show` and the API show it.
pub fn describe(cfg: &ServeConfig, c: &NetworkConfig) -> vfarm_proto::networks::NetworkView {
    let net = network(c);
    let (up, leases) = match &net {
        Ok(n) => (
            n.is_up(),
            n.leases()
                .map(|l| {
                    l.into_iter()
                        .map(|(id, (a, h))| vfarm_proto::networks::LeaseView {
                            instance: id,
                            address: a.to_string(),
                            hostname: h,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Err(_) => (false, Vec::new()),
    };
    vfarm_proto::networks::NetworkView {
        name: c.name.clone(),
        kind: c.kind.as_str().to_string(),
        subnet: c.subnet.clone(),
        bridge: net.as_ref().map(|n| n.bridge()).unwrap_or_default(),
        gateway: net
            .as_ref()
            .ok()
            .and_then(|n| n.gateway())
            .map(|g| g.to_string()),
        nameservers: net
            .as_ref()
            .map(|n| n.nameservers().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        isolated: c.kind == vfarm_net::Kind::Nat && c.isolated,
        nat: c.kind == vfarm_net::Kind::Nat && c.nat,
        default: cfg.default_network.as_deref() == Some(c.name.as_str()),
        up,
        leases,
    }
}

/// Every network of the site.
pub fn list(env: &Env) -> Result<Vec<vfarm_proto::networks::NetworkView>, ServiceError> {
    let cfg = ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?;
    let store = env.store().map_err(ServiceError::from_anyhow)?;
    let all = all(&store, &cfg).map_err(ServiceError::from_anyhow)?;
    Ok(all.iter().map(|c| describe(&cfg, c)).collect())
}

/// One network of the site.
pub fn show(env: &Env, name: &str) -> Result<vfarm_proto::networks::NetworkView, ServiceError> {
    let cfg = ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?;
    let c = config_of(&cfg, name).ok_or_else(|| ServiceError {
        code: ErrorCode::NotFound,
        ..unknown(&cfg, name)
    })?;
    Ok(describe(&cfg, &c))
}

/// Take a network off this host (`vfarm network down`): refused while instances are on it.
pub fn down(env: &Env, caller: &crate::Caller, name: &str) -> Result<(), ServiceError> {
    caller
        .require_admin("take a network down")
        .map_err(|e| ServiceError::from_anyhow(e.into()))?;
    let cfg = ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?;
    // One brought up from another config file (`serve --config`) is known by its state.
    let net = match find(&cfg, name) {
        Ok(n) => n,
        Err(e) => Network::load(&vfarm_net::state_dir(), name)
            .map_err(|e| ServiceError::from_anyhow(e.into()))?
            .ok_or(e)?,
    };
    let leases = net
        .leases()
        .map_err(|e| ServiceError::from_anyhow(e.into()))?;
    if !leases.is_empty() {
        return Err(ServiceError {
            code: ErrorCode::Conflict,
            message: format!(
                "network `{name}` still has {} instance(s) on it ({}): destroy them first",
                leases.len(),
                leases.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            field: Some("network".into()),
        });
    }
    net.down().map_err(|e| ServiceError::from_anyhow(e.into()))
}

/// Bring the site's networks up now (`vfarm network up`; `vfarm serve` does it at start).
pub fn up(env: &Env, caller: &crate::Caller) -> Result<Vec<String>, ServiceError> {
    caller
        .require_admin("bring networks up")
        .map_err(|e| ServiceError::from_anyhow(e.into()))?;
    let cfg = ServeConfig::load(&ServeConfig::default_path(&env.data_dir))?;
    reconcile(env, &cfg).map_err(ServiceError::from_anyhow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pool: &str) -> ServeConfig {
        ServeConfig::parse(
            &format!("grid_subnets = \"{pool}\"\n[[networks]]\nname = \"lab\"\nsubnet = \"10.1.0.0/24\"\n"),
            Path::new("serve.toml"),
        )
        .unwrap()
    }

    #[test]
    fn grid_networks_are_the_pools_24s_by_number() {
        let pool = cfg("10.250.0.0/23").grid_subnets;
        let s = |i| grid_subnet(pool, i).map(|s| s.to_string());
        assert_eq!(s(0).as_deref(), Some("10.250.0.0/24"));
        assert_eq!(s(1).as_deref(), Some("10.250.1.0/24"));
        assert_eq!(s(2), None, "a /23 holds two");
        let c = cfg("10.250.0.0/16");
        // Not up on this host (no such number is): made from the pool.
        let g = config_of(&c, "g-255").unwrap();
        assert_eq!(
            (g.subnet.as_str(), g.isolated, g.nat),
            ("10.250.255.0/24", true, true)
        );
        assert!(config_of(&c, "g-256").is_none());
        assert_eq!(config_of(&c, "lab").unwrap().subnet, "10.1.0.0/24");
        assert!(config_of(&c, "g-x").is_none() && config_of(&c, "other").is_none());
    }

    #[test]
    fn a_grids_network_is_not_joined_by_name() {
        let c = cfg("10.250.0.0/16");
        let e = choose(&c, &Net::Named("g-3".into())).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("network"), "{e:?}");
        assert!(e.message.contains("grid's own"), "{}", e.message);
        let n = choose(&c, &Net::Grid("g-3".into())).unwrap().unwrap();
        assert_eq!(n.subnet.to_string(), "10.250.3.0/24");
    }
}
