//! Authentication: the middleware that resolves every request's [`Identity`] and puts it in
//! the request extensions, and `GET /api/v1/whoami`.
//!
//! Order: an `Authorization: Bearer` header wins (a bad, revoked or expired token is a 401
//! even when a certificate was presented too: the caller asked for that identity); else the
//! TLS client certificate's subject DN (verified during the handshake). Over TCP every
//! `/api/v1/*` request needs an identity; other paths (`/healthz`, published image lists and
//! repository files for subscribers, the OS-Farm order) take one when given.

use crate::ErrorCode;
use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vfarm_auth::{AuthError, AuthMethod, Identity};

use crate::tls::Peer;
use crate::{ApiError, AppState};

/// Who must authenticate and who is an admin.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Users (DNs or token users) with admin rights.
    pub admins: Arc<HashSet<String>>,
    /// Whether `/api/v1/*` refuses requests without an identity (always, over TCP).
    pub require_identity: bool,
    /// When set (nodes), a certificate admin must also present one of these certificates
    /// (SHA-256 fingerprints): the control's own, pinned at join, not any with its subject.
    pub admin_pins: Option<Arc<HashSet<String>>>,
    /// Local root (the unix socket's uid 0, tokens of user `root`) is an admin: it owns the
    /// data dir and could do anything there anyway. `root_is_admin = false` in the config
    /// turns it off.
    pub root_is_admin: bool,
}

/// The user name of uid 0, as the unix socket and `vfarm token create` run by root name it.
pub const ROOT: &str = "root";

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy::new([])
    }
}

impl AuthPolicy {
    /// Whether `user` (an identity's user) is an admin: listed itself, or, for a certificate
    /// user's owner key, listed by its bare subject (any issuer the CA directory trusts).
    pub fn is_admin(&self, user: &str) -> bool {
        (self.root_is_admin && user == ROOT)
            || self.admins.contains(user)
            || vfarm_auth::identity::split_owner_key(user)
                .is_some_and(|(subject, _)| self.admins.contains(subject))
    }

    pub fn new(admins: impl IntoIterator<Item = String>) -> AuthPolicy {
        AuthPolicy {
            admins: Arc::new(admins.into_iter().collect()),
            require_identity: true,
            admin_pins: None,
            root_is_admin: true,
        }
    }
}

fn unauthorized(code: ErrorCode, message: String) -> Response {
    let mut resp = ApiError {
        code,
        message,
        field: Some("authorization".into()),
    }
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vfarm\""),
    );
    resp
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        vfarm_service::ServiceError::from(e).into()
    }
}

/// `/api/v1/` paths that need no identity: the API's description, and the login that
/// turns a token into the web UI's session cookie.
const OPEN_PATHS: &[&str] = &[
    "/api/v1/openapi.json",
    "/api/v1/session",
    // The join token is the credential.
    "/api/v1/hosts/join",
];

/// The middleware: resolve the identity, refuse `/api/v1/*` without one.
pub async fn resolve_identity(
    State(s): State<AppState>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let cookie = req.headers().get(header::AUTHORIZATION).is_none();
    let bearer = match req.headers().get(header::AUTHORIZATION) {
        // The web UI's session cookie carries a token too (the header wins).
        None => crate::live::session_token(req.headers()),
        Some(v) => {
            let v = v.to_str().unwrap_or("");
            match v.split_once(' ') {
                Some((scheme, tok)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(tok.trim().to_string())
                }
                _ => {
                    return unauthorized(
                        ErrorCode::InvalidToken,
                        "the Authorization header must be `Bearer <token>`".into(),
                    )
                }
            }
        }
    };
    let identity = if let Some(tok) = bearer {
        let store = s.store.clone();
        let key = s.session_key.clone();
        let verified = tokio::task::spawn_blocking(move || {
            if cookie {
                vfarm_auth::token::verify_session(&store, &key, &tok, chrono::Utc::now())
            } else {
                vfarm_auth::token::verify(&store, &tok, chrono::Utc::now())
            }
        })
        .await;
        match verified {
            Ok(Ok(row)) => Some(token_identity(&s.auth, row)),
            // A stale session cookie is no identity (the login page must still load), not
            // an error; a bad Authorization header is what the caller asked for: 401.
            Ok(Err(_)) if cookie => peer_identity(&s, &req),
            Ok(Err(e)) if e.code().http_status() == 401 => {
                return unauthorized(e.code(), e.to_string())
            }
            Ok(Err(e)) => return ApiError::from(e).into_response(),
            Err(e) => return ApiError::internal(format!("worker failed: {e}")).into_response(),
        }
    } else {
        peer_identity(&s, &req)
    };
    match &identity {
        Some(id) => {
            req.extensions_mut().insert(id.clone());
        }
        None if s.auth.require_identity
            && req.uri().path().starts_with("/api/v1/")
            && !OPEN_PATHS.contains(&req.uri().path()) =>
        {
            return unauthorized(
                ErrorCode::Unauthenticated,
                "this endpoint needs a client certificate or `Authorization: Bearer <token>` \
                 (create one with `vfarm token create`)"
                    .into(),
            );
        }
        // The OS-Farm URL builds images: anonymous orders only from this host.
        None if s.auth.require_identity
            && req.uri().path() == "/osfarm/create"
            && req
                .extensions()
                .get::<ConnectInfo<Peer>>()
                .and_then(|c| c.0.addr)
                .is_some_and(|a| !a.ip().is_loopback()) =>
        {
            return unauthorized(
                ErrorCode::Unauthenticated,
                "OS-Farm orders from other hosts need a client certificate or a token".into(),
            );
        }
        None => {}
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let writes = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    // A browser sends its cookie and its client certificate with any site's form: such a
    // change must come from this service's own pages.
    let by_cookie = cookie
        && identity
            .as_ref()
            .is_some_and(|i| i.method == AuthMethod::Token);
    let by_cert = identity
        .as_ref()
        .is_some_and(|i| i.method == AuthMethod::ClientCert);
    if writes && (by_cookie || by_cert) {
        if let Err(why) = same_origin(req.headers(), by_cookie) {
            return ApiError {
                code: ErrorCode::CrossOrigin,
                message: why,
                field: Some("origin".into()),
            }
            .into_response();
        }
    }
    // Joins take no identity: limited per client address, so guessing tokens or names is
    // slow. Every other change is limited per user.
    let limited = if path == "/api/v1/hosts/join" {
        let addr = req
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .and_then(|c| c.0.addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        s.join_limit.check(&addr, "join")
    } else {
        match &identity {
            Some(id) if writes => s.write_limit.check(&id.user, "write"),
            _ => Ok(()),
        }
    };
    if let Err(e) = limited {
        return e.into_response();
    }
    let resp = next.run(req).await;
    // Every change an identified caller asks for is audited with how it ended.
    if let Some(id) = identity.filter(|_| writes) {
        let status = resp.status();
        let outcome = if status.is_success() {
            vfarm_auth::audit::Outcome::Ok
        } else if status.is_client_error() {
            vfarm_auth::audit::Outcome::Denied(status.as_u16().to_string())
        } else {
            vfarm_auth::audit::Outcome::Failed(status.as_u16().to_string())
        };
        let store = s.store.clone();
        let action = format!("{method} {path}");
        let done = tokio::task::spawn_blocking(move || {
            vfarm_auth::audit::record(
                &store,
                Some(&id),
                &action,
                &path,
                &outcome,
                &serde_json::json!({ "status": status.as_u16() }),
            )
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::error!("cannot append to the audit log: {e}");
        }
    }
    resp
}

/// CSRF defence for browser credentials: an `Origin` (or, failing that, `Sec-Fetch-Site`)
/// must name this service. Without either header the client is no browser (curl, the CLI),
/// which is accepted for certificates; a cookie comes only from a browser, so it needs one.
fn same_origin(headers: &axum::http::HeaderMap, cookie: bool) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .split_once("://")
            .map(|(_, a)| a.trim_end_matches('/'))
            .unwrap_or("");
        if !host.is_empty() && authority.eq_ignore_ascii_case(host) {
            return Ok(());
        }
        return Err(format!(
            "a change from another site (Origin `{origin}`) is refused for browser credentials"
        ));
    }
    match headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        Some("same-origin") | Some("none") => Ok(()),
        Some(other) => Err(format!(
            "a change from another site (Sec-Fetch-Site `{other}`) is refused for browser credentials"
        )),
        None if !cookie => Ok(()),
        None => Err("a change with the session cookie needs an Origin header".into()),
    }
}

/// Who a verified token makes the caller.
pub(crate) fn token_identity(policy: &AuthPolicy, row: vfarm_store::auth::TokenRow) -> Identity {
    Identity {
        admin: policy.is_admin(&row.user),
        user: row.user,
        method: AuthMethod::Token,
        token_id: Some(row.id),
        subject: None,
        issuer: None,
    }
}

/// The identity the connection itself proves: a verified client certificate, or the unix
/// socket peer's uid.
fn peer_identity(s: &AppState, req: &Request<Body>) -> Option<Identity> {
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0);
    if let Some(dn) = peer.and_then(|p| p.client_dn.clone()) {
        let pinned = match &s.auth.admin_pins {
            None => true,
            Some(pins) => peer
                .and_then(|p| p.client_fingerprint.as_ref())
                .is_some_and(|f| pins.contains(f)),
        };
        // The identity is subject and issuer together: the same subject from another CA
        // is another user. The TLS listener always sets both.
        let issuer = peer.and_then(|p| p.client_issuer.clone())?;
        let user = vfarm_auth::identity::owner_key(&dn, &issuer);
        Some(Identity {
            admin: pinned && s.auth.is_admin(&user),
            user,
            method: AuthMethod::ClientCert,
            token_id: None,
            subject: Some(dn),
            issuer: Some(issuer),
        })
    } else {
        peer.and_then(|p| p.unix_uid).map(|uid| {
            let user = vfarm_auth::identity::user_name(uid);
            Identity {
                admin: (uid == 0 && s.auth.root_is_admin) || s.auth.is_admin(&user),
                user,
                method: AuthMethod::UnixPeer,
                token_id: None,
                subject: None,
                issuer: None,
            }
        })
    }
}

/// `GET /api/v1/whoami`: the caller's identity.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "identity",
    responses((status = 200, description = "user, method (client-cert, token, unix-peer), admin; for certificates also subject and issuer (user is `<subject> issuer=<issuer>`)", body = Object), (status = 401, body = crate::ErrorBody)))]
pub async fn whoami(id: Option<Extension<Identity>>) -> Response {
    match id {
        Some(Extension(id)) => Json(id).into_response(),
        None => unauthorized(
            ErrorCode::Unauthenticated,
            "no identity was presented".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    fn state(admins: &[&str]) -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(vfarm_store::Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store).unwrap();
        st.auth = AuthPolicy::new(admins.iter().map(|s| s.to_string()));
        (dir, st)
    }

    const TEST_CA: &str = "/C=XX/O=T/CN=Test CA";

    async fn get(
        st: &AppState,
        path: &str,
        auth: Option<&str>,
        dn: Option<&str>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        get_issued(st, path, auth, dn, TEST_CA).await
    }

    async fn get_issued(
        st: &AppState,
        path: &str,
        auth: Option<&str>,
        dn: Option<&str>,
        issuer: &str,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer {
            addr: Some("127.0.0.1:1".parse().unwrap()),
            client_dn: dn.map(str::to_string),
            client_issuer: dn.map(|_| issuer.to_string()),
            ..Peer::default()
        }));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            www,
        )
    }

    #[tokio::test]
    async fn roots_token_is_admin_unless_the_config_says_otherwise() {
        let (_d, mut st) = state(&[]);
        let now = chrono::Utc::now();
        let root = vfarm_auth::token::create(&st.store, ROOT, None, None, now).unwrap();
        let alice = vfarm_auth::token::create(&st.store, "alice", None, None, now).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        let (_, v, _) = get(&st, "/api/v1/whoami", Some(&bearer(&root.token)), None).await;
        assert_eq!(
            (v["user"].as_str(), v["admin"].as_bool()),
            (Some(ROOT), Some(true))
        );
        let (_, v, _) = get(&st, "/api/v1/whoami", Some(&bearer(&alice.token)), None).await;
        assert_eq!(v["admin"], false);
        st.auth.root_is_admin = false;
        let (_, v, _) = get(&st, "/api/v1/whoami", Some(&bearer(&root.token)), None).await;
        assert_eq!(v["admin"], false);
    }

    #[tokio::test]
    async fn anonymous_osfarm_orders_only_from_loopback() {
        let (_d, st) = state(&[]);
        let order = "/osfarm/create?class=nosuch";
        let mut req = Request::get(order).body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer {
            addr: Some("192.0.2.7:4000".parse().unwrap()),
            client_dn: None,
            ..Peer::default()
        }));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        // From loopback the order is taken (and refused for its bad suite, not for identity).
        let (s, v, _) = get(&st, order, None, None).await;
        assert_ne!(s, StatusCode::UNAUTHORIZED, "{v}");
        let (s, _, _) = get(&st, order, None, Some("/C=XX/CN=Remote")).await;
        assert_ne!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn api_needs_an_identity_healthz_does_not() {
        let (_d, st) = state(&[]);
        let (s, v, www) = get(&st, "/api/v1/images", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["code"], "unauthenticated");
        assert_eq!(www.as_deref(), Some("Bearer realm=\"vfarm\""));
        let (s, _, _) = get(&st, "/api/v1/whoami", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = get(&st, "/healthz", None, None).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn certificate_and_token_identities() {
        let admin = "/C=XX/O=T/CN=Admin";
        let (_d, st) = state(&[admin]);
        let (s, v, _) = get(&st, "/api/v1/whoami", None, Some("/C=XX/O=T/CN=Alice")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["user"], "/C=XX/O=T/CN=Alice issuer=/C=XX/O=T/CN=Test CA");
        assert_eq!(
            (v["subject"].as_str(), v["issuer"].as_str()),
            (Some("/C=XX/O=T/CN=Alice"), Some(TEST_CA))
        );
        assert_eq!(v["method"], "client-cert");
        assert_eq!(v["admin"], false);
        let (_, v, _) = get(&st, "/api/v1/whoami", None, Some(admin)).await;
        assert_eq!(v["admin"], true);

        let t =
            vfarm_auth::token::create(&st.store, "bob", None, None, chrono::Utc::now()).unwrap();
        let bearer = format!("Bearer {}", t.token);
        let (s, v, _) = get(&st, "/api/v1/whoami", Some(&bearer), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["user"].as_str(), v["method"].as_str()),
            (Some("bob"), Some("token"))
        );
        assert_eq!(v["token_id"], t.row.id.as_str());
        // The token is who the caller asked to be, even with a certificate.
        let (_, v, _) = get(&st, "/api/v1/whoami", Some(&bearer), Some(admin)).await;
        assert_eq!(v["user"], "bob");
        let (s, _, _) = get(&st, "/api/v1/images", Some(&bearer), None).await;
        assert_eq!(s, StatusCode::OK);
        // A change is audited with its outcome (a refused spec here); reads are not.
        let mut req = Request::post("/api/v1/images")
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"suite":"nosuch"}"#))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer::default()));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let log = st.store.audit_log(Some("bob"), 10).unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].action, "POST /api/v1/images");
        assert_eq!(
            (log[0].method.as_str(), log[0].outcome.as_str()),
            ("token", "denied:400")
        );

        vfarm_auth::token::revoke(&st.store, &t.row.id).unwrap();
        let (s, v, _) = get(&st, "/api/v1/whoami", Some(&bearer), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["code"], "token_revoked");
        for bad in ["Bearer vft_nope", "Basic dXNlcjpwYXNz", "Bearer "] {
            let (s, v, _) = get(&st, "/api/v1/whoami", Some(bad), Some(admin)).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(v["error"]["code"], "invalid_token", "{bad}");
        }
    }

    #[tokio::test]
    async fn an_admin_bound_to_an_issuer_is_no_admin_from_another() {
        let admin = "/C=XX/O=A/CN=Admin";
        let (ca_a, ca_b) = ("/C=XX/O=A/CN=CA A", "/C=XX/O=B/CN=CA B");
        let (_d, st) = state(&[&vfarm_auth::identity::owner_key(admin, ca_a)]);
        let (s, v, _) = get_issued(&st, "/api/v1/whoami", None, Some(admin), ca_a).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["admin"], true, "{v}");
        let (_, v, _) = get_issued(&st, "/api/v1/whoami", None, Some(admin), ca_b).await;
        assert_eq!(v["admin"], false, "{v}");
        assert_eq!(v["user"], format!("{admin} issuer={ca_b}"));
        // A bare subject in the list stands for any issuer the CA directory trusts.
        let (_d, st) = state(&[admin]);
        let (_, v, _) = get_issued(&st, "/api/v1/whoami", None, Some(admin), ca_b).await;
        assert_eq!(v["admin"], true, "{v}");
    }

    /// Write requests are limited per user (a token bucket): one user's flood is refused
    /// with 429 while another user's writes still go through.
    #[tokio::test]
    async fn writes_are_rate_limited_per_user() {
        let (_d, mut st) = state(&[]);
        st.write_limit = Arc::new(crate::ratelimit::RateLimiter::new(0.001, 3));
        let post = |user: &'static str| {
            let st = st.clone();
            async move {
                let t = vfarm_auth::token::create(&st.store, user, None, None, chrono::Utc::now())
                    .unwrap();
                let mut req = Request::post("/api/v1/images")
                    .header("authorization", format!("Bearer {}", t.token))
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"suite":"nosuch"}"#))
                    .unwrap();
                req.extensions_mut().insert(ConnectInfo(Peer::default()));
                crate::router(st).oneshot(req).await.unwrap().status()
            }
        };
        for _ in 0..3 {
            assert_eq!(post("mallory").await, StatusCode::BAD_REQUEST);
        }
        assert_eq!(post("mallory").await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(post("alice").await, StatusCode::BAD_REQUEST);
        // Reads are not limited.
        let t = vfarm_auth::token::create(&st.store, "mallory", None, None, chrono::Utc::now())
            .unwrap();
        let (s, _, _) = get(
            &st,
            "/api/v1/images",
            Some(&format!("Bearer {}", t.token)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    async fn send(
        st: &AppState,
        req: Request<Body>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let mut req = req;
        req.extensions_mut().insert(ConnectInfo(Peer::default()));
        let resp = crate::router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let cookie = resp
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_string());
        let b = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&b).unwrap_or_default(),
            cookie,
        )
    }

    /// Finding 14 of issue 15: the session cookie was the raw token without `Secure`, and
    /// cross-origin form posts with browser credentials (cookie or client certificate) were
    /// carried out.
    #[tokio::test]
    async fn browser_credentials_need_this_origin_and_the_cookie_is_no_token() {
        let (_d, mut st) = state(&[]);
        st.server_subject = Some("/O=t/CN=service".into());
        let t =
            vfarm_auth::token::create(&st.store, "carol", None, None, chrono::Utc::now()).unwrap();
        let login = Request::post("/api/v1/session")
            .header("content-type", "application/json")
            .body(Body::from(format!(r#"{{"token":"{}"}}"#, t.token)))
            .unwrap();
        let (s, v, set) = send(&st, login).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let set = set.expect("a session cookie");
        for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(attr), "{attr} missing: {set}");
        }
        let value = set
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("vfarm_session=")
            .unwrap()
            .to_string();
        assert!(
            !value.contains(&t.token) && !set.contains(&t.token),
            "{set}"
        );
        let (secret, _) = t.token.rsplit_once('_').map(|(a, b)| (b, a)).unwrap();
        assert!(
            !value.contains(secret),
            "the cookie holds the token's secret"
        );

        let post = |cookie: &str, origin: Option<&str>, fetch_site: Option<&str>| {
            let mut r = Request::post("/api/v1/images")
                .header("host", "vfarm.example:8750")
                .header("cookie", format!("vfarm_session={cookie}"))
                .header("content-type", "application/json");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            if let Some(f) = fetch_site {
                r = r.header("sec-fetch-site", f);
            }
            r.body(Body::from(r#"{"suite":"nosuch"}"#)).unwrap()
        };
        // Another site's form: refused before the handler.
        let (s, v, _) = send(&st, post(&value, Some("https://evil.example"), None)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("cross_origin")),
            "{v}"
        );
        let (s, _, _) = send(&st, post(&value, None, Some("cross-site"))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, _) = send(&st, post(&value, None, None)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // The service's own page: carried out (and refused for its bad spec).
        let (s, v, _) = send(&st, post(&value, Some("https://vfarm.example:8750"), None)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        // The raw token in the cookie, or a forged session, is no identity.
        for forged in [
            t.token.clone(),
            format!("vfs_{}_{}", t.row.id, "00".repeat(32)),
        ] {
            let r = Request::get("/api/v1/whoami")
                .header("cookie", format!("vfarm_session={forged}"))
                .body(Body::empty())
                .unwrap();
            let (s, _, _) = send(&st, r).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{forged}");
        }
        // A revoked token ends its sessions.
        vfarm_auth::token::revoke(&st.store, &t.row.id).unwrap();
        let (s, _, _) = send(&st, post(&value, Some("https://vfarm.example:8750"), None)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // A client certificate from another site's page is refused too; without any
        // browser header (curl, the CLI) it is taken.
        let cert = |origin: Option<&str>| {
            let mut r = Request::post("/api/v1/images")
                .header("host", "vfarm.example:8750")
                .header("content-type", "application/json");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            let mut r = r.body(Body::from(r#"{"suite":"nosuch"}"#)).unwrap();
            r.extensions_mut().insert(ConnectInfo(Peer {
                client_dn: Some("/O=t/CN=Dave".into()),
                client_issuer: Some(TEST_CA.into()),
                ..Peer::default()
            }));
            r
        };
        let resp = crate::router(st.clone())
            .oneshot(cert(Some("https://evil.example")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let resp = crate::router(st.clone()).oneshot(cert(None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
