//! What is not a resource: live events (SSE), the web UI's session cookie, the audit log
//! and the web UI's files.

use crate::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use vfarm_store::Store;

use crate::instances::{identity, Who, KEEP_ALIVE};
use crate::InstanceEvent;
use crate::{blocking, ApiError, AppState, ErrorBody};

/// The web UI's session cookie: a session signed for a token, not the token (HttpOnly,
/// SameSite=Strict, Secure over TLS).
pub const SESSION_COOKIE: &str = "vfarm_session";

#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    responses((status = 200, description = "Server-Sent Events: `instance` (data: an Instance), `instance-removed` (data: {\"id\"}) and \
        `job` (data: {\"id\", \"owner\", \"state\", \"reason\", \"exit_code\", \"ended\"}, when a job's state changes) for what the caller may see",
               body = String, content_type = "text/event-stream"),
              (status = 401, body = ErrorBody)))]
pub(crate) async fn events(
    State(s): State<AppState>,
    who: Who,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let who = identity(who)?;
    let rx = s.events.subscribe();
    let instances = futures_util::stream::unfold((rx, who.clone()), |(mut rx, who)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if who.may_access(ev.owner()) => {
                    let e = match &ev {
                        InstanceEvent::Changed(v) => Event::default()
                            .event("instance")
                            .json_data(v)
                            .unwrap_or_default(),
                        InstanceEvent::Removed { id, .. } => Event::default()
                            .event("instance-removed")
                            .json_data(serde_json::json!({ "id": id }))
                            .unwrap_or_default(),
                    };
                    return Some((Ok(e), (rx, who)));
                }
                Ok(_) => continue,
                Err(e) => return lagged_or_end(e).map(|e| (e, (rx, who))),
            }
        }
    });
    let rx = s.job_events.subscribe();
    let jobs = futures_util::stream::unfold((rx, who), |(mut rx, who)| async move {
        loop {
            match rx.recv().await {
                Ok(j) if who.may_access(&j.owner) => {
                    let e = Event::default()
                        .event("job")
                        .json_data(&j)
                        .unwrap_or_default();
                    return Some((Ok(e), (rx, who)));
                }
                Ok(_) => continue,
                Err(e) => return lagged_or_end(e).map(|e| (e, (rx, who))),
            }
        }
    });
    let stream = futures_util::stream::select(instances, jobs);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A slow reader missed some: tell it to reload rather than show a stale view.
fn lagged_or_end(e: RecvError) -> Option<Result<Event, Infallible>> {
    match e {
        RecvError::Lagged(n) => Some(Ok(Event::default().event("lagged").data(n.to_string()))),
        RecvError::Closed => None,
    }
}

/// A job's state as a `job` event tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobChange {
    pub id: i64,
    pub owner: String,
    pub state: String,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub ended: Option<String>,
}

/// How often the job watcher reads the store.
const JOB_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Send a [`JobChange`] for every job whose state changed, while anyone listens.
///
/// Job states are written by the dispatcher and by runner processes (`vfarm job run-one`,
/// Slurm jobs) that share only the store with this service, so the store is polled rather
/// than told: once a second, the jobs not yet ended (an indexed query) and those that ended
/// since the previous round, never the whole table.
pub fn spawn_job_watcher(store: Arc<Store>, tx: tokio::sync::broadcast::Sender<JobChange>) {
    std::thread::spawn(move || {
        let mut w = JobWatch::default();
        loop {
            if tx.receiver_count() == 0 {
                // Nobody listens: nothing to compare against when someone comes.
                w = JobWatch::default();
            } else if let Err(e) = w.round(&store, &tx) {
                tracing::warn!("job watcher: {e}");
            }
            std::thread::sleep(JOB_WATCH_INTERVAL);
        }
    });
}

/// What the job watcher saw in its last round.
#[derive(Default)]
pub(crate) struct JobWatch {
    /// Per job: (state, updated) when last seen.
    seen: HashMap<i64, (String, String)>,
    /// Where the previous round's window of ended jobs started.
    since: Option<String>,
}

impl JobWatch {
    /// One round: send what changed since the last. The first round after a quiet spell
    /// sends the jobs not ended and those ended in the last seconds: a page that just
    /// connected may have listed them before they changed.
    pub(crate) fn round(
        &mut self,
        store: &Store,
        tx: &tokio::sync::broadcast::Sender<JobChange>,
    ) -> Result<(), vfarm_store::StoreError> {
        // A few seconds of overlap: a runner's commit may carry a time a little before
        // this round's.
        let start = (chrono::Utc::now() - chrono::Duration::seconds(3))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let active: Vec<&str> = vfarm_jobs::JobState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .map(|s| s.as_str())
            .collect();
        let mut rows = store.jobs_in(&active)?;
        rows.extend(store.jobs_ended_since(self.since.as_deref().unwrap_or(&start))?);
        let mut now = HashMap::with_capacity(rows.len());
        for j in rows {
            let key = (j.state.clone(), j.updated.clone());
            if self.seen.get(&j.id) != Some(&key) {
                let _ = tx.send(JobChange {
                    id: j.id,
                    owner: j.owner,
                    state: j.state,
                    reason: j.reason,
                    exit_code: j.exit_code,
                    ended: j.ended,
                });
            }
            now.insert(j.id, key);
        }
        self.seen = now;
        self.since = Some(start);
        Ok(())
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// A bearer token from `vfarm token create`.
    pub token: String,
}

#[utoipa::path(post, path = "/api/v1/session", tag = "identity", request_body = SessionRequest, security(()),
    responses((status = 200, description = "Logged in: the session cookie is set", body = Object),
              (status = 400, body = ErrorBody),
              (status = 401, description = "The token is not valid", body = ErrorBody)))]
pub(crate) async fn login(
    State(s): State<AppState>,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = crate::instances::json_body(body)?;
    let store = s.store.clone();
    let token = req.token.trim().to_string();
    let t = token.clone();
    let row = blocking(move || {
        vfarm_auth::token::verify(&store, &t, chrono::Utc::now()).map_err(|e| {
            let mut e = ApiError::from(e);
            // An unknown or malformed token at login is a refused login, not a lookup.
            if matches!(e.status().as_u16(), 400 | 404) {
                e.code = ErrorCode::InvalidToken;
            }
            e.field = Some("token".into());
            e
        })
    })
    .await?;
    // Tokens are URL-safe text; anything else cannot be a cookie value.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad_request(
            "token",
            "not a vfarm token (letters, digits, - _ . only)",
        ));
    }
    // The cookie holds a signed session for the token, never the token itself; over TLS
    // it is never sent in clear.
    let session = vfarm_auth::token::session_value(&s.session_key, &row)
        .map_err(|e| ApiError::internal(format!("cannot sign the session: {e}")))?;
    let secure = if s.server_subject.is_some() {
        "; Secure"
    } else {
        ""
    };
    let id = crate::auth::token_identity(&s.auth, row);
    let cookie = format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/{secure}");
    let mut resp = Json(id).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "identity", security(()),
    responses((status = 204, description = "Logged out: the session cookie is cleared")))]
pub(crate) async fn logout() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, HeaderValue::from_str(&cookie).unwrap())],
    )
        .into_response()
}

/// The session cookie's token, if the request carries one.
pub(crate) fn session_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == SESSION_COOKIE && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// At most this many entries: the most recent ones, oldest first (default 100, at most
    /// 10000). When older ones remain, the answer carries `Link: <…>; rel="next"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    /// Where the page ends: the opaque `cursor` of the previous answer's `Link` (next); the
    /// next page holds older entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    /// Only this actor's entries (a non-admin sees only their own, whatever they ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    /// Only actions starting with this (`DELETE /api/v1/instances/` for every destroy).
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

impl AuditQuery {
    fn next_query(&self, next: &vfarm_store::Cursor) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        for (k, v) in [("actor", &self.actor), ("action", &self.action)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(k, v);
            }
        }
        q.append_pair("cursor", &next.encode());
        q.finish()
    }
}

/// One audit record: who did what to which object, when, and how it ended. The schema of
/// the store's `AuditEntry`, which the endpoint returns as it is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    /// How the actor was identified: client-cert, token, unix-peer, local, service.
    pub method: String,
    pub action: String,
    pub object: String,
    /// ok, denied:<status> or failed:<status>.
    pub outcome: String,
    pub detail: serde_json::Value,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "accounting", params(AuditQuery),
    responses((status = 200, description = "The caller's audit entries (everyone's, for admins) that the filters select: \
        the most recent `limit`, oldest first. When older ones remain, a `Link: </api/v1/audit?…&cursor=…>; rel=\"next\"` \
        header gives the page before them", body = [AuditView],
        headers(("Link" = String, description = "RFC 8288 link to the next (older) page, when one exists"))),
              (status = 400, description = "A bad query (`cursor`: not one this service gave out)", body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub(crate) async fn audit(
    State(s): State<AppState>,
    who: Who,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = crate::instances::query(q)?;
    let who = identity(who)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let before = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            vfarm_store::Cursor::decode(c)
                .and_then(|c| c.id.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "cursor",
                        "not a cursor this service gave out (take it from the `Link` header)",
                    )
                })?,
        ),
    };
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let mut filter = vfarm_store::auth::AuditFilter {
        actor: given(&q.actor),
        action: given(&q.action),
    };
    let store = s.store.clone();
    let page = blocking(move || {
        if !who.admin {
            // A non-admin's actor filter narrows to themselves or to nothing.
            if filter.actor.as_deref().is_some_and(|a| a != who.user) {
                return Ok(vfarm_store::Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            filter.actor = Some(who.user.clone());
        }
        store
            .audit_page(&filter, before, limit)
            .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))
    })
    .await?;
    Ok(crate::instances::paged("/api/v1/audit", page, |c| {
        q.next_query(c)
    }))
}

/// The web UI's files, built into the binary. `VFARM_UI_DIR` serves them from a directory
/// instead (for working on the UI without rebuilding).
const UI_FILES: &[(&str, &str)] = &[
    ("index.html", include_str!("../ui/index.html")),
    ("app.js", include_str!("../ui/app.js")),
    ("app.css", include_str!("../ui/app.css")),
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

fn ui_file(name: &str) -> Response {
    let not_found = || {
        ApiError {
            code: ErrorCode::NotFound,
            message: format!("no UI file `{name}`"),
            field: None,
        }
        .into_response()
    };
    if let Some(dir) = std::env::var_os("VFARM_UI_DIR") {
        // One plain file name: nothing outside the directory can be named.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return not_found();
        }
        return match std::fs::read(PathBuf::from(dir).join(name)) {
            Ok(b) => ([(header::CONTENT_TYPE, content_type(name))], b).into_response(),
            Err(_) => not_found(),
        };
    }
    match UI_FILES.iter().find(|(n, _)| *n == name) {
        Some((_, body)) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => not_found(),
    }
}

pub(crate) async fn ui_index() -> Response {
    ui_file("index.html")
}

pub(crate) async fn ui_asset(Path(name): Path<String>) -> Response {
    ui_file(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfarm_store::jobs::JobEnd;
    use vfarm_store::testing::{new_job as submit, TestDb};

    fn told(rx: &mut tokio::sync::broadcast::Receiver<JobChange>) -> Vec<(i64, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.id, c.state))
            .collect()
    }

    /// Each change is told once, the end of a job that ends between two rounds included.
    #[test]
    fn the_job_watcher_tells_each_change_once() {
        for db in TestDb::all() {
            watch(&db.open());
        }
    }

    fn watch(store: &Store) {
        let (tx, mut rx) = tokio::sync::broadcast::channel(16);
        let mut w = JobWatch::default();
        let a = submit(store, "alice");
        w.round(store, &tx).unwrap();
        assert_eq!(told(&mut rx), [(a, "queued".to_string())]);
        w.round(store, &tx).unwrap();
        assert_eq!(told(&mut rx), [], "nothing changed");
        // Claimed and ended between two rounds (by a runner, in real life).
        let b = submit(store, "bob");
        assert!(store.claim_job(a, &serde_json::json!({})).unwrap());
        let end = JobEnd {
            state: "succeeded",
            reason: "exit",
            exit_code: Some(0),
            error: None,
            instance_id: None,
        };
        assert!(store.end_job(a, &["starting"], &end).unwrap());
        w.round(store, &tx).unwrap();
        let mut got = told(&mut rx);
        got.sort();
        assert_eq!(
            got,
            [(a, "succeeded".to_string()), (b, "queued".to_string())]
        );
        w.round(store, &tx).unwrap();
        assert_eq!(told(&mut rx), [], "an ended job is told once");
    }
}
