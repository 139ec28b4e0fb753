//! `vfarm grid up|ls|show|down|extend`: virtual grids, here or on a service (`--server`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use vfarm_proto::grids::{GridView, UpGrid};
use vfarm_service::grids::{self, UpOptions};
use vfarm_service::instances::Admission;
use vfarm_service::Caller;

use crate::ctx::Ctx;

const GRID_FILE_HELP: &str = "\
A grid file is TOML. [grid] holds the name, one expiry for every member and the site network
they join (absent: a network of the grid's own, isolated from other grids; \"none\": none).
Each [roles.NAME] is a kind of member:

  [grid]
  name = \"web\"
  expiry = \"2h\"

  [roles.web]
  image = \"busybox\"             # or image_spec = { suite = \"bookworm\", packages = [...] }
  driver = \"oci\"                # or qemu (profile = \"full\" | \"fast\")
  count = 1                      # cpus, memory, disk; hostname = \"web{{ member.index }}\"
  command = [\"httpd\", \"-f\", \"-p\", \"8000\"]

  [roles.client]
  image = \"busybox\"
  after = [\"web\"]               # made once every web member runs
  env = { WEB = \"{{ roles.web.hostname }}\" }

  [[roles.client.files]]
  path = \"/etc/web-hosts\"
  content = \"{{ roles.web.hostnames }} on {{ roles.web.addresses }}\"

References: grid.name, member.index, and of a role named in `after` (directly or not)
roles.R.hostnames, roles.R.hostname, roles.R.addresses, roles.R.address, roles.R.count.
Unknown keys and references are refused by name, before anything is made.";

#[derive(Subcommand, Debug)]
pub enum GridCmd {
    /// Bring a grid up from its file: every role's members made in order (a role after the
    /// roles it names in `after`, once they run), later roles' values filled in from
    /// earlier roles' names and addresses. On a failure, what was made is destroyed.
    #[command(after_help = GRID_FILE_HELP)]
    Up {
        /// The grid file (TOML).
        file: PathBuf,
        /// The grid's name, instead of the file's `[grid] name`.
        #[arg(long)]
        name: Option<String>,
        /// One lease for every member (90m, 2h, 2d, 1w), instead of the file's; the grid is
        /// reaped as a whole when it ends.
        #[arg(long)]
        expiry: Option<String>,
        /// On a failure keep what was made (the grid is `failed`; `grid down` removes it).
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// List your grids (admins: all): state, members, expiry.
    #[command(alias = "list")]
    Ls,
    /// One grid: its members by role with their states, host names, addresses and ssh
    /// commands.
    Show {
        /// The grid's name.
        name: String,
    },
    /// Tear a grid down: every member destroyed (its host certificate revoked, its name and
    /// address given back), then the grid.
    #[command(alias = "rm")]
    Down {
        /// The grid's name.
        name: String,
    },
    /// Move the grid's expiry, and every member's, later.
    #[command(after_help = "Example:\n  vfarm grid extend site 2d")]
    Extend {
        /// The grid's name.
        name: String,
        /// How much later: 90m, 2h, 2d, 1w.
        by: String,
    },
}

pub fn run(ctx: &Ctx, cmd: GridCmd) -> Result<i32> {
    let caller = Caller::local();
    match cmd {
        GridCmd::Up {
            file,
            name,
            expiry,
            keep_on_failure,
        } => {
            let text = grids::read_file(&file)?;
            let admission = Admission::load(ctx)?;
            let steps = crate::cmd::progress::Steps::new(ctx);
            let v = grids::up(
                &caller,
                ctx,
                &admission,
                &text,
                &UpOptions {
                    name,
                    expiry,
                    keep_on_failure,
                },
                &mut |s| steps.step(s),
            )?;
            drop(steps);
            print_up(ctx, &v)?;
        }
        GridCmd::Ls => print_list(ctx, &grids::list(&caller, ctx)?)?,
        GridCmd::Show { name } => print_one(ctx, &grids::show(&caller, ctx, &name)?)?,
        GridCmd::Down { name } => {
            grids::down(&caller, ctx, &name)?;
            print_down(ctx, &name)?;
        }
        GridCmd::Extend { name, by } => {
            print_one(ctx, &grids::extend(&caller, ctx, &name, &by)?)?;
        }
    }
    Ok(0)
}

/// `vfarm --server URL grid …`: the same through the service's API.
pub fn run_remote(ctx: &Ctx, a: &crate::cmd::remote::RemoteArgs, cmd: GridCmd) -> Result<i32> {
    use crate::cmd::remote::{seg, Client};
    use reqwest::Method;
    let c = Client::new(a)?;
    match cmd {
        GridCmd::Up {
            file,
            name,
            expiry,
            keep_on_failure,
        } => {
            let body = UpGrid {
                file: grids::read_file(&file)?,
                name,
                expiry,
                keep_on_failure,
            };
            let v: GridView = c.json(Method::POST, "/api/v1/grids", Some(json!(body)))?;
            print_up(ctx, &v)?;
        }
        GridCmd::Ls => {
            let v: Vec<GridView> = c.json(Method::GET, "/api/v1/grids", None)?;
            print_list(ctx, &v)?;
        }
        GridCmd::Show { name } => {
            let v: GridView =
                c.json(Method::GET, &format!("/api/v1/grids/{}", seg(&name)), None)?;
            print_one(ctx, &v)?;
        }
        GridCmd::Down { name } => {
            c.call(
                Method::DELETE,
                &format!("/api/v1/grids/{}", seg(&name)),
                None,
            )?;
            print_down(ctx, &name)?;
        }
        GridCmd::Extend { name, by } => {
            let v: GridView = c.json(
                Method::POST,
                &format!("/api/v1/grids/{}/extend", seg(&name)),
                Some(json!({ "by": by })),
            )?;
            print_one(ctx, &v)?;
        }
    }
    Ok(0)
}

fn print_up(ctx: &Ctx, v: &GridView) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(v);
    }
    println!("grid {} up: {} member(s)", v.name, v.members.len());
    print_members(v);
    Ok(())
}

fn print_down(ctx: &Ctx, name: &str) -> Result<()> {
    if ctx.json() {
        ctx.print_json(&json!({ "grid": name, "state": "gone" }))
    } else {
        println!("grid {name} is down");
        Ok(())
    }
}

fn print_list(ctx: &Ctx, grids: &[GridView]) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(&grids);
    }
    if grids.is_empty() {
        println!("no grids");
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:>7} {:<12} EXPIRES",
        "NAME", "STATE", "MEMBERS", "NETWORK"
    );
    for g in grids {
        println!(
            "{:<24} {:<10} {:>7} {:<12} {}",
            g.name,
            g.state,
            g.members.len(),
            g.network.as_deref().unwrap_or("-"),
            g.expires.as_deref().unwrap_or("never")
        );
    }
    Ok(())
}

fn print_one(ctx: &Ctx, v: &GridView) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(v);
    }
    println!("grid:     {}", v.name);
    println!("owner:    {}", v.owner);
    println!("state:    {}", v.state);
    println!(
        "network:  {}",
        v.network.as_deref().unwrap_or("- (loopback only)")
    );
    println!("expires:  {}", v.expires.as_deref().unwrap_or("never"));
    println!(
        "order:    {}",
        v.stages
            .iter()
            .map(|s| s.join(", "))
            .collect::<Vec<_>>()
            .join(" → ")
    );
    if let Some(e) = &v.error {
        println!("error:    {e}");
    }
    print_members(v);
    Ok(())
}

fn print_members(v: &GridView) {
    println!(
        "{:<10} {:<13} {:<10} {:<28} {:<16} SSH",
        "ROLE", "INSTANCE", "STATE", "HOSTNAME", "ADDRESS"
    );
    for m in &v.members {
        println!(
            "{:<10} {:<13} {:<10} {:<28} {:<16} {}",
            format!("{}/{}", m.role, m.index),
            m.instance_id,
            m.state,
            m.hostname.as_deref().unwrap_or("-"),
            m.address.as_deref().unwrap_or("-"),
            m.ssh_command.as_deref().unwrap_or("-")
        );
    }
}
