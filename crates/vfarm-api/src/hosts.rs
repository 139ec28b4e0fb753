//! The host calls over HTTP: joining with a one-time token, heartbeats, and the host
//! inventory (`/api/v1/hosts`). The handlers take the request apart and call
//! `vfarm_service::hosts` with the request's identity (a heartbeat: the TLS peer's client
//! certificate serial too). Join is the one open call: the token is the credential.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vfarm_auth::Identity;
use vfarm_proto::hosts::{
    AddHost, AddedHost, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse,
};
use vfarm_service::hosts::{self, ControlCert, NodeCert};
use vfarm_service::Caller;

use crate::{blocking, ApiError, AppState, ErrorBody, StatusCode};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The caller, who must be an admin: asked before a body is read.
fn admin(who: Option<Extension<Identity>>) -> Result<Caller, ApiError> {
    let who = crate::instances::identity(who)?;
    let caller = Caller::new(who.user, who.admin);
    hosts::require_admin(&caller)?;
    Ok(caller)
}

/// `POST /api/v1/hosts/join`: trade a one-time token for a node certificate.
#[utoipa::path(post, path = "/api/v1/hosts/join", tag = "hosts", request_body = JoinRequest, security(()),
    responses((status = 201, body = JoinResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn join(
    State(s): State<AppState>,
    body: Body<JoinRequest>,
) -> Result<Response, ApiError> {
    let req = crate::instances::json_body(body)?;
    let control = ControlCert {
        subject: s.server_subject.clone(),
        fingerprint: s.server_fingerprint.clone(),
    };
    let env = s.env();
    let out = blocking(move || Ok(hosts::join(&env, &control, req)?)).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
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
    let serial = peer.and_then(|p| p.0 .0.client_serial.clone());
    let node = NodeCert::of(&who, serial)?;
    let hb = crate::instances::json_body(body)?;
    let env = s.env();
    let out = blocking(move || Ok(hosts::heartbeat(&env, &node, hb)?)).await?;
    Ok(Json(out).into_response())
}

#[utoipa::path(post, path = "/api/v1/hosts", tag = "hosts", request_body = AddHost,
    responses((status = 201, body = AddedHost), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn add(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    body: Body<AddHost>,
) -> Result<Response, ApiError> {
    let who = admin(who)?;
    let req = crate::instances::json_body(body)?;
    let env = s.env();
    let out = blocking(move || Ok(hosts::add(&env, &who, req)?)).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", operation_id = "list_hosts",
    responses((status = 200, description = "The host inventory", body = [Object]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
) -> Result<Response, ApiError> {
    let who = admin(who)?;
    let env = s.env();
    let hosts = blocking(move || Ok(hosts::list(&env, &who)?)).await?;
    Ok(Json(hosts).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts/{name}", tag = "hosts", operation_id = "show_host", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = admin(who)?;
    let env = s.env();
    let host = blocking(move || Ok(hosts::show(&env, &who, &name)?)).await?;
    Ok(Json(host).into_response())
}

async fn set_drained(
    s: AppState,
    who: Option<Extension<Identity>>,
    name: String,
    drained: bool,
) -> Result<Response, ApiError> {
    let who = admin(who)?;
    let env = s.env();
    let host = blocking(move || Ok(hosts::set_drained(&env, &who, &name, drained)?)).await?;
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

#[utoipa::path(delete, path = "/api/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = admin(who)?;
    let env = s.env();
    let host = blocking(move || Ok(hosts::remove(&env, &who, &name)?)).await?;
    Ok(Json(host).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body as HttpBody};
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use tower::ServiceExt;
    use vfarm_auth::ca::SiteCa;
    use vfarm_service::hosts::token_hash;

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
}
