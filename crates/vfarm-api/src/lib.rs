//! vfarm's HTTP service: the REST API under `/api/v1`, image downloads with Range support,
//! and the OS-Farm one-URL order under `/osfarm/create`.
//!
//! Handlers are thin: they turn HTTP into calls on the library crates (blocking work runs on
//! tokio's blocking pool) and map library errors to `{ "error": { "code", "message", "field" } }`
//! with a stable code. Internals (paths, SQL) never reach a response body.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};
use vfarm_core::{Format, SpecError, SpecRequest};
use vfarm_image::{ImageError, Repository};
use vfarm_store::Store;

pub mod auth;
pub mod grids;
pub mod hosts;
pub mod imagelists;
pub mod instances;
pub mod jobs;
pub mod live;
pub mod metrics;
pub mod migration;
pub mod networks;
pub mod openapi;
pub mod ratelimit;
#[cfg(test)]
mod testkit;
pub mod tls;
pub mod tokens;

pub use auth::AuthPolicy;
pub use axum::http::StatusCode;
pub use instances::InstanceView;
pub use tls::{
    Peer, PlainListener, RefusalSink, TlsConfigSource, TlsListener, TlsSettings, UnixPeerListener,
};
pub use vfarm_service::backend::{InstanceBackend, InstanceEvent, MigrationBackend};
use vfarm_service::ServiceError;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub repo: Arc<Repository>,
    pub store: Arc<Store>,
    pub data_dir: PathBuf,
    /// Who must authenticate and who is an admin (default: identity required, no admins).
    pub auth: AuthPolicy,
    /// Instance orchestration (None: this service answers 503 for instances).
    pub instances: Option<Arc<dyn InstanceBackend>>,
    /// The site's rules for new instances, for grids' members (None: no grids here).
    pub grids: Option<Arc<vfarm_service::grids::GridService>>,
    /// Instance changes for `/api/v1/events`; the binary's watcher sends them.
    pub events: tokio::sync::broadcast::Sender<InstanceEvent>,
    /// Job state changes for `/api/v1/events`; [`live::spawn_job_watcher`] sends them.
    pub job_events: tokio::sync::broadcast::Sender<live::JobChange>,
    pub metrics: metrics::Metrics,
    /// Instance usage sampled by the service (`vfarm serve` runs the sampler): `/metrics`
    /// and `GET /api/v1/stats` read it. None: no per-instance series.
    pub usage: Option<Arc<vfarm_service::stats::Sampler>>,
    /// The subject of this service's own TLS certificate (nodes make it their admin).
    pub server_subject: Option<String>,
    /// SHA-256 (hex) of this service's own TLS certificate: nodes pin it.
    pub server_fingerprint: Option<String>,
    /// The client CA directory (`--client-ca-dir`): its CRLs' ages are in `/metrics`.
    pub client_ca_dir: Option<PathBuf>,
    /// Set on nodes: the steps of a live migration between nodes.
    pub migration: Option<Arc<dyn MigrationBackend>>,
    /// Join attempts per client address (the endpoint takes no credential but the token).
    pub join_limit: Arc<ratelimit::RateLimiter>,
    /// State-changing requests per user.
    pub write_limit: Arc<ratelimit::RateLimiter>,
    /// Execs running, per user and in all.
    pub exec_slots: Arc<instances::ExecSlots>,
    /// Format conversions running on demand (downloads of a format not built yet).
    pub conversions: Arc<tokio::sync::Semaphore>,
    /// Signs the web UI's session cookies (`<data>/session.key`).
    pub session_key: Arc<Vec<u8>>,
}

impl AppState {
    /// The service's environment over this state's store, for one call.
    pub(crate) fn env(&self) -> vfarm_service::Env {
        vfarm_service::Env::with_store(self.data_dir.clone(), self.store.clone())
    }
}

/// On-demand format conversions at a time: each is CPU- and disk-heavy.
pub const CONVERSIONS: usize = 2;

impl AppState {
    pub fn new(data_dir: PathBuf, store: Arc<Store>) -> Result<AppState, ImageError> {
        let repo = Arc::new(Repository::open(&data_dir, store.clone())?);
        // Operations that were running when the previous service died cannot finish now.
        store.fail_stale_operations("the service restarted before the operation finished")?;
        Ok(AppState {
            repo,
            store,
            auth: AuthPolicy::default(),
            instances: None,
            grids: None,
            events: tokio::sync::broadcast::channel(1024).0,
            job_events: tokio::sync::broadcast::channel(1024).0,
            metrics: metrics::Metrics::default(),
            usage: None,
            server_subject: None,
            server_fingerprint: None,
            client_ca_dir: None,
            migration: None,
            // A node joins once; a few retries a minute are plenty.
            join_limit: Arc::new(ratelimit::RateLimiter::new(0.2, 5)),
            // Bursts like a 200-instance batch pass; a sustained flood is slowed to 20/s.
            write_limit: Arc::new(ratelimit::RateLimiter::new(20.0, 600)),
            exec_slots: Arc::default(),
            conversions: Arc::new(tokio::sync::Semaphore::new(CONVERSIONS)),
            session_key: Arc::new(
                vfarm_auth::token::session_key(&data_dir).unwrap_or_else(|e| {
                    // Sessions then end with this process; everything else works.
                    tracing::warn!("no persistent session key: {e}");
                    uuid::Uuid::new_v4().as_bytes().repeat(2)
                }),
            ),
            data_dir,
        })
    }
}

pub fn router(state: AppState) -> Router {
    let published = state.data_dir.join("published");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(live::ui_index))
        .route("/ui/{file}", get(live::ui_asset))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/whoami", get(auth::whoami))
        .route("/api/v1/session", post(live::login).delete(live::logout))
        .route("/api/v1/events", get(live::events))
        .route("/api/v1/audit", get(live::audit))
        .route("/api/v1/quota", get(instances::quota))
        .route("/api/v1/stats", get(metrics::stats))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/api/v1/subscriptions",
            get(imagelists::list).post(imagelists::add),
        )
        .route("/api/v1/subscriptions/update", post(imagelists::update))
        .route(
            "/api/v1/subscriptions/{ref}",
            get(imagelists::show).delete(imagelists::remove),
        )
        .route("/api/v1/revocations", post(imagelists::revoke))
        .route("/api/v1/cache", get(imagelists::cache_list))
        .route("/api/v1/cache/verify", post(imagelists::cache_verify))
        .route("/api/v1/cache/{image}", get(imagelists::cache_show))
        .route(
            "/api/v1/cache/{image}/expire",
            post(imagelists::cache_expire),
        )
        .route("/api/v1/imagelists", post(imagelists::create))
        .route("/api/v1/imagelists/sign", post(imagelists::sign))
        .route("/api/v1/imagelists/publish", post(imagelists::publish))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route("/api/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/api/v1/jobs/{id}", get(jobs::show))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/outputs/{name}", get(jobs::output))
        .route("/api/v1/jobs/{id}/logs/{stream}", get(jobs::logs))
        .route("/api/v1/queues", get(jobs::queues))
        .route(
            "/api/v1/instances",
            get(instances::list).post(instances::create),
        )
        .route(
            "/api/v1/instances/{ref}",
            get(instances::show).delete(instances::destroy),
        )
        .route("/api/v1/instances/{ref}/start", post(instances::start))
        .route("/api/v1/instances/{ref}/stop", post(instances::stop))
        .route("/api/v1/instances/{ref}/pause", post(instances::pause))
        .route("/api/v1/instances/{ref}/resume", post(instances::resume))
        .route("/api/v1/instances/{ref}/extend", post(instances::extend))
        .route("/api/v1/instances/{ref}/exec", post(instances::exec))
        .route("/api/v1/instances/{ref}/migrate", post(instances::migrate))
        .route("/api/v1/node/migrations", post(migration::prepare))
        .route(
            "/api/v1/node/migrations/{id}/source",
            post(migration::source),
        )
        .route("/api/v1/node/migrations/{id}/send", post(migration::send))
        .route(
            "/api/v1/node/migrations/{id}/finish",
            post(migration::finish),
        )
        .route(
            "/api/v1/node/migrations/{id}/incoming",
            delete(migration::abort_incoming),
        )
        .route(
            "/api/v1/node/migrations/{id}/complete",
            post(migration::complete),
        )
        .route(
            "/api/v1/node/migrations/{id}/abort",
            post(migration::abort_outgoing),
        )
        .route(
            "/api/v1/node/migrations/{id}/upper",
            get(migration::export_upper).put(migration::put_upper),
        )
        .route("/api/v1/node/migrations/import", post(migration::import))
        .route("/api/v1/instances/{ref}/console", get(instances::console))
        .route(
            "/api/v1/instances/{ref}/snapshots",
            get(instances::snapshots).post(instances::snapshot_create),
        )
        .route(
            "/api/v1/instances/{ref}/snapshots/{name}/revert",
            post(instances::snapshot_revert),
        )
        .route(
            "/api/v1/instances/{ref}/snapshots/{name}",
            delete(instances::snapshot_remove),
        )
        .route("/api/v1/grids", get(grids::list).post(grids::up))
        .route("/api/v1/grids/{name}", get(grids::show).delete(grids::down))
        .route("/api/v1/grids/{name}/extend", post(grids::extend))
        .route("/api/v1/networks", get(networks::list))
        .route("/api/v1/networks/{name}", get(networks::show))
        .route("/api/v1/hosts", get(hosts::list).post(hosts::add))
        .route("/api/v1/hosts/join", post(hosts::join))
        .route("/api/v1/hosts/heartbeat", post(hosts::heartbeat))
        .route(
            "/api/v1/hosts/{name}",
            get(hosts::show).delete(hosts::remove),
        )
        .route("/api/v1/hosts/{name}/drain", post(hosts::drain))
        .route("/api/v1/hosts/{name}/undrain", post(hosts::undrain))
        .route("/api/v1/images", get(list_images).post(create_image))
        .route("/api/v1/images/{id}", get(get_image).delete(delete_image))
        .route("/api/v1/images/{id}/download", get(download))
        .route("/api/v1/images/{id}/log", get(build_log))
        .route("/api/v1/images/{id}/manifest", get(image_manifest))
        .route("/api/v1/images/{id}/diff/{other}", get(image_diff))
        .route("/api/v1/operations/{id}", get(get_operation))
        .route("/repository/{id}/{file}", get(repository_file))
        .route("/osfarm/create", get(osfarm_create))
        .nest_service("/imagelists", ServeDir::new(published))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::resolve_identity,
        ))
        // Each request at info level: method, path, status, latency (no headers: they carry
        // the bearer token).
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
                )
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        // Outside auth, so its refusals are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .with_state(state)
}

/// Longest a client may take to send a request's headers, counted from when the service
/// starts waiting for them, so also how long a kept-alive connection may sit idle. A client
/// that dribbles header bytes is dropped after this (issue 15, finding 15).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The accept loop of every listener: HTTP/1.1 (the only protocol the TLS config offers)
/// through hyper with a timer, which axum::serve does not set, so the header-read timeout
/// applies (no route upgrades a connection). Graceful shutdown waits for running requests.
async fn serve_on<L>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = Peer>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            c = listener.accept() => c,
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer.clone()));
            app.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Serve the router on `listener` (plain TCP) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(
        PlainListener(listener),
        router(state),
        HEADER_READ_TIMEOUT,
        shutdown,
    )
    .await
}

/// Serve the router on the local unix socket (identity = the peer's login name).
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(
        UnixPeerListener(listener),
        router(state),
        HEADER_READ_TIMEOUT,
        shutdown,
    )
    .await
}

/// Serve the router over TLS (client certificates per `tls`) until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<TlsConfigSource>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(
        TlsListener::new(listener, tls)?,
        router(state),
        HEADER_READ_TIMEOUT,
        shutdown,
    )
    .await
}

/// An API error: a stable code (which fixes the HTTP status) + message (+ the field, for
/// bad input).
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<std::borrow::Cow<'static, str>>,
}

pub use vfarm_proto::{ErrorBody, ErrorCode, ErrorDetail};

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }
    /// The HTTP status, derived from the code alone.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
            field: Some(field.into()),
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: ErrorCode::Internal,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 500's detail (a panic's text, paths, SQL) goes to the log under an id; the
        // client gets the id to quote.
        let status = self.status();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            let id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(error_id = %id, code = %self.code, "internal error: {}", self.message);
            format!("internal error {id}; the detail is in the service log under that id")
        } else {
            self.message
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message,
                field: self.field.map(std::borrow::Cow::into_owned),
            },
        };
        (status, Json(body)).into_response()
    }
}

/// The service's errors are the API's: the same code, message and field.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError {
            code: e.code,
            message: e.message,
            field: e.field,
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        ServiceError::from(e).into()
    }
}

impl From<vfarm_store::StoreError> for ApiError {
    fn from(e: vfarm_store::StoreError) -> ApiError {
        ServiceError::from(e).into()
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        ServiceError::from(e).into()
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// The query of `GET /api/v1/images`. Every parameter is optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImagesQuery {
    /// At most this many images (1 to 1000), oldest first; when more remain the answer
    /// carries `Link: <…>; rel="next"`. Without it, every image in one answer.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: the opaque `cursor` of the previous answer's `Link` (next).
    cursor: Option<String>,
    /// Only the images this user built or imported through the API (public images have
    /// no owner).
    owner: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ImagesQuery),
    responses((status = 200, description = "Images in the repository, oldest first; with `limit`, one page and, when more remain, \
        a `Link: </api/v1/images?…&cursor=…>; rel=\"next\"` header", body = [Object],
        headers(("Link" = String, description = "RFC 8288 link to the next page, when one exists"))),
              (status = 400, description = "Bad `limit` or `cursor`: `field` names it", body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub(crate) async fn list_images(
    State(s): State<AppState>,
    q: Result<Query<ImagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = instances::query(q)?;
    let checked = instances::ListQuery {
        limit: q.limit.clone(),
        cursor: q.cursor.clone(),
        ..Default::default()
    }
    .check()?;
    let owner = q.owner.clone().filter(|o| !o.is_empty());
    let page = blocking(move || {
        Ok(s.repo
            .list_page(owner.as_deref(), checked.after.as_ref(), checked.limit)?)
    })
    .await?;
    Ok(instances::paged("/api/v1/images", page, |next| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("limit", &q.limit), ("owner", &q.owner)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                qs.append_pair(k, v);
            }
        }
        qs.append_pair("cursor", &next.encode());
        qs.finish()
    }))
}

#[utoipa::path(get, path = "/api/v1/images/{ref}", tag = "images", params(("ref" = String, Path, description = "Image id, unique id prefix or name")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_image(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let img = blocking(move || Ok(s.repo.resolve(&id)?)).await?;
    Ok(Json(img).into_response())
}

#[utoipa::path(delete, path = "/api/v1/images/{ref}", tag = "images", params(("ref" = String, Path, description = "Image id, unique id prefix or name")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "Not the caller's image (public images: admins only)", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Instances' disks sit on it (image_in_use, naming them)", body = ErrorBody)))]
pub(crate) async fn delete_image(
    State(s): State<AppState>,
    who: instances::Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller_of(&who);
    let img = blocking(move || Ok(vfarm_service::images::remove(&s.repo, &caller, &id)?)).await?;
    Ok(Json(serde_json::json!({ "removed": img.id })).into_response())
}

#[utoipa::path(get, path = "/api/v1/images/{ref}/manifest", tag = "images", params(("ref" = String, Path, description = "Image id, unique id prefix or name")),
    responses((status = 200, description = "The packages the build put in", body = vfarm_service::images::Manifest), (status = 401, body = ErrorBody), (status = 404, description = "No such image, or one without a manifest (artifact_not_found)", body = ErrorBody)))]
pub(crate) async fn image_manifest(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let m = blocking(move || Ok(vfarm_service::images::manifest(&s.repo, &id)?)).await?;
    Ok(Json(m).into_response())
}

#[utoipa::path(get, path = "/api/v1/images/{ref}/diff/{other}", tag = "images",
    params(("ref" = String, Path, description = "The earlier image"), ("other" = String, Path, description = "The later image")),
    responses((status = 200, description = "Packages added, removed and changed from ref to other", body = vfarm_service::images::Diff), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn image_diff(
    State(s): State<AppState>,
    Path((a, b)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = blocking(move || Ok(vfarm_service::images::diff(&s.repo, &a, &b)?)).await?;
    Ok(Json(d).into_response())
}

#[utoipa::path(get, path = "/api/v1/images/{ref}/log", tag = "images", params(("ref" = String, Path, description = "Image id, unique id prefix or name")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn build_log(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let text = blocking(move || {
        let b = s.repo.build_log(&id)?;
        std::fs::read_to_string(&b.log).map_err(|_| ApiError {
            code: ErrorCode::LogNotFound,
            message: format!("the log of build {} is gone", b.id),
            field: None,
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Deserialize)]
struct DownloadQuery {
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/images/{ref}/download", tag = "images", params(("ref" = String, Path, description = "Image id, unique id prefix or name"), ("format" = Option<String>, Query, description = "tar (default), qcow2 or raw")),
    responses((status = 200, description = "The artifact (Range requests answered 206; ETag is the sha512)", body = Vec<u8>, content_type = "application/octet-stream"), (status = 206, body = Vec<u8>, content_type = "application/octet-stream"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, description = "Range not satisfiable")))]
pub(crate) async fn download(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let Query(q) = instances::query(q)?;
    let format: Format = q.format.as_deref().unwrap_or("tar").parse()?;
    serve_artifact(s, id, format, req, true).await
}

/// Stream an artifact: Content-Length, Range/206 (tower-http's ServeFile), and the sha512 as
/// a strong ETag so clients can verify and resume.
async fn serve_artifact(
    s: AppState,
    id: String,
    format: Format,
    req: Request<Body>,
    convert_anonymously: bool,
) -> Result<Response, ApiError> {
    // Files already there are served to anyone who may fetch them; making one (a format
    // conversion: minutes of CPU and GBs of disk) needs an identity and a conversion slot.
    let identified =
        convert_anonymously || req.extensions().get::<vfarm_auth::Identity>().is_some();
    let repo = s.repo.clone();
    let img = blocking(move || Ok(repo.resolve(&id)?)).await?;
    let _permit = if img.artifact(format).is_none() {
        if !identified {
            return Err(ApiError {
                code: ErrorCode::Unauthenticated,
                message: format!(
                    "image {} has no {} yet; converting it needs a client certificate or a token",
                    img.id,
                    format.file_name()
                ),
                field: Some("authorization".into()),
            });
        }
        Some(
            s.conversions
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError {
                    code: ErrorCode::RateLimited,
                    message: "the service is converting as many images as it may; retry later"
                        .into(),
                    field: None,
                })?,
        )
    } else {
        None
    };
    let art = blocking(move || {
        Ok((
            img.id.clone(),
            vfarm_service::images::ensure_format(&s.repo, &img, format, &mut |_| {})?,
        ))
    })
    .await?;
    let (image_id, art) = art;
    let mut resp = ServeFile::new(&art.path)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::internal(format!("cannot serve file: {e}")))?
        .map(Body::new);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", art.sha512)) {
        headers.insert(header::ETAG, v);
    }
    let filename = format!(
        "{}.{}",
        &image_id[..12],
        format.file_name().rsplit('.').next().unwrap_or("img")
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `GET /repository/{id}/{file}`: an artifact by its file name (`rootfs.tar`, `disk.qcow2` …),
/// the stable per-image URL that image lists published by this service point at.
async fn repository_file(
    State(s): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    // A bootable image's kernel and initramfs: what a node mirroring it boots.
    if file == "vmlinuz" || file == "initrd.img" {
        let path = blocking(move || {
            let img = s.repo.resolve(&id)?;
            let p = if file == "vmlinuz" {
                img.kernel
            } else {
                img.initrd
            };
            p.ok_or_else(|| ApiError {
                code: ErrorCode::ArtifactNotFound,
                message: format!("image {} has no {file} (it is not bootable)", img.id),
                field: Some("file".into()),
            })
        })
        .await?;
        return ServeFile::new(&path)
            .oneshot(req)
            .await
            .map(|r| r.map(Body::new))
            .map_err(|e| ApiError::internal(format!("cannot serve file: {e}")));
    }
    let format = Format::ALL
        .iter()
        .copied()
        .find(|f| f.file_name() == file)
        .ok_or_else(|| ApiError {
            code: ErrorCode::ArtifactNotFound,
            message: format!(
                "no artifact file `{file}` (known: {})",
                Format::ALL
                    .iter()
                    .map(|f| f.file_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            field: Some("file".into()),
        })?;
    // Image-list subscribers fetch what the list names without an identity.
    serve_artifact(s, id, format, req, false).await
}

/// Whose an image a caller builds is, and whether the caller may remove only its own:
/// `None` for admins and the local socket's caller (public images, removable by them),
/// else the user.
/// Who the event log names for a change made through the API: the caller.
/// The caller of a request (a request without an identity only reaches the open paths).
fn caller_of(who: &instances::Who) -> vfarm_service::Caller {
    match who {
        Some(axum::Extension(id)) => vfarm_service::Caller::from(id),
        None => vfarm_service::Caller::new("anonymous", false),
    }
}

/// POST /api/v1/images: validate now (bad input is a 400 that changes nothing), then build
/// in the background and answer 202 with an operation to poll.
#[utoipa::path(post, path = "/api/v1/images", tag = "images", request_body = Object,
    responses((status = 202, description = "Building in the background: poll the operation", body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn create_image(
    State(s): State<AppState>,
    who: instances::Who,
    body: Result<Json<SpecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let spec = instances::json_body(body)?;
    let req = spec.resolve()?;
    let body = start_build(&s, caller_of(&who), req).await?;
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Record an `image.build` operation and build behind it; the answer names it.
async fn start_build(
    s: &AppState,
    caller: vfarm_service::Caller,
    req: vfarm_core::BuildRequest,
) -> Result<serde_json::Value, ApiError> {
    let op_id = uuid::Uuid::new_v4().to_string();
    let image_id = req.spec.id();
    // On the blocking pool: the PostgreSQL store's sync client must not run on a worker thread.
    let (store, op, target) = (s.store.clone(), op_id.clone(), image_id.clone());
    blocking(move || {
        store
            .create_operation(&op, "image.build", Some(&target))
            .map_err(|e| ApiError::from(ImageError::from(e)))
    })
    .await?;
    let st = s.clone();
    let op = op_id.clone();
    tokio::task::spawn_blocking(move || {
        let result = vfarm_service::images::build(&st.repo, &caller, &req, &mut |_| {});
        let _ = match result {
            Ok(outcome) => st.store.finish_operation(
                &op,
                "succeeded",
                None,
                serde_json::to_value(&outcome).ok().as_ref(),
            ),
            Err(e) => st.store.finish_operation(
                &op,
                "failed",
                Some(&e.to_string()),
                Some(&serde_json::json!({ "code": e.code() })),
            ),
        };
    });
    Ok(serde_json::json!({
        "operation": { "id": op_id, "kind": "image.build", "status": "running", "target": image_id },
        "links": { "self": format!("/api/v1/operations/{op_id}"), "image": format!("/api/v1/images/{image_id}") },
    }))
}

#[derive(Deserialize)]
struct OperationQuery {
    /// Seconds to wait for the operation to finish before answering (long poll, max 300).
    wait: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", params(("id" = String, Path), ("wait" = Option<u64>, Query, description = "Seconds to wait for it to finish (at most 300)")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<OperationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = instances::query(q)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(300));
    loop {
        let (store, op_id) = (s.store.clone(), id.clone());
        let op = blocking(move || {
            store
                .operation(&op_id)
                .map_err(|e| ApiError::from(ImageError::from(e)))
        })
        .await?
        .ok_or_else(|| ApiError {
            code: ErrorCode::OperationNotFound,
            message: format!("operation `{id}` not found"),
            field: None,
        })?;
        if op.status != "running" || tokio::time::Instant::now() >= deadline {
            return Ok(Json(op).into_response());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The OS-Farm order: `GET /osfarm/create?name=&class=bookworm&arch=amd64&filetype=.tar
/// &group=base&package=curl[&download=on][&synchronous=off]`. Builds synchronously (or finds
/// the cached image), then answers with the image record, or with the image itself when
/// `download=on`; `synchronous=off` answers 202 at once with the build's operation.
async fn osfarm_create(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = q.unwrap_or_default();
    let (spec, format, download, synchronous) = osfarm_spec(&q)?;
    let build_req = spec.resolve()?;
    let st = s.clone();
    // The one-URL order is anonymous: its images are public, built by the service's agent.
    let caller = vfarm_service::Caller::agent("osfarm");
    if !synchronous {
        let body = start_build(&s, caller, build_req).await?;
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let outcome = blocking(move || {
        Ok(vfarm_service::images::build(
            &st.repo,
            &caller,
            &build_req,
            &mut |_| {},
        )?)
    })
    .await?;
    if download {
        return serve_artifact(s, outcome.image.id.clone(), format, req, true).await;
    }
    Ok(Json(outcome).into_response())
}

/// Parse the OS-Farm query into a spec request, the requested file type, `download` and
/// `synchronous` (the original form's field; default on).
pub fn osfarm_spec(query: &str) -> Result<(SpecRequest, Format, bool, bool), ApiError> {
    let mut spec = SpecRequest::default();
    let mut filetype = Format::Tar;
    let mut download = false;
    let mut synchronous = true;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "name" => spec.name = Some(v).filter(|n| !n.is_empty()),
            "class" | "distro_class" => {
                let (distro, release) = vfarm_core::spec::osfarm_class(&v);
                spec.distro = Some(distro.to_string());
                spec.suite = Some(release);
            }
            "distro" => spec.distro = Some(v.to_ascii_lowercase()),
            "suite" => spec.suite = Some(v.to_ascii_lowercase()),
            "arch" => {
                // OS Farm spoke of i386/x86_64; Debian of i386/amd64.
                let a = match v.as_str() {
                    "x86_64" | "x86-64" => "amd64".to_string(),
                    "i686" | "i586" | "x86" => "i386".to_string(),
                    _ => v,
                };
                spec.arch = Some(a);
            }
            "filetype" => {
                filetype = v
                    .trim_start_matches('.')
                    .parse()
                    .map_err(|e: SpecError| ApiError::bad_request("filetype", e.to_string()))?;
                if !spec.formats.contains(&filetype.to_string()) {
                    spec.formats.push(filetype.to_string());
                }
            }
            "group" if !v.is_empty() => spec.groups.push(v),
            "package" if !v.is_empty() => spec.packages.push(v),
            "variant" => spec.variant = Some(v),
            "size" => spec.size = Some(v),
            "boot" => spec.boot = Some(v),
            "download" => download = matches!(v.as_str(), "on" | "1" | "true" | "yes"),
            "synchronous" => {
                synchronous = match v.to_ascii_lowercase().as_str() {
                    "on" | "1" | "true" | "yes" | "" => true,
                    "off" | "0" | "false" | "no" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "synchronous",
                            format!("`{v}`: use on or off"),
                        ))
                    }
                }
            }
            "group" | "package" => {}
            other => {
                return Err(ApiError::bad_request(
                    "query",
                    format!("unknown parameter `{other}`"),
                ))
            }
        }
    }
    Ok((spec, filetype, download, synchronous))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    fn state() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store).unwrap();
        // These tests are about the handlers; authentication has its own in `auth.rs`.
        st.auth.require_identity = false;
        (dir, st)
    }

    /// A minimal rootfs tarball imported as an image (tar only).
    async fn tiny_image(st: &AppState, dir: &std::path::Path) -> vfarm_image::Image {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/debian_version"), "12.0\n").unwrap();
        let tar = dir.join("root.tar");
        let ok = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg(".")
            .status()
            .expect("this test needs `tar`");
        assert!(ok.success());
        let st = st.clone();
        tokio::task::spawn_blocking(move || {
            st.repo
                .import(
                    &tar,
                    &vfarm_image::ImportOptions {
                        format: Some(Format::Tar),
                        ..Default::default()
                    },
                    "test",
                )
                .unwrap()
                .image
        })
        .await
        .unwrap()
    }

    /// Finding 7 of issue 15: any user deleted any image, also one instances' disks sat on.
    /// Now only its owner (or an admin; public images: admins only) removes it, and not
    /// while an instance uses it (409 naming the instance).
    #[tokio::test]
    async fn images_are_removed_by_their_owner_and_not_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store.clone()).unwrap();
        st.auth = AuthPolicy::new(["root-admin".to_string()]);
        let img = tiny_image(&st, dir.path()).await;
        let delete = |user: &'static str| {
            let st = st.clone();
            let id = img.id.clone();
            async move {
                let t = vfarm_auth::token::create(&st.store, user, None, None, chrono::Utc::now())
                    .unwrap();
                let mut req = Request::delete(format!("/api/v1/images/{id}"))
                    .header("authorization", format!("Bearer {}", t.token))
                    .body(Body::empty())
                    .unwrap();
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(Peer::default()));
                call(&st, req).await
            }
        };
        // Public (an import by the local CLI): not a user's to remove.
        let (s, v) = delete("alice").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{v}"
        );
        assert!(store.claim_image(&img.id, "alice").unwrap());
        let (s, _) = delete("bob").await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // In use: refused, naming the instance, for the owner and the admin alike.
        let inst = vfarm_store::instances::InstanceRow {
            id: "c0ffee000001".into(),
            name: None,
            image_id: img.id.clone(),
            driver: "oci".into(),
            owner: "carol".into(),
            state: "running".into(),
            exit_code: None,
            hostname: "h".into(),
            spec: "{}".into(),
            created: vfarm_store::now(),
            started: None,
            expires: None,
            updated: vfarm_store::now(),
            error: None,
        };
        store.insert_instance(&inst).unwrap();
        for user in ["alice", "root-admin"] {
            let (s, v) = delete(user).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (StatusCode::CONFLICT, Some("image_in_use")),
                "{v}"
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("c0ffee000001"),
                "{v}"
            );
        }
        assert!(
            store.image_owner(&img.id).unwrap().is_some(),
            "the image went"
        );
        store.delete_instance("test", "c0ffee000001").unwrap();
        let (s, v) = delete("alice").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(store.image_owner(&img.id).unwrap(), None);
    }

    /// Finding 8 of issue 15: `/repository/{id}/{file}` converted formats for anyone. A file
    /// that is there is still served without an identity (image-list subscribers); making
    /// one is refused without one, and nothing is converted.
    #[tokio::test]
    async fn repository_conversions_need_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let st = AppState::new(dir.path().to_path_buf(), store).unwrap();
        let img = tiny_image(&st, dir.path()).await;
        assert!(img.artifact(Format::Qcow2).is_none());
        let get = |path: String| {
            let st = st.clone();
            async move {
                let resp = router(st)
                    .oneshot(Request::get(path).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = resp.status();
                let b = to_bytes(resp.into_body(), 64 << 20).await.unwrap();
                (status, b)
            }
        };
        let (s, body) = get(format!("/repository/{}/disk.qcow2", img.id)).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let again = st.repo.get(&img.id).unwrap().unwrap();
        assert!(again.artifact(Format::Qcow2).is_none(), "a qcow2 was made");
        let (s, body) = get(format!("/repository/{}/rootfs.tar", img.id)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body.len() as u64, img.artifact(Format::Tar).unwrap().size);
    }

    /// Finding 15 of issue 15: a client that dribbles header bytes held its connection
    /// for as long as it liked. Now `serve` drops it within HEADER_READ_TIMEOUT, while a
    /// normal request on the same server is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_header_clients_are_dropped_within_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_d, st) = state();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, st, async {
            let _ = stop_rx.await;
        }));

        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let header = b"GET /api/v1/images HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut closed_after = None;
        for b in header.iter().cycle() {
            if started.elapsed() > HEADER_READ_TIMEOUT + Duration::from_secs(10) {
                break;
            }
            if slow.write_all(&[*b]).await.is_err() {
                closed_after = Some(started.elapsed());
                break;
            }
            // The server answers a timeout with a 408 or just closes: either ends the read.
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buf)).await {
                Ok(Ok(_)) | Ok(Err(_)) => {
                    closed_after = Some(started.elapsed());
                    break;
                }
                Err(_) => {}
            }
        }
        let closed_after = closed_after.expect("the dribbling connection was never dropped");
        assert!(
            closed_after >= HEADER_READ_TIMEOUT - Duration::from_secs(1)
                && closed_after <= HEADER_READ_TIMEOUT + Duration::from_secs(3),
            "dropped after {closed_after:?}"
        );

        // A prompt client is still served.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /api/v1/images HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn osfarm_query_maps_to_spec() {
        let (spec, f, dl, sync) =
            osfarm_spec("name=&class=Bookworm&arch=x86_64&filetype=.qcow2&group=core&group=base&package=curl&download=on").unwrap();
        assert_eq!(spec.suite.as_deref(), Some("bookworm"));
        assert_eq!(spec.arch.as_deref(), Some("amd64"));
        assert_eq!(spec.groups, vec!["core", "base"]);
        assert_eq!(spec.packages, vec!["curl"]);
        assert_eq!(f, Format::Qcow2);
        assert!(dl && sync);
        assert!(spec.name.is_none());
        let (spec, _, _, sync) = osfarm_spec(
            "class=almalinux9&arch=x86_64&filetype=.tar&package=site-tools&synchronous=off",
        )
        .unwrap();
        assert_eq!(
            (spec.distro.as_deref(), spec.suite.as_deref(), sync),
            (Some("almalinux"), Some("9"), false)
        );
        let e = osfarm_spec("class=noble&synchronous=maybe").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("synchronous"));
        let e = osfarm_spec("class=bookworm&colour=red").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("query"));
        assert!(e.message.contains("colour"));
        let e = osfarm_spec("filetype=.iso").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("filetype"));
    }

    /// `job` events reach the job's owner and the admins, no one else.
    #[tokio::test]
    async fn job_events_reach_only_those_who_may_see_the_job() {
        use futures_util::StreamExt;
        let (_dir, mut st) = state();
        st.auth = AuthPolicy::new(["root-admin".to_string()]);
        let mut streams = Vec::new();
        for user in ["alice", "bob", "root-admin"] {
            let t = vfarm_auth::token::create(&st.store, user, None, None, chrono::Utc::now())
                .unwrap()
                .token;
            let mut req = Request::get("/api/v1/events")
                .header("authorization", format!("Bearer {t}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(Peer::default()));
            let resp = router(st.clone()).oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{user}");
            streams.push((user, resp.into_body().into_data_stream()));
        }
        for (id, owner) in [(1, "alice"), (2, "bob")] {
            st.job_events
                .send(live::JobChange {
                    id,
                    owner: owner.into(),
                    state: "running".into(),
                    reason: None,
                    exit_code: None,
                    ended: None,
                })
                .unwrap();
        }
        for (user, stream) in &mut streams {
            // What arrives within a moment (the keep-alive comes only after 15 s).
            let mut text = String::new();
            while let Ok(Some(Ok(b))) =
                tokio::time::timeout(Duration::from_millis(300), stream.next()).await
            {
                text.push_str(&String::from_utf8_lossy(&b));
            }
            let ids: Vec<bool> = ["\"id\":1", "\"id\":2"]
                .iter()
                .map(|i| text.contains(i))
                .collect();
            let want = match *user {
                "alice" => [true, false],
                "bob" => [false, true],
                _ => [true, true],
            };
            assert_eq!(ids, want, "{user} was sent: {text}");
            assert!(text.contains("event: job"), "{user}: {text}");
        }
    }

    async fn call(st: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// GET `path` (with a bearer token when given): status, `Link` header, JSON body.
    async fn get_link(
        st: &AppState,
        token: Option<String>,
        path: String,
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(Peer::default()));
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let link = resp
            .headers()
            .get(header::LINK)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, link, serde_json::from_slice(&bytes).unwrap())
    }

    /// Issue 16: images page by `Link` (oldest first) and filter by owner in the store.
    #[tokio::test]
    async fn images_page_by_link_and_filter_by_owner() {
        let (_d, st) = state();
        for n in 0..5 {
            let row = vfarm_store::images::ImageRow {
                id: format!("dddd000{n}"),
                name: None,
                spec: "{}".into(),
                summary: "s".into(),
                origin: "import".into(),
                created: format!("2026-01-01T00:00:0{n}.000Z"),
                os: None,
                os_version: None,
                arch: None,
                kernel: None,
                initrd: None,
            };
            st.store
                .tx(|tx| vfarm_store::images::upsert_image(tx, &row, &[]))
                .unwrap();
            if n >= 3 {
                assert!(st.store.claim_image(&row.id, "alice").unwrap());
            }
        }
        let ids = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (s, link, v) = get_link(&st, None, "/api/v1/images".into()).await;
        assert_eq!((s, link, ids(&v).len()), (StatusCode::OK, None, 5));
        let mut path = "/api/v1/images?limit=2".to_string();
        let mut seen = Vec::new();
        loop {
            let (s, link, v) = get_link(&st, None, path.clone()).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert!(ids(&v).len() <= 2);
            seen.extend(ids(&v));
            let Some(l) = link else { break };
            path = l[1..l.find('>').unwrap()].to_string();
        }
        assert_eq!(
            seen,
            (0..5).map(|n| format!("dddd000{n}")).collect::<Vec<_>>()
        );
        let (_, _, v) = get_link(&st, None, "/api/v1/images?owner=alice".into()).await;
        assert_eq!(ids(&v), ["dddd0003", "dddd0004"]);
        for (q, field) in [("limit=0", "limit"), ("cursor=zz", "cursor")] {
            let (s, _, v) = get_link(&st, None, format!("/api/v1/images?{q}")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(v["error"]["field"], field, "{v}");
        }
    }

    /// Issue 16: the audit log pages back from the newest by `Link`, filters by actor and
    /// action prefix in the store, and a non-admin's actor filter never reaches another's.
    #[tokio::test]
    async fn audit_pages_by_link_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let mut st = AppState::new(dir.path().to_path_buf(), store.clone()).unwrap();
        st.auth = AuthPolicy::new(["root-admin".to_string()]);
        for n in 0..7 {
            let actor = if n % 2 == 0 { "alice" } else { "bob" };
            let action = format!("DELETE /api/v1/instances/i{n}");
            store
                .audit(actor, "token", &action, "x", "ok", &serde_json::json!({}))
                .unwrap();
        }
        let token = |user: &str| {
            vfarm_auth::token::create(&store, user, None, None, chrono::Utc::now())
                .unwrap()
                .token
        };
        let (admin, alice) = (token("root-admin"), token("alice"));
        let get = |tok: String, path: String| get_link(&st, Some(tok), path);
        let actions = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    e["action"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        // Pages of 3 back in time, each oldest first, by Link, to the end.
        let mut path = "/api/v1/audit?limit=3&action=DELETE".to_string();
        let mut pages = Vec::new();
        loop {
            let (s, link, v) = get(admin.clone(), path.clone()).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            pages.push(actions(&v));
            let Some(l) = link else { break };
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            path = l[1..l.find('>').unwrap()].to_string();
            assert!(
                path.contains("action=DELETE") && path.contains("limit=3"),
                "{path}"
            );
        }
        assert_eq!(
            pages,
            [vec!["i4", "i5", "i6"], vec!["i1", "i2", "i3"], vec!["i0"]]
        );
        let (_, _, v) = get(admin.clone(), "/api/v1/audit?actor=bob".into()).await;
        assert_eq!(actions(&v), ["i1", "i3", "i5"]);
        // Alice: her own only, whatever she asks.
        let (_, _, v) = get(alice.clone(), "/api/v1/audit?action=DELETE".into()).await;
        assert_eq!(actions(&v), ["i0", "i2", "i4", "i6"]);
        let (s, link, v) = get(alice.clone(), "/api/v1/audit?actor=bob".into()).await;
        assert_eq!((s, link, v), (StatusCode::OK, None, serde_json::json!([])));
        let (s, _, v) = get(admin, "/api/v1/audit?cursor=nonsense".into()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["field"], "cursor", "{v}");
    }

    #[tokio::test]
    async fn bad_specs_are_400_with_field_and_change_nothing() {
        let (_d, st) = state();
        for (body, field, value) in [
            (r#"{"suite":"nosuch"}"#, "suite", "nosuch"),
            (r#"{"formats":["iso"]}"#, "format", "iso"),
            (r#"{"groups":["kde"]}"#, "group", "kde"),
            (r#"{"size":"4X","formats":["raw"]}"#, "size", "4X"),
            (r#"{"colour":"red"}"#, "body", "colour"),
            (r#"{"distro":"slackware"}"#, "distro", "slackware"),
            (
                r#"{"distro":"almalinux","suite":"7"}"#,
                "suite",
                "almalinux releases",
            ),
            (
                r#"{"distro":"rocky","groups":["build-essential"]}"#,
                "group",
                "rocky groups",
            ),
            (
                r#"{"repositories":[{"name":"site","url":"http://127.0.0.1:1/debian"}]}"#,
                "repository.key",
                "site",
            ),
            // The service never reads a path of the caller's: a key is its armored text.
            (
                r#"{"repositories":[{"name":"site","url":"http://127.0.0.1:1/d","key":"/etc/shadow"}]}"#,
                "repository.key",
                "armored",
            ),
        ] {
            let req = Request::post("/api/v1/images")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let (status, v) = call(&st, req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert_eq!(v["error"]["field"], field, "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(value),
                "{v}"
            );
        }
        let (status, v) = call(
            &st,
            Request::get("/api/v1/images").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v, serde_json::json!([]));
    }

    #[tokio::test]
    async fn unknown_image_and_operation_are_404_with_codes() {
        let (_d, st) = state();
        let (status, v) = call(
            &st,
            Request::get("/api/v1/images/abcdef12")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "image_not_found");
        let (status, v) = call(
            &st,
            Request::get("/api/v1/operations/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "operation_not_found");
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// Issue 24: a 500 carries an id, never the detail (a panic's text, a path).
    #[tokio::test]
    async fn internal_errors_carry_an_id_not_the_detail() {
        let resp =
            ApiError::internal("worker failed: panicked at /src/secret.rs:1").into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let m = v["error"]["message"].as_str().unwrap();
        assert!(!m.contains("secret") && !m.contains("panicked"), "{m}");
        let id = m.split_whitespace().nth(2).unwrap().trim_end_matches(';');
        assert_eq!(id.len(), 32, "{m}");
        // Client errors keep their reason.
        let resp = ApiError::bad_request("name", "too long").into_response();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("too long"));
    }
}
