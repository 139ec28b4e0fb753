//! Images, artifacts, builds and operations.

use serde::{Deserialize, Serialize};

use crate::{now, optional, params, Cursor, Db, Page, Result, Row, Store, StoreError, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub id: String,
    pub name: Option<String>,
    /// Canonical spec JSON (or, for imports, a description of the source).
    pub spec: String,
    pub summary: String,
    pub origin: String,
    pub created: String,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRow {
    pub format: String,
    /// Relative to the image directory.
    pub file: String,
    pub size: u64,
    pub sha512: String,
    pub disk_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRow {
    pub id: String,
    pub image_id: String,
    pub spec: String,
    pub started: String,
    pub ended: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub target: Option<String>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub created: String,
    pub updated: String,
}

const IMAGE_COLS: &str =
    "id, name, spec, summary, origin, created, os, os_version, arch, kernel, initrd";

fn image_row(r: &Row<'_>) -> Result<ImageRow> {
    Ok(ImageRow {
        id: r.get(0)?,
        name: r.get(1)?,
        spec: r.get(2)?,
        summary: r.get(3)?,
        origin: r.get(4)?,
        created: r.get(5)?,
        os: r.get(6)?,
        os_version: r.get(7)?,
        arch: r.get(8)?,
        kernel: r.get(9)?,
        initrd: r.get(10)?,
    })
}

/// Insert an image with its artifacts, or add artifacts to an existing one (same id).
/// Name clashes with another image are refused.
pub fn upsert_image(conn: &Db<'_>, img: &ImageRow, artifacts: &[ArtifactRow]) -> Result<()> {
    if let Some(name) = &img.name {
        let holder: Option<String> = optional(conn.query_row(
            "SELECT id FROM images WHERE name = ?1",
            [name],
            |r| r.get(0),
        ))?;
        if holder.as_deref().is_some_and(|h| h != img.id) {
            return Err(StoreError::Conflict {
                kind: "image name",
                id: name.clone(),
            });
        }
    }
    conn.execute(
        &format!(
            "INSERT INTO images({IMAGE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)
             ON CONFLICT(id) DO UPDATE SET name = COALESCE(excluded.name, images.name),
               kernel = COALESCE(excluded.kernel, images.kernel),
               initrd = COALESCE(excluded.initrd, images.initrd)"
        ),
        params![
            img.id,
            img.name,
            img.spec,
            img.summary,
            img.origin,
            img.created,
            img.os,
            img.os_version,
            img.arch,
            img.kernel,
            img.initrd
        ],
    )?;
    for a in artifacts {
        conn.execute(
            "INSERT INTO artifacts(image_id, format, file, size, sha512, disk_size)
             VALUES (?1,?2,?3,?4,?5,?6)
             ON CONFLICT(image_id, format) DO UPDATE SET file = excluded.file, size = excluded.size,
               sha512 = excluded.sha512, disk_size = excluded.disk_size",
            params![
                img.id,
                a.format,
                a.file,
                a.size as i64,
                a.sha512,
                a.disk_size.map(|d| d as i64)
            ],
        )?;
    }
    Ok(())
}

impl Store {
    /// An image's owner: `Ok(None)` when there is no such image, `Some(None)` for a public
    /// (site) image.
    pub fn image_owner(&self, id: &str) -> Result<Option<Option<String>>> {
        optional(
            self.conn()
                .query_row("SELECT owner FROM images WHERE id = ?1", [id], |r| r.get(0)),
        )
    }

    /// Give a public image to `owner` (an API user's new build or import). An image that
    /// already has an owner keeps it. False when there is no such public image.
    pub fn claim_image(&self, id: &str, owner: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET owner = ?2 WHERE id = ?1 AND owner IS NULL",
            params![id, owner],
        )?;
        Ok(n == 1)
    }

    /// The instances whose disks sit on image `id` (their ids), for in-use protection.
    pub fn instances_on_image(&self, id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT id FROM instances WHERE image_id = ?1 ORDER BY id")?;
        let rows = st
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn image(&self, id: &str) -> Result<Option<ImageRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1"),
            [id],
            image_row,
        ))
    }

    /// Find by exact id, exact name, or unique id prefix (at least 4 hex digits).
    pub fn find_image(&self, reference: &str) -> Result<ImageRow> {
        let conn = self.conn();
        let exact = optional(conn.query_row(
            &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1 OR name = ?1"),
            [reference],
            image_row,
        ))?;
        if let Some(r) = exact {
            return Ok(r);
        }
        let not_found = || StoreError::NotFound {
            kind: "image",
            id: reference.to_string(),
        };
        // Images cached from a signed list are named by their dc:identifier; people also
        // know them by their dc:title. Only images still endorsed (state available) count.
        let mut st = conn.prepare(
            "SELECT DISTINCT image_id FROM imagelist_images
             WHERE title = ?1 AND state = 'available' AND image_id IS NOT NULL LIMIT 5",
        )?;
        let by_title: Vec<String> = st
            .query_map([reference], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(st);
        match by_title.as_slice() {
            [] => {}
            [one] => {
                return optional(conn.query_row(
                    &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1"),
                    [one],
                    image_row,
                ))?
                .ok_or_else(not_found)
            }
            many => {
                return Err(StoreError::Ambiguous {
                    kind: "image title",
                    id: reference.to_string(),
                    matches: many
                        .iter()
                        .map(|i| i.get(..12).unwrap_or(i).to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
        if reference.len() < 4 || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut st = conn.prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE id LIKE ?1 || '%' LIMIT 5"
        ))?;
        let rows: Vec<ImageRow> = st
            .query_map([reference.to_ascii_lowercase()], image_row)?
            .collect::<Result<_, _>>()?;
        match rows.len() {
            0 => Err(not_found()),
            1 => Ok(rows.into_iter().next().expect("one row")),
            _ => Err(StoreError::Ambiguous {
                kind: "image",
                id: reference.to_string(),
                matches: rows
                    .iter()
                    .map(|r| r.id.get(..12).unwrap_or(&r.id).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {IMAGE_COLS} FROM images ORDER BY created, id"
        ))?;
        let rows = st
            .query_map(params![], image_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The images of `owner` (`None`: all), in `(created, id)` order from just after
    /// `after`, at most `limit` (`None`: all); the next page's cursor is the last row's
    /// `(created, id)`, as for [`instances_page`](Self::instances_page).
    pub fn images_page(
        &self,
        owner: Option<&str>,
        after: Option<&Cursor>,
        limit: Option<usize>,
    ) -> Result<Page<ImageRow>> {
        let mut args: Vec<Value> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        if let Some(o) = owner {
            args.push(o.into());
            conds.push(format!("owner = ?{}", args.len()));
        }
        crate::keyset_page(
            &self.conn(),
            &format!("SELECT {IMAGE_COLS} FROM images"),
            conds,
            args,
            after,
            limit,
            image_row,
        )
    }

    pub fn artifacts(&self, image_id: &str) -> Result<Vec<ArtifactRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT format, file, size, sha512, disk_size FROM artifacts WHERE image_id = ?1 ORDER BY format",
        )?;
        let rows = st
            .query_map([image_id], |r| {
                Ok(ArtifactRow {
                    format: r.get(0)?,
                    file: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    sha512: r.get(3)?,
                    disk_size: r.get::<_, Option<i64>>(4)?.map(|d| d as u64),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Remove an image record (artifacts cascade). Returns whether it existed.
    pub fn delete_image(&self, id: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM images WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    pub fn insert_build(&self, b: &BuildRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO builds(id, image_id, spec, started, ended, status, error, log, origin) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![b.id, b.image_id, b.spec, b.started, b.ended, b.status, b.error, b.log, self.origin()],
        )?;
        Ok(())
    }

    pub fn finish_build(&self, id: &str, status: &str, error: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE builds SET status = ?2, error = ?3, ended = ?4 WHERE id = ?1",
            params![id, status, error, now()],
        )?;
        Ok(())
    }

    /// Builds still marked running whose process is gone are marked interrupted by the caller
    /// (which knows about locks); this lists them.
    /// Builds of this store's origin still marked running (another service's builds run in
    /// its own data dir, which this one cannot see).
    pub fn running_builds(&self) -> Result<Vec<BuildRow>> {
        let (ours, arg) = self.ours("origin", 1);
        let args: Vec<Value> = arg.into_iter().collect();
        self.builds_where(&format!("status = 'running' AND {ours}"), &args)
    }

    /// Latest build of an image id or of an id prefix (failed builds have no image record, so
    /// prefixes are matched against builds too).
    pub fn latest_build(&self, image_id_or_prefix: &str) -> Result<Option<BuildRow>> {
        let pattern = format!("{}%", image_id_or_prefix.to_ascii_lowercase());
        Ok(self
            .builds_where(
                "image_id LIKE ?1 AND status != 'cached' ORDER BY started DESC LIMIT 1",
                &[Value::from(pattern)],
            )?
            .pop())
    }

    fn builds_where(&self, cond: &str, args: &[Value]) -> Result<Vec<BuildRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT id, image_id, spec, started, ended, status, error, log FROM builds WHERE {cond}"
        ))?;
        let rows = st
            .query_map(args, |r| {
                Ok(BuildRow {
                    id: r.get(0)?,
                    image_id: r.get(1)?,
                    spec: r.get(2)?,
                    started: r.get(3)?,
                    ended: r.get(4)?,
                    status: r.get(5)?,
                    error: r.get(6)?,
                    log: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn create_operation(&self, id: &str, kind: &str, target: Option<&str>) -> Result<()> {
        let t = now();
        self.conn().execute(
            "INSERT INTO operations(id, kind, status, target, created, updated, origin) VALUES (?1,?2,'running',?3,?4,?4,?5)",
            params![id, kind, target, t, self.origin()],
        )?;
        Ok(())
    }

    pub fn finish_operation(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE operations SET status = ?2, error = ?3, result = ?4, updated = ?5 WHERE id = ?1",
            params![id, status, error, result.map(|r| r.to_string()), now()],
        )?;
        Ok(())
    }

    /// Ids and targets of this origin's operations of `kind` still marked running.
    pub fn running_operations(&self, kind: &str) -> Result<Vec<(String, Option<String>)>> {
        let (ours, arg) = self.ours("origin", 2);
        let mut args = vec![Value::from(kind)];
        args.extend(arg);
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT id, target FROM operations WHERE status = 'running' AND kind = ?1 AND {ours} ORDER BY created"
        ))?;
        let rows = st.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_>>()
    }

    /// Operations left running by a process of this origin that died are failed on startup
    /// (another service's are its own, and may be under way).
    pub fn fail_stale_operations(&self, reason: &str) -> Result<usize> {
        let (ours, arg) = self.ours("origin", 3);
        let mut args = vec![Value::from(reason), Value::from(now())];
        args.extend(arg);
        self.conn().execute(
            &format!("UPDATE operations SET status = 'failed', error = ?1, updated = ?2 WHERE status = 'running' AND {ours}"),
            args,
        )
    }

    pub fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        let conn = self.conn();
        let row = optional(conn.query_row(
            "SELECT id, kind, status, target, error, result, created, updated FROM operations WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            },
        ))?;
        row.map(
            |(id, kind, status, target, error, result, created, updated)| {
                let result = result
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|source| StoreError::Corrupt {
                        what: "operation result",
                        source,
                    })?;
                Ok(OperationRow {
                    id,
                    kind,
                    status,
                    target,
                    error,
                    result,
                    created,
                    updated,
                })
            },
        )
        .transpose()
    }
}

impl crate::Keyed for ImageRow {
    fn cursor(&self) -> Cursor {
        Cursor {
            key: self.created.clone(),
            id: self.id.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn img(id: &str, name: Option<&str>) -> ImageRow {
        ImageRow {
            id: id.into(),
            name: name.map(Into::into),
            spec: "{}".into(),
            summary: "s".into(),
            origin: "build".into(),
            created: now(),
            os: Some("LINUX".into()),
            os_version: Some("12".into()),
            arch: Some("amd64".into()),
            kernel: None,
            initrd: None,
        }
    }

    fn art(f: &str) -> ArtifactRow {
        ArtifactRow {
            format: f.into(),
            file: format!("x.{f}"),
            size: 10,
            sha512: "ab".into(),
            disk_size: None,
        }
    }

    /// Finding 7 of issue 15: images have owners (none: public, as every image made
    /// before owners is), a re-recorded image keeps its owner, and the instances on an image
    /// are known for in-use protection.
    #[test]
    fn image_owners_and_users() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.tx(|tx| upsert_image(tx, &img("feed0001", Some("mine")), &[art("tar")]))
                .unwrap();
            assert_eq!(s.image_owner("feed0001").unwrap(), Some(None));
            assert_eq!(s.image_owner("nosuch").unwrap(), None);
            assert!(s.claim_image("feed0001", "alice").unwrap());
            assert!(!s.claim_image("feed0001", "bob").unwrap());
            // Adding an artifact re-records the image; the owner stays.
            s.tx(|tx| upsert_image(tx, &img("feed0001", None), &[art("qcow2")]))
                .unwrap();
            assert_eq!(
                s.image_owner("feed0001").unwrap(),
                Some(Some("alice".into()))
            );
            assert!(s.instances_on_image("feed0001").unwrap().is_empty());
            let mut i = crate::instances::tests::inst("c0ffee000001", None);
            i.image_id = "feed0001".into();
            s.insert_instance(&i).unwrap();
            assert_eq!(
                s.instances_on_image("feed0001").unwrap(),
                vec!["c0ffee000001"]
            );
        }
    }

    #[test]
    fn find_by_id_name_prefix() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.tx(|tx| upsert_image(tx, &img("abcd1234", Some("web")), &[art("tar")]))
                .unwrap();
            s.tx(|tx| upsert_image(tx, &img("abce9999", None), &[]))
                .unwrap();
            assert_eq!(s.find_image("web").unwrap().id, "abcd1234");
            assert_eq!(s.find_image("abcd").unwrap().id, "abcd1234");
            assert!(matches!(
                s.find_image("abc"),
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                s.find_image("abc9"),
                Err(StoreError::NotFound { .. })
            ));
            s.tx(|tx| upsert_image(tx, &img("abcf0000", None), &[]))
                .unwrap();
            assert!(matches!(
                s.find_image("abc"),
                Err(StoreError::NotFound { .. })
            ));
            assert_eq!(s.find_image("abce9").unwrap().id, "abce9999");
            s.tx(|tx| upsert_image(tx, &img("abce9990", None), &[]))
                .unwrap();
            assert!(matches!(
                s.find_image("abce"),
                Err(StoreError::Ambiguous { .. })
            ));
        }
    }

    #[test]
    fn upsert_adds_artifacts_and_keeps_name_unique() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.tx(|tx| upsert_image(tx, &img("aaaa0001", Some("n")), &[art("tar")]))
                .unwrap();
            s.tx(|tx| upsert_image(tx, &img("aaaa0001", None), &[art("qcow2")]))
                .unwrap();
            assert_eq!(s.artifacts("aaaa0001").unwrap().len(), 2);
            assert_eq!(
                s.image("aaaa0001").unwrap().unwrap().name.as_deref(),
                Some("n")
            );
            let e = s
                .tx(|tx| upsert_image(tx, &img("bbbb0001", Some("n")), &[]))
                .unwrap_err();
            assert!(matches!(e, StoreError::Conflict { .. }));
            assert!(s.delete_image("aaaa0001").unwrap());
            assert!(s.artifacts("aaaa0001").unwrap().is_empty());
        }
    }

    #[test]
    fn image_pages_by_owner() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            for n in 0..5 {
                let id = format!("cccc000{n}");
                let row = ImageRow {
                    created: format!("2026-01-01T00:00:0{}.000Z", n / 2),
                    ..img(&id, None)
                };
                s.tx(|tx| upsert_image(tx, &row, &[])).unwrap();
                if n % 2 == 1 {
                    assert!(s.claim_image(&id, "alice").unwrap());
                }
            }
            let ids = |p: &Page<ImageRow>| p.items.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            let p1 = s.images_page(None, None, Some(2)).unwrap();
            assert_eq!(ids(&p1), ["cccc0000", "cccc0001"]);
            s.tx(|tx| upsert_image(tx, &img("bbbb0009", None), &[]))
                .unwrap();
            let p2 = s.images_page(None, p1.next.as_ref(), Some(2)).unwrap();
            assert_eq!(ids(&p2), ["cccc0002", "cccc0003"]);
            let p3 = s.images_page(None, p2.next.as_ref(), Some(2)).unwrap();
            assert_eq!(ids(&p3), ["cccc0004", "bbbb0009"]);
            assert_eq!(p3.next, None);
            let mine = s.images_page(Some("alice"), None, None).unwrap();
            assert_eq!(
                (ids(&mine), mine.next),
                (vec!["cccc0001".to_string(), "cccc0003".to_string()], None)
            );
        }
    }

    /// A running build of image `image_id`.
    pub(crate) fn build(id: &str, image_id: &str) -> BuildRow {
        BuildRow {
            id: id.into(),
            image_id: image_id.into(),
            spec: "{}".into(),
            started: now(),
            ended: None,
            status: "running".into(),
            error: None,
            log: "/tmp/l".into(),
        }
    }

    #[test]
    fn builds_and_operations() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let b = build("b1", "ffff0001");
            s.insert_build(&b).unwrap();
            assert_eq!(s.running_builds().unwrap().len(), 1);
            s.finish_build("b1", "failed", Some("boom")).unwrap();
            let l = s.latest_build("ffff").unwrap().unwrap();
            assert_eq!(
                (l.status.as_str(), l.error.as_deref()),
                ("failed", Some("boom"))
            );
            s.create_operation("o1", "image.build", Some("ffff0001"))
                .unwrap();
            assert_eq!(s.fail_stale_operations("restart").unwrap(), 1);
            let o = s.operation("o1").unwrap().unwrap();
            assert_eq!(o.status, "failed");
            s.finish_operation("o1", "succeeded", None, Some(&serde_json::json!({"id": 1})))
                .unwrap();
            assert_eq!(s.operation("o1").unwrap().unwrap().result.unwrap()["id"], 1);
        }
    }
}
