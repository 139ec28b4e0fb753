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
pub mod hosts;
pub mod instances;
pub mod live;
pub mod migration;
pub mod openapi;
pub mod tls;

pub use auth::AuthPolicy;
pub use axum::http::StatusCode;
pub use instances::{InstanceBackend, InstanceEvent, InstanceView};
pub use tls::{
    Peer, PlainListener, RefusalSink, TlsConfigSource, TlsListener, TlsSettings, UnixPeerListener,
};

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
    /// Instance changes for `/api/v1/events`; the binary's watcher sends them.
    pub events: tokio::sync::broadcast::Sender<InstanceEvent>,
    pub metrics: live::Metrics,
    /// The subject of this service's own TLS certificate (nodes make it their admin).
    pub server_subject: Option<String>,
    /// SHA-256 (hex) of this service's own TLS certificate: nodes pin it.
    pub server_fingerprint: Option<String>,
    /// The client CA directory (`--client-ca-dir`): its CRLs' ages are in `/metrics`.
    pub client_ca_dir: Option<PathBuf>,
    /// Set on nodes: the steps of a live migration between nodes.
    pub migration: Option<Arc<dyn migration::MigrationBackend>>,
}

impl AppState {
    pub fn new(data_dir: PathBuf, store: Arc<Store>) -> Result<AppState, ImageError> {
        let repo = Arc::new(Repository::open(&data_dir, store.clone())?);
        // Operations that were running when the previous service died cannot finish now.
        store.fail_stale_operations("the service restarted before the operation finished")?;
        Ok(AppState {
            repo,
            store,
            data_dir,
            auth: AuthPolicy::default(),
            instances: None,
            events: tokio::sync::broadcast::channel(1024).0,
            metrics: live::Metrics::default(),
            server_subject: None,
            server_fingerprint: None,
            client_ca_dir: None,
            migration: None,
        })
    }
}

pub fn router(state: AppState) -> Router {
    let published = state.data_dir.join("published");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(live::ui_index))
        .route("/ui/{file}", get(live::ui_asset))
        .route("/metrics", get(live::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/whoami", get(auth::whoami))
        .route("/api/v1/session", post(live::login).delete(live::logout))
        .route("/api/v1/events", get(live::events))
        .route("/api/v1/audit", get(live::audit))
        .route("/api/v1/quota", get(instances::quota))
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
        .route("/api/v1/operations/{id}", get(get_operation))
        .route("/repository/{id}/{file}", get(repository_file))
        .route("/osfarm/create", get(osfarm_create))
        .nest_service("/imagelists", ServeDir::new(published))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::resolve_identity,
        ))
        .with_state(state)
}

/// Serve the router on `listener` (plain TCP) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        PlainListener(listener),
        router(state).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serve the router on the local unix socket (identity = the peer's login name).
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        UnixPeerListener(listener),
        router(state).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serve the router over TLS (client certificates per `tls`) until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<TlsConfigSource>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        TlsListener::new(listener, tls)?,
        router(state).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// An API error: HTTP status + stable code + message (+ the field, for bad input).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
}

/// The error document every failing request answers with.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: quota_exceeded, pool_exhausted, instance_not_found …
    pub code: String,
    pub message: String,
    /// The input field at fault, when there is one.
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
            field: Some(field),
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 500's detail (a panic's text, paths, SQL) goes to the log under an id; the
        // client gets the id to quote.
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            let id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(error_id = %id, code = self.code, "internal error: {}", self.message);
            format!("internal error {id}; the detail is in the service log under that id")
        } else {
            self.message
        };
        let body = serde_json::json!({ "error": { "code": self.code, "message": message, "field": self.field } });
        (self.status, Json(body)).into_response()
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        let code = e.code();
        let status = match code {
            "image_not_found" | "artifact_not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "host_not_ready" => StatusCode::SERVICE_UNAVAILABLE,
            _ if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &e {
            ImageError::Spec(s) => Some(s.field()),
            ImageError::UnknownPackages { .. } => Some("package"),
            ImageError::SizeTooSmall { .. } => Some("size"),
            ImageError::ForeignArch { .. } => Some("arch"),
            ImageError::SuiteUnavailable { .. } => Some("suite"),
            _ => None,
        };
        // Server-side failures are logged in full; the client gets the message without paths.
        let message = if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
            match &e {
                ImageError::ToolFailed { tool, .. } => format!("{tool} failed; see the build log"),
                ImageError::ToolMissing { tool } => {
                    format!("{tool} is not installed on the server")
                }
                _ => "internal error; see the service log".to_string(),
            }
        } else {
            e.to_string()
        };
        ApiError {
            status,
            code,
            message,
            field,
        }
    }
}

impl From<vfarm_store::StoreError> for ApiError {
    fn from(e: vfarm_store::StoreError) -> ApiError {
        match e {
            vfarm_store::StoreError::NotFound { kind, id } => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: format!("{kind} `{id}` not found"),
                field: None,
            },
            vfarm_store::StoreError::Conflict { kind, id } => ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: format!("{kind} `{id}` already exists"),
                field: None,
            },
            e => {
                tracing::error!(error = %e, "state store");
                ApiError::internal("state store error; see the service log")
            }
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        ImageError::Spec(e).into()
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    responses((status = 200, description = "Images in the repository", body = [Object]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_images(State(s): State<AppState>) -> Result<Response, ApiError> {
    let images = blocking(move || Ok(s.repo.list()?)).await?;
    Ok(Json(images).into_response())
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
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_image(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let img = blocking(move || Ok(s.repo.remove(&id, "api")?)).await?;
    Ok(Json(serde_json::json!({ "removed": img.id })).into_response())
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
            status: StatusCode::NOT_FOUND,
            code: "log_not_found",
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
    serve_artifact(s, id, format, req).await
}

/// Stream an artifact: Content-Length, Range/206 (tower-http's ServeFile), and the sha512 as
/// a strong ETag so clients can verify and resume.
async fn serve_artifact(
    s: AppState,
    id: String,
    format: Format,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let art = blocking(move || {
        let img = s.repo.resolve(&id)?;
        Ok((
            img.id.clone(),
            s.repo.ensure_format(&img, format, &mut |_| {})?,
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
                status: StatusCode::NOT_FOUND,
                code: "artifact_not_found",
                message: format!("image {} has no {file} (it is not bootable)", img.id),
                field: Some("file"),
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
            status: StatusCode::NOT_FOUND,
            code: "artifact_not_found",
            message: format!(
                "no artifact file `{file}` (known: {})",
                Format::ALL
                    .iter()
                    .map(|f| f.file_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            field: Some("file"),
        })?;
    serve_artifact(s, id, format, req).await
}

/// POST /api/v1/images: validate now (bad input is a 400 that changes nothing), then build
/// in the background and answer 202 with an operation to poll.
#[utoipa::path(post, path = "/api/v1/images", tag = "images", request_body = Object,
    responses((status = 202, description = "Building in the background: poll the operation", body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn create_image(
    State(s): State<AppState>,
    body: Result<Json<SpecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let spec = instances::json_body(body)?;
    let req = spec.resolve()?;
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
        let result = st.repo.build(&req, "api", &mut |_| {});
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
    let body = serde_json::json!({
        "operation": { "id": op_id, "kind": "image.build", "status": "running", "target": image_id },
        "links": { "self": format!("/api/v1/operations/{op_id}"), "image": format!("/api/v1/images/{image_id}") },
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
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
            status: StatusCode::NOT_FOUND,
            code: "operation_not_found",
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
/// &group=base&package=curl[&download=on]`. Builds synchronously (or finds the cached image),
/// then answers with the image record, or with the image itself when `download=on`.
async fn osfarm_create(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = q.unwrap_or_default();
    let (spec, format, download) = osfarm_spec(&q)?;
    let build_req = spec.resolve()?;
    let st = s.clone();
    let outcome = blocking(move || Ok(st.repo.build(&build_req, "osfarm", &mut |_| {})?)).await?;
    if download {
        return serve_artifact(s, outcome.image.id.clone(), format, req).await;
    }
    Ok(Json(outcome).into_response())
}

/// Parse the OS-Farm query into a spec request, the requested file type and `download`.
pub fn osfarm_spec(query: &str) -> Result<(SpecRequest, Format, bool), ApiError> {
    let mut spec = SpecRequest::default();
    let mut filetype = Format::Tar;
    let mut download = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "name" => spec.name = Some(v).filter(|n| !n.is_empty()),
            "class" | "distro_class" | "suite" => spec.suite = Some(v.to_ascii_lowercase()),
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
            "group" | "package" => {}
            other => {
                return Err(ApiError::bad_request(
                    "query",
                    format!("unknown parameter `{other}`"),
                ))
            }
        }
    }
    Ok((spec, filetype, download))
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

    #[test]
    fn osfarm_query_maps_to_spec() {
        let (spec, f, dl) =
            osfarm_spec("name=&class=Bookworm&arch=x86_64&filetype=.qcow2&group=core&group=base&package=curl&download=on").unwrap();
        assert_eq!(spec.suite.as_deref(), Some("bookworm"));
        assert_eq!(spec.arch.as_deref(), Some("amd64"));
        assert_eq!(spec.groups, vec!["core", "base"]);
        assert_eq!(spec.packages, vec!["curl"]);
        assert_eq!(f, Format::Qcow2);
        assert!(dl);
        assert!(spec.name.is_none());
        let e = osfarm_spec("class=bookworm&colour=red").unwrap_err();
        assert_eq!(e.field, Some("query"));
        assert!(e.message.contains("colour"));
        let e = osfarm_spec("filetype=.iso").unwrap_err();
        assert_eq!(e.field, Some("filetype"));
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

    #[tokio::test]
    async fn bad_specs_are_400_with_field_and_change_nothing() {
        let (_d, st) = state();
        for (body, field, value) in [
            (r#"{"suite":"nosuch"}"#, "suite", "nosuch"),
            (r#"{"formats":["iso"]}"#, "format", "iso"),
            (r#"{"groups":["kde"]}"#, "group", "kde"),
            (r#"{"size":"4X","formats":["raw"]}"#, "size", "4X"),
            (r#"{"colour":"red"}"#, "body", "colour"),
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
