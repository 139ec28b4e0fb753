//! `{{ reference }}` in grid values, rendered once the roles before are up. A small
//! hand-rolled substitution: references only, no logic, an unknown one refused by name.
//!
//! References: `grid.name`, `member.index` (from 1), and of an earlier role R
//! `roles.R.hostnames` / `roles.R.addresses` (its members', space-separated, in order),
//! `roles.R.hostname` / `roles.R.address` (its first member's) and `roles.R.count`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{invalid, GridError};

/// What is known about a role's members once they run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub hostnames: Vec<String>,
    /// Their addresses on the grid's network (`None`: a member on no network).
    pub addresses: Vec<Option<String>>,
}

/// What a value is rendered with.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub grid: &'a str,
    pub index: u32,
    pub roles: BTreeMap<String, Facts>,
}

enum Ref<'t> {
    GridName,
    MemberIndex,
    Role(&'t str, Attr),
}

#[derive(Clone, Copy)]
enum Attr {
    Hostnames,
    Hostname,
    Addresses,
    Address,
    Count,
}

/// The pieces of `text`: literal text and references, or the first bad reference.
fn pieces<'t>(field: &str, text: &'t str) -> Result<Vec<(&'t str, Option<Ref<'t>>)>, GridError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            invalid(
                field,
                format!(
                    "`{{{{` at `{}` is not closed by `}}}}`",
                    excerpt(&rest[open..])
                ),
            )
        })?;
        let reference = after[..close].trim();
        out.push((&rest[..open], Some(parse_ref(field, reference)?)));
        rest = &after[close + 2..];
    }
    out.push((rest, None));
    Ok(out)
}

fn excerpt(s: &str) -> &str {
    let end = s.char_indices().nth(24).map(|(i, _)| i).unwrap_or(s.len());
    &s[..end]
}

fn parse_ref<'t>(field: &str, r: &'t str) -> Result<Ref<'t>, GridError> {
    let parts: Vec<&str> = r.split('.').collect();
    let known = "grid.name, member.index, roles.ROLE.hostnames, roles.ROLE.hostname, \
                 roles.ROLE.addresses, roles.ROLE.address, roles.ROLE.count";
    match parts.as_slice() {
        ["grid", "name"] => Ok(Ref::GridName),
        ["member", "index"] => Ok(Ref::MemberIndex),
        ["roles", role, attr] => {
            let attr = match *attr {
                "hostnames" => Attr::Hostnames,
                "hostname" => Attr::Hostname,
                "addresses" => Attr::Addresses,
                "address" => Attr::Address,
                "count" => Attr::Count,
                other => {
                    return Err(invalid(
                        field,
                        format!("`{{{{ {r} }}}}`: a role has no `{other}` (known: {known})"),
                    ))
                }
            };
            Ok(Ref::Role(role, attr))
        }
        _ => Err(invalid(
            field,
            format!("`{{{{ {r} }}}}` is not a reference (known: {known})"),
        )),
    }
}

/// Refuse a value whose references are unknown or name a role that is not up before the
/// value's own (`before`: the roles it comes after, directly or not).
pub fn check_template(field: &str, text: &str, before: &BTreeSet<String>) -> Result<(), GridError> {
    for (_, r) in pieces(field, text)? {
        if let Some(Ref::Role(role, _)) = r {
            if !before.contains(role) {
                return Err(invalid(
                    field,
                    format!(
                        "refers to role `{role}`, which is not up before this one: \
                         name it (or a role after it) in `after`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `text` with its references replaced.
pub fn render(field: &str, text: &str, ctx: &Context<'_>) -> Result<String, GridError> {
    let mut out = String::with_capacity(text.len());
    for (lit, r) in pieces(field, text)? {
        out.push_str(lit);
        let Some(r) = r else { continue };
        match r {
            Ref::GridName => out.push_str(ctx.grid),
            Ref::MemberIndex => out.push_str(&ctx.index.to_string()),
            Ref::Role(role, attr) => {
                let facts = ctx
                    .roles
                    .get(role)
                    .ok_or_else(|| invalid(field, format!("role `{role}` is not up yet")))?;
                let addresses = || -> Result<Vec<&str>, GridError> {
                    facts
                        .addresses
                        .iter()
                        .map(|a| {
                            a.as_deref().ok_or_else(|| {
                                invalid(
                                    field,
                                    format!(
                                        "role `{role}` has members without an address (on no \
                                         network): set grid.network, or the site's default"
                                    ),
                                )
                            })
                        })
                        .collect()
                };
                let first = |v: Vec<&str>| v.first().map(|s| s.to_string()).unwrap_or_default();
                match attr {
                    Attr::Hostnames => out.push_str(&facts.hostnames.join(" ")),
                    Attr::Hostname => {
                        out.push_str(&first(facts.hostnames.iter().map(String::as_str).collect()))
                    }
                    Attr::Addresses => out.push_str(&addresses()?.join(" ")),
                    Attr::Address => out.push_str(&first(addresses()?)),
                    Attr::Count => out.push_str(&facts.hostnames.len().to_string()),
                }
            }
        }
    }
    Ok(out)
}
