//! The OpenAPI document, generated from the handlers' annotations and the types they take
//! and give. `docs/openapi.json` is its checked-in copy; a test fails when the two drift.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::instances::*;
use crate::live::{AuditView, SessionRequest};
use crate::{ErrorBody, ErrorDetail};
use vfarm_proto::hosts::{
    AddHost, AddedHost, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse,
    ReportedInstance, TrustFile,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "vfarm", description = "Virtual nodes on demand: images, instances, snapshots, operations, events."),
    paths(
        crate::auth::whoami,
        crate::live::login,
        crate::live::logout,
        crate::live::events,
        crate::live::audit,
        crate::instances::quota,
        crate::metrics::stats,
        crate::instances::list,
        crate::instances::create,
        crate::instances::show,
        crate::instances::destroy,
        crate::instances::start,
        crate::instances::stop,
        crate::instances::pause,
        crate::instances::resume,
        crate::instances::extend,
        crate::instances::exec,
        crate::instances::migrate,
        crate::instances::console,
        crate::instances::snapshots,
        crate::instances::snapshot_create,
        crate::instances::snapshot_revert,
        crate::instances::snapshot_remove,
        crate::list_images,
        crate::create_image,
        crate::get_image,
        crate::delete_image,
        crate::build_log,
        crate::image_manifest,
        crate::image_diff,
        crate::download,
        crate::get_operation,
        crate::hosts::add,
        crate::hosts::list,
        crate::hosts::show,
        crate::hosts::drain,
        crate::hosts::undrain,
        crate::hosts::remove,
        crate::hosts::join,
        crate::hosts::heartbeat,
        crate::networks::list,
        crate::networks::show,
        crate::grids::up,
        crate::grids::list,
        crate::grids::show,
        crate::grids::down,
        crate::grids::extend,
        crate::jobs::submit,
        crate::jobs::list,
        crate::jobs::show,
        crate::jobs::cancel,
        crate::jobs::output,
        crate::jobs::logs,
        crate::jobs::queues,
        crate::tokens::list,
        crate::tokens::create,
        crate::tokens::revoke,
        crate::imagelists::list,
        crate::imagelists::add,
        crate::imagelists::show,
        crate::imagelists::remove,
        crate::imagelists::update,
        crate::imagelists::revoke,
        crate::imagelists::cache_list,
        crate::imagelists::cache_show,
        crate::imagelists::cache_expire,
        crate::imagelists::cache_verify,
        crate::imagelists::create,
        crate::imagelists::sign,
        crate::imagelists::publish,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, InstanceView, VmView, SshView, StatsView, BlockView, NetView,
        SnapshotView, CreateInstance, CreateAccepted, OperationRef, StopRequest, ExtendRequest,
        ExecRequest, ExecResult, MigrateRequest, MigrateResult, SnapshotRequest, QuotaView, QuotaNumbers, Destroyed, Removed,
        AuditView, SessionRequest, JoinRequest, JoinResponse, HeartbeatRequest, ReportedInstance,
        AddHost, AddedHost, HeartbeatResponse, TrustFile,
        vfarm_proto::networks::NetworkView, vfarm_proto::networks::LeaseView,
        vfarm_proto::grids::UpGrid, vfarm_proto::grids::GridView, vfarm_proto::grids::GridMemberView,
        vfarm_service::images::Manifest, vfarm_service::images::Diff, vfarm_service::jobs::JobRequest,
        vfarm_service::tokens::CreateToken, vfarm_service::tokens::CreatedToken,
        vfarm_service::tokens::TokenView,
        vfarm_service::subscriptions::AddSubscription, vfarm_service::subscriptions::Added,
        vfarm_service::subscriptions::Listed, vfarm_service::subscriptions::Detail,
        vfarm_service::subscriptions::Removed, vfarm_service::subscriptions::RevokeKind,
        vfarm_service::subscriptions::Revoke, vfarm_service::subscriptions::Revoked,
        vfarm_service::subscriptions::UpdateRequest, vfarm_service::subscriptions::UpdateReport,
        vfarm_service::subscriptions::RefusedDoc, vfarm_service::subscriptions::FailedDoc,
        vfarm_service::imagelists::CacheView, vfarm_service::imagelists::CacheDetail,
        vfarm_service::imagelists::Expired, vfarm_service::imagelists::Checked,
        vfarm_service::imagelists::FromRepository, vfarm_service::imagelists::Published,
        crate::imagelists::VerifyCache, crate::imagelists::CreateList,
        crate::imagelists::SignList, crate::imagelists::SignedList, crate::imagelists::PublishList,
    )),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::live::SESSION_COOKIE,
            ))),
        );
        // Every state-changing request goes through the per-user (joins: per-address) rate
        // limit, so each may answer 429.
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("429".to_string())
                    .or_insert_with(|| {
                        utoipa::openapi::RefOr::T(utoipa::openapi::Response::new(
                            "rate_limited: too many requests; the message says when to retry",
                        ))
                    });
            }
        }
    }
}

/// The document as served and checked in (stable key order, pretty, newline-terminated).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The version is the crate's, so a release bump shows up as a drift to re-check.
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut s = doc
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}

pub(crate) async fn document() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// The checked-in copy is what the code generates. `VFARM_UPDATE_OPENAPI=1 cargo test -p
    /// vfarm-api openapi` rewrites it after an intended change.
    #[test]
    fn openapi_document_matches_the_checked_in_copy() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let now = super::document_json();
        if std::env::var_os("VFARM_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == now,
            "docs/openapi.json differs from the generated document: run \
             `VFARM_UPDATE_OPENAPI=1 cargo test -p vfarm-api openapi` and commit it"
        );
        let v: serde_json::Value = serde_json::from_str(&now).unwrap();
        // Clients generated from the document name methods by these: each once.
        let mut ids = std::collections::BTreeMap::<&str, u32>::new();
        for ops in v["paths"].as_object().unwrap().values() {
            for op in ops.as_object().unwrap().values() {
                if let Some(id) = op["operationId"].as_str() {
                    *ids.entry(id).or_default() += 1;
                }
            }
        }
        let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "operationIds used twice: {twice:?}");
        for p in [
            "/api/v1/instances",
            "/api/v1/instances/{ref}/snapshots",
            "/api/v1/events",
        ] {
            assert!(v["paths"][p].is_object(), "{p} missing");
        }
    }
}
