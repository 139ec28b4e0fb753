//! The control's side of several hosts: joining with a one-time token, heartbeats, and the
//! host inventory (add, list, show, drain, undrain, remove). The HTTP handlers and
//! `vfarm host …` both call these.
//!
//! A node proves who it is with the client certificate the site CA issued it at join time
//! (CN = its host name); the TLS layer already refused certificates that do not chain to the
//! CA directory or are on its CRL, and the heartbeat is taken only from the subject and
//! serial recorded at join. Join itself needs no caller: the token is the credential.

use sha2::{Digest, Sha256};
use vfarm_auth::ca::SiteCa;
use vfarm_auth::{AuthMethod, Identity};
use vfarm_proto::hosts::{
    AddHost, AddedHost, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, TrustFile,
};
use vfarm_proto::ErrorCode;
use vfarm_store::hosts::{Heartbeat, HostRow};
use vfarm_store::{Store, StoreError};

use crate::{Caller, Env, ServiceError};

/// How long a node certificate issued at join is valid.
const NODE_CERT_DAYS: u32 = 395;

/// How long a join token works when the request names no time.
const DEFAULT_TOKEN_SECS: u64 = 3600;

/// The control's own certificate, which a joining node is told to obey as its one admin.
#[derive(Debug, Clone, Default)]
pub struct ControlCert {
    /// Its subject; `None` when the service runs without TLS and so takes no nodes.
    pub subject: Option<String>,
    /// SHA-256 of the certificate (hex).
    pub fingerprint: Option<String>,
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.trim().as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Store errors of the host calls: a missing host is `host_not_found`, both naming `name`.
fn store_err(e: StoreError) -> ServiceError {
    match e {
        StoreError::NotFound { kind, id } => {
            ServiceError::new(ErrorCode::HostNotFound, format!("{kind} `{id}` not found"))
                .with_field("name")
        }
        StoreError::Conflict { kind, id } => ServiceError::new(
            ErrorCode::Conflict,
            format!("{kind} `{id}` already exists or is in use"),
        )
        .with_field("name"),
        e => ServiceError::internal(e.to_string()),
    }
}

fn not_found(name: &str) -> ServiceError {
    store_err(StoreError::NotFound {
        kind: "host",
        id: name.to_string(),
    })
}

/// The host inventory is for admins (the HTTP handlers ask first, before reading a body).
pub fn require_admin(who: &Caller) -> Result<(), ServiceError> {
    if !who.admin {
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            "the host inventory is for admins",
        ));
    }
    Ok(())
}

fn store(env: &Env) -> Result<std::sync::Arc<Store>, ServiceError> {
    env.store().map_err(ServiceError::from_anyhow)
}

/// The site CA's CRL and namespace files as they are now; the CRL is re-signed first when
/// less than half its validity is left, so nodes always receive a current one.
pub fn site_trust_files(ca: &SiteCa) -> Result<Vec<TrustFile>, ServiceError> {
    let dir = ca.certificates_dir();
    let now = chrono::Utc::now();
    let stale = vfarm_imagelist::TrustStore::load(&dir)
        .map(|t| {
            t.crl_ages(now)
                .iter()
                .all(|(_, age, left)| left.unwrap_or(0) < age.unwrap_or(i64::MAX))
        })
        .unwrap_or(true);
    if stale {
        ca.publish(now)?;
    }
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| ServiceError::internal(e.to_string()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = [".r0", ".namespaces", ".signing_policy"]
            .iter()
            .any(|x| name.ends_with(x));
        if keep {
            let content = std::fs::read_to_string(e.path())
                .map_err(|e| ServiceError::internal(e.to_string()))?;
            out.push(TrustFile { name, content });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Trade a one-time token for a node certificate: the node's name, address and port are
/// checked, the token compared, the certificate issued and the host recorded as joined
/// with its URL.
pub fn join(
    env: &Env,
    control: &ControlCert,
    req: JoinRequest,
) -> Result<JoinResponse, ServiceError> {
    vfarm_auth::ca::check_hostname(&req.name)
        .map_err(|e| ServiceError::bad_request("name", e.to_string()))?;
    let Ok(ip) = req.address.parse::<std::net::IpAddr>() else {
        return Err(ServiceError::bad_request(
            "address",
            format!("`{}` is not an IP address", req.address),
        ));
    };
    let Some(port) = req.port.filter(|p| *p != 0) else {
        return Err(ServiceError::bad_request(
            "port",
            "the node's API port is required (its URL is fixed at join)",
        ));
    };
    let url = format!("https://{}", std::net::SocketAddr::new(ip, port));
    let control_fingerprint = control.fingerprint.clone().unwrap_or_default();
    let control_subject = control.subject.clone().ok_or_else(|| {
        ServiceError::new(
            ErrorCode::NoSiteCa,
            "this service takes no nodes (it needs --tls-cert and a site CA: vfarm ca init)",
        )
    })?;
    let store = store(env)?;
    let now = chrono::Utc::now();
    let ca = SiteCa::open(&vfarm_auth::ca::ca_dir(&env.data_dir)).map_err(|e| {
        ServiceError::new(
            ErrorCode::NoSiteCa,
            format!("this control has no site CA to issue node certificates: {e}"),
        )
    })?;
    // Check the token before issuing anything (a wrong one must not cost a certificate and a
    // CRL entry); the store's compare-and-set below is what makes it one-time. Unknown and
    // pending names do the same work and compare in constant time, so the answer's timing
    // tells nothing about which names are pending.
    let hash = token_hash(&req.token);
    let pending = store.pending_join_token(&req.name).map_err(store_err)?;
    let (expected, expires) = pending.unwrap_or_else(|| (token_hash(""), String::new()));
    let same: bool = subtle::ConstantTimeEq::ct_eq(hash.as_bytes(), expected.as_bytes()).into();
    let valid = same && expires.as_str() > vfarm_store::now().as_str();
    if !valid {
        return Err(bad_token());
    }
    let issued = ca.issue_host_with(
        &req.name,
        std::slice::from_ref(&req.address),
        NODE_CERT_DAYS,
        now,
    )?;
    if !store
        .join_host(
            &req.name,
            &hash,
            &vfarm_store::now(),
            &issued.subject,
            &issued.serial,
        )
        .map_err(store_err)?
    {
        // Lost a race with another join, or a wrong token: the certificate goes.
        let _ = ca.revoke(&issued.serial, now);
        return Err(bad_token());
    }
    store.set_host_url(&req.name, &url).map_err(store_err)?;
    tracing::info!(host = %req.name, serial = %issued.serial, %url, "node joined");
    Ok(JoinResponse {
        name: req.name,
        subject: issued.subject,
        serial: issued.serial,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        ca_pem: ca.certificate_pem()?,
        control_subject,
        control_fingerprint,
        trust_files: site_trust_files(&ca)?,
    })
}

fn bad_token() -> ServiceError {
    ServiceError::new(
        ErrorCode::InvalidJoinToken,
        "no pending host with that name and token (used, expired or never issued: \
         `vfarm host add NAME` prints a new one)",
    )
    .with_field("token")
}

/// A node as its client certificate names it: what a heartbeat is taken from.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The node's name: the subject's CN.
    pub name: String,
    pub subject: String,
    /// The serial the TLS layer saw.
    pub serial: Option<String>,
}

impl NodeCert {
    /// The node `who` is, if it came with a certificate (`serial`, from the TLS layer).
    pub fn of(who: &Identity, serial: Option<String>) -> Result<NodeCert, ServiceError> {
        if who.method != AuthMethod::ClientCert {
            return Err(ServiceError::new(
                ErrorCode::NodeCertificateRequired,
                "heartbeats come from nodes, with the certificate issued at join",
            ));
        }
        // The node's name is its certificate subject's CN (the issuer is in `who.user` too).
        let subject = who.subject.clone().unwrap_or_default();
        let name = common_name(&subject).ok_or_else(|| {
            ServiceError::new(ErrorCode::UnknownNode, format!("`{subject}` has no CN"))
        })?;
        Ok(NodeCert {
            name,
            subject,
            serial,
        })
    }
}

/// A joined node reports: it must come with the certificate issued at join, the instance
/// states from the closed set, the URL the one of join. The answer carries what changed and
/// the site CA's CRL and namespace files.
pub fn heartbeat(
    env: &Env,
    node: &NodeCert,
    hb: HeartbeatRequest,
) -> Result<HeartbeatResponse, ServiceError> {
    // States from the closed set only: anything else is refused before it is recorded.
    for (i, inst) in hb.instances.iter().enumerate() {
        if inst.state.parse::<vfarm_core::instance::State>().is_err() {
            return Err(ServiceError::bad_request(
                "instances",
                format!(
                    "instances[{i}].state `{}` is not an instance state ({})",
                    inst.state,
                    vfarm_core::instance::State::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    // The report is stored as sent, so it must be one.
    let checks = match &hb.checks {
        None => None,
        Some(c) => {
            serde_json::from_value::<vfarm_core::doctor::Report>(c.clone()).map_err(|e| {
                ServiceError::bad_request("checks", format!("not a `vfarm doctor` report: {e}"))
            })?;
            Some(c.to_string())
        }
    };
    let NodeCert {
        name,
        subject,
        serial,
    } = node;
    let store = store(env)?;
    let unknown = || {
        ServiceError::new(
            ErrorCode::UnknownNode,
            format!("no joined host `{name}` with the subject `{subject}`"),
        )
    };
    let host = store.host(name).map_err(store_err)?.ok_or_else(unknown)?;
    // Pinned to the certificate issued at join, not just its subject.
    if host.cert_serial.is_none() || host.cert_serial != *serial {
        return Err(ServiceError::new(
            ErrorCode::UnknownNode,
            format!(
                "`{name}` joined with certificate serial {}, this one is {}",
                host.cert_serial.as_deref().unwrap_or("none"),
                serial.as_deref().unwrap_or("none")
            ),
        ));
    }
    // The URL was fixed at join; a heartbeat cannot move the node's calls elsewhere.
    let Some(url) = host.url.clone().filter(|u| !u.is_empty()) else {
        return Err(ServiceError::bad_request(
            "url",
            format!("`{name}` has no URL recorded at join; join it again"),
        ));
    };
    if !hb.url.is_empty() && hb.url != url {
        return Err(ServiceError::bad_request(
            "url",
            format!(
                "`{}` is not the URL `{url}` recorded when `{name}` joined (it changes only by \
                 joining again)",
                hb.url
            ),
        ));
    }
    let instances: Vec<(String, String)> = hb
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.state.clone()))
        .collect();
    let outcome = store
        .host_heartbeat(
            name,
            subject,
            &Heartbeat {
                url: &url,
                cpus: hb.cpus,
                memory_mib: hb.memory_mib,
                disk_mib: hb.disk_mib,
                features: &hb.features,
                instances: &instances,
                checks: checks.as_deref(),
            },
        )
        .map_err(store_err)?
        .ok_or_else(unknown)?;
    let trust_files = match SiteCa::open(&vfarm_auth::ca::ca_dir(&env.data_dir)) {
        Ok(ca) => site_trust_files(&ca)?,
        Err(_) => Vec::new(),
    };
    Ok(HeartbeatResponse {
        outcome: serde_json::to_value(outcome)
            .map_err(|e| ServiceError::internal(e.to_string()))?,
        trust_files,
    })
}

/// The CN of a one-line DN (`/C=…/O=…/CN=name`).
fn common_name(dn: &str) -> Option<String> {
    dn.rsplit('/')
        .find_map(|part| part.strip_prefix("CN="))
        .map(str::to_string)
}

/// Add a host: a one-time join token for `req.name`, valid for `req.expires` (default 1 h).
pub fn add(env: &Env, who: &Caller, req: AddHost) -> Result<AddedHost, ServiceError> {
    require_admin(who)?;
    let valid_secs = match &req.expires {
        None => DEFAULT_TOKEN_SECS,
        Some(e) => vfarm_core::instance::parse_duration("expires", e)
            .map_err(|e| ServiceError::bad_request("expires", e.to_string()))?,
    };
    vfarm_auth::ca::check_hostname(&req.name)
        .map_err(|e| ServiceError::bad_request("name", e.to_string()))?;
    let mut secret = [0u8; 24];
    getrandom(&mut secret)?;
    let token = format!("vfj_{}", hex(&secret));
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(valid_secs as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    store(env)?
        .add_host(&who.user, &req.name, &token_hash(&token), &expires)
        .map_err(store_err)?;
    Ok(AddedHost {
        name: req.name,
        token,
        expires,
    })
}

fn getrandom(buf: &mut [u8]) -> Result<(), ServiceError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| ServiceError::internal(format!("no randomness: {e}")))
}

/// The host inventory.
pub fn list(env: &Env, who: &Caller) -> Result<Vec<HostRow>, ServiceError> {
    require_admin(who)?;
    store(env)?.hosts().map_err(store_err)
}

/// One host in full.
pub fn show(env: &Env, who: &Caller, name: &str) -> Result<HostRow, ServiceError> {
    require_admin(who)?;
    store(env)?
        .host(name)
        .map_err(store_err)?
        .ok_or_else(|| not_found(name))
}

/// Take no new instances on `name` (`drained`), or take them again; running ones stay.
pub fn set_drained(
    env: &Env,
    who: &Caller,
    name: &str,
    drained: bool,
) -> Result<HostRow, ServiceError> {
    require_admin(who)?;
    let store = store(env)?;
    if !store
        .set_host_drained(&who.user, name, drained)
        .map_err(store_err)?
    {
        return Err(not_found(name));
    }
    store
        .host(name)
        .map_err(store_err)?
        .ok_or_else(|| not_found(name))
}

/// Remove a host without instances and revoke its certificate (the CRL is republished, so
/// its next connection is refused in the TLS handshake).
pub fn remove(env: &Env, who: &Caller, name: &str) -> Result<HostRow, ServiceError> {
    require_admin(who)?;
    let host = store(env)?
        .remove_host(&who.user, name)
        .map_err(store_err)?;
    if let Some(serial) = &host.cert_serial {
        let ca = SiteCa::open(&vfarm_auth::ca::ca_dir(&env.data_dir))?;
        ca.revoke(serial, chrono::Utc::now())?;
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfarm_proto::hosts::ReportedInstance;

    fn control() -> ControlCert {
        ControlCert {
            subject: Some("/C=XX/O=Site/CN=control".into()),
            fingerprint: None,
        }
    }

    fn env(dir: &std::path::Path) -> Env {
        let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
        Env::with_store(dir.to_path_buf(), store)
    }

    fn join_req(token: &str, port: Option<u16>) -> JoinRequest {
        JoinRequest {
            name: "node1".into(),
            token: token.into(),
            address: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn common_names_and_token_hashes() {
        assert_eq!(
            common_name("/C=CH/O=Site/CN=node1").as_deref(),
            Some("node1")
        );
        assert_eq!(common_name("/C=CH/O=Site"), None);
        assert_eq!(token_hash("abc"), token_hash(" abc\n"));
        assert_ne!(token_hash("abc"), token_hash("abd"));
        assert_eq!(token_hash("abc").len(), 64);
    }

    /// Issue 24, acceptance 3; issue 15, findings 2 and 6: a heartbeat cannot move a node's
    /// URL, report a state outside the closed set, or come from another certificate with
    /// the node's subject; a good one brings the CRL back.
    #[test]
    fn heartbeats_are_validated_and_bring_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(
            &vfarm_auth::ca::ca_dir(dir.path()),
            "/C=XX/O=Site/CN=Site CA",
            30,
            chrono::Utc::now(),
        )
        .unwrap();
        let env = env(dir.path());
        let store = env.store().unwrap();
        let admin = Caller::agent("admin");
        let added = add(
            &env,
            &admin,
            AddHost {
                name: "node1".into(),
                expires: Some("10m".into()),
            },
        )
        .unwrap();
        let j = join(&env, &control(), join_req(&added.token, Some(9001))).unwrap();
        assert!(
            j.trust_files.iter().any(|f| f.name.ends_with(".r0")),
            "{:?}",
            j.trust_files
        );
        let node = |serial: &str| {
            let who = Identity {
                user: format!("{} issuer=/C=XX/O=Site/CN=Site CA", j.subject),
                method: AuthMethod::ClientCert,
                admin: false,
                token_id: None,
                subject: Some(j.subject.clone()),
                issuer: Some("/C=XX/O=Site/CN=Site CA".into()),
            };
            NodeCert::of(&who, Some(serial.to_string())).unwrap()
        };
        let hb = |url: &str, state: &str| HeartbeatRequest {
            url: url.into(),
            cpus: 2,
            memory_mib: 100,
            disk_mib: 100,
            features: vec!["oci".into()],
            instances: vec![ReportedInstance {
                id: "x1".into(),
                state: state.into(),
            }],
            checks: None,
        };
        let before = store.host("node1").unwrap().unwrap();
        for (req, cert, code, field) in [
            (
                hb("https://attacker", "running"),
                node(&j.serial),
                ErrorCode::InvalidRequest,
                Some("url"),
            ),
            (
                hb("", "pwned"),
                node(&j.serial),
                ErrorCode::InvalidRequest,
                Some("instances"),
            ),
            (
                hb("", "running"),
                node("00BEEF"),
                ErrorCode::UnknownNode,
                None,
            ),
            (
                HeartbeatRequest {
                    checks: Some(serde_json::json!({"checks": "no"})),
                    ..hb("", "running")
                },
                node(&j.serial),
                ErrorCode::InvalidRequest,
                Some("checks"),
            ),
        ] {
            let e = heartbeat(&env, &cert, req).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (code, field), "{e}");
            let now = store.host("node1").unwrap().unwrap();
            assert_eq!(now.url.as_deref(), Some("https://127.0.0.1:9001"));
            assert_eq!(now.state, before.state);
            assert_eq!(now.last_heartbeat, before.last_heartbeat);
        }
        // Only a node's certificate is taken.
        let token_user = Identity {
            user: "alice".into(),
            method: AuthMethod::Token,
            admin: true,
            token_id: None,
            subject: None,
            issuer: None,
        };
        assert_eq!(
            NodeCert::of(&token_user, None).unwrap_err().code,
            ErrorCode::NodeCertificateRequired
        );
        // The real node: taken, its URL the one of join, and the CRL in the answer.
        let v = heartbeat(
            &env,
            &node(&j.serial),
            hb("https://127.0.0.1:9001", "running"),
        )
        .unwrap();
        assert_eq!(store.host("node1").unwrap().unwrap().state, "up");
        let crl_of = |v: &HeartbeatResponse| {
            v.trust_files
                .iter()
                .find(|f| f.name.ends_with(".r0"))
                .cloned()
                .unwrap_or_else(|| panic!("no CRL in {v:?}"))
        };
        let crl = crl_of(&v);
        assert!(crl.content.contains("BEGIN X509 CRL"));
        // A revocation reaches the node with the next heartbeat.
        let u = ca
            .issue_user("/C=XX/O=Site/CN=U", 1, chrono::Utc::now())
            .unwrap();
        ca.revoke(&u.serial, chrono::Utc::now()).unwrap();
        let v2 = heartbeat(&env, &node(&j.serial), hb("", "running")).unwrap();
        assert_ne!(crl, crl_of(&v2));
    }

    #[test]
    fn join_needs_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        let added = add(
            &env,
            &Caller::agent("admin"),
            AddHost {
                name: "node1".into(),
                expires: None,
            },
        )
        .unwrap();
        let e = join(&env, &control(), join_req(&added.token, None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
        assert_eq!(e.field.as_deref(), Some("port"));
    }

    /// The inventory is for admins, whichever front end asks.
    #[test]
    fn the_inventory_is_for_admins() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        let bob = Caller::new("bob", false);
        let req = || AddHost {
            name: "node1".into(),
            expires: None,
        };
        assert_eq!(
            add(&env, &bob, req()).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(list(&env, &bob).unwrap_err().code, ErrorCode::Forbidden);
        let e = show(&env, &Caller::agent("admin"), "nosuch").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::HostNotFound, Some("name"))
        );
    }
}
