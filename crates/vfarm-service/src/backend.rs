//! What the HTTP API asks of the service: the instance operations for an identified caller
//! (two implementations: [`crate::local::Service`] on one host, [`crate::cluster::Cluster`]
//! once nodes have joined) and a node's half of live migration. Blocking: the API calls
//! them on tokio's blocking pool. Another owner's instance is reported as not found.

use std::time::Duration;

use serde_json::Value;
use vfarm_auth::Identity;
use vfarm_proto::instances::{
    Action, CreateInstance, ExecRequest, ExecResult, InstanceView, MigrateRequest, MigrateResult,
    QuotaView, SnapshotView, EXEC_DEFAULT_TIMEOUT, EXEC_MAX_TIMEOUT,
};
use vfarm_store::instances::InstanceFilter;
use vfarm_store::{Cursor, Page};

use crate::ServiceError;

/// `GET /api/v1/instances` as the backend gets it: checked filters and page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListInstances {
    pub filter: InstanceFilter,
    /// Start just after this row (from the previous page's `Link`).
    pub after: Option<Cursor>,
    /// At most this many; `None`: the whole list.
    pub limit: Option<usize>,
}

/// The request's time limit, refused as a field error when it is not a duration or longer
/// than [`EXEC_MAX_TIMEOUT`].
pub fn exec_time_limit(req: &ExecRequest) -> Result<Duration, ServiceError> {
    let Some(t) = &req.timeout else {
        return Ok(EXEC_DEFAULT_TIMEOUT);
    };
    let secs = vfarm_core::instance::parse_duration("timeout", t)
        .map_err(|e| ServiceError::bad_request("timeout", e.to_string()))?;
    if secs > EXEC_MAX_TIMEOUT.as_secs() {
        return Err(ServiceError::bad_request(
            "timeout",
            format!("invalid timeout `{t}`: at most 1h"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A change the service saw, for `/api/v1/events`.
#[derive(Debug, Clone)]
pub enum InstanceEvent {
    Changed(Box<InstanceView>),
    Removed { id: String, owner: String },
}

impl InstanceEvent {
    pub fn owner(&self) -> &str {
        match self {
            InstanceEvent::Changed(v) => &v.owner,
            InstanceEvent::Removed { owner, .. } => owner,
        }
    }
}

/// The instance operations an API request reaches. Another owner's instance must be
/// reported as not found.
pub trait InstanceBackend: Send + Sync + 'static {
    /// The instances `q` selects among those the caller may see (a non-admin's `owner`
    /// filter only narrows: another owner's name selects nothing), one page when it has a
    /// limit. Filtering and paging are the store's ([`vfarm_store::Store::instances_page`]).
    fn list(&self, who: &Identity, q: &ListInstances) -> Result<Page<InstanceView>, ServiceError>;
    fn show(&self, who: &Identity, reference: &str) -> Result<InstanceView, ServiceError>;
    /// Validate, take the hostname and the quota, and record the instance (`creating`).
    /// Fast; all refusals happen here.
    fn create(&self, who: &Identity, req: CreateInstance) -> Result<InstanceView, ServiceError>;
    /// Prepare a recorded instance and, unless it is a reservation, start it (the slow
    /// part). On failure the instance is removed and its hostname and quota released.
    fn complete(&self, id: &str, start: bool) -> Result<InstanceView, ServiceError>;
    /// Returns the id of the destroyed instance.
    fn destroy(&self, who: &Identity, reference: &str) -> Result<String, ServiceError>;
    fn act(
        &self,
        who: &Identity,
        reference: &str,
        action: Action,
    ) -> Result<InstanceView, ServiceError>;
    fn extend(
        &self,
        who: &Identity,
        reference: &str,
        by: &str,
    ) -> Result<InstanceView, ServiceError>;
    fn exec(
        &self,
        who: &Identity,
        reference: &str,
        req: ExecRequest,
    ) -> Result<ExecResult, ServiceError>;
    fn console(&self, who: &Identity, reference: &str) -> Result<Vec<u8>, ServiceError>;
    fn snapshots(&self, who: &Identity, reference: &str)
        -> Result<Vec<SnapshotView>, ServiceError>;
    fn snapshot_create(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<SnapshotView, ServiceError>;
    fn snapshot_revert(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<InstanceView, ServiceError>;
    fn snapshot_remove(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<(), ServiceError>;
    fn quota(&self, who: &Identity) -> Result<QuotaView, ServiceError>;
    /// Live-migrate a VM to another node (several hosts only).
    fn migrate(
        &self,
        _who: &Identity,
        _reference: &str,
        req: MigrateRequest,
    ) -> Result<MigrateResult, ServiceError> {
        Err(ServiceError::bad_request(
            "to",
            format!(
                "`{}`: this service has no nodes to migrate between (`vfarm instance migrate \
                 --to DIR` moves a VM to another data dir on the service's host)",
                req.to
            ),
        ))
    }
}

/// A node's half of a live migration between nodes: the steps the control calls, in order,
/// on the destination and the source. The bodies are the driver's serde types as JSON.
pub trait MigrationBackend: Send + Sync + 'static {
    /// Source: what the destination needs (`MigrationSource`).
    fn source(&self, id: &str, shared_storage: bool) -> Result<Value, ServiceError>;
    /// Destination: start the incoming VM (`Incoming`: where to send).
    fn prepare(&self, source: Value) -> Result<Value, ServiceError>;
    /// Source: send to `incoming`; the source is paused afterwards (`SendReport`).
    fn send(&self, id: &str, incoming: Value) -> Result<Value, ServiceError>;
    /// Destination: wait for the run state and record the instance (`row`: the control's).
    fn finish(&self, id: &str, was_running: bool, row: Value) -> Result<(), ServiceError>;
    /// Destination: remove what `prepare` made.
    fn abort_incoming(&self, id: &str) -> Result<(), ServiceError>;
    /// Source: end the sent VM and forget it (warnings of what could not be tidied).
    fn complete(&self, id: &str) -> Result<Vec<String>, ServiceError>;
    /// Source: run on as before.
    fn abort_outgoing(&self, id: &str) -> Result<(), ServiceError>;

    /// Cold migration of an oci instance, source: its writable layer as a tar file (the
    /// instance is stopped and has no snapshot layers).
    fn export_upper(&self, id: &str) -> Result<std::path::PathBuf, ServiceError>;
    /// Destination: record and prepare the instance (`row`: the control's) without
    /// starting it.
    fn import(&self, row: Value) -> Result<(), ServiceError>;
    /// Destination: the exported layer (a tar file here) becomes the instance's writable
    /// layer.
    fn put_upper(&self, id: &str, tar: &std::path::Path) -> Result<(), ServiceError>;
    /// Where a streamed upload may be written (this node's scratch directory).
    fn scratch(&self) -> std::path::PathBuf;
}
