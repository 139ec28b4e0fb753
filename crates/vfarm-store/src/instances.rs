//! Instances and their snapshots.
//!
//! State changes are compare-and-set (`set_instance_state` names the state it expects), so
//! two processes acting on one instance (CLI and service, or the reaper) cannot both win.

use serde::{Deserialize, Serialize};

use crate::{
    append_event, now, optional, params, Cursor, Db, Page, Result, Row, Store, StoreError, Value,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub id: String,
    pub name: Option<String>,
    pub image_id: String,
    pub driver: String,
    pub owner: String,
    pub state: String,
    pub exit_code: Option<i32>,
    pub hostname: String,
    /// The driver's instance spec, JSON.
    pub spec: String,
    pub created: String,
    pub started: Option<String>,
    pub expires: Option<String>,
    pub updated: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub instance_id: String,
    pub name: String,
    pub created: String,
    pub size: u64,
}

const COLS: &str =
    "id, name, image_id, driver, owner, state, exit_code, hostname, spec, created, started, expires, updated, error";

fn row(r: &Row<'_>) -> Result<InstanceRow> {
    Ok(InstanceRow {
        id: r.get(0)?,
        name: r.get(1)?,
        image_id: r.get(2)?,
        driver: r.get(3)?,
        owner: r.get(4)?,
        state: r.get(5)?,
        exit_code: r.get(6)?,
        hostname: r.get(7)?,
        spec: r.get(8)?,
        created: r.get(9)?,
        started: r.get(10)?,
        expires: r.get(11)?,
        updated: r.get(12)?,
        error: r.get(13)?,
    })
}

/// Which instances a list holds; every field set narrows it (all `None`: every instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub owner: Option<String>,
    /// Only rows owned by one of these (a non-admin's own keys: its owner key and what
    /// owned its instances before migration 0010); empty: no restriction.
    pub scope: Vec<String>,
    pub state: Option<String>,
    /// An image id, or the name of an image record.
    pub image: Option<String>,
    /// The node the instance was placed on.
    pub host: Option<String>,
}

/// What a state change records besides the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChange<'a> {
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
    /// Set `started` to now (on start).
    pub started: bool,
}

fn insert(conn: &Db<'_>, i: &InstanceRow, origin: Option<&str>) -> Result<()> {
    if let Some(name) = &i.name {
        let holder: Option<String> = optional(conn.query_row(
            "SELECT id FROM instances WHERE name = ?1",
            [name],
            |r| r.get(0),
        ))?;
        if holder.is_some() {
            return Err(StoreError::Conflict {
                kind: "instance name",
                id: name.clone(),
            });
        }
    }
    conn.execute(
        &format!(
            "INSERT INTO instances({COLS}, origin) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)"
        ),
        params![
            i.id,
            i.name,
            i.image_id,
            i.driver,
            i.owner,
            i.state,
            i.exit_code,
            i.hostname,
            i.spec,
            i.created,
            i.started,
            i.expires,
            i.updated,
            i.error,
            origin
        ],
    )?;
    Ok(())
}

impl Store {
    /// Record a new instance (and an `instance.create` event), as this store's origin's.
    /// Names are unique.
    pub fn insert_instance(&self, i: &InstanceRow) -> Result<()> {
        self.tx(|tx| {
            insert(tx, i, self.origin())?;
            append_event(
                tx,
                &i.owner,
                "instance.create",
                &i.id,
                &serde_json::json!({"name": i.name, "image": i.image_id, "driver": i.driver}),
            )
        })
    }

    /// The other service that made instance `id` on its own machine, if it was not this
    /// store's origin: its drivers are there, not here, so only it observes, reconciles,
    /// reaps and acts on it. `None` for this origin's instances, for rows older than
    /// origins, and when this store has no origin.
    pub fn foreign_origin(&self, id: &str) -> Result<Option<String>> {
        let Some(mine) = self.origin() else {
            return Ok(None);
        };
        let theirs: Option<Option<String>> = optional(self.conn().query_row(
            "SELECT origin FROM instances WHERE id = ?1",
            [id],
            |r| r.get(0),
        ))?;
        Ok(theirs.flatten().filter(|o| o != mine))
    }

    pub fn instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {COLS} FROM instances WHERE id = ?1"),
            [id],
            row,
        ))
    }

    /// Find by exact id, exact name, or unique id prefix (at least 4 hex digits).
    pub fn find_instance(&self, reference: &str) -> Result<InstanceRow> {
        self.find_instance_of(reference, None)
    }

    /// [`find_instance`](Self::find_instance) among `owner`'s instances only (`None`: all,
    /// for admins and the local CLI). Another owner's instance is not found, never makes a
    /// prefix ambiguous, and is never named in an error. An exact id wins over a name.
    pub fn find_instance_of(&self, reference: &str, owner: Option<&str>) -> Result<InstanceRow> {
        self.find_instance_among(reference, owner.map(|o| [o, o]))
    }

    /// [`find_instance_of`](Self::find_instance_of) among the instances of either of two
    /// owners: a certificate user's owner key and what owned its instances before owners
    /// recorded the issuer (`<subject> issuer=unknown`, migration 0010).
    pub fn find_instance_among(
        &self,
        reference: &str,
        owners: Option<[&str; 2]>,
    ) -> Result<InstanceRow> {
        let conn = self.conn();
        let scope = if owners.is_some() {
            " AND owner IN (?2, ?3)"
        } else {
            ""
        };
        let by = |cond: &str, arg: &str, limit: u32| -> Result<Vec<InstanceRow>> {
            let sql = format!(
                "SELECT {COLS} FROM instances WHERE {cond}{scope} ORDER BY id LIMIT {limit}"
            );
            let mut st = conn.prepare(&sql)?;
            let rows = match owners {
                Some([o, legacy]) => st.query_map(params![arg, o, legacy], row)?,
                None => st.query_map(params![arg], row)?,
            };
            rows.collect::<Result<_, _>>()
        };
        if let Some(r) = by("id = ?1", reference, 1)?.pop() {
            return Ok(r);
        }
        if let Some(r) = by("name = ?1", reference, 1)?.pop() {
            return Ok(r);
        }
        let not_found = || StoreError::NotFound {
            kind: "instance",
            id: reference.to_string(),
        };
        if reference.len() < 4 || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut rows = by("id LIKE ?1 || '%'", &reference.to_ascii_lowercase(), 5)?;
        match rows.len() {
            0 => Err(not_found()),
            1 => Ok(rows.pop().expect("one row")),
            _ => Err(StoreError::Ambiguous {
                kind: "instance",
                id: reference.to_string(),
                matches: rows
                    .iter()
                    .map(|r| r.id.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn instances(&self) -> Result<Vec<InstanceRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM instances ORDER BY created, id"
        ))?;
        let rows = st.query_map(params![], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every instance without its driver spec (left empty): what listings and the service's
    /// watcher need, at a fraction of the bytes.
    pub fn instances_brief(&self) -> Result<Vec<InstanceRow>> {
        let conn = self.conn();
        let brief = COLS.replace("spec", "'' AS spec");
        let mut st = conn.prepare(&format!(
            "SELECT {brief} FROM instances ORDER BY created, id"
        ))?;
        let rows = st.query_map(params![], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The instances `filter` selects, in `(created, id)` order, from just after `after`, at
    /// most `limit` of them (`None`: all). Filtering and paging happen in SQL; the next
    /// page's cursor is the last row's `(created, id)`, so rows inserted between pages (they
    /// are newer) neither repeat nor hide others. `brief` leaves the driver spec empty, as
    /// [`instances_brief`](Self::instances_brief) does.
    pub fn instances_page(
        &self,
        filter: &InstanceFilter,
        after: Option<&Cursor>,
        limit: Option<usize>,
        brief: bool,
    ) -> Result<Page<InstanceRow>> {
        let mut args: Vec<Value> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        fn arg(v: &str, args: &mut Vec<Value>) -> String {
            args.push(v.into());
            format!("?{}", args.len())
        }
        if let Some(o) = &filter.owner {
            conds.push(format!("owner = {}", arg(o, &mut args)));
        }
        if !filter.scope.is_empty() {
            let keys: Vec<String> = filter.scope.iter().map(|o| arg(o, &mut args)).collect();
            conds.push(format!("owner IN ({})", keys.join(", ")));
        }
        if let Some(st) = &filter.state {
            conds.push(format!("state = {}", arg(st, &mut args)));
        }
        if let Some(i) = &filter.image {
            let n = arg(i, &mut args);
            conds.push(format!(
                "(image_id = {n} OR image_id IN (SELECT id FROM images WHERE name = {n}))"
            ));
        }
        if let Some(h) = &filter.host {
            conds.push(format!(
                "id IN (SELECT instance_id FROM instance_hosts WHERE host = {})",
                arg(h, &mut args)
            ));
        }
        let cols = if brief {
            COLS.replace("spec", "'' AS spec")
        } else {
            COLS.to_string()
        };
        crate::keyset_page(
            &self.conn(),
            &format!("SELECT {cols} FROM instances"),
            conds,
            args,
            after,
            limit,
            row,
        )
    }

    /// A cheap fingerprint of the instance table: (count, newest `updated`). Any insert,
    /// state change, expiry change or delete changes it.
    pub fn instances_fingerprint(&self) -> Result<(i64, Option<String>)> {
        let conn = self.conn();
        conn.query_row(
            "SELECT COUNT(*), MAX(updated) FROM instances",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The instances in `states` (full rows).
    pub fn instances_in(&self, states: &[&str]) -> Result<Vec<InstanceRow>> {
        let conn = self.conn();
        let marks = crate::marks(states.len());
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM instances WHERE state IN ({marks}) ORDER BY created, id"
        ))?;
        let rows = st.query_map(states, row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many instances are in each state.
    pub fn instance_state_counts(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT state, COUNT(*) FROM instances GROUP BY state ORDER BY state")?;
        let rows = st.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()
    }

    /// Give back hostname leases and quota reservations whose holder is no instance (a
    /// create that died between taking them and recording the instance). Returns how many.
    pub fn release_orphan_holds(&self) -> Result<usize> {
        self.tx(|tx| {
            let a = tx.execute(
                "DELETE FROM hostname_leases WHERE holder NOT IN (SELECT id FROM instances)",
                params![],
            )?;
            let b = tx.execute(
                "DELETE FROM quota_reservations WHERE holder NOT IN (SELECT id FROM instances)",
                params![],
            )?;
            Ok(a + b)
        })
    }

    /// Set an instance's expiry (RFC 3339), recording an event.
    pub fn set_instance_expiry(&self, actor: &str, id: &str, expires: &str) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE instances SET expires = ?2, updated = ?3 WHERE id = ?1",
                params![id, expires, now()],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    actor,
                    "instance.extend",
                    id,
                    &serde_json::json!({ "expires": expires }),
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Instances whose expiry is at or before `at` (RFC 3339, as [`now`] writes it).
    pub fn expired_instances(&self, at: &str) -> Result<Vec<InstanceRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM instances WHERE expires IS NOT NULL AND expires <= ?1 ORDER BY expires"
        ))?;
        let rows = st.query_map([at], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Move an instance from state `from` to `to`, recording an event. Returns false (and
    /// changes nothing) if the instance is no longer in `from`: someone else acted first.
    pub fn set_instance_state(
        &self,
        actor: &str,
        id: &str,
        from: &str,
        to: &str,
        change: &StateChange<'_>,
    ) -> Result<bool> {
        self.tx(|tx| {
            let t = now();
            let n = tx.execute(
                "UPDATE instances SET state = ?3, exit_code = COALESCE(?4, CASE WHEN ?3 = 'running' THEN NULL ELSE exit_code END),
                   error = ?5, started = CASE WHEN ?6 <> 0 THEN ?7 ELSE started END, updated = ?7
                 WHERE id = ?1 AND state = ?2",
                params![id, from, to, change.exit_code, change.error, change.started, t],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    actor,
                    &format!("instance.{to}"),
                    id,
                    &serde_json::json!({"from": from, "exit_code": change.exit_code, "error": change.error}),
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Remove an instance record and its snapshots (cascade), and give back its hostname
    /// lease and quota reservation in the same transaction: no name or share is ever held by
    /// an instance that is gone. Returns whether it existed.
    pub fn delete_instance(&self, actor: &str, id: &str) -> Result<bool> {
        self.tx(|tx| {
            crate::auth::give_back_name(tx, id)?;
            tx.execute("DELETE FROM quota_reservations WHERE holder = ?1", [id])?;
            let n = tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
            if n == 1 {
                append_event(tx, actor, "instance.destroyed", id, &serde_json::json!({}))?;
            }
            Ok(n == 1)
        })
    }

    pub fn insert_snapshot(&self, actor: &str, s: &SnapshotRow) -> Result<()> {
        self.tx(|tx| {
            let exists: Option<String> = optional(tx.query_row(
                "SELECT name FROM snapshots WHERE instance_id = ?1 AND name = ?2",
                params![s.instance_id, s.name],
                |r| r.get(0),
            ))?;
            if exists.is_some() {
                return Err(StoreError::Conflict {
                    kind: "snapshot",
                    id: format!("{}/{}", s.instance_id, s.name),
                });
            }
            tx.execute(
                "INSERT INTO snapshots(instance_id, name, created, size) VALUES (?1,?2,?3,?4)",
                params![s.instance_id, s.name, s.created, s.size as i64],
            )?;
            append_event(
                tx,
                actor,
                "snapshot.create",
                &s.instance_id,
                &serde_json::json!({"name": s.name}),
            )
        })
    }

    pub fn snapshots(&self, instance_id: &str) -> Result<Vec<SnapshotRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT instance_id, name, created, size FROM snapshots WHERE instance_id = ?1 ORDER BY created, name")?;
        let rows = st
            .query_map([instance_id], |r| {
                Ok(SnapshotRow {
                    instance_id: r.get(0)?,
                    name: r.get(1)?,
                    created: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn snapshot(&self, instance_id: &str, name: &str) -> Result<Option<SnapshotRow>> {
        Ok(self
            .snapshots(instance_id)?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// Returns whether it existed.
    pub fn delete_snapshot(&self, actor: &str, instance_id: &str, name: &str) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "DELETE FROM snapshots WHERE instance_id = ?1 AND name = ?2",
                params![instance_id, name],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    actor,
                    "snapshot.remove",
                    instance_id,
                    &serde_json::json!({"name": name}),
                )?;
            }
            Ok(n == 1)
        })
    }
}

impl crate::Keyed for InstanceRow {
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

    pub(crate) fn inst(id: &str, name: Option<&str>) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            name: name.map(Into::into),
            image_id: "img".into(),
            driver: "oci".into(),
            owner: "root".into(),
            state: "creating".into(),
            exit_code: None,
            hostname: "h".into(),
            spec: "{}".into(),
            created: now(),
            started: None,
            expires: None,
            updated: now(),
            error: None,
        }
    }

    #[test]
    fn insert_find_and_unique_names() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.insert_instance(&inst("abcd00000001", Some("web")))
                .unwrap();
            s.insert_instance(&inst("abce00000002", None)).unwrap();
            assert_eq!(s.find_instance("web").unwrap().id, "abcd00000001");
            assert_eq!(s.find_instance("abcd").unwrap().id, "abcd00000001");
            assert_eq!(s.find_instance("abce00000002").unwrap().id, "abce00000002");
            assert!(matches!(
                s.find_instance("abc"),
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                s.find_instance("nope"),
                Err(StoreError::NotFound { .. })
            ));
            s.insert_instance(&inst("abcd00000003", None)).unwrap();
            assert!(matches!(
                s.find_instance("abcd"),
                Err(StoreError::Ambiguous { .. })
            ));
            let e = s
                .insert_instance(&inst("ffff00000004", Some("web")))
                .unwrap_err();
            assert!(matches!(e, StoreError::Conflict { .. }));
            assert_eq!(s.instances().unwrap().len(), 3);
        }
    }

    /// Finding 16 of issue 15: another owner's instance made a prefix ambiguous (and the
    /// error listed its id), and a name equal to another's id could shadow it.
    #[test]
    fn lookups_are_owner_scoped() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let mine = InstanceRow {
                owner: "alice".into(),
                ..inst("beef00000001", Some("mine"))
            };
            let theirs = InstanceRow {
                owner: "bob".into(),
                ..inst("beef00000002", Some("beef00000001x"))
            };
            // An older row whose name is exactly alice's id (names are now refused so).
            let shadow = InstanceRow {
                owner: "bob".into(),
                ..inst("cafe00000003", Some("beef00000001"))
            };
            for r in [&mine, &theirs, &shadow] {
                s.insert_instance(r).unwrap();
            }
            // Alice's prefix is hers alone; bob's instances neither clash nor show.
            assert_eq!(
                s.find_instance_of("beef", Some("alice")).unwrap().id,
                mine.id
            );
            assert_eq!(
                s.find_instance_of("beef00000001", Some("alice"))
                    .unwrap()
                    .id,
                mine.id
            );
            assert!(matches!(
                s.find_instance_of("beef00000002", Some("alice")),
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                s.find_instance_of("cafe", Some("alice")),
                Err(StoreError::NotFound { .. })
            ));
            // An exact id wins over a name, also for an admin seeing all.
            assert_eq!(
                s.find_instance_of("beef00000001", None).unwrap().id,
                mine.id
            );
            // Ambiguity among all (admin) names only matches, and for bob only his own.
            match s.find_instance_of("beef", None) {
                Err(StoreError::Ambiguous { matches, .. }) => {
                    assert!(matches.contains(&mine.id) && matches.contains(&theirs.id))
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                s.find_instance_of("beef", Some("bob")).unwrap().id,
                theirs.id
            );
        }
    }

    fn ids(p: &Page<InstanceRow>) -> Vec<&str> {
        p.items.iter().map(|r| r.id.as_str()).collect()
    }

    /// An instance created at second `n` of a fixed minute, so the order is known.
    fn at(id: &str, n: u32, owner: &str, state: &str, image: &str) -> InstanceRow {
        InstanceRow {
            owner: owner.into(),
            state: state.into(),
            image_id: image.into(),
            created: format!("2026-01-01T00:00:{n:02}.000Z"),
            ..inst(id, None)
        }
    }

    #[test]
    fn filters_select_in_sql() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.tx(|tx| {
                crate::images::upsert_image(
                    tx,
                    &crate::images::tests::img("img2", Some("deb")),
                    &[],
                )
            })
            .unwrap();
            s.insert_instance(&at("i1", 1, "alice", "running", "img1"))
                .unwrap();
            s.insert_instance(&at("i2", 2, "bob", "running", "img2"))
                .unwrap();
            s.insert_instance(&at("i3", 3, "alice", "stopped", "img2"))
                .unwrap();
            s.add_host("admin", "n1", "h", "2999-01-01T00:00:00.000Z")
                .unwrap();
            s.place_instance("admin", "i3", 1000, 0, |_| {
                Ok::<_, StoreError>(("n1".to_string(), "test".to_string()))
            })
            .unwrap();
            let q = |f: InstanceFilter| s.instances_page(&f, None, None, true).unwrap();
            assert_eq!(ids(&q(InstanceFilter::default())), ["i1", "i2", "i3"]);
            let owner = |o: &str| Some(o.to_string());
            assert_eq!(
                ids(&q(InstanceFilter {
                    owner: owner("alice"),
                    ..Default::default()
                })),
                ["i1", "i3"]
            );
            assert_eq!(
                ids(&q(InstanceFilter {
                    state: owner("running"),
                    ..Default::default()
                })),
                ["i1", "i2"]
            );
            // An image by id or by its record's name.
            for image in ["img2", "deb"] {
                assert_eq!(
                    ids(&q(InstanceFilter {
                        image: owner(image),
                        ..Default::default()
                    })),
                    ["i2", "i3"]
                );
            }
            assert_eq!(
                ids(&q(InstanceFilter {
                    host: owner("n1"),
                    ..Default::default()
                })),
                ["i3"]
            );
            // Filters combine: alice's running instances.
            let p = q(InstanceFilter {
                owner: owner("alice"),
                state: owner("running"),
                ..Default::default()
            });
            assert_eq!(ids(&p), ["i1"]);
            assert_eq!(p.next, None);
            assert!(q(InstanceFilter {
                owner: owner("carol"),
                ..Default::default()
            })
            .items
            .is_empty());
            // Brief rows leave the spec out; full ones carry it.
            assert_eq!(p.items[0].spec, "");
            let full = s
                .instances_page(&InstanceFilter::default(), None, Some(1), false)
                .unwrap();
            assert_eq!(full.items[0].spec, "{}");
        }
    }

    /// Paging by cursor while rows are inserted between pages: every row that existed
    /// throughout comes exactly once, in order, and the new ones come after them.
    #[test]
    fn pages_neither_repeat_nor_skip_under_inserts() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            // Rows sharing a `created` instant are ordered by id (the cursor's tie-break).
            for n in 0..23u32 {
                let id = format!("a{n:03}");
                s.insert_instance(&at(&id, n / 2, "alice", "running", "img"))
                    .unwrap();
            }
            let all = InstanceFilter::default();
            let mut seen: Vec<String> = Vec::new();
            let mut after: Option<Cursor> = None;
            let mut pages = 0;
            loop {
                let p = s
                    .instances_page(&all, after.as_ref(), Some(5), true)
                    .unwrap();
                assert!(p.items.len() <= 5);
                seen.extend(p.items.iter().map(|r| r.id.clone()));
                pages += 1;
                // Newer instances arrive while the client reads.
                if pages <= 2 {
                    let id = format!("z{pages:03}");
                    s.insert_instance(&InstanceRow {
                        created: format!("2026-01-01T00:01:{pages:02}.000Z"),
                        ..inst(&id, None)
                    })
                    .unwrap();
                }
                // Through the opaque form, as a client hands it back.
                match p.next {
                    Some(c) => after = Some(Cursor::decode(&c.encode()).unwrap()),
                    None => break,
                }
            }
            let mut want: Vec<String> = (0..23).map(|n| format!("a{n:03}")).collect();
            want.extend(["z001".to_string(), "z002".to_string()]);
            assert_eq!(seen, want);
            assert_eq!(pages, 5);
            // An exact fit ends without a next page.
            let p = s.instances_page(&all, None, Some(25), true).unwrap();
            assert_eq!((p.items.len(), p.next), (25, None));
            let p = s.instances_page(&all, None, Some(24), true).unwrap();
            assert!(p.next.is_some());
        }
    }

    #[test]
    fn cursors_are_opaque_and_checked() {
        let c = Cursor {
            key: "2026-01-01T00:00:00.000Z".into(),
            id: "abcd00000001".into(),
        };
        let e = c.encode();
        assert!(e.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Cursor::decode(&e), Some(c));
        for bad in ["", "x", "zz", "616263", "0a", &"00".repeat(600)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn state_changes_are_compare_and_set() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.insert_instance(&inst("a1", None)).unwrap();
            assert!(s
                .set_instance_state("root", "a1", "creating", "created", &StateChange::default())
                .unwrap());
            assert!(!s
                .set_instance_state("root", "a1", "creating", "failed", &StateChange::default())
                .unwrap());
            let ch = StateChange {
                started: true,
                ..Default::default()
            };
            assert!(s
                .set_instance_state("root", "a1", "created", "running", &ch)
                .unwrap());
            assert!(s.instance("a1").unwrap().unwrap().started.is_some());
            let ch = StateChange {
                exit_code: Some(7),
                error: Some("exited with status 7"),
                ..Default::default()
            };
            assert!(s
                .set_instance_state("root", "a1", "running", "failed", &ch)
                .unwrap());
            let r = s.instance("a1").unwrap().unwrap();
            assert_eq!((r.state.as_str(), r.exit_code), ("failed", Some(7)));
            // Starting again clears the previous exit status.
            let ch = StateChange {
                started: true,
                ..Default::default()
            };
            assert!(s
                .set_instance_state("root", "a1", "failed", "running", &ch)
                .unwrap());
            assert_eq!(s.instance("a1").unwrap().unwrap().exit_code, None);
            assert!(s
                .events(10)
                .unwrap()
                .iter()
                .any(|e| e.kind == "instance.failed"));
        }
    }

    #[test]
    fn snapshots_go_with_their_instance() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.insert_instance(&inst("a1", None)).unwrap();
            let snap = |n: &str| SnapshotRow {
                instance_id: "a1".into(),
                name: n.into(),
                created: now(),
                size: 1,
            };
            s.insert_snapshot("root", &snap("one")).unwrap();
            s.insert_snapshot("root", &snap("two")).unwrap();
            assert!(matches!(
                s.insert_snapshot("root", &snap("one")),
                Err(StoreError::Conflict { .. })
            ));
            assert_eq!(s.snapshots("a1").unwrap().len(), 2);
            assert!(s.delete_snapshot("root", "a1", "one").unwrap());
            assert!(!s.delete_snapshot("root", "a1", "one").unwrap());
            assert!(s.delete_instance("root", "a1").unwrap());
            assert!(s.snapshots("a1").unwrap().is_empty());
            assert!(!s.delete_instance("root", "a1").unwrap());
        }
    }

    #[test]
    fn expiry_query() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let mut a = inst("a1", None);
            a.expires = Some("2020-01-01T00:00:00.000Z".into());
            let mut b = inst("b1", None);
            b.expires = Some("2999-01-01T00:00:00.000Z".into());
            s.insert_instance(&a).unwrap();
            s.insert_instance(&b).unwrap();
            s.insert_instance(&inst("c1", None)).unwrap();
            let ids: Vec<String> = s
                .expired_instances(&now())
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids, ["a1"]);
        }
    }
}
