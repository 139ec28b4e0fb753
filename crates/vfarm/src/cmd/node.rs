//! `vfarm node`: one host of several. The agent (join, heartbeats, image pulls) is
//! `vfarm_service::node`; this is its flags and the start-up: join on first start, then
//! serve the instance API on the node's own address with mutual TLS — the control's
//! certificate is the only admin. It is an ordinary vfarm data dir underneath.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use vfarm_service::node::{self, Joined, NodeConfig, NodeFiles};

use crate::cmd::serve::{NodeHooks, ServeArgs};
use crate::ctx::Ctx;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The control service (https://ADDRESS:PORT).
    #[arg(long, value_name = "URL", env = "VFARM_CONTROL")]
    pub control: String,
    /// This host's name, as given to `vfarm host add` on the control.
    #[arg(long)]
    pub name: String,
    /// Where this node's API listens: an address and port the control can reach.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// A file holding the one-time join token `vfarm host add` printed (first start only;
    /// `-` reads it from standard input). Without it, $VFARM_JOIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Refused with the reason: a token on the command line shows in `ps`.
    #[arg(long = "token", hide = true)]
    pub token_argv: Option<String>,
    /// The site CA certificate, to check the control's at join (first start only; it is kept
    /// in <data>/node/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub heartbeat: u64,
}

pub fn run(ctx: &Ctx, a: NodeArgs) -> Result<i32> {
    let control = a.control.trim_end_matches('/').to_string();
    if !control.starts_with("https://") {
        bail!("--control `{control}` must be an https:// URL (nodes and control use mutual TLS)");
    }
    vfarm_auth::ca::check_hostname(&a.name).context("--name")?;
    let cfg = NodeConfig {
        control,
        name: a.name.clone(),
        listen: a.listen,
        heartbeat: Duration::from_secs(a.heartbeat),
    };
    let joined = match node::joined(ctx, &a.name)? {
        Some(j) => j,
        None => join(ctx, &a, &cfg)?,
    };
    // The store is made (and migrated) here, before the heartbeat thread and the service
    // open it on connections of their own.
    ctx.store()?;
    let client = node::client(ctx, Duration::from_secs(600))?;
    let doctor_ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    node::start_heartbeats(
        ctx.fresh(),
        client.clone(),
        &cfg,
        Box::new(move || crate::doctor::report(&doctor_ctx)),
    );
    let puller = node::puller(ctx.fresh(), client, cfg.control.clone());
    eprintln!(
        "vfarm: node {} joined to {} (certificate {}), control {}",
        joined.name, joined.control, joined.serial, joined.control_subject
    );
    let files = NodeFiles::of(ctx);
    crate::cmd::serve::run_with(
        ctx,
        ServeArgs {
            listen: Some(a.listen),
            tls_cert: Some(files.cert()),
            tls_key: Some(files.key()),
            client_ca_dir: Some(files.trust()),
            admins: vec![joined.control_subject.clone()],
            config: None,
            socket: None,
            socket_group: None,
            log_format: crate::cmd::serve::LogFormat::Text,
            admin_pins: (!joined.control_fingerprint.is_empty())
                .then(|| vec![joined.control_fingerprint.clone()]),
        },
        Some(NodeHooks { puller }),
    )
}

/// First start: the token and the site CA from the flags, then the service's join.
fn join(ctx: &Ctx, a: &NodeArgs, cfg: &NodeConfig) -> Result<Joined> {
    let token = crate::cmd::secret(
        "token",
        a.token_argv.as_deref(),
        a.token_file.as_deref(),
        "VFARM_JOIN_TOKEN",
    )?;
    let (Some(token), Some(ca)) = (&token, &a.ca) else {
        bail!(
            "this data dir has not joined a control yet: give the token in $VFARM_JOIN_TOKEN or \
             --token-file (from `vfarm host add {}` \
             on the control) and --ca (the site CA certificate)",
            a.name
        );
    };
    let ca_pem = std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
    node::join(ctx, cfg, token, &ca_pem)
}
