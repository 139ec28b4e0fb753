//! `vfarm node`: one host of several. It joins its control once (a one-time token from
//! `vfarm host add` buys a certificate from the site CA), then serves the instance API on
//! its own address with mutual TLS — the control's certificate is the only admin — and
//! reports capacity, drivers and instances by heartbeat. Images come from the control's
//! repository on first use, verified by sha512. The node keeps running what it runs when
//! the control is away; it is an ordinary vfarm data dir underneath.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use vfarm_proto::hosts::{HeartbeatRequest, JoinRequest, JoinResponse, ReportedInstance};

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

/// What a joined node keeps in `<data>/node/node.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Joined {
    name: String,
    control: String,
    control_subject: String,
    subject: String,
    serial: String,
    /// SHA-256 of the control's certificate: the only admin (empty for nodes joined before
    /// pinning; they trust the control's subject alone).
    #[serde(default)]
    control_fingerprint: String,
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn state(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("hostcert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("hostkey.pem")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn trust(&self) -> PathBuf {
        self.dir.join("certificates")
    }
}

pub fn run(ctx: &Ctx, a: NodeArgs) -> Result<i32> {
    let control = a.control.trim_end_matches('/').to_string();
    if !control.starts_with("https://") {
        bail!("--control `{control}` must be an https:// URL (nodes and control use mutual TLS)");
    }
    vfarm_auth::ca::check_hostname(&a.name).context("--name")?;
    let files = Files {
        dir: ctx.data_dir.join("node"),
    };
    let joined = match std::fs::read(files.state()) {
        Ok(b) => {
            let j: Joined = serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", files.state().display()))?;
            if j.name != a.name {
                bail!(
                    "this data dir joined as `{}`, not `{}` (use another --data, or the same name)",
                    j.name,
                    a.name
                );
            }
            j
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => join(&a, &control, &files)?,
        Err(e) => return Err(e).context(format!("cannot read {}", files.state().display())),
    };
    // The store is made (and migrated) here, before the heartbeat thread and the service
    // open it on connections of their own.
    ctx.store()?;
    let client = client(&files, Duration::from_secs(600))?;
    let url = format!("https://{}", a.listen);
    let beat_client = client.clone();
    let (beat_ctx, beat_control) = (
        Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose),
        control.clone(),
    );
    let every = Duration::from_secs(a.heartbeat);
    std::thread::spawn(move || heartbeats(&beat_ctx, &beat_client, &beat_control, &url, every));
    let pull_ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
    let puller: vfarm_service::local::ImagePuller =
        std::sync::Arc::new(move |image: &str| pull(&pull_ctx, &client, &control, image));
    eprintln!(
        "vfarm: node {} joined to {} (certificate {}), control {}",
        joined.name, joined.control, joined.serial, joined.control_subject
    );
    crate::cmd::serve::run_with(
        ctx,
        ServeArgs {
            listen: a.listen,
            tls_cert: Some(files.cert()),
            tls_key: Some(files.key()),
            client_ca_dir: Some(files.trust()),
            admins: vec![joined.control_subject.clone()],
            config: None,
            socket: None,
            socket_group: None,
            admin_pins: (!joined.control_fingerprint.is_empty())
                .then(|| vec![joined.control_fingerprint.clone()]),
        },
        Some(NodeHooks { puller }),
    )
}

/// First start: trade the token for a certificate, and keep what the node needs.
fn join(a: &NodeArgs, control: &str, files: &Files) -> Result<Joined> {
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
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).context("--ca")?)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = http
        .post(format!("{control}/api/v1/hosts/join"))
        .json(&JoinRequest {
            name: a.name.clone(),
            token: token.clone(),
            address: a.listen.ip().to_string(),
            port: Some(a.listen.port()),
        })
        .send()
        .with_context(|| format!("cannot reach the control at {control}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: serde_json::Value = resp.json().unwrap_or_default();
        bail!(
            "the control refused to join `{}` ({status}): {}",
            a.name,
            v["error"]["message"].as_str().unwrap_or("no reason given")
        );
    }
    let j: JoinResponse = resp.json().context("the control's join answer")?;
    std::fs::create_dir_all(files.trust())?;
    write_private(&files.key(), j.key_pem.as_bytes())?;
    std::fs::write(files.cert(), &j.cert_pem)?;
    std::fs::write(files.ca(), &j.ca_pem)?;
    let hashed = vfarm_auth::dn::hashed_name_of_pem(j.ca_pem.as_bytes())?;
    std::fs::write(files.trust().join(hashed), &j.ca_pem)?;
    write_trust_files(&files.trust(), &j.trust_files)?;
    let joined = Joined {
        name: j.name,
        control: control.to_string(),
        control_subject: j.control_subject,
        subject: j.subject,
        serial: j.serial,
        control_fingerprint: j.control_fingerprint,
    };
    // Written last: a join cut short leaves no state that claims it worked.
    std::fs::write(files.state(), serde_json::to_vec_pretty(&joined)?)?;
    Ok(joined)
}

/// Take over the control's CRL and namespace files (IGTF names only), each replaced
/// atomically and only when changed, so the TLS layer reloads when there is news.
fn write_trust_files(dir: &Path, files: &[vfarm_proto::hosts::TrustFile]) -> Result<bool> {
    let mut changed = false;
    for f in files {
        let (stem, ext) = f.name.split_once('.').unwrap_or((&f.name, ""));
        let igtf = stem.len() == 8
            && stem.bytes().all(|b| b.is_ascii_hexdigit())
            && ["r0", "namespaces", "signing_policy"].contains(&ext);
        if !igtf {
            bail!("the control sent a trust file named `{}`", f.name);
        }
        let path = dir.join(&f.name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(f.content.as_str()) {
            continue;
        }
        let tmp = dir.join(format!(".{}.tmp", f.name));
        std::fs::write(&tmp, &f.content)?;
        std::fs::rename(&tmp, &path)?;
        changed = true;
    }
    Ok(changed)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// The node's client: its certificate, and only the site CA as trust.
fn client(files: &Files, timeout: Duration) -> Result<reqwest::blocking::Client> {
    let mut pem = std::fs::read(files.cert())?;
    pem.extend(std::fs::read(files.key())?);
    let ca = std::fs::read(files.ca())?;
    Ok(reqwest::blocking::Client::builder()
        .identity(reqwest::Identity::from_pem(&pem).context("node certificate")?)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).context("site CA")?)
        .tls_built_in_root_certs(false)
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .build()?)
}

/// How often a node measures again what it can run (`vfarm doctor`) for its heartbeat.
const CHECKS_EVERY: Duration = Duration::from_secs(300);

fn heartbeats(
    ctx: &Ctx,
    http: &reqwest::blocking::Client,
    control: &str,
    url: &str,
    every: Duration,
) {
    let mut failing = false;
    // The doctor's probes take seconds (a KVM test boot, Slurm's controller): measured on a
    // thread of their own at start and every few minutes, so heartbeats never wait for them
    // (a node silent for 10 s is down).
    let checks: Arc<Mutex<Option<vfarm_core::doctor::Report>>> = Arc::default();
    {
        let checks = checks.clone();
        let ctx = Ctx::new(ctx.data_dir.clone(), ctx.output, ctx.verbose);
        std::thread::spawn(move || loop {
            let r = crate::doctor::report(&ctx);
            *checks.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            std::thread::sleep(CHECKS_EVERY);
        });
    }
    let trust = ctx.data_dir.join("node").join("certificates");
    loop {
        let sent = capacity(ctx).and_then(|mut hb| {
            hb.url = url.to_string();
            hb.checks = checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok());
            let resp = http
                .post(format!("{control}/api/v1/hosts/heartbeat"))
                .timeout(every.max(Duration::from_secs(5)))
                .json(&hb)
                .send()?;
            if !resp.status().is_success() {
                let status = resp.status();
                let v: serde_json::Value = resp.json().unwrap_or_default();
                bail!(
                    "{status}: {}",
                    v["error"]["message"].as_str().unwrap_or("refused")
                );
            }
            // The control's current CRL: a certificate it revoked stops working here too.
            let answer: vfarm_proto::hosts::HeartbeatResponse = resp.json()?;
            if write_trust_files(&trust, &answer.trust_files)? {
                eprintln!("vfarm: heartbeat: took over the control's CRL / namespace files");
            }
            Ok(())
        });
        match sent {
            Ok(()) if failing => {
                eprintln!("vfarm: heartbeat: the control answers again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                eprintln!("vfarm: heartbeat to {control} failed (the node runs on): {e:#}");
                failing = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
}

/// This host as the control should see it.
fn capacity(ctx: &Ctx) -> Result<HeartbeatRequest> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024);
    let disk_mib = rustix_free_mib(&ctx.data_dir);
    let mut features = Vec::new();
    if on_path("runc") {
        features.push("oci".to_string());
    }
    if on_path("qemu-system-x86_64") {
        features.push("qemu".to_string());
        features.push("qemu:snapshots".to_string());
        features.push("qemu:migration".to_string());
    }
    let store = ctx.store()?;
    let instances = store
        .instances_brief()?
        .into_iter()
        .map(|r| ReportedInstance {
            id: r.id,
            state: r.state,
        })
        .collect();
    Ok(HeartbeatRequest {
        url: String::new(),
        cpus,
        memory_mib,
        disk_mib,
        features,
        instances,
        checks: None,
    })
}

fn rustix_free_mib(dir: &Path) -> i64 {
    match rustix::fs::statvfs(dir) {
        Ok(st) => (st.f_bavail.saturating_mul(st.f_frsize) / (1 << 20)) as i64,
        Err(_) => 0,
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Make `image` (the control's id) present here: fetched from the control's repository and
/// verified, once; instances share it like any other image.
fn pull(ctx: &Ctx, http: &reqwest::blocking::Client, control: &str, image: &str) -> Result<()> {
    let store = ctx.store()?;
    let repo = vfarm_image::Repository::open(&ctx.data_dir, store)?;
    if repo.get(image)?.is_some() {
        return Ok(());
    }
    let resp = http
        .get(format!("{control}/api/v1/images/{image}"))
        .send()
        .with_context(|| format!("cannot reach the control at {control}"))?;
    if !resp.status().is_success() {
        bail!("the control has no image `{image}` ({})", resp.status());
    }
    let img: vfarm_image::Image = resp.json().context("the control's image record")?;
    let mut fetch = |file: &str, dest: &Path| -> std::result::Result<(), String> {
        let mut resp = http
            .get(format!("{control}/repository/{}/{file}", img.id))
            .send()
            .map_err(|e| format!("cannot fetch {file}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("cannot fetch {file}: {}", resp.status()));
        }
        let mut out = std::fs::File::create(dest).map_err(|e| e.to_string())?;
        resp.copy_to(&mut out).map_err(|e| e.to_string())?;
        Ok(())
    };
    let began = std::time::Instant::now();
    let (got, fetched) = repo.mirror(&img, &mut fetch, "vfarm-node")?;
    if !fetched {
        return Ok(());
    }
    eprintln!(
        "vfarm: image {} ({}) fetched from the control in {:.1} s, sha512 verified",
        got.display_name(),
        vfarm_core::ByteSize(got.size()),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
