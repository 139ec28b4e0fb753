//! The node agent: one host of several. It joins its control once (a one-time token from
//! `vfarm host add` buys a certificate from the site CA) and keeps the certificate, the site
//! CA and the control's CRL and namespace files in `<data>/node/`; then it reports
//! capacity, drivers and instances by heartbeat, and fetches the control's images on first
//! use, verified by sha512. The node keeps running what it runs when the control is away.
//! The binary (`vfarm node`) turns its flags into a [`NodeConfig`] and serves the instance
//! API with these files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vfarm_proto::hosts::{
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, ReportedInstance, TrustFile,
};

use crate::local::ImagePuller;
use crate::Env;

/// How a node reaches its control and where it listens.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The control's `https://ADDRESS:PORT`, without a trailing slash.
    pub control: String,
    /// This host's name, as given to `vfarm host add` on the control.
    pub name: String,
    /// Where this node's API listens: an address and port the control can reach.
    pub listen: SocketAddr,
    /// Time between heartbeats.
    pub heartbeat: Duration,
}

/// What a joined node keeps in `<data>/node/node.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Joined {
    pub name: String,
    pub control: String,
    pub control_subject: String,
    pub subject: String,
    pub serial: String,
    /// SHA-256 of the control's certificate: the only admin (empty for nodes joined before
    /// pinning; they trust the control's subject alone).
    #[serde(default)]
    pub control_fingerprint: String,
}

/// The node's files under `<data>/node/`.
pub struct NodeFiles {
    dir: PathBuf,
}

impl NodeFiles {
    pub fn of(env: &Env) -> NodeFiles {
        NodeFiles {
            dir: env.data_dir.join("node"),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("hostcert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("hostkey.pem")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The trust directory: the site CA, its CRL and namespace files.
    pub fn trust(&self) -> PathBuf {
        self.dir.join("certificates")
    }
}

/// What this data dir joined as, or `None` if it has not joined a control yet. Joined under
/// another name is an error: one data dir is one node.
pub fn joined(env: &Env, name: &str) -> Result<Option<Joined>> {
    let files = NodeFiles::of(env);
    match std::fs::read(files.state()) {
        Ok(b) => {
            let j: Joined = serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", files.state().display()))?;
            if j.name != name {
                bail!(
                    "this data dir joined as `{}`, not `{name}` (use another --data, or the same name)",
                    j.name
                );
            }
            Ok(Some(j))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context(format!("cannot read {}", files.state().display())),
    }
}

/// First start: trade the token for a certificate (checking the control's with `ca_pem`, the
/// site CA), and keep what the node needs.
pub fn join(env: &Env, cfg: &NodeConfig, token: &str, ca_pem: &[u8]) -> Result<Joined> {
    let files = NodeFiles::of(env);
    let control = &cfg.control;
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).context("--ca")?)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = http
        .post(format!("{control}/api/v1/hosts/join"))
        .json(&JoinRequest {
            name: cfg.name.clone(),
            token: token.to_string(),
            address: cfg.listen.ip().to_string(),
            port: Some(cfg.listen.port()),
        })
        .send()
        .with_context(|| format!("cannot reach the control at {control}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: serde_json::Value = resp.json().unwrap_or_default();
        bail!(
            "the control refused to join `{}` ({status}): {}",
            cfg.name,
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
    tracing::info!(node = %joined.name, serial = %joined.serial, control = %control, "joined");
    Ok(joined)
}

/// Take over the control's CRL and namespace files (IGTF names only), each replaced
/// atomically and only when changed, so the TLS layer reloads when there is news.
pub fn write_trust_files(dir: &Path, files: &[TrustFile]) -> Result<bool> {
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

/// The node's client to its control: its certificate, and only the site CA as trust.
pub fn client(env: &Env, timeout: Duration) -> Result<reqwest::blocking::Client> {
    let files = NodeFiles::of(env);
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

/// Measures what this host can run (the binary's `vfarm doctor`).
pub type Checks = Box<dyn Fn() -> vfarm_core::doctor::Report + Send>;

/// Send a heartbeat every `cfg.heartbeat`, on threads of their own, for as long as the
/// process runs; a failure is logged once, and so is the control answering again.
pub fn start_heartbeats(
    env: Env,
    http: reqwest::blocking::Client,
    cfg: &NodeConfig,
    checks: Checks,
) {
    let (control, url, every) = (
        cfg.control.clone(),
        format!("https://{}", cfg.listen),
        cfg.heartbeat,
    );
    // The doctor's probes take seconds (a KVM test boot, Slurm's controller): measured on a
    // thread of their own at start and every few minutes, so heartbeats never wait for them
    // (a node silent for 10 s is down).
    let report: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    {
        let report = report.clone();
        std::thread::spawn(move || loop {
            let r = serde_json::to_value(checks()).ok();
            *report.lock().unwrap_or_else(|e| e.into_inner()) = r;
            std::thread::sleep(CHECKS_EVERY);
        });
    }
    std::thread::spawn(move || {
        let trust = NodeFiles::of(&env).trust();
        let mut failing = false;
        loop {
            let sent = capacity(&env).and_then(|mut hb| {
                hb.url = url.clone();
                hb.checks = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
                send_heartbeat(&http, &control, &trust, every, &hb)
            });
            match sent {
                Ok(()) if failing => {
                    tracing::info!("heartbeat: the control answers again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!("heartbeat to {control} failed (the node runs on): {e:#}");
                    failing = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(every);
        }
    });
}

fn send_heartbeat(
    http: &reqwest::blocking::Client,
    control: &str,
    trust: &Path,
    every: Duration,
    hb: &HeartbeatRequest,
) -> Result<()> {
    let resp = http
        .post(format!("{control}/api/v1/hosts/heartbeat"))
        .timeout(every.max(Duration::from_secs(5)))
        .json(hb)
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
    let answer: HeartbeatResponse = resp.json()?;
    if write_trust_files(trust, &answer.trust_files)? {
        tracing::info!("heartbeat: took over the control's CRL / namespace files");
    }
    Ok(())
}

/// This host as the control should see it (without its URL and checks, which the
/// heartbeat adds).
pub fn capacity(env: &Env) -> Result<HeartbeatRequest> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024);
    let disk_mib = free_mib(&env.data_dir);
    let mut features = Vec::new();
    if on_path("runc") {
        features.push("oci".to_string());
    }
    if on_path("qemu-system-x86_64") {
        features.push("qemu".to_string());
        features.push("qemu:snapshots".to_string());
        features.push("qemu:migration".to_string());
    }
    // The site's networks this node can put instances on.
    let cfg = vfarm_auth::ServeConfig::load(&vfarm_auth::ServeConfig::default_path(&env.data_dir))?;
    features.extend(cfg.networks.iter().map(|n| crate::net::feature(&n.name)));
    let instances = env
        .store()?
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

fn free_mib(dir: &Path) -> i64 {
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

/// What the node's instance service calls for an image it lacks: [`pull`] from the control.
pub fn puller(env: Env, http: reqwest::blocking::Client, control: String) -> ImagePuller {
    Arc::new(move |image: &str| pull(&env, &http, &control, image))
}

/// Make `image` (the control's id) present here: fetched from the control's repository and
/// verified, once; instances share it like any other image.
pub fn pull(env: &Env, http: &reqwest::blocking::Client, control: &str, image: &str) -> Result<()> {
    let repo = env.images()?;
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
    if fetched {
        tracing::info!(
            "image {} ({}) fetched from the control in {:.1} s, sha512 verified",
            got.display_name(),
            vfarm_core::ByteSize(got.size()),
            began.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
