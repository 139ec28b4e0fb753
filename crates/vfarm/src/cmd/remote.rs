//! `vfarm --server URL instance …` / `snapshot …`: the same commands against a remote
//! `vfarm serve`, through its REST API, with the same output as locally.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vfarm_api::instances::{InstanceView, SnapshotView};
use vfarm_image::Image;

use crate::cmd::image::{self, ImageCmd};
use crate::cmd::instance::{print_snapshots, print_table, print_view, InstanceCmd, SnapshotCmd};
use crate::ctx::Ctx;

/// Where the service is and who we are to it.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Act on a `vfarm serve` instead of this host's data dir: its base URL, or unix:PATH
    /// for its local socket (`serve --socket PATH`; the kernel names you, no token needed).
    #[arg(long, global = true, env = "VFARM_SERVER", value_name = "URL", help_heading = crate::GLOBAL)]
    pub server: Option<String>,
    /// A file holding the bearer token for --server (from `vfarm token create` on the
    /// service); `-` reads it from standard input. Without it, $VFARM_TOKEN. Never on the
    /// command line, where `ps` shows it to everyone.
    #[arg(long, global = true, env = "VFARM_TOKEN_FILE", value_name = "FILE", help_heading = crate::GLOBAL)]
    pub token_file: Option<PathBuf>,
    /// Refused with the reason (kept so the old spelling gets a clear error).
    #[arg(long = "token", global = true, hide = true, value_name = "TOKEN")]
    pub token_argv: Option<String>,
    /// Client certificate (PEM) for --server over HTTPS; the grid identity.
    #[arg(
        long,
        global = true,
        env = "VFARM_CERT",
        value_name = "FILE",
        requires = "key",
        help_heading = crate::GLOBAL
    )]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, global = true, env = "VFARM_KEY", value_name = "FILE", help_heading = crate::GLOBAL)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the service's certificate.
    #[arg(long, global = true, env = "VFARM_CA", value_name = "FILE", help_heading = crate::GLOBAL)]
    pub ca: Option<PathBuf>,
}

/// An API error as the service sent it.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status}, {code})")]
pub struct RemoteError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

/// A bearer token goes over `http://` only to this host: anyone on the path would read it.
fn refuse_plain_token(base: &str) -> Result<()> {
    let Some(rest) = base.strip_prefix("http://") else {
        return Ok(());
    };
    let host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .unwrap_or_default();
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "server",
            value: format!("http://{rest}"),
            reason: "refusing to send the token over plain HTTP to a host other than this \
                     one; use https://"
                .into(),
        }
        .into());
    }
    Ok(())
}

pub(crate) struct Client {
    http: reqwest::blocking::Client,
    /// The base URL requests go to.
    base: String,
    /// The server as given (`unix:PATH` for the local socket), for messages.
    pub(crate) shown: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(a: &RemoteArgs) -> Result<Client> {
        let server = a
            .server
            .clone()
            .expect("--server given")
            .trim_end_matches('/')
            .to_string();
        let mut b =
            reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(900));
        // `unix:PATH`: the service's local socket, where the kernel names the caller and no
        // token is needed; the URL's host is only a placeholder then.
        let (base, shown) = match server.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => {
                b = b.unix_socket(std::path::Path::new(path));
                ("http://localhost".to_string(), server.clone())
            }
            _ if server.starts_with("http://") || server.starts_with("https://") => {
                (server.clone(), server.clone())
            }
            _ => bail!(vfarm_auth::AuthError::Invalid {
                field: "server",
                value: server,
                reason: "must be an http:// or https:// URL, or unix:PATH (the socket of \
                         `vfarm serve --socket PATH`)"
                    .into(),
            }),
        };
        if let (Some(c), Some(k)) = (&a.cert, &a.key) {
            let mut pem =
                std::fs::read(c).with_context(|| format!("cannot read --cert {}", c.display()))?;
            pem.extend(
                std::fs::read(k).with_context(|| format!("cannot read --key {}", k.display()))?,
            );
            b = b.identity(reqwest::Identity::from_pem(&pem).context("--cert/--key")?);
        }
        if let Some(ca) = &a.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("--ca")?);
        }
        let token = crate::cmd::secret(
            "token",
            a.token_argv.as_deref(),
            a.token_file.as_deref(),
            "VFARM_TOKEN",
        )?;
        if token.is_some() {
            refuse_plain_token(&base)?;
        }
        Ok(Client {
            http: b.build()?,
            base,
            shown,
            token,
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::blocking::Response> {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.send(r)
    }

    /// A request with a body of its own type (a JSDL document as `application/xml`).
    pub(crate) fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::blocking::Response> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(r)
    }

    fn send(
        &self,
        mut r: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r
            .send()
            .with_context(|| format!("cannot reach {}", self.shown))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let v: Value = resp.json().unwrap_or(Value::Null);
        Err(RemoteError {
            status,
            code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
            field: v["error"]["field"].as_str().map(str::to_string),
        }
        .into())
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        Ok(self.call(method, path, body)?.json()?)
    }
}

/// Page size of `instance ls --server` without --limit.
const LS_PAGE: u32 = 500;

/// The target of an RFC 8288 `Link: <…>; rel="next"` header, if the answer has one.
pub(crate) fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    let p = p.trim().replace(' ', "");
                    p == "rel=\"next\"" || p == "rel=next"
                })
                .then(|| target.to_string())
        })
}

pub(crate) fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn label(v: &InstanceView) -> String {
    match &v.name {
        Some(n) => format!("{} ({n})", v.id),
        None => v.id.clone(),
    }
}

fn report(ctx: &Ctx, v: &InstanceView, what: &str) -> Result<()> {
    if ctx.json() {
        ctx.print_json(v)
    } else {
        println!("instance {} {what}", label(v));
        Ok(())
    }
}

pub fn run_instance(ctx: &Ctx, a: &RemoteArgs, cmd: InstanceCmd) -> Result<i32> {
    use reqwest::Method as M;
    let c = Client::new(a)?;
    let path = |r: &str, rest: &str| format!("/api/v1/instances/{}{rest}", seg(r));
    match cmd {
        InstanceCmd::Ls(args) if args.stats => {
            let rows: Vec<vfarm_service::stats::InstanceUsage> =
                c.json(M::GET, "/api/v1/stats", None)?;
            let rows = crate::cmd::instance::stats_filtered(rows, &args);
            if ctx.json() {
                ctx.print_json(&rows)?;
            } else {
                crate::cmd::instance::print_stats_table(&rows);
            }
        }
        InstanceCmd::Ls(args) => {
            // Without --limit, every page (the service answers at most 1000 at a time).
            let q = vfarm_api::instances::ListQuery {
                limit: Some(args.limit.unwrap_or(LS_PAGE).to_string()),
                owner: args.owner,
                state: args.state,
                image: args.image,
                host: args.host,
                cursor: None,
            };
            let mut views: Vec<InstanceView> = Vec::new();
            let mut next = Some(format!("/api/v1/instances?{}", q.to_query()));
            while let Some(path) = next.take() {
                let resp = c.call(M::GET, &path, None)?;
                let link = next_link(resp.headers());
                views.extend(resp.json::<Vec<InstanceView>>()?);
                if args.limit.is_none() {
                    next = link;
                }
            }
            if ctx.json() {
                ctx.print_json(&views)?;
            } else {
                print_table(&views);
            }
        }
        InstanceCmd::Show { instance } => {
            let v: InstanceView = c.json(M::GET, &path(&instance, ""), None)?;
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                print_view(&v);
            }
        }
        InstanceCmd::Create(args) => {
            let args = *args;
            if args.image.image_spec.is_some()
                || args.image.suite.is_some()
                || !args.guest_files.is_empty()
            {
                bail!("with --server, create takes --image (build images with the service's API); --guest-file is local only");
            }
            let keys = args
                .ssh_keys
                .iter()
                .map(|k| {
                    std::fs::read_to_string(k)
                        .with_context(|| format!("cannot read --ssh-key {}", k.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let body = json!({
                "image": args.image.image,
                "name": args.name,
                "hostname": args.shape.hostname,
                "cpus": args.shape.cpus,
                "memory": args.shape.memory,
                "expiry": args.expiry,
                "driver": args.driver.driver,
                "reserve": args.no_start,
                "ssh_keys": keys,
                "command": args.command,
                "env": args.shape.env,
                "host": args.host,
                "profile": args.driver.profile,
                "network": args.shape.net,
            });
            let v: InstanceView = c.json(M::POST, "/api/v1/instances?wait=true", Some(body))?;
            report(ctx, &v, if args.no_start { "created" } else { "running" })?;
        }
        InstanceCmd::Start { instance } => report(
            ctx,
            &c.json(M::POST, &path(&instance, "/start"), None)?,
            "running",
        )?,
        InstanceCmd::Stop { instance, force } => report(
            ctx,
            &c.json(
                M::POST,
                &path(&instance, "/stop"),
                Some(json!({ "force": force })),
            )?,
            "stopped",
        )?,
        InstanceCmd::Pause { instance } => {
            let v: InstanceView = c.json(M::POST, &path(&instance, "/pause"), None)?;
            report(ctx, &v, &v.state.clone())?
        }
        InstanceCmd::Resume { instance } => {
            let v: InstanceView = c.json(M::POST, &path(&instance, "/resume"), None)?;
            report(ctx, &v, &v.state.clone())?
        }
        InstanceCmd::Extend { instance, by } => {
            let v: InstanceView = c.json(
                M::POST,
                &path(&instance, "/extend"),
                Some(json!({ "by": by })),
            )?;
            let what = format!("now expires {}", v.expires.as_deref().unwrap_or("-"));
            report(ctx, &v, &what)?
        }
        InstanceCmd::Destroy { instance } => {
            let v: Value = c.json(M::DELETE, &path(&instance, ""), None)?;
            let id = v["destroyed"].as_str().unwrap_or(&instance).to_string();
            if ctx.json() {
                ctx.print_json(&json!({"id": id, "state": "destroyed"}))?;
            } else {
                println!("instance {id} destroyed");
            }
        }
        InstanceCmd::Exec {
            instance,
            env,
            command,
        } => {
            let v: Value = c.json(
                M::POST,
                &path(&instance, "/exec"),
                Some(json!({ "command": command, "env": env })),
            )?;
            print!("{}", v["stdout"].as_str().unwrap_or(""));
            eprint!("{}", v["stderr"].as_str().unwrap_or(""));
            std::io::stdout().flush()?;
            return Ok(v["exit_code"]
                .as_i64()
                .ok_or_else(|| anyhow!("no exit code in {v}"))? as i32);
        }
        InstanceCmd::Migrate(a) => {
            let to = a.to.to_string_lossy().into_owned();
            let v: Value = c.json(
                M::POST,
                &path(&a.instance, "/migrate"),
                Some(json!({ "to": to, "shared_storage": a.shared_storage })),
            )?;
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                println!(
                    "instance {} migrated from {} to {} ({} storage): downtime {} ms, total {:.2} s",
                    v["id"].as_str().unwrap_or(&a.instance),
                    v["from"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?"),
                    v["storage"].as_str().unwrap_or("?"),
                    v["downtime_ms"],
                    v["total_ms"].as_f64().unwrap_or(0.0) / 1000.0
                );
            }
        }
        InstanceCmd::Console {
            instance,
            follow: false,
        }
        | InstanceCmd::Logs { instance } => {
            let text = c.call(M::GET, &path(&instance, "/console"), None)?.text()?;
            print!("{text}");
        }
        _ => {
            bail!("this command is not available with --server (yet): run it on the service's host")
        }
    }
    Ok(0)
}

pub fn run_image(ctx: &Ctx, a: &RemoteArgs, cmd: ImageCmd) -> Result<i32> {
    use reqwest::Method as M;
    let c = Client::new(a)?;
    let path = |r: &str, rest: &str| format!("/api/v1/images/{}{rest}", seg(r));
    match cmd {
        ImageCmd::Ls => {
            let images: Vec<Image> = c.json(M::GET, "/api/v1/images", None)?;
            if ctx.json() {
                ctx.print_json(&images)?;
            } else {
                image::print_table(&images);
            }
        }
        ImageCmd::Show { image } => {
            let img: Image = c.json(M::GET, &path(&image, ""), None)?;
            if ctx.json() {
                ctx.print_json(&img)?;
            } else {
                image::print_image(&img);
            }
        }
        ImageCmd::Rm { image } => {
            let v: Value = c.json(M::DELETE, &path(&image, ""), None)?;
            if ctx.json() {
                ctx.print_json(&v)?;
            } else {
                println!("removed {}", v["removed"].as_str().unwrap_or(&image));
            }
        }
        ImageCmd::Log { image } => {
            print!("{}", c.call(M::GET, &path(&image, "/log"), None)?.text()?)
        }
        ImageCmd::Manifest { image } => {
            let m: vfarm_service::images::Manifest =
                c.json(M::GET, &path(&image, "/manifest"), None)?;
            image::print_manifest(ctx, &m)?
        }
        ImageCmd::Diff { a, b } => {
            let d: vfarm_service::images::Diff =
                c.json(M::GET, &path(&a, &format!("/diff/{}", seg(&b))), None)?;
            return image::print_diff(ctx, &d);
        }
        ImageCmd::Build(args) => {
            // The service builds; we wait on its operation (long polls of up to 5 minutes).
            let spec = serde_json::to_value(args.to_request()?)?;
            let v: Value = c.json(M::POST, "/api/v1/images", Some(spec))?;
            let op = v["operation"]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no operation in {v}"))?
                .to_string();
            eprintln!("vfarm: building on {} (operation {op})", c.shown);
            let done = loop {
                let o: Value =
                    c.json(M::GET, &format!("/api/v1/operations/{op}?wait=300"), None)?;
                if o["status"] != "running" {
                    break o;
                }
            };
            if done["status"] != "succeeded" {
                bail!(
                    "the build failed on the service: {}",
                    done["error"].as_str().unwrap_or("(no message)")
                );
            }
            let outcome: vfarm_image::BuildOutcome = serde_json::from_value(done["result"].clone())
                .with_context(|| format!("unexpected build result {done}"))?;
            image::print_outcome(ctx, &outcome)?;
        }
        ImageCmd::Export { image, format, out } => {
            let mut resp = c.call(
                M::GET,
                &path(&image, &format!("/download?format={}", seg(&format))),
                None,
            )?;
            let mut f = std::fs::File::create(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let size = resp.copy_to(&mut f)?;
            if ctx.json() {
                ctx.print_json(
                    &json!({ "image": image, "format": format, "path": out, "size": size }),
                )?;
            } else {
                println!(
                    "wrote {} ({format}, {})",
                    out.display(),
                    vfarm_core::ByteSize(size)
                );
            }
        }
        ImageCmd::Import { .. } | ImageCmd::Groups { .. } => {
            bail!("`image import` and `image groups` are local: run them on the service's host")
        }
    }
    Ok(0)
}

pub fn run_snapshot(ctx: &Ctx, a: &RemoteArgs, cmd: SnapshotCmd) -> Result<i32> {
    use reqwest::Method as M;
    let c = Client::new(a)?;
    let path = |r: &str, rest: &str| format!("/api/v1/instances/{}/snapshots{rest}", seg(r));
    match cmd {
        SnapshotCmd::Create { instance, name } => {
            let s: SnapshotView =
                c.json(M::POST, &path(&instance, ""), Some(json!({ "name": name })))?;
            if ctx.json() {
                ctx.print_json(&s)?;
            } else {
                println!(
                    "snapshot {} of instance {} ({})",
                    s.name,
                    s.instance_id,
                    vfarm_core::ByteSize(s.size)
                );
            }
        }
        SnapshotCmd::Ls { instance } => {
            let snaps: Vec<SnapshotView> = c.json(M::GET, &path(&instance, ""), None)?;
            if ctx.json() {
                ctx.print_json(&snaps)?;
            } else {
                print_snapshots(&snaps);
            }
        }
        SnapshotCmd::Revert { instance, name } => {
            let v: InstanceView = c.json(
                M::POST,
                &path(&instance, &format!("/{}/revert", seg(&name))),
                None,
            )?;
            report(ctx, &v, &format!("reverted to {name}"))?;
        }
        SnapshotCmd::Rm { instance, name } => {
            c.json::<Value>(
                M::DELETE,
                &path(&instance, &format!("/{}", seg(&name))),
                None,
            )?;
            if ctx.json() {
                ctx.print_json(&json!({"instance": instance, "snapshot": name, "removed": true}))?;
            } else {
                println!("snapshot {name} of instance {instance} removed");
            }
        }
    }
    Ok(0)
}

/// `vfarm whoami`: who the service takes this caller for (with --server), else the local
/// caller (the data dir's user, an admin there).
pub fn run_whoami(ctx: &Ctx, a: &RemoteArgs) -> Result<i32> {
    let who: Value = if a.server.is_some() {
        Client::new(a)?.json(reqwest::Method::GET, "/api/v1/whoami", None)?
    } else {
        let c = vfarm_service::Caller::local();
        serde_json::json!({"user": c.user, "method": "local", "admin": c.admin})
    };
    if ctx.json() {
        ctx.print_json(&who)?;
    } else {
        println!(
            "{} ({}{})",
            who["user"].as_str().unwrap_or("?"),
            who["method"].as_str().unwrap_or("?"),
            if who["admin"] == true { ", admin" } else { "" }
        );
    }
    Ok(0)
}
