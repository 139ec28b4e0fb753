//! `vfarm token create|ls|revoke`: bearer tokens for the HTTP API. Locally run by whoever can
//! open the data directory (the site admin); with --server, each user manages their own
//! (`remote_lists`). The secret is printed once and stored only hashed; the operations are
//! `vfarm_service::tokens`.

use anyhow::Result;
use clap::Subcommand;
use vfarm_service::jobs::Origin;
use vfarm_service::tokens::{self, CreatedToken, TokenView};
use vfarm_service::Caller;

use crate::ctx::Ctx;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it once (alone on stdout, so `T=$(vfarm token create)` works).
    Create {
        /// The user the token stands for (default: your login name; with --server, your
        /// identity there, and only admins may name another). Use a certificate DN to give
        /// a grid user a token for tools that cannot present certificates.
        #[arg(long)]
        user: Option<String>,
        /// Lifetime, e.g. 12h, 30d, 1w (default: until revoked).
        #[arg(long)]
        expiry: Option<String>,
        /// A label shown by `token ls`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id (or paste the whole token); it stops working at once.
    Revoke {
        /// The token's id (or the whole token).
        id: String,
    },
}

pub fn run(ctx: &Ctx, cmd: TokenCmd) -> Result<i32> {
    let store = ctx.store()?;
    let caller = &Caller::local();
    match cmd {
        TokenCmd::Create { user, expiry, name } => {
            let req = tokens::CreateToken { user, name, expiry };
            print_created(ctx, &tokens::create(&store, caller, Origin::Local, req)?)?;
        }
        TokenCmd::Ls { user } => print_list(ctx, &tokens::list(&store, caller, user.as_deref())?)?,
        TokenCmd::Revoke { id } => {
            print_revoked(ctx, &tokens::revoke(&store, caller, Origin::Local, &id)?)?
        }
    }
    Ok(0)
}

/// The secret alone on stdout (`T=$(vfarm token create)`), the rest on stderr.
pub fn print_created(ctx: &Ctx, created: &CreatedToken) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(created);
    }
    eprintln!(
        "token {} for {} (expires: {}); shown once, store it now:",
        created.row.id,
        created.row.user,
        created.row.expires.as_deref().unwrap_or("never")
    );
    println!("{}", created.token);
    Ok(())
}

pub fn print_list(ctx: &Ctx, rows: &[TokenView]) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(&rows);
    }
    println!(
        "{:<12}  {:<8}  {:<24}  {:<24}  {:<24}  {:<16}  USER",
        "ID", "STATE", "CREATED", "EXPIRES", "LAST USED", "NAME"
    );
    let now = vfarm_store::now();
    for t in rows {
        println!(
            "{:<12}  {:<8}  {:<24}  {:<24}  {:<24}  {:<16}  {}",
            t.id,
            t.state(&now),
            t.created,
            t.expires.as_deref().unwrap_or("never"),
            t.last_used.as_deref().unwrap_or("-"),
            t.name.as_deref().unwrap_or("-"),
            t.user
        );
    }
    Ok(())
}

pub fn print_revoked(ctx: &Ctx, row: &TokenView) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(row);
    }
    println!(
        "revoked token {} of {} at {}",
        row.id,
        row.user,
        row.revoked.as_deref().unwrap_or("?")
    );
    Ok(())
}
