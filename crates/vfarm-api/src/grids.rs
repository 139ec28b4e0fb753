//! Virtual grids over HTTP (`/api/v1/grids`): up from a grid file, list, show, extend, down.
//! Owners as for instances: a caller sees and touches only their own grids (admins: all);
//! another owner's grid is reported as missing. `POST` answers when the grid is up (or has
//! failed and been torn down): making its members is the request.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use vfarm_proto::grids::{GridView, UpGrid};
use vfarm_proto::instances::ExtendRequest;
use vfarm_proto::ErrorCode;
use vfarm_service::grids::{self, GridService, UpOptions};
use vfarm_service::Caller;

use crate::instances::{identity, json_body, Who};
use crate::{blocking, ApiError, AppState, ErrorBody};

fn service(s: &AppState) -> Result<Arc<GridService>, ApiError> {
    s.grids.clone().ok_or_else(|| ApiError {
        code: ErrorCode::HostNotReady,
        message: "this service runs no instances, so no grids".into(),
        field: None,
    })
}

/// `POST /api/v1/grids`: bring a grid up.
#[utoipa::path(post, path = "/api/v1/grids", tag = "grids", operation_id = "up_grid", request_body = UpGrid,
    responses((status = 201, description = "The grid, up", body = GridView),
              (status = 400, description = "The grid file or a field is bad; `field` names it (`roles.wn.count`)", body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 409, description = "A grid of that name exists, or a member's name or hostname is taken", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub(crate) async fn up(
    State(s): State<AppState>,
    who: Who,
    body: Result<Json<UpGrid>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let req = json_body(body)?;
    let g = service(&s)?;
    let v = blocking(move || {
        let opts = UpOptions {
            name: req.name,
            expiry: req.expiry,
            keep_on_failure: req.keep_on_failure,
        };
        Ok(grids::up(
            &Caller::from(&who),
            &g.env,
            &g.admission,
            &req.file,
            &opts,
            &mut |step| tracing::info!("{step}"),
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /api/v1/grids`: the caller's grids (admins: all).
#[utoipa::path(get, path = "/api/v1/grids", tag = "grids", operation_id = "list_grids",
    responses((status = 200, body = [GridView]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let g = service(&s)?;
    let v = blocking(move || Ok(grids::list(&Caller::from(&who), &g.env)?)).await?;
    Ok(Json(v).into_response())
}

/// `GET /api/v1/grids/{name}`: one grid, its members with their states and addresses.
#[utoipa::path(get, path = "/api/v1/grids/{name}", tag = "grids", operation_id = "show_grid",
    params(("name" = String, Path, description = "Grid name")),
    responses((status = 200, body = GridView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Who,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let g = service(&s)?;
    let v = blocking(move || Ok(grids::show(&Caller::from(&who), &g.env, &name)?)).await?;
    Ok(Json(v).into_response())
}

/// `DELETE /api/v1/grids/{name}`: destroy every member (certificates revoked, names and
/// addresses given back), then the grid.
#[utoipa::path(delete, path = "/api/v1/grids/{name}", tag = "grids", operation_id = "down_grid",
    params(("name" = String, Path, description = "Grid name")),
    responses((status = 204, description = "The grid and its members are gone"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The grid is still being made", body = ErrorBody)))]
pub(crate) async fn down(
    State(s): State<AppState>,
    who: Who,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let g = service(&s)?;
    blocking(move || Ok(grids::down(&Caller::from(&who), &g.env, &name)?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/grids/{name}/extend`: move the grid's expiry (and its members') later.
#[utoipa::path(post, path = "/api/v1/grids/{name}/extend", tag = "grids", operation_id = "extend_grid",
    params(("name" = String, Path, description = "Grid name")),
    request_body = ExtendRequest,
    responses((status = 200, body = GridView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub(crate) async fn extend(
    State(s): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    body: Result<Json<ExtendRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let req = json_body(body)?;
    let g = service(&s)?;
    let v =
        blocking(move || Ok(grids::extend(&Caller::from(&who), &g.env, &name, &req.by)?)).await?;
    Ok(Json(v).into_response())
}
