//! Signed image lists: subscriptions, endorsers, accepted list instances, image definitions,
//! the image cache index and revocations. The decisions are made by `vfarm-imagelist`; this
//! module only records them, each update in one transaction.

use serde::{Deserialize, Serialize};

use crate::{now, optional, params, Db, Result, Row, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndorserRow {
    pub dn: String,
    /// `None` accepts the DN under any trusted CA.
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRow {
    pub id: String,
    pub url: String,
    pub ca_dir: String,
    pub list_identifier: Option<String>,
    pub title: Option<String>,
    pub auto_cache: bool,
    pub hook: Option<String>,
    pub created: String,
    pub updated: Option<String>,
    pub checked: Option<String>,
    pub last_error: Option<String>,
    pub revoked: Option<String>,
    pub endorsers: Vec<EndorserRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInstanceRow {
    pub id: i64,
    pub subscription_id: String,
    pub sha512: String,
    pub identifier: String,
    pub version: String,
    pub created: String,
    pub expires: String,
    pub signer_dn: String,
    pub signer_ca: String,
    pub imported: String,
}

/// A list to record; `raw` is the signed message as downloaded.
#[derive(Debug, Clone)]
pub struct NewListInstance<'a> {
    pub raw: &'a [u8],
    pub sha512: &'a str,
    pub identifier: &'a str,
    pub version: &'a str,
    pub created: &'a str,
    pub expires: &'a str,
    pub signer_dn: &'a str,
    pub signer_ca: &'a str,
    pub title: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefRow {
    pub subscription_id: String,
    pub identifier: String,
    pub instance_id: i64,
    pub title: String,
    pub sha512: String,
    pub size: u64,
    pub uri: String,
    pub version: String,
    pub os: String,
    pub os_version: String,
    pub arch: String,
    pub hypervisor: String,
    pub format: Option<String>,
    /// The whole `hv:image` object, JSON.
    pub entry: String,
    /// `available`, `expired` or `revoked`.
    pub state: String,
    pub cache: bool,
    /// The repository image made from the cached copy, once adopted.
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRow {
    pub identifier: String,
    pub subscription_id: Option<String>,
    pub file: String,
    pub size: u64,
    pub sha512: String,
    pub cached: String,
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRow {
    /// `image`, `endorser` or `subscription`.
    pub kind: String,
    pub target: String,
    pub reason: Option<String>,
    pub at: String,
}

const SUB_COLS: &str =
    "id, url, ca_dir, list_identifier, title, auto_cache, hook, created, updated, checked, last_error, revoked";

fn sub_row(r: &Row<'_>) -> Result<SubscriptionRow> {
    Ok(SubscriptionRow {
        id: r.get(0)?,
        url: r.get(1)?,
        ca_dir: r.get(2)?,
        list_identifier: r.get(3)?,
        title: r.get(4)?,
        auto_cache: r.get(5)?,
        hook: r.get(6)?,
        created: r.get(7)?,
        updated: r.get(8)?,
        checked: r.get(9)?,
        last_error: r.get(10)?,
        revoked: r.get(11)?,
        endorsers: Vec::new(),
    })
}

const INST_COLS: &str = "id, subscription_id, sha512, identifier, version, created, expires, signer_dn, signer_ca, imported";

fn inst_row(r: &Row<'_>) -> Result<ListInstanceRow> {
    Ok(ListInstanceRow {
        id: r.get(0)?,
        subscription_id: r.get(1)?,
        sha512: r.get(2)?,
        identifier: r.get(3)?,
        version: r.get(4)?,
        created: r.get(5)?,
        expires: r.get(6)?,
        signer_dn: r.get(7)?,
        signer_ca: r.get(8)?,
        imported: r.get(9)?,
    })
}

const IMG_COLS: &str = "subscription_id, identifier, instance_id, title, sha512, size, uri, version, os, os_version, arch, hypervisor, format, entry, state, cache, image_id";

fn img_row(r: &Row<'_>) -> Result<ImageDefRow> {
    Ok(ImageDefRow {
        subscription_id: r.get(0)?,
        identifier: r.get(1)?,
        instance_id: r.get(2)?,
        title: r.get(3)?,
        sha512: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        uri: r.get(6)?,
        version: r.get(7)?,
        os: r.get(8)?,
        os_version: r.get(9)?,
        arch: r.get(10)?,
        hypervisor: r.get(11)?,
        format: r.get(12)?,
        entry: r.get(13)?,
        state: r.get(14)?,
        cache: r.get(15)?,
        image_id: r.get(16)?,
    })
}

const CACHE_COLS: &str = "identifier, subscription_id, file, size, sha512, cached, image_id";

fn cache_row(r: &Row<'_>) -> Result<CacheRow> {
    Ok(CacheRow {
        identifier: r.get(0)?,
        subscription_id: r.get(1)?,
        file: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        sha512: r.get(4)?,
        cached: r.get(5)?,
        image_id: r.get(6)?,
    })
}

fn endorsers_of(conn: &Db<'_>, sub: &str) -> Result<Vec<EndorserRow>> {
    let mut st = conn
        .prepare("SELECT dn, ca FROM imagelist_endorsers WHERE subscription_id = ?1 ORDER BY dn")?;
    let rows = st
        .query_map([sub], |r| {
            Ok(EndorserRow {
                dn: r.get(0)?,
                ca: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Record an accepted list inside a transaction: the instance, the images it makes available
/// (replacing earlier definitions), and the images that expire. Returns the instance id.
pub fn record_list(
    conn: &Db<'_>,
    subscription_id: &str,
    list: &NewListInstance<'_>,
    available: &[ImageDefRow],
    expired: &[String],
) -> Result<i64> {
    let t = now();
    let instance: i64 = conn.query_row(
        "INSERT INTO imagelist_instances(subscription_id, raw, sha512, identifier, version, created, expires,
             signer_dn, signer_ca, imported) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10) RETURNING id",
        params![
            subscription_id,
            list.raw,
            list.sha512,
            list.identifier,
            list.version,
            list.created,
            list.expires,
            list.signer_dn,
            list.signer_ca,
            t
        ],
        |r| r.get(0),
    )?;
    for img in available {
        conn.execute(
            &format!(
                "INSERT INTO imagelist_images({IMG_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)
                 ON CONFLICT(subscription_id, identifier) DO UPDATE SET instance_id = excluded.instance_id,
                   title = excluded.title, sha512 = excluded.sha512, size = excluded.size, uri = excluded.uri,
                   version = excluded.version, os = excluded.os, os_version = excluded.os_version,
                   arch = excluded.arch, hypervisor = excluded.hypervisor, format = excluded.format,
                   entry = excluded.entry,
                   state = CASE WHEN imagelist_images.state = 'revoked' THEN 'revoked' ELSE excluded.state END,
                   cache = CASE WHEN imagelist_images.state = 'revoked' THEN 0
                                WHEN imagelist_images.cache <> 0 OR excluded.cache <> 0 THEN 1 ELSE 0 END,
                   image_id = CASE WHEN imagelist_images.sha512 = excluded.sha512
                                   THEN imagelist_images.image_id ELSE excluded.image_id END"
            ),
            params![
                subscription_id,
                img.identifier,
                instance,
                img.title,
                img.sha512,
                img.size as i64,
                img.uri,
                img.version,
                img.os,
                img.os_version,
                img.arch,
                img.hypervisor,
                img.format,
                img.entry,
                img.state,
                img.cache,
                img.image_id
            ],
        )?;
    }
    for id in expired {
        conn.execute(
            "UPDATE imagelist_images SET state = 'expired'
             WHERE subscription_id = ?1 AND identifier = ?2 AND state != 'revoked'",
            params![subscription_id, id],
        )?;
    }
    conn.execute(
        "UPDATE imagelist_subscriptions SET list_identifier = ?2, title = ?3, updated = ?4, checked = ?4,
           last_error = NULL WHERE id = ?1",
        params![subscription_id, list.identifier, list.title, t],
    )?;
    Ok(instance)
}

impl Store {
    /// Create a subscription with its authorised endorsers. A second one for the same URL is refused.
    pub fn add_subscription(&self, s: &SubscriptionRow) -> Result<()> {
        self.tx(|tx| {
            let exists: Option<String> = optional(tx.query_row(
                "SELECT id FROM imagelist_subscriptions WHERE url = ?1",
                [&s.url],
                |r| r.get(0),
            ))?;
            if exists.is_some() {
                return Err(StoreError::Conflict {
                    kind: "subscription for",
                    id: s.url.clone(),
                });
            }
            tx.execute(
                &format!("INSERT INTO imagelist_subscriptions({SUB_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
                params![
                    s.id,
                    s.url,
                    s.ca_dir,
                    s.list_identifier,
                    s.title,
                    s.auto_cache,
                    s.hook,
                    s.created,
                    s.updated,
                    s.checked,
                    s.last_error,
                    s.revoked
                ],
            )?;
            for e in &s.endorsers {
                tx.execute(
                    "INSERT INTO imagelist_endorsers(subscription_id, dn, ca) VALUES (?1,?2,?3)
                     ON CONFLICT(subscription_id, dn) DO UPDATE SET ca = excluded.ca",
                    params![s.id, e.dn, e.ca],
                )?;
            }
            Ok(())
        })
    }

    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {SUB_COLS} FROM imagelist_subscriptions ORDER BY created, id"
        ))?;
        let mut rows: Vec<SubscriptionRow> = st
            .query_map(params![], sub_row)?
            .collect::<Result<_, _>>()?;
        for r in &mut rows {
            r.endorsers = endorsers_of(&conn, &r.id)?;
        }
        Ok(rows)
    }

    /// Find by id, unique id prefix (4+ chars, any case: SQLite's LIKE ignores ASCII case,
    /// PostgreSQL's does not, and ids are lower-case), URL or list identifier.
    pub fn find_subscription(&self, reference: &str) -> Result<SubscriptionRow> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {SUB_COLS} FROM imagelist_subscriptions
             WHERE id = ?1 OR url = ?1 OR list_identifier = ?1 OR (length(?1) >= 4 AND id LIKE LOWER(?1) || '%')
             LIMIT 5"
        ))?;
        let rows: Vec<SubscriptionRow> = st
            .query_map([reference], sub_row)?
            .collect::<Result<_, _>>()?;
        let mut row = match rows.len() {
            0 => {
                return Err(StoreError::NotFound {
                    kind: "subscription",
                    id: reference.to_string(),
                })
            }
            1 => rows.into_iter().next().expect("one row"),
            _ => {
                return Err(StoreError::Ambiguous {
                    kind: "subscription",
                    id: reference.to_string(),
                    matches: rows
                        .iter()
                        .map(|r| r.id.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        row.endorsers = endorsers_of(&conn, &row.id)?;
        Ok(row)
    }

    /// Delete a subscription with its lists and image definitions. Returns whether it existed.
    pub fn remove_subscription(&self, id: &str) -> Result<bool> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM imagelist_images WHERE subscription_id = ?1",
                [id],
            )?;
            tx.execute(
                "DELETE FROM imagelist_instances WHERE subscription_id = ?1",
                [id],
            )?;
            tx.execute(
                "DELETE FROM imagelist_endorsers WHERE subscription_id = ?1",
                [id],
            )?;
            Ok(tx.execute("DELETE FROM imagelist_subscriptions WHERE id = ?1", [id])? > 0)
        })
    }

    /// Note a refused or failed update (`None` clears it).
    pub fn set_subscription_error(&self, id: &str, error: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE imagelist_subscriptions SET last_error = ?2, checked = ?3 WHERE id = ?1",
            params![id, error, now()],
        )?;
        Ok(())
    }

    /// The most recently accepted list of a subscription.
    pub fn latest_list(&self, subscription_id: &str) -> Result<Option<ListInstanceRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {INST_COLS} FROM imagelist_instances WHERE subscription_id = ?1 ORDER BY id DESC LIMIT 1"),
            [subscription_id],
            inst_row,
        ))
    }

    pub fn list_instances(&self, subscription_id: &str) -> Result<Vec<ListInstanceRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {INST_COLS} FROM imagelist_instances WHERE subscription_id = ?1 ORDER BY id"
        ))?;
        let rows = st
            .query_map([subscription_id], inst_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The raw signed message of a list instance.
    pub fn list_raw(&self, instance_id: i64) -> Result<Vec<u8>> {
        let conn = self.conn();
        optional(conn.query_row(
            "SELECT raw FROM imagelist_instances WHERE id = ?1",
            [instance_id],
            |r| r.get(0),
        ))?
        .ok_or(StoreError::NotFound {
            kind: "image list instance",
            id: instance_id.to_string(),
        })
    }

    /// Image definitions of one subscription, or of all when `None`.
    pub fn list_images(&self, subscription_id: Option<&str>) -> Result<Vec<ImageDefRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {IMG_COLS} FROM imagelist_images WHERE CAST(?1 AS TEXT) IS NULL OR subscription_id = ?1
             ORDER BY subscription_id, identifier"
        ))?;
        let rows = st
            .query_map([subscription_id], img_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Find an image definition by `dc:identifier`, or by title when that is unique.
    pub fn find_list_image(&self, reference: &str) -> Result<ImageDefRow> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {IMG_COLS} FROM imagelist_images WHERE identifier = ?1 ORDER BY instance_id DESC LIMIT 1"
        ))?;
        if let Some(r) = st.query_map([reference], img_row)?.next() {
            return r;
        }
        let mut st = conn.prepare(&format!(
            "SELECT {IMG_COLS} FROM imagelist_images WHERE title = ?1 LIMIT 5"
        ))?;
        let rows: Vec<ImageDefRow> = st
            .query_map([reference], img_row)?
            .collect::<Result<_, _>>()?;
        match rows.len() {
            0 => Err(StoreError::NotFound {
                kind: "image list image",
                id: reference.to_string(),
            }),
            1 => Ok(rows.into_iter().next().expect("one row")),
            _ => Err(StoreError::Ambiguous {
                kind: "image list image",
                id: reference.to_string(),
                matches: rows
                    .iter()
                    .map(|r| r.identifier.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn set_list_image_state(
        &self,
        subscription_id: &str,
        identifier: &str,
        state: &str,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE imagelist_images SET state = ?3 WHERE subscription_id = ?1 AND identifier = ?2",
            params![subscription_id, identifier, state],
        )?;
        Ok(())
    }

    pub fn cache_entries(&self) -> Result<Vec<CacheRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {CACHE_COLS} FROM imagelist_cache ORDER BY identifier"
        ))?;
        let rows = st
            .query_map(params![], cache_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn cache_entry(&self, identifier: &str) -> Result<Option<CacheRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {CACHE_COLS} FROM imagelist_cache WHERE identifier = ?1"),
            [identifier],
            cache_row,
        ))
    }

    pub fn put_cache_entry(&self, c: &CacheRow) -> Result<()> {
        self.conn().execute(
            &format!(
                "INSERT INTO imagelist_cache({CACHE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7)
                 ON CONFLICT(identifier) DO UPDATE SET subscription_id = excluded.subscription_id,
                   file = excluded.file, size = excluded.size, sha512 = excluded.sha512,
                   cached = excluded.cached, image_id = excluded.image_id"
            ),
            params![
                c.identifier,
                c.subscription_id,
                c.file,
                c.size as i64,
                c.sha512,
                c.cached,
                c.image_id
            ],
        )?;
        Ok(())
    }

    pub fn remove_cache_entry(&self, identifier: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM imagelist_cache WHERE identifier = ?1",
            [identifier],
        )? > 0)
    }

    /// Record a revocation and mark what it covers as revoked: one image (by identifier),
    /// every image last published by an endorser (by DN), or a whole subscription. Revoking
    /// again keeps the first record. Returns the image definitions now revoked.
    pub fn revoke(
        &self,
        kind: &str,
        target: &str,
        reason: Option<&str>,
    ) -> Result<Vec<ImageDefRow>> {
        self.tx(|tx| {
            let t = now();
            tx.execute(
                "INSERT INTO imagelist_revocations(kind, target, reason, at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT DO NOTHING",
                params![kind, target, reason, t],
            )?;
            let cond = match kind {
                "image" => "identifier = ?1",
                "endorser" => {
                    "instance_id IN (SELECT id FROM imagelist_instances WHERE signer_dn = ?1)"
                }
                "subscription" => {
                    tx.execute(
                        "UPDATE imagelist_subscriptions SET revoked = COALESCE(revoked, ?2) WHERE id = ?1",
                        params![target, t],
                    )?;
                    "subscription_id = ?1"
                }
                other => {
                    return Err(StoreError::NotFound {
                        kind: "revocation kind",
                        id: other.to_string(),
                    })
                }
            };
            tx.execute(&format!("UPDATE imagelist_images SET state = 'revoked', cache = 0 WHERE {cond}"), [target])?;
            let mut st = tx.prepare(&format!("SELECT {IMG_COLS} FROM imagelist_images WHERE {cond}"))?;
            let rows = st.query_map([target], img_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Remember which repository image a cached list image became.
    pub fn set_list_image_repository_id(
        &self,
        subscription_id: &str,
        identifier: &str,
        image_id: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE imagelist_images SET image_id = ?3 WHERE subscription_id = ?1 AND identifier = ?2",
            params![subscription_id, identifier, image_id],
        )?;
        Ok(())
    }

    pub fn revocations(&self) -> Result<Vec<RevocationRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT kind, target, reason, at FROM imagelist_revocations ORDER BY at, kind, target",
        )?;
        let rows = st
            .query_map(params![], |r| {
                Ok(RevocationRow {
                    kind: r.get(0)?,
                    target: r.get(1)?,
                    reason: r.get(2)?,
                    at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn is_revoked(&self, kind: &str, target: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(optional(conn.query_row(
            "SELECT 1 FROM imagelist_revocations WHERE kind = ?1 AND target = ?2",
            params![kind, target],
            |r| r.get::<_, i64>(0),
        ))?
        .is_some())
    }

    /// Free a repository image name held by an image that came from a list, so the newest
    /// version of a list image can take its `dc:identifier` as name. Older versions keep
    /// their files and ids (running instances may use them). Returns whether a name was freed.
    pub fn release_imagelist_image_name(&self, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE images SET name = NULL WHERE name = ?1 AND origin = 'imagelist'",
            [name],
        )? > 0)
    }

    /// Whether a repository image came from a revoked list image: new instances from it are
    /// refused and running ones are flagged.
    pub fn repository_image_revoked(&self, image_id: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(optional(conn.query_row(
            "SELECT 1 FROM imagelist_images WHERE image_id = ?1 AND state = 'revoked' LIMIT 1",
            [image_id],
            |r| r.get::<_, i64>(0),
        ))?
        .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, url: &str) -> SubscriptionRow {
        SubscriptionRow {
            id: id.into(),
            url: url.into(),
            ca_dir: "/ca".into(),
            list_identifier: None,
            title: None,
            auto_cache: true,
            hook: None,
            created: now(),
            updated: None,
            checked: None,
            last_error: None,
            revoked: None,
            endorsers: vec![EndorserRow {
                dn: "/CN=e".into(),
                ca: Some("/CN=ca".into()),
            }],
        }
    }

    fn img(sub: &str, id: &str, sha: &str) -> ImageDefRow {
        ImageDefRow {
            subscription_id: sub.into(),
            identifier: id.into(),
            instance_id: 0,
            title: format!("t-{id}"),
            sha512: sha.into(),
            size: 1,
            uri: "file:///x".into(),
            version: "1".into(),
            os: "Linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            hypervisor: "kvm".into(),
            format: None,
            entry: "{}".into(),
            state: "available".into(),
            cache: true,
            image_id: None,
        }
    }

    fn inst<'a>(raw: &'a [u8], version: &'a str) -> NewListInstance<'a> {
        NewListInstance {
            raw,
            sha512: "h",
            identifier: "L",
            version,
            created: "2020-01-01T00:00:00Z",
            expires: "2030-01-01T00:00:00Z",
            signer_dn: "/CN=e",
            signer_ca: "/CN=ca",
            title: "list",
        }
    }

    #[test]
    fn subscription_lifecycle() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.add_subscription(&sub("abcd-1", "http://127.0.0.1/l"))
                .unwrap();
            assert!(matches!(
                s.add_subscription(&sub("x", "http://127.0.0.1/l")),
                Err(StoreError::Conflict { .. })
            ));
            let found = s.find_subscription("abcd").unwrap();
            assert_eq!(s.find_subscription("ABCD").unwrap().id, "abcd-1");
            assert_eq!(found.endorsers.len(), 1);
            assert!(s.latest_list("abcd-1").unwrap().is_none());

            s.tx(|tx| {
                record_list(
                    tx,
                    "abcd-1",
                    &inst(b"v1", "1"),
                    &[img("abcd-1", "A", "a1"), img("abcd-1", "B", "b1")],
                    &[],
                )
            })
            .unwrap();
            let i2 = s
                .tx(|tx| {
                    record_list(
                        tx,
                        "abcd-1",
                        &inst(b"v2", "2"),
                        &[img("abcd-1", "A", "a2")],
                        &["B".to_string()],
                    )
                })
                .unwrap();
            let latest = s.latest_list("abcd-1").unwrap().unwrap();
            assert_eq!((latest.id, latest.version.as_str()), (i2, "2"));
            assert_eq!(s.list_raw(i2).unwrap(), b"v2");
            let imgs = s.list_images(Some("abcd-1")).unwrap();
            let states: Vec<_> = imgs
                .iter()
                .map(|i| (i.identifier.as_str(), i.state.as_str(), i.sha512.as_str()))
                .collect();
            assert_eq!(states, [("A", "available", "a2"), ("B", "expired", "b1")]);
            assert_eq!(s.find_subscription("L").unwrap().id, "abcd-1");
            assert_eq!(s.find_list_image("t-A").unwrap().identifier, "A");

            s.put_cache_entry(&CacheRow {
                identifier: "A".into(),
                subscription_id: Some("abcd-1".into()),
                file: "/c/A".into(),
                size: 1,
                sha512: "a2".into(),
                cached: now(),
                image_id: Some("img-A".into()),
            })
            .unwrap();
            s.set_list_image_repository_id("abcd-1", "A", Some("img-A"))
                .unwrap();
            assert!(!s.repository_image_revoked("img-A").unwrap());
            let revoked = s.revoke("image", "A", Some("bad")).unwrap();
            assert_eq!(revoked.len(), 1);
            assert!(s.is_revoked("image", "A").unwrap());
            assert!(s.repository_image_revoked("img-A").unwrap());
            assert_eq!(s.find_list_image("A").unwrap().state, "revoked");
            // A later list cannot un-revoke it.
            s.tx(|tx| {
                record_list(
                    tx,
                    "abcd-1",
                    &inst(b"v3", "3"),
                    &[img("abcd-1", "A", "a3")],
                    &[],
                )
            })
            .unwrap();
            assert_eq!(s.find_list_image("A").unwrap().state, "revoked");

            // Endorser revocation reaches the images of lists that endorser signed.
            assert_eq!(s.revoke("endorser", "/CN=e", None).unwrap().len(), 2);
            assert!(s.revoke("planet", "x", None).is_err());
            s.revoke("subscription", "abcd-1", None).unwrap();
            assert!(s.find_subscription("abcd-1").unwrap().revoked.is_some());
            assert!(s.remove_subscription("abcd-1").unwrap());
            assert!(s.list_images(None).unwrap().is_empty());
        }
    }
}
