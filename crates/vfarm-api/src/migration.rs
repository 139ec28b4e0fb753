//! Live migration between nodes, the node's half: the steps the control calls, in order, on
//! the destination (`incoming`, `finish`) and the source (`source`, `send`, `complete`), each
//! one request, so the control can undo at every point (`abort`). Admin only: on a node the
//! one admin is the control's certificate. These routes are the control↔node protocol, not
//! part of the public API document; users migrate with `POST /api/v1/instances/{ref}/migrate`
//! on the control.
//!
//! The bodies are the driver's serde types, passed through as JSON: this crate stays
//! independent of the drivers (the service implements [`MigrationBackend`]).

use crate::ErrorCode;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfarm_auth::Identity;

use crate::{blocking, ApiError, AppState, MigrationBackend, StatusCode};

#[derive(Debug, Serialize, Deserialize)]
pub struct SourceRequest {
    #[serde(default)]
    pub shared_storage: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FinishRequest {
    pub was_running: bool,
    pub row: Value,
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn backend(
    s: &AppState,
    who: Option<Extension<Identity>>,
) -> Result<Arc<dyn MigrationBackend>, ApiError> {
    let who = crate::instances::identity(who)?;
    if !who.admin {
        return Err(ApiError {
            code: ErrorCode::Forbidden,
            message: "node migrations are for the control service".into(),
            field: None,
        });
    }
    s.migration.clone().ok_or_else(|| ApiError {
        code: ErrorCode::HostNotReady,
        message: "this service is not a node (vfarm node)".into(),
        field: None,
    })
}

pub(crate) async fn source(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    body: Body<SourceRequest>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let req = crate::instances::json_body(body)?;
    let v = blocking(move || Ok(b.source(&id, req.shared_storage)?)).await?;
    Ok(Json(v).into_response())
}

pub(crate) async fn prepare(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    body: Body<Value>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let src = crate::instances::json_body(body)?;
    let v = blocking(move || Ok(b.prepare(src)?)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(crate) async fn send(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    body: Body<Value>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let incoming = crate::instances::json_body(body)?;
    let v = blocking(move || Ok(b.send(&id, incoming)?)).await?;
    Ok(Json(v).into_response())
}

pub(crate) async fn finish(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    body: Body<FinishRequest>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let req = crate::instances::json_body(body)?;
    blocking(move || Ok(b.finish(&id, req.was_running, req.row)?)).await?;
    Ok(Json(serde_json::json!({ "finished": true })).into_response())
}

pub(crate) async fn abort_incoming(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    blocking(move || Ok(b.abort_incoming(&id)?)).await?;
    Ok(Json(serde_json::json!({ "aborted": true })).into_response())
}

pub(crate) async fn complete(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let warnings = blocking(move || Ok(b.complete(&id)?)).await?;
    Ok(Json(serde_json::json!({ "warnings": warnings })).into_response())
}

pub(crate) async fn export_upper(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    use tower::ServiceExt;
    let b = backend(&s, who)?;
    let path = blocking(move || Ok(b.export_upper(&id)?)).await?;
    tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
        .map(|r| r.map(axum::body::Body::new))
        .map_err(|e| ApiError::internal(format!("cannot serve the layer: {e}")))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportRequest {
    pub row: Value,
}

pub(crate) async fn import(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    body: Body<ImportRequest>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    let req = crate::instances::json_body(body)?;
    blocking(move || Ok(b.import(req.row)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "imported": true })),
    )
        .into_response())
}

/// The layer arrives as a stream (it may be large): written to a scratch file first.
pub(crate) async fn put_upper(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let b = backend(&s, who)?;
    let dir = b.scratch();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("upper-in-{}.tar", uuid::Uuid::new_v4()));
    let mut f = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("body", format!("upload cut: {e}")))?;
        f.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    }
    f.flush()
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    drop(f);
    let tar = path.clone();
    let out = blocking(move || Ok(b.put_upper(&id, &tar)?)).await;
    let _ = tokio::fs::remove_file(&path).await;
    out?;
    Ok(Json(serde_json::json!({ "layer": "in place" })).into_response())
}

pub(crate) async fn abort_outgoing(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let b = backend(&s, who)?;
    blocking(move || Ok(b.abort_outgoing(&id)?)).await?;
    Ok(Json(serde_json::json!({ "aborted": true })).into_response())
}
