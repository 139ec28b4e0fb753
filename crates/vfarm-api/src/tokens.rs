//! Bearer tokens over HTTP: list, create and revoke, calling `vfarm_service::tokens` with
//! the request's identity. Everyone manages their own; admins anyone's. Another user's token
//! is 404, as a missing one.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use vfarm_service::jobs::Origin;
use vfarm_service::tokens::{self, CreateToken, CreatedToken, TokenView};
use vfarm_service::Caller;

use crate::instances::{identity, Who};
use crate::{blocking, ApiError, AppState, ErrorBody, StatusCode};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// An operation's error as an API error: the service's classification, else `internal`
/// (whose detail only the service log gets).
pub(crate) fn service_error(e: anyhow::Error) -> ApiError {
    match vfarm_service::classify(&e) {
        Some((code, field)) => ApiError {
            code,
            message: e.to_string(),
            field: field.map(Into::into),
        },
        None => ApiError::internal(format!("{e:#}")),
    }
}

pub(crate) fn caller(who: Who) -> Result<Caller, ApiError> {
    let who = identity(who)?;
    Ok(Caller::from(&who))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenFilter {
    /// Only this user's tokens (admins; others only ever see their own).
    user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "list_tokens", params(TokenFilter),
    responses((status = 200, description = "The caller's tokens (admins: everyone's, or `user`'s); never their secrets", body = [TokenView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Who,
    q: Result<Query<TokenFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(who)?;
    let Query(f) = crate::instances::query(q)?;
    let rows =
        blocking(move || tokens::list(&s.store, &caller, f.user.as_deref()).map_err(service_error))
            .await?;
    Ok(Json(rows).into_response())
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "create_token", request_body = CreateToken,
    responses((status = 201, description = "The new token; `token` (the secret) is shown only in this answer", body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "`user` names another user and the caller is no admin", body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    who: Who,
    body: Body<CreateToken>,
) -> Result<Response, ApiError> {
    let caller = caller(who)?;
    let req = crate::instances::json_body(body)?;
    let created = blocking(move || {
        tokens::create(&s.store, &caller, Origin::Remote, req).map_err(service_error)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "revoke_token", params(("id" = String, Path, description = "Token id (the part after `vft_`), or the whole token")),
    responses((status = 200, description = "The revoked token", body = TokenView), (status = 401, body = ErrorBody), (status = 404, description = "No such token, or another user's", body = ErrorBody)))]
pub(crate) async fn revoke(
    State(s): State<AppState>,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(who)?;
    let row = blocking(move || {
        tokens::revoke(&s.store, &caller, Origin::Remote, &id).map_err(service_error)
    })
    .await?;
    Ok(Json(row).into_response())
}

#[cfg(test)]
mod tests {
    use crate::testkit::{send, state, token, ADMIN};
    use crate::StatusCode;
    use serde_json::json;

    #[tokio::test]
    async fn users_manage_their_own_tokens_and_admins_all() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let (alice, bob, admin) = (token(&st, "alice"), token(&st, "bob"), token(&st, ADMIN));

        // Alice makes one for herself; the secret is in the answer and works.
        let (s, made) = send(
            &st,
            "POST",
            "/api/v1/tokens",
            &alice,
            Some(json!({"name": "ci", "expiry": "1d"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{made}");
        assert_eq!(
            (made["user"].as_str(), made["name"].as_str()),
            (Some("alice"), Some("ci"))
        );
        let secret = made["token"].as_str().unwrap().to_string();
        let (s, who) = send(&st, "GET", "/api/v1/whoami", &secret, None).await;
        assert_eq!(
            (s, who["user"].as_str()),
            (StatusCode::OK, Some("alice")),
            "{who}"
        );
        // Not for bob.
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/tokens",
            &alice,
            Some(json!({"user": "bob"})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"), Some("user")),
            "{v}"
        );
        // Bad input names the field and makes nothing.
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/tokens",
            &alice,
            Some(json!({"expiry": "soon"})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("expiry")),
            "{v}"
        );

        // Lists: her own two, never a secret; `?user=bob` shows her nothing.
        let (s, mine) = send(&st, "GET", "/api/v1/tokens", &alice, None).await;
        assert_eq!(s, StatusCode::OK);
        let users: Vec<&str> = mine
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["user"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["alice", "alice"], "{mine}");
        assert!(
            !mine
                .to_string()
                .contains(secret.rsplit('_').next().unwrap()),
            "{mine}"
        );
        let (_, other) = send(&st, "GET", "/api/v1/tokens?user=bob", &alice, None).await;
        assert_eq!(other, json!([]));
        // The admin sees everyone's, or one user's.
        let (_, all) = send(&st, "GET", "/api/v1/tokens", &admin, None).await;
        assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
        let (_, bobs) = send(&st, "GET", "/api/v1/tokens?user=bob", &admin, None).await;
        assert_eq!(bobs.as_array().unwrap().len(), 1, "{bobs}");
        let bob_id = bobs[0]["id"].as_str().unwrap().to_string();

        // Alice cannot revoke bob's: 404 as a missing one, and it still works.
        let (s, v) = send(
            &st,
            "DELETE",
            &format!("/api/v1/tokens/{bob_id}"),
            &alice,
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("token_not_found")),
            "{v}"
        );
        let (s, _) = send(&st, "GET", "/api/v1/whoami", &bob, None).await;
        assert_eq!(s, StatusCode::OK);
        // Her own: revoked, and it stops working.
        let (s, v) = send(
            &st,
            "DELETE",
            &format!("/api/v1/tokens/{}", made["id"].as_str().unwrap()),
            &alice,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["revoked"].is_string(), "{v}");
        let (s, _) = send(&st, "GET", "/api/v1/whoami", &secret, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // The admin revokes bob's.
        let (s, _) = send(
            &st,
            "DELETE",
            &format!("/api/v1/tokens/{bob_id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = send(&st, "GET", "/api/v1/whoami", &bob, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}
