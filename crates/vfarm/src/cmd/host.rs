//! `vfarm host add|ls|show|drain|undrain|rm`: the physical host inventory of the control
//! (the data dir `vfarm serve` runs on): nodes, their capacity and what is placed on them.

use anyhow::Result;
use clap::Subcommand;
use vfarm_proto::hosts::AddHost;
use vfarm_service::{hosts, Caller};
use vfarm_store::hosts::HostRow;

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add a host: prints a one-time join token for `vfarm node --name NAME --token …`.
    Add {
        /// The host's name (its node's --name).
        name: String,
        /// How long the token works: 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        expires: String,
    },
    /// List hosts: state, capacity, what is promised, instances, last heartbeat.
    #[command(alias = "list")]
    Ls,
    /// One host in full.
    Show {
        /// The host's name.
        name: String,
    },
    /// Take no new instances on this host (running ones stay).
    Drain {
        /// The host's name.
        name: String,
    },
    /// Take new instances again.
    Undrain {
        /// The host's name.
        name: String,
    },
    /// Remove a host without instances and revoke its certificate.
    #[command(alias = "remove")]
    Rm {
        /// The host's name.
        name: String,
    },
}

pub fn run(ctx: &Ctx, cmd: HostCmd) -> Result<i32> {
    let who = Caller::local();
    match cmd {
        HostCmd::Add { name, expires } => {
            let req = AddHost {
                name,
                expires: Some(expires),
            };
            let added = hosts::add(ctx, &who, req)?;
            if ctx.json() {
                ctx.print_json(&added)?;
            } else {
                println!(
                    "host {} added; join token (one use, until {}):",
                    added.name, added.expires
                );
                println!("{}", added.token);
                println!(
                    "on the host: vfarm node --control https://CONTROL:PORT --name {} --listen ADDR:PORT --ca ca.pem --token TOKEN",
                    added.name
                );
            }
        }
        HostCmd::Ls => {
            let hosts = hosts::list(ctx, &who)?;
            if ctx.json() {
                ctx.print_json(&hosts)?;
            } else {
                print_table(&hosts);
            }
        }
        HostCmd::Show { name } => {
            let h = hosts::show(ctx, &who, &name)?;
            if ctx.json() {
                ctx.print_json(&h)?;
            } else {
                print_one(&h);
            }
        }
        HostCmd::Drain { name } => drained(ctx, &who, &name, true)?,
        HostCmd::Undrain { name } => drained(ctx, &who, &name, false)?,
        HostCmd::Rm { name } => {
            let h = hosts::remove(ctx, &who, &name)?;
            if ctx.json() {
                ctx.print_json(&h)?;
            } else {
                match &h.cert_serial {
                    Some(s) => println!("host {} removed; certificate {s} revoked", h.name),
                    None => println!("host {} removed (it never joined)", h.name),
                }
            }
        }
    }
    Ok(0)
}

fn drained(ctx: &Ctx, who: &Caller, name: &str, on: bool) -> Result<()> {
    let h = hosts::set_drained(ctx, who, name, on)?;
    if ctx.json() {
        ctx.print_json(&h)?;
    } else {
        println!(
            "host {name} {}",
            if on {
                "drained: no new instances"
            } else {
                "takes new instances again"
            }
        );
    }
    Ok(())
}

fn state_label(h: &HostRow) -> String {
    if h.drained {
        format!("{},drained", h.state)
    } else {
        h.state.clone()
    }
}

fn since(t: &Option<String>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => format!(
            "{}s ago",
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0)
        ),
        Err(_) => t.clone(),
    }
}

fn print_table(hosts: &[HostRow]) {
    println!(
        "{:<16} {:<14} {:>5} {:>9} {:>11} {:>9} {:>5} {:>5} {:<24} {:<5} {:<10}",
        "NAME",
        "STATE",
        "CPUS",
        "CPUS USED",
        "MEMORY MiB",
        "MEM USED",
        "INST",
        "LOST",
        "DRIVERS",
        "ACCEL",
        "HEARTBEAT"
    );
    for h in hosts {
        println!(
            "{:<16} {:<14} {:>5} {:>9} {:>11} {:>9} {:>5} {:>5} {:<24} {:<5} {:<10}",
            h.name,
            state_label(h),
            h.cpus,
            format!("{:.1}", h.used_cpus_milli as f64 / 1000.0),
            h.memory_mib,
            h.used_memory_mib,
            h.instances,
            h.lost,
            h.features.join(","),
            h.accelerator.as_deref().unwrap_or("-"),
            since(&h.last_heartbeat)
        );
    }
    if hosts.is_empty() {
        println!("(no hosts: `vfarm host add NAME` prints a join token)");
    }
}

fn print_one(h: &HostRow) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("name:            {}", h.name);
    println!("state:           {}", state_label(h));
    println!("url:             {}", opt(&h.url));
    println!("subject:         {}", opt(&h.dn));
    println!("certificate:     {}", opt(&h.cert_serial));
    println!(
        "cpus:            {} ({:.1} promised)",
        h.cpus,
        h.used_cpus_milli as f64 / 1000.0
    );
    println!(
        "memory:          {} MiB ({} MiB promised)",
        h.memory_mib, h.used_memory_mib
    );
    println!("disk free:       {} MiB", h.disk_mib);
    println!("drivers:         {}", h.features.join(", "));
    println!(
        "instances:       {} ({} running, {} lost)",
        h.instances, h.running, h.lost
    );
    println!("joined:          {}", opt(&h.joined));
    println!("last heartbeat:  {}", since(&h.last_heartbeat));
    println!("accelerator:     {}", opt(&h.accelerator));
    match h
        .checks
        .clone()
        .and_then(|c| serde_json::from_value::<vfarm_core::doctor::Report>(c).ok())
    {
        Some(r) => {
            println!("checks (the node's `vfarm doctor`):");
            crate::doctor::print_checks(&r);
        }
        None => println!("checks:          - (the node reports none)"),
    }
}
