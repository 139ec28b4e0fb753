//! `vfarm serve`: the HTTP service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ctx::Ctx;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8750, none with --socket alone). Plain HTTP
    /// is allowed on loopback only; elsewhere give --tls-cert and --tls-key.
    #[arg(long, env = "VFARM_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate (PEM; a chain may follow the leaf).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Accept client certificates from the CAs in DIR (IGTF layout: <hash>.0 certificates,
    /// <hash>.r0 CRLs, e.g. /etc/grid-security/certificates); a revoked one is refused.
    #[arg(long, value_name = "DIR", requires = "tls_cert")]
    pub(crate) client_ca_dir: Option<PathBuf>,
    /// A user with admin rights, repeatable, added to `admins` in the config: a token's user,
    /// a login name, a certificate subject (from any CA the client CA directory trusts for
    /// it), or `<subject> issuer=<issuer>` (that CA only, as whoami shows it).
    #[arg(long = "admin", value_name = "USER")]
    pub(crate) admins: Vec<String>,
    /// Service configuration: admins, hostname pool, quotas (default: <data>/serve.toml).
    #[arg(long, value_name = "FILE", env = "VFARM_SERVE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Serve on this unix socket (alone, or beside --listen); callers are identified by the
    /// kernel (peer credentials: their login name; root is an admin), no token needed.
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Let the members of this group use the unix socket (mode 0660); without it only the
    /// service's own user may (0600).
    #[arg(long, value_name = "GROUP", requires = "socket")]
    pub(crate) socket_group: Option<String>,
    /// Log lines on stderr: text (the usual `tracing` format) or json (one object a line).
    #[arg(long, value_enum, default_value = "text", env = "VFARM_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// Nodes: the certificate fingerprints an admin must present (the control's, from join).
    #[arg(skip)]
    pub(crate) admin_pins: Option<Vec<String>>,
}

/// How `vfarm serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The group id of `--socket-group` (a name through NSS, as `getent` finds it, or a number).
fn socket_group_id(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let out = std::process::Command::new("getent")
        .args(["group", "--", name])
        .output()
        .context("--socket-group: cannot run getent to look the group up")?;
    let line = String::from_utf8_lossy(&out.stdout);
    line.trim()
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .filter(|_| out.status.success())
        .ok_or_else(|| anyhow::anyhow!("--socket-group: no group `{name}` on this host"))
}

/// Where `vfarm serve` listens without --listen (and without --socket alone).
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8750);

/// How long a stopping service waits for open requests (event streams never finish).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the reaper looks for expired instances (one indexed query when none is due).
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The service configuration file `vfarm serve` reads without `--config`: `$VFARM_SERVE_CONFIG`,
/// else `<data>/serve.toml`.
pub fn config_path(ctx: &Ctx) -> PathBuf {
    std::env::var_os("VFARM_SERVE_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| vfarm_auth::ServeConfig::default_path(&ctx.data_dir))
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<i32> {
    run_with(ctx, args, None)
}

/// What a node (`vfarm node`) adds to the service: images fetched from its control.
pub struct NodeHooks {
    pub puller: vfarm_service::local::ImagePuller,
}

pub fn run_with(ctx: &Ctx, args: ServeArgs, node: Option<NodeHooks>) -> Result<i32> {
    limit_malloc_arenas();
    // `--socket` alone serves only there: a second service on another socket must not
    // collide with the first on the default port.
    let listen = match (args.listen, &args.socket) {
        (None, Some(_)) => None,
        (l, _) => Some(l.unwrap_or(DEFAULT_LISTEN)),
    };
    // Refuse before anything starts: credentials must not cross a network in the clear.
    if let Some(listen) = listen.filter(|l| args.tls_cert.is_none() && !l.ip().is_loopback()) {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "listen",
            value: listen.to_string(),
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
    tracing::info!(
        config = %config_path.display(),
        exists = config_path.exists(),
        admins = config.admins.len() + args.admins.len(),
        root_is_admin = config.root_is_admin.unwrap_or(true),
        hostnames = config.hostnames.len(),
        data_dir = %ctx.data_dir.display(),
        listen = ?listen,
        socket = ?args.socket,
        tls = args.tls_cert.is_some(),
        "config loaded"
    );
    let client_ca_dir = args
        .client_ca_dir
        .clone()
        .or_else(|| config.client_ca_dir.clone());
    if client_ca_dir.is_some() && args.tls_cert.is_none() {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "trust.client_ca_dir",
            value: config_path.display().to_string(),
            reason: "client certificates need TLS: add --tls-cert FILE --tls-key FILE".into(),
        }
        .into());
    }
    let socket_gid = args
        .socket_group
        .as_deref()
        .map(socket_group_id)
        .transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(vfarm_api::TlsConfigSource::new(
            vfarm_api::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca_dir: client_ca_dir.clone(),
                crl_missing: config.crl_missing,
                require_namespaces: config.require_namespaces,
                on_refusal: Some(audit_refusals(ctx)),
            },
        )?)),
        _ => None,
    };
    // A previous service may have died mid-create or mid-destroy: make records and host
    // agree before taking requests. Running instances keep running.
    let fixed = vfarm_service::local::reconcile(ctx)?;
    if fixed.unfinished_creates + fixed.orphan_dirs + fixed.orphan_holds + fixed.settled_operations
        > 0
    {
        eprintln!(
            "vfarm: reconciled after an unclean stop: {} unfinished create(s) removed, {} \
             orphan instance dir(s) cleaned up, {} orphan hold(s) released, {} create \
             operation(s) settled",
            fixed.unfinished_creates,
            fixed.orphan_dirs,
            fixed.orphan_holds,
            fixed.settled_operations
        );
    }
    // The site's networks: up (idempotent), instances' links back, leftovers removed.
    for line in vfarm_service::net::reconcile(ctx, &config)? {
        eprintln!("vfarm: {line}");
    }
    // Grids a killed service left half made are rolled back, half torn down finished.
    let settled = vfarm_service::grids::reconcile(ctx)?;
    for g in &settled.rolled_back {
        eprintln!("vfarm: grid {g} was being made when the service stopped: rolled back");
    }
    for g in &settled.finished {
        eprintln!("vfarm: grid {g} was being torn down when the service stopped: finished");
    }
    // Choose the OCI runtime now (a probe container on a fresh data dir), not in the first
    // burst of creates. Without one the service still serves images; creates say why.
    let runtime = std::env::var("VFARM_OCI_RUNTIME").unwrap_or_else(|_| "auto".into());
    if let Err(e) =
        vfarm_driver::oci::OciDriver::new(&ctx.data_dir, runtime.parse().expect("infallible"))
    {
        eprintln!("vfarm: warning: oci instances cannot be created here: {e}");
    }
    let store = ctx.store()?;
    let (store_backend, store_location) = (store.backend(), store.location().to_string());
    let mut state = vfarm_api::AppState::new(ctx.data_dir.clone(), store)?;
    let admins = config.admins.iter().chain(&args.admins).cloned();
    state.auth = vfarm_api::AuthPolicy::new(admins);
    state.auth.root_is_admin = config.root_is_admin.unwrap_or(true);
    state.client_ca_dir = client_ca_dir;
    state.auth.admin_pins = args
        .admin_pins
        .clone()
        .map(|p| std::sync::Arc::new(p.into_iter().collect()));
    let mut admission = crate::cmd::instance::Admission::from_config(&config);
    if let Some(cert) = &args.tls_cert {
        admission.reserved = names_of_pem_file(cert)?;
    }
    state.grids = Some(std::sync::Arc::new(vfarm_service::grids::GridService {
        env: ctx.fresh(),
        admission: admission.clone(),
    }));
    let busy = vfarm_service::local::Busy::default();
    let mut service = vfarm_service::local::Service::new(ctx, admission, busy.clone());
    let is_node = node.is_some();
    if let Some(n) = node {
        service.puller = Some(n.puller.clone());
        state.migration = Some(std::sync::Arc::new(
            vfarm_service::node_migration::NodeMigrations::new(
                ctx,
                listen.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |l| l.ip()),
                n.puller,
                busy.clone(),
            ),
        ));
    }
    let service = std::sync::Arc::new(service);
    // A control with a site CA and a certificate of its own can take nodes: instances then
    // go to the nodes that joined (`vfarm host add`), the rest stays as it is.
    let site_ca = vfarm_auth::ca::ca_dir(&ctx.data_dir).join("ca.pem");
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) if !is_node && site_ca.is_file() => {
            let nodes = vfarm_service::cluster::NodeClient::new(cert, key, &site_ca)?;
            let cluster = std::sync::Arc::new(vfarm_service::cluster::Cluster::new(
                ctx,
                service.clone(),
                nodes,
                config.placement,
                config.ratios,
            ));
            vfarm_service::cluster::spawn_monitor(ctx, cluster.clone());
            state.server_subject = Some(subject_of_pem_file(cert)?);
            state.server_fingerprint = Some(vfarm_auth::dn::fingerprint_of_pem(
                &std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            )?);
            state.instances = Some(cluster);
        }
        _ => state.instances = Some(service),
    }
    vfarm_service::local::spawn_watcher(ctx, state.events.clone(), busy);
    state.usage = Some(vfarm_service::stats::spawn_sampler(ctx));
    vfarm_api::live::spawn_job_watcher(state.store.clone(), state.job_events.clone());
    // The reaper destroys expired instances; it runs beside the HTTP service and survives
    // its own failures (they are logged and retried on the next round).
    let reaper_ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    std::thread::spawn(move || loop {
        // Grids first: their members are reaped with them, as a whole.
        if let Err(e) = vfarm_service::grids::reap_expired(&reaper_ctx) {
            tracing::warn!("reaper (grids): {e:#}");
        }
        if let Err(e) = crate::cmd::instance::reap_expired(&reaper_ctx) {
            tracing::warn!("reaper: {e:#}");
        }
        std::thread::sleep(REAP_INTERVAL);
    });
    // The job dispatcher starts queued jobs as capacity allows and reconciles claimed jobs
    // whose runner is gone (also those a previous, killed service left).
    vfarm_service::dispatch::spawn_dispatcher(ctx)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = match listen {
            Some(l) => Some(
                tokio::net::TcpListener::bind(l)
                    .await
                    .with_context(|| format!("cannot listen on {l}"))?,
            ),
            None => None,
        };
        if let Some(listener) = &listener {
            let addr = listener.local_addr()?;
            // One line on stdout so scripts and tests learn the address (useful with port 0).
            println!(
                "vfarm: serving on {}://{addr} (data dir {}, state in {} {})",
                if tls.is_some() { "https" } else { "http" },
                ctx.data_dir.display(),
                store_backend,
                store_location
            );
            tracing::info!(%addr, "serving");
        }
        // One signal stops every listener.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        tokio::spawn(async move {
            shutdown().await;
            let _ = stop_tx.send(());
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        let unix = match &args.socket {
            Some(path) => {
                let unix = vfarm_api::tls::bind_unix(path, socket_gid)
                    .with_context(|| format!("cannot listen on --socket {}", path.display()))?;
                println!(
                    "vfarm: serving on unix:{}{}",
                    path.display(),
                    if listener.is_none() {
                        format!(
                            " (data dir {}, state in {store_backend} {store_location})",
                            ctx.data_dir.display()
                        )
                    } else {
                        String::new()
                    }
                );
                tracing::info!(socket = %path.display(), "serving");
                Some(unix)
            }
            None => None,
        };
        let unix_state = state.clone();
        let unix_stop = stopped(stop_rx.clone());
        let unix_server = async move {
            match unix {
                Some(u) => vfarm_api::serve_unix(u, unix_state, unix_stop).await,
                None => std::future::pending().await,
            }
        };
        let tcp_server = async {
            match (listener, tls) {
                (Some(l), Some(tls)) => {
                    vfarm_api::serve_tls(l, tls, state, stopped(stop_rx.clone())).await
                }
                (Some(l), None) => vfarm_api::serve(l, state, stopped(stop_rx.clone())).await,
                (None, _) => std::future::pending().await,
            }
        };
        // The service ends when a listener ends (after the signal, or failing).
        let server = async {
            tokio::select! {
                r = tcp_server => r,
                r = unix_server => r,
            }
        };
        // Graceful shutdown waits for open connections, and an event stream or a long poll
        // never ends by itself: after the signal, give requests a moment, then go.
        let deadline = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = server => r.context("server failed")?,
            _ = deadline => tracing::info!("stopped with connections still open"),
        }
        if let Some(path) = &args.socket {
            let _ = std::fs::remove_file(path);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

/// The subject of the first certificate in a PEM file (one-line form).
fn subject_of_pem_file(path: &std::path::Path) -> Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    vfarm_auth::dn::subject_of_pem(&pem)
        .with_context(|| format!("{}: no certificate", path.display()))
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

/// glibc gives each thread that allocates concurrently its own arena and keeps freed memory
/// there; with tokio's blocking pool serving large listings from many threads, the service's
/// resident size grows with the thread count instead of the work. Two arenas keep it near
/// what is in use (measured in BENCHMARKS.md, "The service").
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before the service's
    // threads start, and a refusal (return 0) just leaves the default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The DNS names and CN of the service's certificate: names no instance may take.
fn names_of_pem_file(path: &std::path::Path) -> Result<Vec<String>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    vfarm_auth::dn::names_of_pem(&pem).with_context(|| format!("{}", path.display()))
}

/// Refused client certificates go to the audit log (actor = the certificate's subject), on
/// a thread of their own: the handshake does not wait for the database.
fn audit_refusals(ctx: &Ctx) -> vfarm_api::RefusalSink {
    let data = ctx.data_dir.clone();
    let (output, verbose) = (ctx.output, ctx.verbose);
    let (tx, rx) = std::sync::mpsc::channel::<(String, String, String)>();
    std::thread::spawn(move || {
        let ctx = Ctx::new(data, output, verbose);
        for (subject, code, reason) in rx {
            let done = ctx.store().and_then(|s| {
                s.audit(
                    &subject,
                    "client-cert",
                    "TLS handshake",
                    &subject,
                    &format!("denied:{code}"),
                    &serde_json::json!({ "reason": reason }),
                )
                .map_err(Into::into)
            });
            if let Err(e) = done {
                tracing::error!("cannot audit a refused client certificate: {e:#}");
            }
        }
    });
    let tx = std::sync::Mutex::new(tx);
    vfarm_api::RefusalSink(std::sync::Arc::new(move |s: &str, c: &str, r: &str| {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send((
            s.to_string(),
            c.to_string(),
            r.to_string(),
        ));
    }))
}
