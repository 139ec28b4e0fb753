//! `vfarm token create|ls|revoke`: bearer tokens for the HTTP API. Run by whoever can open
//! the data directory (the site admin); the secret is printed once and stored only hashed.

use anyhow::Result;
use clap::Subcommand;
use vfarm_auth::audit::{self, Outcome};

use crate::ctx::Ctx;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it once (alone on stdout, so `T=$(vfarm token create)` works).
    Create {
        /// The user the token stands for (default: your login name). Use a certificate DN to
        /// give a grid user a token for tools that cannot present certificates.
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
    Revoke { id: String },
}

pub fn run(ctx: &Ctx, cmd: TokenCmd) -> Result<i32> {
    let store = ctx.store()?;
    match cmd {
        TokenCmd::Create { user, expiry, name } => {
            let expiry_secs = expiry
                .as_deref()
                .map(|e| vfarm_core::instance::parse_duration("expiry", e))
                .transpose()?;
            let user = user.unwrap_or_else(audit::local_actor);
            let created = vfarm_auth::token::create(
                &store,
                &user,
                name.as_deref(),
                expiry_secs,
                chrono::Utc::now(),
            )?;
            audit::record(
                &store,
                None,
                "token.create",
                &created.row.id,
                &Outcome::Ok,
                &serde_json::json!({ "user": user, "expires": created.row.expires }),
            )?;
            if ctx.json() {
                ctx.print_json(&created)?;
            } else {
                eprintln!(
                    "token {} for {} (expires: {}); shown once, store it now:",
                    created.row.id,
                    created.row.user,
                    created.row.expires.as_deref().unwrap_or("never")
                );
                println!("{}", created.token);
            }
        }
        TokenCmd::Ls { user } => {
            let rows = store.tokens(user.as_deref())?;
            if ctx.json() {
                ctx.print_json(&rows)?;
            } else {
                println!(
                    "{:<12}  {:<8}  {:<24}  {:<24}  {:<24}  {:<16}  USER",
                    "ID", "STATE", "CREATED", "EXPIRES", "LAST USED", "NAME"
                );
                let now = vfarm_store::now();
                for t in rows {
                    let state = if t.revoked.is_some() {
                        "revoked"
                    } else if t.expires.as_deref().is_some_and(|e| e <= now.as_str()) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<12}  {:<8}  {:<24}  {:<24}  {:<24}  {:<16}  {}",
                        t.id,
                        state,
                        t.created,
                        t.expires.as_deref().unwrap_or("never"),
                        t.last_used.as_deref().unwrap_or("-"),
                        t.name.as_deref().unwrap_or("-"),
                        t.user
                    );
                }
            }
        }
        TokenCmd::Revoke { id } => {
            let row = vfarm_auth::token::revoke(&store, &id)?;
            audit::record(
                &store,
                None,
                "token.revoke",
                &row.id,
                &Outcome::Ok,
                &serde_json::json!({ "user": row.user }),
            )?;
            if ctx.json() {
                ctx.print_json(&row)?;
            } else {
                println!(
                    "revoked token {} of {} at {}",
                    row.id,
                    row.user,
                    row.revoked.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(0)
}
