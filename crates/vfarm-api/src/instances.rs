//! Instances over HTTP: the handlers over the service's instance backend
//! ([`vfarm_service::backend::InstanceBackend`]).
//!
//! Ownership is the backend's to enforce (it is where an instance is found); the handlers
//! only make sure every call carries an identity.

use crate::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use vfarm_auth::Identity;

use crate::{blocking, ApiError, AppState, ErrorBody};
pub use vfarm_store::instances::InstanceFilter;
pub use vfarm_store::{Cursor, Page};

pub use vfarm_proto::instances::*;
pub use vfarm_service::backend::{InstanceBackend, ListInstances};
use vfarm_service::ServiceError;

/// Running execs, per user and in all: a caller over either limit is refused with 429.
#[derive(Default)]
pub struct ExecSlots {
    running: std::sync::Mutex<(usize, HashMap<String, usize>)>,
}

/// One running exec; its slot is given back when dropped.
pub struct ExecSlot {
    slots: Arc<ExecSlots>,
    user: String,
}

impl ExecSlots {
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<ExecSlot, ApiError> {
        let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mine = r.1.get(user).copied().unwrap_or(0);
        let busy = |what: String| ApiError {
            code: ErrorCode::RateLimited,
            message: format!("{what}; retry when one has ended"),
            field: None,
        };
        if mine >= EXEC_PER_USER {
            return Err(busy(format!("you already run {mine} execs")));
        }
        if r.0 >= EXEC_TOTAL {
            return Err(busy(format!("the service already runs {} execs", r.0)));
        }
        r.0 += 1;
        *r.1.entry(user.to_string()).or_default() += 1;
        Ok(ExecSlot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut r = self.slots.running.lock().unwrap_or_else(|e| e.into_inner());
        r.0 -= 1;
        if let Some(n) = r.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                r.1.remove(&self.user);
            }
        }
    }
}

/// Sets the flag when dropped: the handler's future is dropped when its client goes away.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(crate) type Who = Option<Extension<Identity>>;

/// The caller's identity; the middleware already refused requests without one over TCP.
pub(crate) fn identity(who: Who) -> Result<Identity, ApiError> {
    who.map(|Extension(i)| i).ok_or_else(|| ApiError {
        code: ErrorCode::Unauthenticated,
        message: "no identity was presented".into(),
        field: Some("authorization".into()),
    })
}

fn backend(s: &AppState) -> Result<Arc<dyn InstanceBackend>, ApiError> {
    s.instances.clone().ok_or_else(|| ApiError {
        code: ErrorCode::HostNotReady,
        message: "this service does not manage instances".into(),
        field: None,
    })
}

/// Run `f` on the blocking pool with the backend and the caller.
async fn with<T: Send + 'static>(
    s: &AppState,
    who: Who,
    f: impl FnOnce(&dyn InstanceBackend, &Identity) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    let b = backend(s)?;
    let who = identity(who)?;
    blocking(move || Ok(f(b.as_ref(), &who)?)).await
}

/// A query string that does not parse is a 400 naming it, like every other bad input.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<Query<T>, ApiError> {
    q.map_err(|e| ApiError::bad_request("query", e.body_text()))
}

pub(crate) fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request("body", e.body_text()))
}

/// An optional JSON body: absent (or empty) means the default.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("body", e.to_string()))
}

/// The most items one page of a list holds.
pub const LIST_LIMIT_MAX: usize = 1000;

/// The query of `GET /api/v1/instances`. Every parameter is optional; filters combine.
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many instances (1 to 1000), oldest first; when more remain the answer
    /// carries `Link: <…>; rel="next"`. Without it, the whole list in one answer.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Where the page starts: the opaque `cursor` of the previous answer's `Link` (next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only this owner's instances (a non-admin sees only their own, whatever they ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Only instances in this state (creating, created, running, paused, stopped, failed…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only instances of this image: an image id or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Only instances placed on this node (several hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl ListQuery {
    /// Checked: a bad value is a 400 naming its field. An empty filter is no filter.
    pub fn check(&self) -> Result<ListInstances, ApiError> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let limit = match self.limit.as_deref() {
            None => None,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=LIST_LIMIT_MAX).contains(&n) => Some(n),
                _ => {
                    return Err(ApiError::bad_request(
                        "limit",
                        format!("`{l}`: a number from 1 to {LIST_LIMIT_MAX}"),
                    ))
                }
            },
        };
        let after = match given(&self.cursor) {
            None => None,
            Some(c) => Some(Cursor::decode(&c).ok_or_else(|| {
                ApiError::bad_request(
                    "cursor",
                    "not a cursor this service gave out (take it from the `Link` header)",
                )
            })?),
        };
        let state = given(&self.state);
        if let Some(st) = &state {
            st.parse::<vfarm_core::instance::State>()
                .map_err(|e| ApiError::bad_request("state", e))?;
        }
        Ok(ListInstances {
            filter: InstanceFilter {
                owner: given(&self.owner),
                state,
                image: given(&self.image),
                host: given(&self.host),
                scope: Vec::new(),
            },
            after,
            limit,
        })
    }

    /// As a URL query string: the parameters given, in a fixed order.
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("limit", &self.limit),
            ("owner", &self.owner),
            ("state", &self.state),
            ("image", &self.image),
            ("host", &self.host),
            ("cursor", &self.cursor),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    /// This query for the page after `next`.
    pub fn next_query(&self, next: &Cursor) -> String {
        ListQuery {
            cursor: Some(next.encode()),
            ..self.clone()
        }
        .to_query()
    }
}

/// A page as JSON and, when one follows, `Link: <path?query>; rel="next"` (RFC 8288), the
/// query being `next_query` of the next page's cursor (the request's filters and limit
/// with that cursor). Every list route answers its pages so.
pub(crate) fn paged<T: Serialize>(
    path: &str,
    page: Page<T>,
    next_query: impl FnOnce(&Cursor) -> String,
) -> Response {
    let mut r = Json(page.items).into_response();
    if let Some(next) = &page.next {
        let link = format!("<{path}?{}>; rel=\"next\"", next_query(next));
        if let Ok(v) = header::HeaderValue::from_str(&link) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    r
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", operation_id = "list_instances",
    params(ListQuery),
    responses((status = 200, description = "The caller's instances (all, for admins) that the filters select, oldest first. \
        With `limit`, one page: when more remain, a `Link: </api/v1/instances?…&cursor=…>; rel=\"next\"` header \
        gives the next page's URL (the cursor is stable under concurrent inserts)", body = [InstanceView],
        headers(("Link" = String, description = "RFC 8288 link to the next page (`rel=\"next\"`), when one exists"))),
              (status = 400, description = "Bad `limit`, `cursor` or `state`: `field` names it", body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Who,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query(q)?;
    let req = q.check()?;
    let page = with(&s, who, move |b, w| b.list(w, &req)).await?;
    Ok(paged("/api/v1/instances", page, |c| q.next_query(c)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CreateQuery {
    /// Answer 201 with the instance once it runs (or is reserved) instead of 202 at once.
    wait: Option<bool>,
}

/// 202 answer of a create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateAccepted {
    pub instance: InstanceView,
    pub operation: OperationRef,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationRef {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub target: String,
}

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", params(CreateQuery),
    request_body = CreateInstance,
    responses((status = 202, description = "Recorded; preparing and starting in the background", body = CreateAccepted),
              (status = 201, description = "Running (or reserved), with ?wait=true", body = InstanceView),
              (status = 400, description = "Bad input (body or query): `field` names it", body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 404, description = "No such image", body = ErrorBody),
              (status = 409, description = "Quota exceeded, hostname pool exhausted or taken, name in use", body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    who: Who,
    q: Result<Query<CreateQuery>, QueryRejection>,
    body: Result<Json<CreateInstance>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query(q)?;
    let req = json_body(body)?;
    let start = !req.reserve;
    let view = with(&s, who, move |b, w| b.create(w, req)).await?;
    let op_id = uuid::Uuid::new_v4().to_string();
    // On the blocking pool: the PostgreSQL store's sync client must not run on a worker thread.
    let (store, op, target) = (s.store.clone(), op_id.clone(), view.id.clone());
    blocking(move || {
        store
            .create_operation(&op, "instance.create", Some(&target))
            .map_err(|e| ApiError::internal(format!("cannot record the operation: {e}")))
    })
    .await?;
    let (b, store, id, op) = (
        backend(&s)?,
        s.store.clone(),
        view.id.clone(),
        op_id.clone(),
    );
    let work = move || {
        let r = b.complete(&id, start).map_err(ApiError::from);
        let _ = match &r {
            Ok(v) => store.finish_operation(
                &op,
                "succeeded",
                None,
                serde_json::to_value(v).ok().as_ref(),
            ),
            Err(e) => store.finish_operation(
                &op,
                "failed",
                Some(&e.message),
                Some(&serde_json::json!({ "code": e.code })),
            ),
        };
        r
    };
    if q.wait.unwrap_or(false) {
        let v = blocking(work).await?;
        return Ok((StatusCode::CREATED, Json(v)).into_response());
    }
    tokio::task::spawn_blocking(work);
    let body = CreateAccepted {
        operation: OperationRef {
            id: op_id,
            kind: "instance.create".into(),
            status: "running".into(),
            target: view.id.clone(),
        },
        instance: view,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/instances/{ref}", tag = "instances", operation_id = "show_instance",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = InstanceView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let v = with(&s, who, move |b, w| b.show(w, &r)).await?;
    Ok(Json(v).into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Destroyed {
    pub destroyed: String,
}

#[utoipa::path(delete, path = "/api/v1/instances/{ref}", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = Destroyed), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn destroy(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let id = with(&s, who, move |b, w| b.destroy(w, &r)).await?;
    Ok(Json(Destroyed { destroyed: id }).into_response())
}

async fn act(s: AppState, who: Who, r: String, a: Action) -> Result<Response, ApiError> {
    let v = with(&s, who, move |b, w| b.act(w, &r, a)).await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/start", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = InstanceView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "Not possible in this state", body = ErrorBody)))]
pub(crate) async fn start(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    act(s, who, r, Action::Start).await
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/stop", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    request_body(content = Option<StopRequest>, description = "Optional"),
    responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Not possible in this state", body = ErrorBody)))]
pub(crate) async fn stop(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: StopRequest = optional_body(&body)?;
    act(s, who, r, Action::Stop { force: req.force }).await
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/pause", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = InstanceView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "Not possible in this state", body = ErrorBody)))]
pub(crate) async fn pause(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    act(s, who, r, Action::Pause).await
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/resume", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = InstanceView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "Not possible in this state", body = ErrorBody)))]
pub(crate) async fn resume(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    act(s, who, r, Action::Resume).await
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/extend", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    request_body = ExtendRequest,
    responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn extend(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
    body: Result<Json<ExtendRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let v = with(&s, who, move |b, w| b.extend(w, &r, &req.by)).await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/migrate", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    request_body = MigrateRequest,
    responses((status = 200, body = MigrateResult), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn migrate(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
    body: Result<Json<MigrateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let v = with(&s, who, move |b, w| b.migrate(w, &r, req)).await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/exec", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    request_body = ExecRequest,
    responses((status = 200, description = "The command ran (whatever its exit status)", body = ExecResult),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "Not running", body = ErrorBody)))]
pub(crate) async fn exec(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
    body: Result<Json<ExecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let mut req = json_body(body)?;
    vfarm_service::backend::exec_time_limit(&req)?;
    let b = backend(&s)?;
    let who = identity(who)?;
    let slot = s.exec_slots.acquire(&who.user)?;
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    req.cancelled = Some(flag.clone());
    let _cancel = CancelOnDrop(flag);
    // A thread of its own: execs wait on processes for minutes, and the blocking pool is
    // what every request's token check needs.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vfarm-exec".into())
        .spawn(move || {
            let _slot = slot;
            let _ = tx.send(b.exec(&who, &r, req));
        })
        .map_err(|e| ApiError::internal(format!("cannot start an exec thread: {e}")))?;
    let v = rx
        .await
        .map_err(|_| ApiError::internal("the exec thread failed"))??;
    Ok(Json(v).into_response())
}

#[utoipa::path(get, path = "/api/v1/instances/{ref}/console", tag = "instances",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, description = "The console log", body = String, content_type = "text/plain"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn console(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = with(&s, who, move |b, w| b.console(w, &r)).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        String::from_utf8_lossy(&bytes).into_owned(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/instances/{ref}/snapshots", tag = "snapshots",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    responses((status = 200, body = [SnapshotView]), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn snapshots(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let v = with(&s, who, move |b, w| b.snapshots(w, &r)).await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/snapshots", tag = "snapshots",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name")),
    request_body = SnapshotRequest,
    responses((status = 201, body = SnapshotView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The name is taken, or not possible in this state", body = ErrorBody)))]
pub(crate) async fn snapshot_create(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
    body: Result<Json<SnapshotRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    snapshot_name(&req.name)?;
    let v = with(&s, who, move |b, w| b.snapshot_create(w, &r, &req.name)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[utoipa::path(post, path = "/api/v1/instances/{ref}/snapshots/{name}/revert", tag = "snapshots",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name"),
           ("name" = String, Path, description = "Snapshot name")),
    responses((status = 200, body = InstanceView), (status = 400, description = "Not a snapshot name", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn snapshot_revert(
    State(s): State<AppState>,
    who: Who,
    Path((r, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    snapshot_name(&name)?;
    let v = with(&s, who, move |b, w| b.snapshot_revert(w, &r, &name)).await?;
    Ok(Json(v).into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub removed: String,
}

#[utoipa::path(delete, path = "/api/v1/instances/{ref}/snapshots/{name}", tag = "snapshots",
    params(("ref" = String, Path, description = "Instance id, unique id prefix or name"),
           ("name" = String, Path, description = "Snapshot name")),
    responses((status = 200, body = Removed), (status = 400, description = "Not a snapshot name", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn snapshot_remove(
    State(s): State<AppState>,
    who: Who,
    Path((r, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    snapshot_name(&name)?;
    let n = name.clone();
    with(&s, who, move |b, w| b.snapshot_remove(w, &r, &n)).await?;
    Ok(Json(Removed { removed: name }).into_response())
}

/// Refuses a snapshot name no driver accepts before any backend sees it (a name like
/// `../../x` must never reach a URL or a path).
fn snapshot_name(name: &str) -> Result<(), ApiError> {
    vfarm_core::instance::validate_snapshot_name(name)
        .map_err(|e| ApiError::bad_request(e.field, e.to_string()))
}

#[utoipa::path(get, path = "/api/v1/quota", tag = "accounting",
    responses((status = 200, body = QuotaView), (status = 401, body = ErrorBody)))]
pub(crate) async fn quota(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    let v = with(&s, who, |b, w| b.quota(w)).await?;
    Ok(Json(v).into_response())
}

/// How often an SSE stream without changes sends a keep-alive comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let text = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        serde_json::from_value(serde_json::Value::Object(
            form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn list_queries_are_checked_by_field() {
        for (pairs, field) in [
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "1001")], "limit"),
            (&[("limit", "-1")], "limit"),
            (&[("limit", "many")], "limit"),
            (&[("state", "asleep")], "state"),
            (&[("cursor", "xyz")], "cursor"),
        ] {
            let e = q(pairs).check().unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{pairs:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let ok = q(&[("limit", "1000"), ("state", "running"), ("owner", "")])
            .check()
            .unwrap();
        assert_eq!(ok.limit, Some(1000));
        assert_eq!(ok.filter.state.as_deref(), Some("running"));
        assert_eq!(ok.filter.owner, None, "an empty filter is no filter");
        assert_eq!(q(&[]).check().unwrap(), ListInstances::default());
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let query = q(&[("limit", "5"), ("owner", "a b&c"), ("cursor", "00")]);
        let next = Cursor {
            key: "k".into(),
            id: "i".into(),
        };
        let text = query.next_query(&next);
        assert_eq!(
            text,
            format!("limit=5&owner=a+b%26c&cursor={}", next.encode())
        );
        let back = q(&form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect::<Vec<_>>()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>());
        assert_eq!(back.check().unwrap().after, Some(next));
    }
}
