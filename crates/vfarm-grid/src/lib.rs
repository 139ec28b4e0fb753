//! Virtual grids, pure: the grid file (TOML, unknown keys refused by name), its validation,
//! the order roles come up in ([`Grid::stages`]) and the `{{ … }}` templates through which a
//! role learns the names and addresses of the roles before it.
//!
//! Invariant: no I/O. The service (`vfarm-service::grids`) makes the instances; this crate
//! decides what they are and refuses a bad file before anything is made.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use vfarm_core::spec::SpecRequest;

mod template;

pub use template::{check_template, render, Context, Facts};

/// Most members one role may have: a grid is a test site, not a fleet.
pub const MAX_COUNT: i64 = 64;
/// Longest grid name: member names are `<grid>-<role>-<index>` and must stay DNS labels.
pub const MAX_GRID_NAME: usize = 40;
/// Longest role name (see [`MAX_GRID_NAME`]).
pub const MAX_ROLE_NAME: usize = 16;

/// A refusal, naming the field (a dotted path into the grid file) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    /// The file is not TOML of the grid file's shape (an unknown key, a wrong type).
    #[error("grid file{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Syntax {
        field: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl GridError {
    pub fn field(&self) -> &str {
        match self {
            GridError::Syntax { field, .. } | GridError::Invalid { field, .. } => field,
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GridError {
    GridError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The grid file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridFile {
    #[serde(default)]
    pub grid: GridSection,
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

/// `[grid]`: what holds for every member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSection {
    /// The grid's name (`--name` overrides it).
    pub name: Option<String>,
    /// One lease for all members (`2d`, `90m`, …).
    pub expiry: Option<String>,
    /// A site network by name (serve.toml `[[networks]]`), or `none`; absent: a network of
    /// the grid's own, isolated from other grids.
    pub network: Option<String>,
    pub description: Option<String>,
}

/// `[roles.NAME]`: a kind of member (CE, SE, WN …), `count` of them alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// An image in the repository (name or id).
    pub image: Option<String>,
    /// Or the spec of one, built on demand (found at once when built before).
    pub image_spec: Option<SpecRequest>,
    /// `oci` (default) or `qemu`.
    pub driver: Option<String>,
    /// qemu only: `fast` or `full` (default full).
    pub profile: Option<String>,
    pub count: Option<i64>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub disk: Option<String>,
    /// A host name pattern: may use `{{ member.index }}` and `{{ grid.name }}`.
    pub hostname: Option<String>,
    /// Or one name per member (pool names, in order).
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The command each member runs.
    #[serde(default)]
    pub command: Vec<String>,
    /// Or cloud-init user-data (qemu, full profile).
    pub user_data: Option<String>,
    /// Roles that must be running before this one is made.
    #[serde(default)]
    pub after: Vec<String>,
}

/// A file put into every member before it starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub content: String,
    /// Permission bits (default 0o644).
    pub mode: Option<u32>,
}

impl FileEntry {
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(0o644)
    }
}

/// A checked grid: a name, roles and the order to make them in.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub name: String,
    pub expiry: Option<String>,
    /// `None`: the grid's own network.
    pub network: Option<String>,
    pub roles: BTreeMap<String, Role>,
    /// Roles in groups: every role of a stage comes after all it names, which are in
    /// earlier stages. Within a stage, by name.
    pub stages: Vec<Vec<String>>,
}

impl Role {
    pub fn count(&self) -> u32 {
        self.count.unwrap_or(1) as u32
    }

    pub fn driver(&self) -> &str {
        self.driver.as_deref().unwrap_or("oci")
    }
}

/// Grid names: like instance names, shorter, so `<grid>-<role>-<index>` is one.
pub fn validate_grid_name(s: &str) -> Result<(), GridError> {
    label(s, MAX_GRID_NAME).map_err(|why| invalid("name", format!("`{s}`: {why}")))
}

fn label(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "use 1-{max} of a-z 0-9 -, starting with a letter and not ending with -"
        ))
    }
}

/// The instance name of member `index` (from 1) of `role`.
pub fn member_name(grid: &str, role: &str, index: u32) -> String {
    format!("{grid}-{role}-{index}")
}

/// Parse and check a grid file. `name` (the command line's) wins over the file's.
pub fn parse(text: &str, name: Option<&str>) -> Result<Grid, GridError> {
    let file: GridFile = toml::from_str(text).map_err(|e| syntax(text, &e))?;
    check(file, name)
}

fn syntax(text: &str, e: &toml::de::Error) -> GridError {
    let message = e.message().to_string();
    // serde names the key in its message: `unknown field `colour`, expected one of …`.
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| {
            let rest = message.strip_prefix(p)?;
            Some(rest[..rest.find('`')?].to_string())
        })
        .unwrap_or_else(|| "grid file".to_string());
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    GridError::Syntax {
        field,
        line,
        message,
    }
}

/// Check a parsed file (see [`parse`]).
pub fn check(file: GridFile, name: Option<&str>) -> Result<Grid, GridError> {
    let name = name
        .map(str::to_string)
        .or(file.grid.name.clone())
        .ok_or_else(|| {
            invalid(
                "grid.name",
                "the grid needs a name: set it here or with --name",
            )
        })?;
    validate_grid_name(&name)?;
    if let Some(e) = &file.grid.expiry {
        vfarm_core::instance::parse_duration("expiry", e)
            .map_err(|x| invalid("grid.expiry", format!("`{e}`: {}", x.reason)))?;
    }
    if let Some(n) = &file.grid.network {
        if n.trim().is_empty() {
            return Err(invalid("grid.network", "an empty network name"));
        }
    }
    if file.roles.is_empty() {
        return Err(invalid(
            "roles",
            "a grid needs at least one role ([roles.NAME] with an image)",
        ));
    }
    let mut taken_hostnames = BTreeSet::new();
    for (r, role) in &file.roles {
        check_role(r, role, &file.roles)?;
        for h in &role.hostnames {
            if !taken_hostnames.insert(h.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("roles.{r}.hostnames"),
                    format!("`{h}` is named twice in this grid"),
                ));
            }
        }
    }
    let stages = stages(&file.roles)?;
    // Templates may refer only to roles that are up before theirs.
    for (r, role) in &file.roles {
        let before = ancestors(&file.roles, r);
        let f = |what: &str| format!("roles.{r}.{what}");
        for (i, a) in role.command.iter().enumerate() {
            check_template(&f(&format!("command[{i}]")), a, &before)?;
        }
        for (k, v) in &role.env {
            check_template(&f(&format!("env.{k}")), v, &before)?;
        }
        for (i, file) in role.files.iter().enumerate() {
            check_template(&f(&format!("files[{i}].content")), &file.content, &before)?;
        }
        if let Some(u) = &role.user_data {
            check_template(&f("user_data"), u, &before)?;
        }
        if let Some(h) = &role.hostname {
            // A pattern is rendered before any member exists: no role facts.
            check_template(&f("hostname"), h, &BTreeSet::new())?;
        }
    }
    Ok(Grid {
        name,
        expiry: file.grid.expiry,
        network: file.grid.network,
        roles: file.roles,
        stages,
    })
}

fn check_role(r: &str, role: &Role, roles: &BTreeMap<String, Role>) -> Result<(), GridError> {
    let f = |what: &str| format!("roles.{r}.{what}");
    label(r, MAX_ROLE_NAME)
        .map_err(|why| invalid(format!("roles.{r}"), format!("role name: {why}")))?;
    match (&role.image, &role.image_spec) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                f("image_spec"),
                "give an image or an image_spec, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                f("image"),
                "each role needs an image (a name or id) or an image_spec",
            ))
        }
        (Some(i), None) if i.trim().is_empty() => {
            return Err(invalid(f("image"), "an empty image reference"))
        }
        (None, Some(s)) => {
            s.resolve()
                .map_err(|e| invalid(f(&format!("image_spec.{}", e.field())), e.to_string()))?;
        }
        _ => {}
    }
    let driver = role.driver();
    if !["oci", "qemu"].contains(&driver) {
        return Err(invalid(
            f("driver"),
            format!("`{driver}` is not a driver (oci, qemu)"),
        ));
    }
    if let Some(p) = &role.profile {
        if driver != "qemu" {
            return Err(invalid(f("profile"), "a boot profile is for qemu roles"));
        }
        if !["fast", "full"].contains(&p.as_str()) {
            return Err(invalid(f("profile"), format!("`{p}` is not fast or full")));
        }
    }
    let count = role.count.unwrap_or(1);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(invalid(
            f("count"),
            format!("{count}: a role has 1 to {MAX_COUNT} members"),
        ));
    }
    if let Some(c) = role.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(invalid(
                f("cpus"),
                format!("{c}: a positive number of CPUs"),
            ));
        }
    }
    for (what, v) in [("memory", &role.memory), ("disk", &role.disk)] {
        if let Some(v) = v {
            vfarm_core::parse_size(v).map_err(|why| invalid(f(what), format!("`{v}`: {why}")))?;
        }
    }
    if role.hostname.is_some() && !role.hostnames.is_empty() {
        return Err(invalid(
            f("hostnames"),
            "give a hostname pattern or a list of hostnames, not both",
        ));
    }
    if let Some(h) = &role.hostname {
        if count > 1 && !h.contains("member.index") {
            return Err(invalid(
                f("hostname"),
                format!("`{h}` names all {count} members alike: put {{{{ member.index }}}} in it"),
            ));
        }
    }
    if !role.hostnames.is_empty() {
        if role.hostnames.len() as i64 != count {
            return Err(invalid(
                f("hostnames"),
                format!(
                    "{} name(s) for {count} member(s): give one per member",
                    role.hostnames.len()
                ),
            ));
        }
        for h in &role.hostnames {
            vfarm_core::instance::validate_hostname(h)
                .map_err(|e| invalid(f("hostnames"), e.to_string()))?;
        }
    }
    for (k, v) in &role.env {
        vfarm_core::instance::parse_env(&format!("{k}={v}"))
            .map_err(|e| invalid(f(&format!("env.{k}")), e.reason))?;
    }
    for (i, file) in role.files.iter().enumerate() {
        let ff = |what: &str| f(&format!("files[{i}].{what}"));
        if !file.path.starts_with('/') || file.path.split('/').any(|c| c == "..") {
            return Err(invalid(
                ff("path"),
                format!("`{}`: an absolute path without `..`", file.path),
            ));
        }
        if file.mode() > 0o7777 {
            return Err(invalid(
                ff("mode"),
                format!(
                    "{:o}: permission bits are at most 7777 (octal)",
                    file.mode()
                ),
            ));
        }
    }
    if !role.command.is_empty() && role.user_data.is_some() {
        return Err(invalid(
            f("user_data"),
            "give a command or cloud-init user_data, not both",
        ));
    }
    if role.command.first().is_some_and(|c| c.is_empty()) {
        return Err(invalid(f("command"), "the command name is empty"));
    }
    if role.user_data.is_some() && (driver != "qemu" || role.profile.as_deref() == Some("fast")) {
        return Err(invalid(
            f("user_data"),
            "cloud-init user-data is for qemu roles with the full profile",
        ));
    }
    let mut seen = BTreeSet::new();
    for a in &role.after {
        if a == r {
            return Err(invalid(
                f("after"),
                format!("role `{r}` cannot come after itself"),
            ));
        }
        if !roles.contains_key(a) {
            return Err(invalid(
                f("after"),
                format!(
                    "`{a}` is not a role of this grid (roles: {})",
                    roles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !seen.insert(a) {
            return Err(invalid(f("after"), format!("`{a}` is named twice")));
        }
    }
    Ok(())
}

/// Roles in stages (Kahn's algorithm, level by level); a cycle is refused, naming it.
fn stages(roles: &BTreeMap<String, Role>) -> Result<Vec<Vec<String>>, GridError> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < roles.len() {
        let stage: Vec<String> = roles
            .iter()
            .filter(|(r, role)| {
                !done.contains(r.as_str()) && role.after.iter().all(|a| done.contains(a.as_str()))
            })
            .map(|(r, _)| r.clone())
            .collect();
        if stage.is_empty() {
            let left: Vec<&str> = roles
                .keys()
                .map(String::as_str)
                .filter(|r| !done.contains(r))
                .collect();
            let cycle = find_cycle(roles, &left);
            return Err(invalid(
                format!("roles.{}.after", cycle[0]),
                format!("the roles wait for each other: {}", cycle.join(" → ")),
            ));
        }
        for r in &stage {
            done.insert(roles.get_key_value(r).expect("a role").0);
        }
        out.push(stage);
    }
    Ok(out)
}

/// A cycle among `left` (each of which waits for another of `left`), as role names with
/// the first repeated at the end.
fn find_cycle(roles: &BTreeMap<String, Role>, left: &[&str]) -> Vec<String> {
    let mut path: Vec<&str> = vec![left[0]];
    loop {
        let cur = *path.last().expect("non-empty");
        let next = roles[cur]
            .after
            .iter()
            .map(String::as_str)
            .find(|a| left.contains(a))
            .expect("a blocked role waits for a blocked role");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut c: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            c.push(next.to_string());
            return c;
        }
        path.push(next);
    }
}

/// Every role `r` waits for, directly or not.
pub fn ancestors(roles: &BTreeMap<String, Role>, r: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<&str> = vec![r];
    while let Some(x) = todo.pop() {
        for a in roles.get(x).map(|r| r.after.as_slice()).unwrap_or_default() {
            if out.insert(a.clone()) {
                todo.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
