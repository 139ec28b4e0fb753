//! Image lists, subscriptions and the image cache over HTTP, for admins (403 `forbidden`
//! for anyone else): what `vfarm imagelist`, `subscription` and `cache` do, calling
//! `vfarm_service::imagelists` and `::subscriptions` with the request's identity.
//!
//! Paths in requests (a subscription's CA dir, `file://` URLs, the signing certificate and
//! key) are the service's own files: only admins may name them.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vfarm_service::imagelists::{
    self, CacheDetail, CacheView, Checked, Expired, FromRepository, ListSource, Published,
};
use vfarm_service::subscriptions::{
    self, AddSubscription, Added, Detail, Listed, Removed, Revoke, Revoked, UpdateReport,
    UpdateRequest,
};
use vfarm_service::{Caller, Env};

use crate::instances::{json_body, Who};
use crate::tokens::{caller, service_error};
use crate::{blocking, ApiError, AppState, ErrorBody, StatusCode};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The caller, if an admin: everything here acts on the service's files.
fn admin(who: Who) -> Result<Caller, ApiError> {
    let c = caller(who)?;
    c.require_admin(imagelists::ADMIN_ONLY)
        .map_err(|e| service_error(e.into()))?;
    Ok(c)
}

/// Run `op` on the blocking pool as `caller` (an admin), mapping its errors.
async fn run<T: Send + 'static>(
    s: AppState,
    caller: Caller,
    op: impl FnOnce(&Env, &Caller) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let env = s.env();
    blocking(move || op(&env, &caller).map_err(service_error)).await
}

#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "imagelists", operation_id = "list_subscriptions",
    responses((status = 200, description = "Subscriptions with the version of their accepted list", body = [Listed]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let subs = run(s, caller, subscriptions::list).await?;
    Ok(Json(subs).into_response())
}

#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "imagelists", operation_id = "add_subscription", request_body = AddSubscription,
    responses((status = 201, description = "The subscription and its first update's report (`null` with `no_update`); a refused list is a report, not an error", body = Added), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn add(
    State(s): State<AppState>,
    who: Who,
    body: Body<AddSubscription>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let added = run(s, caller, move |env, c| subscriptions::add(env, c, req)).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[utoipa::path(get, path = "/api/v1/subscriptions/{ref}", tag = "imagelists", operation_id = "show_subscription", params(("ref" = String, Path, description = "Subscription id, id prefix, URL or list identifier")),
    responses((status = 200, description = "The subscription, its accepted list and that list's images", body = Detail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let d = run(s, caller, move |env, c| subscriptions::show(env, c, &r)).await?;
    Ok(Json(d).into_response())
}

#[utoipa::path(delete, path = "/api/v1/subscriptions/{ref}", tag = "imagelists", operation_id = "remove_subscription", params(("ref" = String, Path, description = "Subscription id, id prefix, URL or list identifier")),
    responses((status = 200, description = "Removed; its cached images expired", body = Removed), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<AppState>,
    who: Who,
    Path(r): Path<String>,
) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let d = run(s, caller, move |env, c| subscriptions::remove(env, c, &r)).await?;
    Ok(Json(d).into_response())
}

#[utoipa::path(post, path = "/api/v1/subscriptions/update", tag = "imagelists", operation_id = "update_subscriptions", request_body = UpdateRequest,
    responses((status = 200, description = "One report per subscription fetched; a refused list is a report (`refused`), not an error", body = [UpdateReport]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update(
    State(s): State<AppState>,
    who: Who,
    body: Body<UpdateRequest>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let r = run(s, caller, move |env, c| subscriptions::update(env, c, &req)).await?;
    Ok(Json(r).into_response())
}

#[utoipa::path(post, path = "/api/v1/revocations", tag = "imagelists", operation_id = "revoke_imagelist_object", request_body = Revoke,
    responses((status = 200, description = "The revocation: images revoked and removed from the cache", body = Revoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(s): State<AppState>,
    who: Who,
    body: Body<Revoke>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let r = run(s, caller, move |env, c| subscriptions::revoke(env, c, req)).await?;
    Ok(Json(r).into_response())
}

#[utoipa::path(get, path = "/api/v1/cache", tag = "imagelists", operation_id = "list_cached_images",
    responses((status = 200, description = "Cached images of subscribed lists", body = [CacheView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn cache_list(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let v = run(s, caller, imagelists::cache_list).await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(get, path = "/api/v1/cache/{image}", tag = "imagelists", operation_id = "show_cached_image", params(("image" = String, Path, description = "Image identifier or title")),
    responses((status = 200, description = "The cached image and its list definition", body = CacheDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn cache_show(
    State(s): State<AppState>,
    who: Who,
    Path(image): Path<String>,
) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let v = run(s, caller, move |env, c| {
        imagelists::cache_show(env, c, &image)
    })
    .await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/api/v1/cache/{image}/expire", tag = "imagelists", operation_id = "expire_cached_image", params(("image" = String, Path, description = "Image identifier or title")),
    responses((status = 200, description = "Moved to the expired area", body = Expired), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn cache_expire(
    State(s): State<AppState>,
    who: Who,
    Path(image): Path<String>,
) -> Result<Response, ApiError> {
    let caller = admin(who)?;
    let v = run(s, caller, move |env, c| {
        imagelists::cache_expire(env, c, &image)
    })
    .await?;
    Ok(Json(v).into_response())
}

/// `POST /api/v1/cache/verify`: which images to re-hash.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct VerifyCache {
    /// One image (identifier or title); none: all.
    pub image: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/cache/verify", tag = "imagelists", operation_id = "verify_cache", request_body = VerifyCache,
    responses((status = 200, description = "One result per image; corrupted copies were deleted", body = [Checked]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn cache_verify(
    State(s): State<AppState>,
    who: Who,
    body: Body<VerifyCache>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let v = run(s, caller, move |env, c| {
        imagelists::cache_verify(env, c, req.image.as_deref())
    })
    .await?;
    Ok(Json(v).into_response())
}

/// `POST /api/v1/imagelists`: a new unsigned list of repository images.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateList {
    #[serde(flatten)]
    pub from: FromRepository,
    /// The endorser's certificate (PEM text): `hv:dn`/`hv:ca` are taken from it.
    pub cert: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/imagelists", tag = "imagelists", operation_id = "create_imagelist", request_body = CreateList,
    responses((status = 201, description = "The unsigned list (JSON, as `imagelist create` writes it)", body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    who: Who,
    body: Body<CreateList>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let list = run(s, caller, move |env, c| {
        let endorser = req
            .cert
            .as_deref()
            .map(|pem| imagelists::endorser_from_pem(pem.as_bytes()))
            .transpose()?;
        imagelists::create_list(env, c, ListSource::Repository(req.from), endorser)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(list.to_value())).into_response())
}

/// `POST /api/v1/imagelists/sign`: sign with a certificate and key the service holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignList {
    /// The unsigned list, exactly as to be signed (JSON text).
    pub list: String,
    /// The signing certificate: a PEM file on the service's machine.
    #[schema(value_type = String)]
    pub cert: PathBuf,
    /// Its private key: a PEM file on the service's machine.
    #[schema(value_type = String)]
    pub key: PathBuf,
    /// Sign with a certificate S/MIME consumers refuse (a warning instead of a 400).
    #[serde(default)]
    pub force: bool,
}

/// A signed list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedList {
    /// The S/MIME message to publish.
    pub signed: String,
    /// The signing certificate: subject, issuer, serial, validity.
    #[schema(value_type = Object)]
    pub signer: serde_json::Value,
    pub identifier: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/imagelists/sign", tag = "imagelists", operation_id = "sign_imagelist", request_body = SignList,
    responses((status = 200, description = "The signed list", body = SignedList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn sign(
    State(s): State<AppState>,
    who: Who,
    body: Body<SignList>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    // A relative path would be the service's working directory: never what was meant.
    for (field, p) in [("cert", &req.cert), ("key", &req.key)] {
        if !p.is_absolute() {
            return Err(ApiError::bad_request(
                field,
                format!(
                    "`{}` must be an absolute path on the service's machine",
                    p.display()
                ),
            ));
        }
    }
    let signed = run(s, caller, move |_, c| {
        let done = imagelists::sign_list(c, &req.cert, &req.key, req.list.as_bytes(), req.force)?;
        Ok(SignedList {
            signed: String::from_utf8(done.message)?,
            signer: serde_json::to_value(&done.signer)?,
            identifier: done.identifier,
            warnings: done.warnings,
        })
    })
    .await?;
    Ok(Json(signed).into_response())
}

/// `POST /api/v1/imagelists/publish`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishList {
    /// Served at `/imagelists/<name>.list`: letters, digits, `-` and `_`.
    pub name: String,
    /// The signed list (the S/MIME message).
    pub list: String,
}

#[utoipa::path(post, path = "/api/v1/imagelists/publish", tag = "imagelists", operation_id = "publish_imagelist", request_body = PublishList,
    responses((status = 200, description = "Published", body = Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn publish(
    State(s): State<AppState>,
    who: Who,
    body: Body<PublishList>,
) -> Result<Response, ApiError> {
    // Refused before the body is read: a non-admin learns nothing from its checks.
    let caller = admin(who)?;
    let req = json_body(body)?;
    let p = run(s, caller, move |env, c| {
        imagelists::publish(env, c, req.list.as_bytes(), &req.name)
    })
    .await?;
    Ok(Json(p).into_response())
}

#[cfg(test)]
mod tests {
    use crate::testkit::{send, state, token, ADMIN};
    use crate::StatusCode;
    use serde_json::json;

    fn fixture(rel: &str) -> String {
        format!(
            "{}/../../tests/data/imagelists/cloudkeeper/{rel}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[tokio::test]
    async fn subscriptions_and_the_cache_are_for_admins() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let (alice, admin) = (token(&st, "alice"), token(&st, ADMIN));
        let ca = std::fs::canonicalize(fixture("ca")).unwrap();
        let list = std::fs::canonicalize(fixture("imagelist01.signed")).unwrap();
        let add =
            json!({"url": format!("file://{}", list.display()), "ca_dir": ca, "no_update": true});

        // Anyone else: 403 everywhere, and nothing is recorded.
        for (method, path, body) in [
            ("GET", "/api/v1/subscriptions", None),
            ("POST", "/api/v1/subscriptions", Some(add.clone())),
            ("GET", "/api/v1/subscriptions/x", None),
            ("DELETE", "/api/v1/subscriptions/x", None),
            (
                "POST",
                "/api/v1/subscriptions/update",
                Some(json!({"all": true})),
            ),
            (
                "POST",
                "/api/v1/revocations",
                Some(json!({"kind": "endorser", "target": "/CN=x"})),
            ),
            ("GET", "/api/v1/cache", None),
            ("GET", "/api/v1/cache/x", None),
            ("POST", "/api/v1/cache/x/expire", None),
            ("POST", "/api/v1/cache/verify", Some(json!({}))),
            (
                "POST",
                "/api/v1/imagelists",
                Some(json!({"images": ["x"], "uri": "http://h/l"})),
            ),
            (
                "POST",
                "/api/v1/imagelists/sign",
                Some(json!({"list": "{}", "cert": "/c", "key": "/k"})),
            ),
            (
                "POST",
                "/api/v1/imagelists/publish",
                Some(json!({"name": "n", "list": ""})),
            ),
        ] {
            let (s, v) = send(&st, method, path, &alice, body).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "{method} {path}: {v}"
            );
        }
        assert!(st.store.subscriptions().unwrap().is_empty());

        // Bad input names the field and records nothing.
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/subscriptions",
            &admin,
            Some(json!({"url": "file:///x", "ca_dir": "relative/ca"})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("ca_dir")),
            "{v}"
        );
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/subscriptions",
            &admin,
            Some(json!({"url": "file:///x", "ca_dir": dir.path()})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("invalid_ca_dir"),
                Some("ca_dir")
            ),
            "{v}"
        );
        assert!(st.store.subscriptions().unwrap().is_empty());

        // The admin subscribes, lists, shows and updates.
        let (s, added) = send(&st, "POST", "/api/v1/subscriptions", &admin, Some(add)).await;
        assert_eq!(s, StatusCode::CREATED, "{added}");
        assert!(added["update"].is_null(), "{added}");
        let id = added["subscription"]["id"].as_str().unwrap().to_string();
        let (s, subs) = send(&st, "GET", "/api/v1/subscriptions", &admin, None).await;
        assert_eq!(
            (s, subs[0]["id"].as_str()),
            (StatusCode::OK, Some(id.as_str())),
            "{subs}"
        );
        let (s, d) = send(
            &st,
            "GET",
            &format!("/api/v1/subscriptions/{id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(
            (s, d["subscription"]["ca_dir"].as_str()),
            (StatusCode::OK, ca.to_str()),
            "{d}"
        );
        let (s, r) = send(
            &st,
            "POST",
            "/api/v1/subscriptions/update",
            &admin,
            Some(json!({"subscription": id})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r[0]["subscription"].as_str(), Some(id.as_str()), "{r}");
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/subscriptions/update",
            &admin,
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("subscription")),
            "{v}"
        );
        // Signing with files the service does not have is the request's fault.
        let missing = dir.path().join("nosuch.pem");
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/imagelists/sign",
            &admin,
            Some(json!({"list": "{}", "cert": missing, "key": missing})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("cert")),
            "{v}"
        );
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/imagelists/publish",
            &admin,
            Some(json!({"name": "x", "list": "not signed"})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("list")),
            "{v}"
        );
        assert!(!dir.path().join("published/x.list").exists());
        let (s, c) = send(&st, "GET", "/api/v1/cache", &admin, None).await;
        assert_eq!((s, c), (StatusCode::OK, json!([])));

        // Revoked, then removed: gone.
        let (s, v) = send(
            &st,
            "POST",
            "/api/v1/revocations",
            &admin,
            Some(json!({"kind": "subscription", "target": id, "reason": "test"})),
        )
        .await;
        assert_eq!(
            (s, v["target"].as_str()),
            (StatusCode::OK, Some(id.as_str())),
            "{v}"
        );
        assert!(st.store.find_subscription(&id).unwrap().revoked.is_some());
        let (s, v) = send(
            &st,
            "DELETE",
            &format!("/api/v1/subscriptions/{id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(
            (s, v["removed"].as_str()),
            (StatusCode::OK, Some(id.as_str())),
            "{v}"
        );
        let (s, v) = send(
            &st,
            "GET",
            &format!("/api/v1/subscriptions/{id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }
}
