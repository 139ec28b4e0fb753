//! `vfarm serve`: the HTTP service.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;

use crate::ctx::Ctx;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Plain HTTP is meant for loopback; put TLS in front otherwise.
    #[arg(long, default_value = "127.0.0.1:8750", env = "VFARM_LISTEN")]
    listen: SocketAddr,
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<i32> {
    let store = ctx.store()?;
    let state = vfarm_api::AppState::new(ctx.data_dir.clone(), store)?;
    // The reaper destroys expired instances; it runs beside the HTTP service and survives
    // its own failures (they are logged and retried on the next round).
    let reaper_ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    std::thread::spawn(move || loop {
        if let Err(e) = crate::cmd::instance::reap_expired(&reaper_ctx) {
            tracing::warn!("reaper: {e:#}");
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
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
            "vfarm: serving on http://{addr} (data dir {})",
            ctx.data_dir.display()
        );
        tracing::info!(%addr, "serving");
        vfarm_api::serve(listener, state, shutdown())
            .await
            .context("server failed")?;
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
