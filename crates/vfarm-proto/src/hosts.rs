//! Hosts on the wire: what a node sends its control to join and in each heartbeat, what the
//! control answers, and the host inventory's requests.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub name: String,
    pub token: String,
    /// The address the node's API will listen on (an IP SAN of its certificate, so the
    /// control can verify it when it connects).
    pub address: String,
    /// The port the node's API listens on: with `address`, the node's URL, fixed here
    /// (heartbeats cannot move it).
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct JoinResponse {
    pub name: String,
    pub subject: String,
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The site CA, for the node's trust directory.
    pub ca_pem: String,
    /// The control's certificate subject: the one client the node obeys as admin.
    pub control_subject: String,
    /// SHA-256 of the control's certificate (hex): the node obeys that certificate only, not
    /// any other with the same subject.
    #[serde(default)]
    pub control_fingerprint: String,
    /// The site CA's current CRL and namespace files, for the node's trust directory.
    #[serde(default)]
    pub trust_files: Vec<TrustFile>,
}

/// One file of the site CA's IGTF directory (`<hash>.r0`, `<hash>.namespaces`, …).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct TrustFile {
    pub name: String,
    pub content: String,
}

/// What the control answers a heartbeat: what it changed, and the CA directory's current CRL
/// and namespace files (a node takes them over, so a revoked certificate stops working there).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub outcome: serde_json::Value,
    #[serde(default)]
    pub trust_files: Vec<TrustFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// `https://ADDRESS:PORT` of the node's API.
    pub url: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub features: Vec<String>,
    pub instances: Vec<ReportedInstance>,
    /// What the node measured it can run (`vfarm doctor --output json`); nodes older than it
    /// send none. Its `accelerator` steers where VMs go.
    // JSON here: the report's type is the core's, which this crate does not depend on; the
    // control checks its shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub checks: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ReportedInstance {
    pub id: String,
    pub state: String,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHost {
    pub name: String,
    /// How long the token works: 1h (default), 30m, 2d.
    #[serde(default)]
    pub expires: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddedHost {
    pub name: String,
    pub token: String,
    pub expires: String,
}
