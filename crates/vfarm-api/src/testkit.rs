//! In-process requests for the handler tests: a service over an in-memory store whose
//! admin is `root-admin`, and bearer tokens for any user.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use tower::ServiceExt;
use vfarm_store::Store;

use crate::{router, AppState, AuthPolicy, Peer, StatusCode};

pub const ADMIN: &str = "root-admin";

pub fn state(dir: &std::path::Path) -> AppState {
    let store = Arc::new(Store::open_in_memory().unwrap());
    let mut st = AppState::new(dir.to_path_buf(), store).unwrap();
    st.auth = AuthPolicy::new([ADMIN.to_string()]);
    st
}

/// A bearer token for `user`.
pub fn token(st: &AppState, user: &str) -> String {
    vfarm_auth::token::create(&st.store, user, None, None, chrono::Utc::now())
        .unwrap()
        .token
}

/// `method path` as `token`'s user, with a JSON body when given: status and JSON answer.
pub async fn send(
    st: &AppState,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    let mut req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(Peer::default()));
    let resp = router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
