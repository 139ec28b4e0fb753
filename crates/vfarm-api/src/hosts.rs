//! The node side of several hosts on the control: joining with a one-time token, heartbeats,
//! and the host inventory (`/api/v1/hosts`).
//!
//! A node proves who it is with the client certificate the site CA issued it at join time
//! (CN = its host name); the TLS layer already refused certificates that do not chain to the
//! CA directory or are on its CRL, and the heartbeat is taken only from the subject recorded
//! at join. Join itself is the one open call: the token is the credential.

use crate::ErrorCode;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use vfarm_auth::ca::SiteCa;
use vfarm_auth::{AuthMethod, Identity};
use vfarm_store::hosts::{Heartbeat, HostRow};
use vfarm_store::StoreError;

use crate::{blocking, ApiError, AppState, ErrorBody, StatusCode};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// How long a node certificate issued at join is valid.
const NODE_CERT_DAYS: u32 = 395;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub name: String,
    pub token: String,
    /// The address the node's API will listen on (an IP SAN of its certificate, so the
    /// control can verify it when it connects).
    pub address: String,
    /// The port the node's API listens on: with `address`, the node's URL, fixed here
    /// (heartbeats cannot move it).
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct JoinResponse {
    pub name: String,
    pub subject: String,
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The site CA, for the node's trust directory.
    pub ca_pem: String,
    /// The control's certificate subject: the one client the node obeys as admin.
    pub control_subject: String,
    /// SHA-256 of the control's certificate (hex): the node obeys that certificate only, not
    /// any other with the same subject.
    #[serde(default)]
    pub control_fingerprint: String,
    /// The site CA's current CRL and namespace files, for the node's trust directory.
    #[serde(default)]
    pub trust_files: Vec<TrustFile>,
}

/// One file of the site CA's IGTF directory (`<hash>.r0`, `<hash>.namespaces`, …).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct TrustFile {
    pub name: String,
    pub content: String,
}

/// What the control answers a heartbeat: what it changed, and the CA directory's current CRL
/// and namespace files (a node takes them over, so a revoked certificate stops working there).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub outcome: serde_json::Value,
    #[serde(default)]
    pub trust_files: Vec<TrustFile>,
}

/// The site CA's CRL and namespace files as they are now; the CRL is re-signed first when
/// less than half its validity is left, so nodes always receive a current one.
pub fn site_trust_files(ca: &SiteCa) -> Result<Vec<TrustFile>, ApiError> {
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
        ca.publish(now).map_err(ApiError::from)?;
    }
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| ApiError::internal(e.to_string()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = [".r0", ".namespaces", ".signing_policy"]
            .iter()
            .any(|x| name.ends_with(x));
        if keep {
            let content =
                std::fs::read_to_string(e.path()).map_err(|e| ApiError::internal(e.to_string()))?;
            out.push(TrustFile { name, content });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// `https://ADDRESS:PORT` of the node's API.
    pub url: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub features: Vec<String>,
    pub instances: Vec<ReportedInstance>,
    /// What the node measured it can run (`vfarm doctor --output json`); nodes older than it
    /// send none. Its `accelerator` steers where VMs go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub checks: Option<vfarm_core::doctor::Report>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ReportedInstance {
    pub id: String,
    pub state: String,
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.trim().as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { kind, id } => ApiError {
            code: ErrorCode::HostNotFound,
            message: format!("{kind} `{id}` not found"),
            field: Some("name".into()),
        },
        StoreError::Conflict { kind, id } => ApiError {
            code: ErrorCode::Conflict,
            message: format!("{kind} `{id}` already exists or is in use"),
            field: Some("name".into()),
        },
        e => ApiError::internal(e.to_string()),
    }
}

fn admin(who: &Option<Extension<Identity>>) -> Result<Identity, ApiError> {
    let who = crate::instances::identity(who.clone())?;
    if !who.admin {
        return Err(ApiError {
            code: ErrorCode::Forbidden,
            message: "the host inventory is for admins".into(),
            field: None,
        });
    }
    Ok(who)
}

/// `POST /api/v1/hosts/join`: trade a one-time token for a node certificate.
#[utoipa::path(post, path = "/api/v1/hosts/join", tag = "hosts", request_body = JoinRequest, security(()),
    responses((status = 201, body = JoinResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn join(
    State(s): State<AppState>,
    body: Body<JoinRequest>,
) -> Result<Response, ApiError> {
    let req = crate::instances::json_body(body)?;
    vfarm_auth::ca::check_hostname(&req.name)
        .map_err(|e| ApiError::bad_request("name", e.to_string()))?;
    let Ok(ip) = req.address.parse::<std::net::IpAddr>() else {
        return Err(ApiError::bad_request(
            "address",
            format!("`{}` is not an IP address", req.address),
        ));
    };
    let Some(port) = req.port.filter(|p| *p != 0) else {
        return Err(ApiError::bad_request(
            "port",
            "the node's API port is required (its URL is fixed at join)".to_string(),
        ));
    };
    let url = format!("https://{}", std::net::SocketAddr::new(ip, port));
    let data = s.data_dir.clone();
    let store = s.store.clone();
    let control_fingerprint = s.server_fingerprint.clone().unwrap_or_default();
    let control_subject = s.server_subject.clone().ok_or_else(|| ApiError {
        code: ErrorCode::NoSiteCa,
        message: "this service takes no nodes (it needs --tls-cert and a site CA: vfarm ca init)"
            .into(),
        field: None,
    })?;
    let out = blocking(move || {
        let now = chrono::Utc::now();
        let ca = SiteCa::open(&vfarm_auth::ca::ca_dir(&data)).map_err(|e| ApiError {
            code: ErrorCode::NoSiteCa,
            message: format!("this control has no site CA to issue node certificates: {e}"),
            field: None,
        })?;
        // Check the token before issuing anything (a wrong one must not cost a certificate
        // and a CRL entry); the store's compare-and-set below is what makes it one-time.
        // Unknown and pending names do the same work and compare in constant time, so the
        // answer's timing tells nothing about which names are pending.
        let hash = token_hash(&req.token);
        let pending = s.store.pending_join_token(&req.name).map_err(store_err)?;
        let (expected, expires) = pending.unwrap_or_else(|| (token_hash(""), String::new()));
        let same: bool = subtle::ConstantTimeEq::ct_eq(hash.as_bytes(), expected.as_bytes()).into();
        let valid = same && expires.as_str() > vfarm_store::now().as_str();
        if !valid {
            return Err(bad_token());
        }
        let issued = ca
            .issue_host_with(
                &req.name,
                std::slice::from_ref(&req.address),
                NODE_CERT_DAYS,
                now,
            )
            .map_err(ApiError::from)?;
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
        Ok(JoinResponse {
            name: req.name,
            subject: issued.subject.clone(),
            serial: issued.serial.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
            ca_pem: ca.certificate_pem().map_err(ApiError::from)?,
            control_subject,
            control_fingerprint,
            trust_files: site_trust_files(&ca)?,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

fn bad_token() -> ApiError {
    ApiError {
        code: ErrorCode::InvalidJoinToken,
        message: "no pending host with that name and token (used, expired or never issued: \
                  `vfarm host add NAME` prints a new one)"
            .into(),
        field: Some("token".into()),
    }
}

/// `POST /api/v1/hosts/heartbeat`: a joined node reports, with its certificate.
#[utoipa::path(post, path = "/api/v1/hosts/heartbeat", tag = "hosts", request_body = HeartbeatRequest,
    responses((status = 200, description = "What the heartbeat changed (re-adopted, changed and missing instances) and the site CA's CRL and namespace files", body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn heartbeat(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    peer: Option<Extension<axum::extract::ConnectInfo<crate::tls::Peer>>>,
    body: Body<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let who = crate::instances::identity(who)?;
    if who.method != AuthMethod::ClientCert {
        return Err(ApiError {
            code: ErrorCode::NodeCertificateRequired,
            message: "heartbeats come from nodes, with the certificate issued at join".into(),
            field: None,
        });
    }
    let serial = peer.and_then(|p| p.0 .0.client_serial.clone());
    let hb = crate::instances::json_body(body)?;
    // States from the closed set only: anything else is refused before it is recorded.
    for (i, inst) in hb.instances.iter().enumerate() {
        if inst.state.parse::<vfarm_core::instance::State>().is_err() {
            return Err(ApiError::bad_request(
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
    // The node's name is its certificate subject's CN (the issuer is in `who.user` too).
    let subject = who.subject.clone().unwrap_or_default();
    let name = common_name(&subject).ok_or_else(|| ApiError {
        code: ErrorCode::UnknownNode,
        message: format!("`{subject}` has no CN"),
        field: None,
    })?;
    let store = s.store.clone();
    let data = s.data_dir.clone();
    let out = blocking(move || {
        let unknown = || ApiError {
            code: ErrorCode::UnknownNode,
            message: format!("no joined host `{name}` with the subject `{subject}`"),
            field: None,
        };
        let host = store.host(&name).map_err(store_err)?.ok_or_else(unknown)?;
        // Pinned to the certificate issued at join, not just its subject.
        if host.cert_serial.is_none() || host.cert_serial != serial {
            return Err(ApiError {
                code: ErrorCode::UnknownNode,
                message: format!(
                    "`{name}` joined with certificate serial {}, this one is {}",
                    host.cert_serial.as_deref().unwrap_or("none"),
                    serial.as_deref().unwrap_or("none")
                ),
                field: None,
            });
        }
        // The URL was fixed at join; a heartbeat cannot move the node's calls elsewhere.
        let Some(url) = host.url.clone().filter(|u| !u.is_empty()) else {
            return Err(ApiError::bad_request(
                "url",
                format!("`{name}` has no URL recorded at join; join it again"),
            ));
        };
        if !hb.url.is_empty() && hb.url != url {
            return Err(ApiError::bad_request(
                "url",
                format!(
                    "`{}` is not the URL `{url}` recorded when `{name}` joined (it changes only \
                     by joining again)",
                    hb.url
                ),
            ));
        }
        let instances: Vec<(String, String)> = hb
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.state.clone()))
            .collect();
        let checks = hb
            .checks
            .as_ref()
            .map(|c| serde_json::to_string(c).unwrap_or_default());
        let outcome = store
            .host_heartbeat(
                &name,
                &subject,
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
        let trust_files = match SiteCa::open(&vfarm_auth::ca::ca_dir(&data)) {
            Ok(ca) => site_trust_files(&ca)?,
            Err(_) => Vec::new(),
        };
        Ok(HeartbeatResponse {
            outcome: serde_json::to_value(outcome)
                .map_err(|e| ApiError::internal(e.to_string()))?,
            trust_files,
        })
    })
    .await?;
    Ok(Json(out).into_response())
}

/// The CN of a one-line DN (`/C=…/O=…/CN=name`).
fn common_name(dn: &str) -> Option<String> {
    dn.rsplit('/')
        .find_map(|part| part.strip_prefix("CN="))
        .map(str::to_string)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHost {
    pub name: String,
    /// How long the token works: 1h (default), 30m, 2d.
    #[serde(default)]
    pub expires: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddedHost {
    pub name: String,
    pub token: String,
    pub expires: String,
}

/// Issue a one-time join token for `name` (shared by the API and the CLI).
pub fn add_host(
    store: &vfarm_store::Store,
    actor: &str,
    name: &str,
    valid_secs: u64,
) -> Result<AddedHost, ApiError> {
    vfarm_auth::ca::check_hostname(name)
        .map_err(|e| ApiError::bad_request("name", e.to_string()))?;
    let mut secret = [0u8; 24];
    getrandom(&mut secret)?;
    let token = format!("vfj_{}", hex(&secret));
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(valid_secs as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    store
        .add_host(actor, name, &token_hash(&token), &expires)
        .map_err(store_err)?;
    Ok(AddedHost {
        name: name.to_string(),
        token,
        expires,
    })
}

fn getrandom(buf: &mut [u8]) -> Result<(), ApiError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| ApiError::internal(format!("no randomness: {e}")))
}

#[utoipa::path(post, path = "/api/v1/hosts", tag = "hosts", request_body = AddHost,
    responses((status = 201, body = AddedHost), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn add(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    body: Body<AddHost>,
) -> Result<Response, ApiError> {
    let who = admin(&who)?;
    let req = crate::instances::json_body(body)?;
    let secs = match &req.expires {
        None => 3600,
        Some(e) => vfarm_core::instance::parse_duration("expires", e)
            .map_err(|e| ApiError::bad_request("expires", e.to_string()))?,
    };
    let out = blocking(move || add_host(&s.store, &who.user, &req.name, secs)).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", operation_id = "list_hosts",
    responses((status = 200, description = "The host inventory", body = [Object]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
) -> Result<Response, ApiError> {
    admin(&who)?;
    let hosts: Vec<HostRow> = blocking(move || s.store.hosts().map_err(store_err)).await?;
    Ok(Json(hosts).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts/{name}", tag = "hosts", operation_id = "show_host", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    admin(&who)?;
    let host = blocking(move || {
        s.store.host(&name).map_err(store_err)?.ok_or_else(|| {
            store_err(StoreError::NotFound {
                kind: "host",
                id: name,
            })
        })
    })
    .await?;
    Ok(Json(host).into_response())
}

async fn set_drained(
    s: AppState,
    who: Option<Extension<Identity>>,
    name: String,
    drained: bool,
) -> Result<Response, ApiError> {
    let who = admin(&who)?;
    let host = blocking(move || {
        if !s
            .store
            .set_host_drained(&who.user, &name, drained)
            .map_err(store_err)?
        {
            return Err(store_err(StoreError::NotFound {
                kind: "host",
                id: name,
            }));
        }
        s.store.host(&name).map_err(store_err)
    })
    .await?;
    Ok(Json(host).into_response())
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", tag = "hosts", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn drain(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_drained(s, who, name, true).await
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/undrain", tag = "hosts", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn undrain(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_drained(s, who, name, false).await
}

/// Remove a host without instances and revoke its certificate (the CRL is republished, so
/// its next connection is refused in the TLS handshake).
pub fn remove_host(
    store: &vfarm_store::Store,
    data_dir: &std::path::Path,
    actor: &str,
    name: &str,
) -> Result<HostRow, ApiError> {
    let host = store.remove_host(actor, name).map_err(store_err)?;
    if let Some(serial) = &host.cert_serial {
        let ca = SiteCa::open(&vfarm_auth::ca::ca_dir(data_dir)).map_err(ApiError::from)?;
        ca.revoke(serial, chrono::Utc::now())
            .map_err(ApiError::from)?;
    }
    Ok(host)
}

#[utoipa::path(delete, path = "/api/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = admin(&who)?;
    let host = blocking(move || remove_host(&s.store, &s.data_dir, &who.user, &name)).await?;
    Ok(Json(host).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body as HttpBody};
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn join_from(st: &AppState, ip: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let mut req = Request::post("/api/v1/hosts/join")
            .header("content-type", "application/json")
            .body(HttpBody::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(crate::Peer {
            addr: Some(format!("{ip}:40000").parse().unwrap()),
            ..Default::default()
        }));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let b = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&b).unwrap_or_default())
    }

    fn issued(ca: &std::path::Path) -> usize {
        std::fs::read_dir(ca.join("issued"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Finding 9 of issue 15: a wrong join token got a certificate signed (then revoked,
    /// growing the CRL). Now nothing is issued or revoked for it, an unknown name and a
    /// pending one answer alike, and one address can only try a few times.
    #[tokio::test]
    async fn wrong_join_tokens_cost_no_certificate_and_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(vfarm_store::Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store.clone()).unwrap();
        st.server_subject = Some("/O=t/CN=control".into());
        let ca_dir = vfarm_auth::ca::ca_dir(dir.path());
        SiteCa::init(&ca_dir, "/O=t/CN=Test CA", 30, chrono::Utc::now()).unwrap();
        let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        store
            .add_host("admin", "node1", &token_hash("right"), &expires)
            .unwrap();
        let before = issued(&ca_dir);
        let crl = || std::fs::read_to_string(ca_dir.join("revoked.json")).unwrap_or_default();
        let crl_before = crl();

        let wrong = r#"{"name":"node1","token":"wrong","address":"127.0.0.1","port":8751}"#;
        let unknown = r#"{"name":"node9","token":"wrong","address":"127.0.0.1","port":8751}"#;
        let (s1, v1) = join_from(&st, "192.0.2.1", wrong).await;
        let (s2, v2) = join_from(&st, "192.0.2.1", unknown).await;
        assert_eq!(s1, StatusCode::UNAUTHORIZED, "{v1}");
        assert_eq!(
            (s1, &v1),
            (s2, &v2),
            "a pending name must answer like an unknown one"
        );
        assert_eq!(
            issued(&ca_dir),
            before,
            "a certificate was signed for a wrong token"
        );
        assert_eq!(crl(), crl_before, "the CRL grew");

        // The address is slowed down after a few tries.
        let mut limited = false;
        for _ in 0..10 {
            let (s, v) = join_from(&st, "192.0.2.1", wrong).await;
            if s == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                limited = true;
                break;
            }
        }
        assert!(
            limited,
            "12 join attempts from one address were all answered"
        );

        // The right token from another address still joins, with one certificate.
        let (s, v) = join_from(
            &st,
            "192.0.2.2",
            r#"{"name":"node1","token":"right","address":"127.0.0.1","port":8751}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(issued(&ca_dir), before + 1);
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

    async fn call(
        st: &AppState,
        path: &str,
        body: serde_json::Value,
        peer: crate::tls::Peer,
    ) -> (StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// Issue 24, acceptance 3; issue 15, findings 2 and 6: a heartbeat cannot move a node's
    /// URL, report a state outside the closed set, or come from another certificate with
    /// the node's subject; a good one brings the CRL back.
    #[tokio::test]
    async fn heartbeats_are_validated_and_bring_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(
            &vfarm_auth::ca::ca_dir(dir.path()),
            "/C=XX/O=Site/CN=Site CA",
            30,
            chrono::Utc::now(),
        )
        .unwrap();
        let store = std::sync::Arc::new(vfarm_store::Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store.clone()).unwrap();
        st.server_subject = Some("/C=XX/O=Site/CN=control".into());
        let added = add_host(&store, "admin", "node1", 600).unwrap();
        let (code, j) = call(
            &st,
            "/api/v1/hosts/join",
            serde_json::json!({"name": "node1", "token": added.token, "address": "127.0.0.1", "port": 9001}),
            crate::tls::Peer::default(),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{j}");
        assert!(
            j["trust_files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["name"].as_str().unwrap().ends_with(".r0")),
            "{j}"
        );
        let node = |serial: &str| crate::tls::Peer {
            addr: Some("127.0.0.1:5".parse().unwrap()),
            client_dn: Some(j["subject"].as_str().unwrap().to_string()),
            client_issuer: Some("/C=XX/O=Site/CN=Site CA".into()),
            client_serial: Some(serial.to_string()),
            ..Default::default()
        };
        let serial = j["serial"].as_str().unwrap().to_string();
        let hb = |url: &str, state: &str| {
            serde_json::json!({"url": url, "cpus": 2, "memory_mib": 100, "disk_mib": 100,
                "features": ["oci"], "instances": [{"id": "x1", "state": state}]})
        };
        let before = store.host("node1").unwrap().unwrap();
        for (body, peer, code, field) in [
            (
                hb("https://attacker", "running"),
                node(&serial),
                StatusCode::BAD_REQUEST,
                "url",
            ),
            (
                hb("", "pwned"),
                node(&serial),
                StatusCode::BAD_REQUEST,
                "instances",
            ),
            (
                hb("", "running"),
                node("00BEEF"),
                StatusCode::FORBIDDEN,
                "unknown_node",
            ),
        ] {
            let (c, v) = call(&st, "/api/v1/hosts/heartbeat", body, peer).await;
            assert_eq!(c, code, "{v}");
            let e = &v["error"];
            assert!(e["field"] == field || e["code"] == field, "{v}");
            let now = store.host("node1").unwrap().unwrap();
            assert_eq!(now.url.as_deref(), Some("https://127.0.0.1:9001"));
            assert_eq!(now.state, before.state);
            assert_eq!(now.last_heartbeat, before.last_heartbeat);
        }
        // The real node: taken, its URL the one of join, and the CRL in the answer.
        let (c, v) = call(
            &st,
            "/api/v1/hosts/heartbeat",
            hb("https://127.0.0.1:9001", "running"),
            node(&serial),
        )
        .await;
        assert_eq!(c, StatusCode::OK, "{v}");
        assert_eq!(store.host("node1").unwrap().unwrap().state, "up");
        let crl = v["trust_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"].as_str().unwrap().ends_with(".r0"))
            .unwrap_or_else(|| panic!("no CRL in {v}"));
        assert!(crl["content"].as_str().unwrap().contains("BEGIN X509 CRL"));
        // A revocation reaches the node with the next heartbeat.
        let u = ca
            .issue_user("/C=XX/O=Site/CN=U", 1, chrono::Utc::now())
            .unwrap();
        ca.revoke(&u.serial, chrono::Utc::now()).unwrap();
        let (_, v2) = call(
            &st,
            "/api/v1/hosts/heartbeat",
            hb("", "running"),
            node(&serial),
        )
        .await;
        let crl2 = v2["trust_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"].as_str().unwrap().ends_with(".r0"))
            .unwrap()
            .clone();
        assert_ne!(crl, &crl2);
    }

    #[tokio::test]
    async fn join_needs_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(vfarm_store::Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store.clone()).unwrap();
        st.server_subject = Some("/C=XX/O=Site/CN=control".into());
        let added = add_host(&store, "admin", "node1", 600).unwrap();
        let (code, v) = call(
            &st,
            "/api/v1/hosts/join",
            serde_json::json!({"name": "node1", "token": added.token, "address": "127.0.0.1"}),
            crate::tls::Peer::default(),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["field"], "port");
    }
}
