//! `vfarm serve`: the HTTP service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ctx::Ctx;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Plain HTTP is allowed on loopback only; elsewhere give
    /// --tls-cert and --tls-key.
    #[arg(long, default_value = "127.0.0.1:8750", env = "VFARM_LISTEN")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate (PEM; a chain may follow the leaf).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept client certificates from the CAs in DIR (IGTF layout: <hash>.0 certificates,
    /// <hash>.r0 CRLs, e.g. /etc/grid-security/certificates); a revoked one is refused.
    #[arg(long, value_name = "DIR", requires = "tls_cert")]
    client_ca_dir: Option<PathBuf>,
    /// A user with admin rights (a DN or a token's user); repeatable, added to `admins` in
    /// the config.
    #[arg(long = "admin", value_name = "DN")]
    admins: Vec<String>,
    /// Service configuration: admins, hostname pool, quotas (default: <data>/serve.toml).
    #[arg(long, value_name = "FILE", env = "VFARM_SERVE_CONFIG")]
    config: Option<PathBuf>,
    /// Also serve on this unix socket; callers are identified by the kernel (peer
    /// credentials: their login name), no token needed.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<i32> {
    // Refuse before anything starts: credentials must not cross a network in the clear.
    if args.tls_cert.is_none() && !args.listen.ip().is_loopback() {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "listen",
            value: args.listen.to_string(),
            reason: "plain HTTP is only allowed on a loopback address; add --tls-cert FILE \
                     --tls-key FILE (and --client-ca-dir DIR for client certificates)"
                .into(),
        }
        .into());
    }
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| vfarm_auth::ServeConfig::default_path(&ctx.data_dir));
    // The default file may be absent (no admins, pool or quotas); a named one must exist.
    if args.config.is_some() && !config_path.exists() {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "config",
            value: config_path.display().to_string(),
            reason: "no such file".into(),
        }
        .into());
    }
    let config = vfarm_auth::ServeConfig::load(&config_path)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(vfarm_api::TlsConfigSource::new(
            vfarm_api::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca_dir: args.client_ca_dir.clone(),
            },
        )?)),
        _ => None,
    };
    let store = ctx.store()?;
    let mut state = vfarm_api::AppState::new(ctx.data_dir.clone(), store)?;
    let admins = config.admins.iter().chain(&args.admins).cloned();
    state.auth = vfarm_api::AuthPolicy::new(admins);
    // The reaper destroys expired instances; it runs beside the HTTP service and survives
    // its own failures (they are logged and retried on the next round).
    let reaper_ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    std::thread::spawn(move || loop {
        if let Err(e) = crate::cmd::instance::reap_expired(&reaper_ctx) {
            tracing::warn!("reaper: {e:#}");
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    // The job dispatcher starts queued jobs as capacity allows and reconciles claimed jobs
    // whose runner is gone (also those a previous, killed service left).
    crate::cmd::job::spawn_dispatcher(ctx)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // One line on stdout so scripts and tests learn the address (useful with port 0).
        println!(
            "vfarm: serving on {}://{addr} (data dir {})",
            if tls.is_some() { "https" } else { "http" },
            ctx.data_dir.display()
        );
        tracing::info!(%addr, "serving");
        // One signal stops every listener.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        tokio::spawn(async move {
            shutdown().await;
            let _ = stop_tx.send(());
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        if let Some(path) = &args.socket {
            let unix = vfarm_api::tls::bind_unix(path)
                .with_context(|| format!("cannot listen on --socket {}", path.display()))?;
            println!("vfarm: serving on unix:{}", path.display());
            let st = state.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = vfarm_api::serve_unix(unix, st, stop).await {
                    tracing::error!("unix socket server failed: {e}");
                }
            });
        }
        match tls {
            Some(tls) => vfarm_api::serve_tls(listener, tls, state, stopped(stop_rx)).await,
            None => vfarm_api::serve(listener, state, stopped(stop_rx)).await,
        }
        .context("server failed")?;
        if let Some(path) = &args.socket {
            let _ = std::fs::remove_file(path);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
