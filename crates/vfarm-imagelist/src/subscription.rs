//! The update decision of a subscription, without I/O: given what was accepted before and a
//! newly verified list, say what changes.
//!
//! Rules: byte-identical lists are a no-op; the list identifier must not change; a lower
//! `hv:version` is a rollback and refused (an equal one is accepted, as subscribers always
//! have); images missing from the new list, or past their own `dc:date:expires`, expire.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::Image;
use crate::verify::{Refusal, VerifiedList};

/// What a subscription holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub identifier: String,
    pub version: String,
    /// sha512 of the raw accepted message.
    pub list_sha512: String,
    /// Images of the accepted list that are still valid: identifier → sha512.
    pub images: BTreeMap<String, String>,
}

/// How an accepted update changes the image set.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Identifiers not seen before.
    pub new: Vec<Image>,
    /// Same identifier, different sha512 (a new image version).
    pub replaced: Vec<Image>,
    /// Same identifier and sha512.
    pub unchanged: Vec<Image>,
    /// Identifiers to expire: gone from the list, or past their own expiry.
    pub expired: Vec<String>,
    /// The new list has the same `hv:version` as the accepted one (accepted, worth a warning).
    pub same_version: bool,
}

impl Plan {
    /// Images the new list makes available (new, replaced and unchanged).
    pub fn available(&self) -> impl Iterator<Item = &Image> {
        self.new.iter().chain(&self.replaced).chain(&self.unchanged)
    }
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// The downloaded list is byte-identical to the accepted one.
    Unchanged,
    Apply(Plan),
}

/// Decide an update. `current` is `None` for a first subscription.
pub fn decide(
    current: Option<&Current>,
    new: &VerifiedList,
    now: DateTime<Utc>,
) -> Result<Decision, Refusal> {
    if let Some(cur) = current {
        if cur.list_sha512 == new.raw_sha512 {
            return Ok(Decision::Unchanged);
        }
        if cur.identifier != new.list.identifier {
            return Err(Refusal::IdentifierChanged {
                expected: cur.identifier.clone(),
                found: new.list.identifier.clone(),
            });
        }
    }
    let same_version = match current {
        Some(cur) => match crate::version::compare(&new.list.version, &cur.version) {
            Ordering::Less => {
                return Err(Refusal::Rollback {
                    found: new.list.version.clone(),
                    current: cur.version.clone(),
                })
            }
            Ordering::Equal => true,
            Ordering::Greater => false,
        },
        None => false,
    };
    let empty = BTreeMap::new();
    let held = current.map(|c| &c.images).unwrap_or(&empty);
    let mut plan = Plan {
        same_version,
        ..Plan::default()
    };
    for img in &new.list.images {
        if img.is_expired(now) {
            continue;
        }
        match held.get(&img.identifier) {
            None => plan.new.push(img.clone()),
            Some(sha) if *sha == img.sha512 => plan.unchanged.push(img.clone()),
            Some(_) => plan.replaced.push(img.clone()),
        }
    }
    for id in held.keys() {
        let still = new.list.image(id).is_some_and(|i| !i.is_expired(now));
        if !still {
            plan.expired.push(id.clone());
        }
    }
    Ok(Decision::Apply(plan))
}

/// Images of the accepted list to expire because time passed: everything when the list
/// itself expired, else those past their own expiry.
pub fn expired_by_time(list: &crate::model::ImageList, now: DateTime<Utc>) -> Vec<String> {
    list.images
        .iter()
        .filter(|i| now > list.expires || i.is_expired(now))
        .map(|i| i.identifier.clone())
        .collect()
}

/// A fresh subscription id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
