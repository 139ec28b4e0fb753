//! Virtual grids on the wire: `POST /api/v1/grids` and the grid views.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/grids`: bring a grid up from its file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpGrid {
    /// The grid file (TOML), as text.
    pub file: String,
    /// The grid's name, instead of the file's `[grid] name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// One lease for every member (`2d`, `90m`), instead of the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// On a failure, keep what was made (the grid is `failed`) instead of tearing it down.
    #[serde(default)]
    pub keep_on_failure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GridView {
    pub name: String,
    pub owner: String,
    /// creating | up | deleting | failed
    pub state: String,
    /// The site network its members are on (absent: loopback only).
    pub network: Option<String>,
    pub expires: Option<String>,
    pub created: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Roles in the order they come up.
    pub stages: Vec<Vec<String>>,
    pub members: Vec<GridMemberView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GridMemberView {
    pub role: String,
    /// From 1.
    pub index: u32,
    pub instance_id: String,
    pub name: Option<String>,
    pub hostname: Option<String>,
    /// The instance's state; `gone` when the instance was destroyed by itself.
    pub state: String,
    pub address: Option<String>,
    pub ssh_command: Option<String>,
}
