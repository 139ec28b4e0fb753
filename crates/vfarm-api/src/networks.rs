//! The site's instance networks over HTTP (`/api/v1/networks`): what an instance may join,
//! for every signed-in user (the web UI's create form offers them), with the addresses leased.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vfarm_auth::Identity;
use vfarm_proto::networks::NetworkView;
use vfarm_service::net;

use crate::{blocking, ApiError, AppState, ErrorBody};

/// Leases name other users' instances: only admins see them.
fn visible(mut n: NetworkView, who: &Identity) -> NetworkView {
    if !who.admin {
        n.leases.clear();
    }
    n
}

/// `GET /api/v1/networks`: the site's networks (serve.toml `[[networks]]`).
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", operation_id = "list_networks",
    responses((status = 200, body = [NetworkView]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
) -> Result<Response, ApiError> {
    let who = crate::instances::identity(who)?;
    let env = s.env();
    let nets = blocking(move || Ok(net::list(&env)?)).await?;
    let nets: Vec<NetworkView> = nets.into_iter().map(|n| visible(n, &who)).collect();
    Ok(Json(nets).into_response())
}

/// `GET /api/v1/networks/{name}`: one network.
#[utoipa::path(get, path = "/api/v1/networks/{name}", tag = "networks", operation_id = "show_network",
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = NetworkView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = crate::instances::identity(who)?;
    let env = s.env();
    let n = blocking(move || Ok(net::show(&env, &name)?)).await?;
    Ok(Json(visible(n, &who)).into_response())
}
