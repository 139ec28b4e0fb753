//! The site's instance networks on the wire (`GET /api/v1/networks`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A network from the site's serve.toml and its state on this host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub name: String,
    /// nat (a bridge and subnet of vfarm's, masqueraded) or bridged (the site's LAN bridge).
    pub kind: String,
    pub subnet: String,
    pub bridge: String,
    /// The instances' default route.
    pub gateway: Option<String>,
    /// The instances' resolvers.
    pub nameservers: Vec<String>,
    /// Instances on it cannot reach those of vfarm's other networks (nat).
    pub isolated: bool,
    /// Outbound traffic is masqueraded (nat).
    pub nat: bool,
    /// API and UI creates join it unless they ask otherwise.
    pub default: bool,
    /// Made real on this host (bridge, rules, DNS).
    pub up: bool,
    pub leases: Vec<LeaseView>,
}

/// An address leased to an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    pub instance: String,
    pub address: String,
    pub hostname: String,
}
