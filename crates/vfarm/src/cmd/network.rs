//! `vfarm network ls|show|up|down`: the site's instance networks (`[[networks]]` in
//! serve.toml) and their state on this host.

use anyhow::Result;
use clap::Subcommand;
use vfarm_proto::networks::NetworkView;
use vfarm_service::{net, Caller};

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// List the site's networks: kind, subnet, bridge, whether up, instances on each.
    #[command(alias = "list")]
    Ls,
    /// One network in full, with the address of every instance on it.
    Show {
        /// The network's name in serve.toml.
        name: String,
    },
    /// Make every network of serve.toml real on this host now (`vfarm serve` does at start)
    /// and remove what destroyed instances left.
    Up,
    /// Remove a network from this host (its bridge, rules and DNS): refused while instances
    /// are on it.
    Down {
        /// The network's name in serve.toml.
        name: String,
    },
}

pub fn run(ctx: &Ctx, cmd: NetworkCmd) -> Result<i32> {
    let who = Caller::local();
    match cmd {
        NetworkCmd::Ls => {
            let nets = net::list(ctx)?;
            if ctx.json() {
                ctx.print_json(&nets)?;
            } else if nets.is_empty() {
                println!(
                    "no networks: add a [[networks]] table to {} (docs/guide/networks.md)",
                    vfarm_auth::ServeConfig::default_path(&ctx.data_dir).display()
                );
            } else {
                print_table(&nets);
            }
        }
        NetworkCmd::Show { name } => {
            let n = net::show(ctx, &name)?;
            if ctx.json() {
                ctx.print_json(&n)?;
            } else {
                print_one(&n);
            }
        }
        NetworkCmd::Up => {
            let lines = net::up(ctx, &who)?;
            if ctx.json() {
                ctx.print_json(&lines)?;
            } else {
                for l in lines {
                    println!("{l}");
                }
            }
        }
        NetworkCmd::Down { name } => {
            net::down(ctx, &who, &name)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({ "network": name, "up": false }))?;
            } else {
                println!("network {name} is down");
            }
        }
    }
    Ok(0)
}

/// `vfarm --server URL network ls|show`: the service's networks through its API (bringing
/// networks up or down is for the service's host).
pub fn run_remote(ctx: &Ctx, a: &crate::cmd::remote::RemoteArgs, cmd: NetworkCmd) -> Result<i32> {
    use crate::cmd::remote::{seg, Client};
    let c = Client::new(a)?;
    match cmd {
        NetworkCmd::Ls => {
            let nets: Vec<NetworkView> = c.json(reqwest::Method::GET, "/api/v1/networks", None)?;
            if ctx.json() {
                ctx.print_json(&nets)?;
            } else if nets.is_empty() {
                println!("no networks: the service's serve.toml defines none");
            } else {
                print_table(&nets);
            }
        }
        NetworkCmd::Show { name } => {
            let n: NetworkView = c.json(
                reqwest::Method::GET,
                &format!("/api/v1/networks/{}", seg(&name)),
                None,
            )?;
            if ctx.json() {
                ctx.print_json(&n)?;
            } else {
                print_one(&n);
            }
        }
        NetworkCmd::Up | NetworkCmd::Down { .. } => anyhow::bail!(
            "`network up` and `network down` act on the service's host: run them there (without --server)"
        ),
    }
    Ok(0)
}

fn print_table(nets: &[NetworkView]) {
    let rows: Vec<[String; 7]> = nets
        .iter()
        .map(|n| {
            [
                format!("{}{}", n.name, if n.default { " *" } else { "" }),
                n.kind.clone(),
                n.subnet.clone(),
                n.bridge.clone(),
                n.gateway.clone().unwrap_or_else(|| "-".into()),
                if n.up { "up" } else { "down" }.into(),
                n.leases.len().to_string(),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "KIND",
        "SUBNET",
        "BRIDGE",
        "GATEWAY",
        "STATE",
        "INSTANCES",
    ];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&w)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&head);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    println!("(* the default network of API and web UI creates)");
}

fn print_one(n: &NetworkView) {
    let kv = |k: &str, v: &str| println!("{k:<12} {v}");
    kv("name", &n.name);
    kv("kind", &n.kind);
    kv("subnet", &n.subnet);
    kv("bridge", &n.bridge);
    kv("gateway", n.gateway.as_deref().unwrap_or("-"));
    kv("nameservers", &n.nameservers.join(", "));
    if n.kind == "nat" {
        kv("isolated", if n.isolated { "yes" } else { "no" });
        kv("masquerade", if n.nat { "yes" } else { "no" });
    }
    kv("default", if n.default { "yes" } else { "no" });
    kv("state", if n.up { "up" } else { "down" });
    kv("instances", &n.leases.len().to_string());
    for l in &n.leases {
        println!("  {:<15} {:<14} {}", l.address, l.instance, l.hostname);
    }
}
