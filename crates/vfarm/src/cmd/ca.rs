//! `vfarm ca init|show|issue-host|issue-user|revoke|crl`: the site CA in `<data>/ca/`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use vfarm_auth::ca::{Issued, SiteCa};
use vfarm_service::{ca, Caller};

use crate::ctx::Ctx;

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create the site CA (once): key (mode 0600) and certificate in <data>/ca/, and the
    /// IGTF-layout directory <data>/ca/certificates/ (<hash>.0 + CRL <hash>.r0).
    Init {
        /// The CA's subject, one-line form.
        #[arg(long, default_value = "/O=vfarm/CN=vfarm site CA")]
        subject: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Show the CA: subject, validity, hash, fingerprint, where its IGTF directory is.
    Show,
    /// Issue a host certificate (SAN = HOSTNAME; serverAuth + clientAuth):
    /// DIR/hostcert.pem and DIR/hostkey.pem (0600).
    IssueHost {
        /// The host's DNS name (the certificate's SAN).
        hostname: String,
        /// Directory for the files (default: the current directory). Existing files are
        /// not overwritten.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 395)]
        days: u32,
    },
    /// Issue a user (or node) client certificate for a grid-style DN ("/C=../O=../CN=.."):
    /// DIR/usercert.pem and DIR/userkey.pem (0600).
    IssueUser {
        /// The DN, one-line form (/C=../O=../CN=..).
        subject: String,
        /// Directory for the files (default: the current directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 395)]
        days: u32,
    },
    /// Revoke a certificate this CA issued (serial in hex, or the PEM file) and write a new
    /// CRL to <data>/ca/certificates/<hash>.r0.
    Revoke {
        /// The serial in hex, or the certificate's PEM file.
        serial_or_file: String,
    },
    /// Re-sign the CRL (it is valid for 30 days).
    Crl,
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `<out>/<kind>cert.pem` and `<out>/<kind>key.pem`, refused (before anything is issued)
/// when either exists.
fn targets(out: Option<PathBuf>, kind: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = out.unwrap_or_else(|| PathBuf::from("."));
    let cert = dir.join(format!("{kind}cert.pem"));
    let key = dir.join(format!("{kind}key.pem"));
    for p in [&cert, &key] {
        if p.exists() {
            anyhow::bail!(vfarm_auth::AuthError::Invalid {
                field: "out",
                value: p.display().to_string(),
                reason: "exists already; not overwritten".into(),
            });
        }
    }
    Ok((cert, key))
}

fn write_pair(cert: &Path, key: &Path, issued: &Issued) -> Result<()> {
    if let Some(dir) = cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_new(key, issued.key_pem.as_bytes(), 0o600)?;
    write_new(cert, issued.cert_pem.as_bytes(), 0o644)
}

fn print_issued(ctx: &Ctx, issued: &Issued, cert: &Path, key: &Path) -> Result<()> {
    if ctx.json() {
        ctx.print_json(&serde_json::json!({
            "subject": issued.subject, "serial": issued.serial, "not_after": issued.not_after,
            "certificate": cert, "key": key,
        }))
    } else {
        println!("subject      {}", issued.subject);
        println!("serial       {}", issued.serial);
        println!(
            "not after    {}",
            issued.not_after.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
        println!("certificate  {}", cert.display());
        println!("key          {}", key.display());
        Ok(())
    }
}

pub fn run(ctx: &Ctx, cmd: CaCmd) -> Result<i32> {
    let caller = &Caller::local();
    match cmd {
        CaCmd::Init { subject, days } => {
            let ca = ca::init(ctx, caller, &subject, days)?;
            show(ctx, &ca)?;
        }
        CaCmd::Show => show(ctx, &ca::open(ctx)?)?,
        CaCmd::IssueHost {
            hostname,
            out,
            days,
        } => {
            let (cert, key) = targets(out, "host")?;
            let issued = ca::issue_host(ctx, caller, &hostname, days)?;
            write_pair(&cert, &key, &issued)?;
            print_issued(ctx, &issued, &cert, &key)?;
        }
        CaCmd::IssueUser { subject, out, days } => {
            let (cert, key) = targets(out, "user")?;
            let issued = ca::issue_user(ctx, caller, &subject, days)?;
            write_pair(&cert, &key, &issued)?;
            print_issued(ctx, &issued, &cert, &key)?;
        }
        CaCmd::Revoke { serial_or_file } => {
            let p = Path::new(&serial_or_file);
            let serial = if p.is_file() {
                let pem =
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                SiteCa::serial_of_pem(&pem)?
            } else {
                serial_or_file.clone()
            };
            let (subject, crl) = ca::revoke(ctx, caller, &serial)?;
            if ctx.json() {
                ctx.print_json(
                    &serde_json::json!({ "revoked": subject, "serial": serial, "crl": crl }),
                )?;
            } else {
                println!("revoked {subject} (serial {serial}); CRL {}", crl.display());
            }
        }
        CaCmd::Crl => {
            let crl = ca::publish_crl(ctx, caller)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({ "crl": crl }))?;
            } else {
                println!("{}", crl.display());
            }
        }
    }
    Ok(0)
}

fn show(ctx: &Ctx, ca: &SiteCa) -> Result<()> {
    let info = ca.info()?;
    if ctx.json() {
        return ctx.print_json(&info);
    }
    let t =
        |d: Option<chrono::DateTime<chrono::Utc>>| d.map(|t| t.to_rfc3339()).unwrap_or_default();
    println!("subject           {}", info.subject);
    println!("serial            {}", info.serial);
    println!(
        "valid             {} .. {}",
        t(info.not_before),
        t(info.not_after)
    );
    println!("hash              {}", info.hash);
    println!("sha256            {}", info.sha256_fingerprint);
    println!("certificate       {}", info.certificate.display());
    println!("IGTF directory    {}", info.certificates_dir.display());
    println!("revoked           {}", info.revoked);
    Ok(())
}
