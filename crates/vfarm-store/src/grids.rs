//! Virtual grids and their members. A grid is recorded (`creating`) before its first member
//! is made and removed after its last is destroyed; `deleting` marks a teardown under way.
//! State changes are compare-and-set plus an event, like instances'. Members are ordinary
//! instances: this table only says which grid, role and index each one is.

use serde::Serialize;

use crate::{
    append_event, is_unique_violation, now, optional, params, Result, Row, Store, StoreError, Value,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GridRow {
    pub name: String,
    pub owner: String,
    /// creating | up | deleting | failed
    pub state: String,
    pub network: Option<String>,
    pub expires: Option<String>,
    /// The grid file as given.
    pub file: String,
    pub created: String,
    pub updated: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GridMemberRow {
    pub grid: String,
    pub role: String,
    /// From 1.
    pub index: i64,
    pub instance_id: String,
}

const COLS: &str = "name, owner, state, network, expires, file, created, updated, error";

fn row(r: &Row<'_>) -> Result<GridRow> {
    Ok(GridRow {
        name: r.get(0)?,
        owner: r.get(1)?,
        state: r.get(2)?,
        network: r.get(3)?,
        expires: r.get(4)?,
        file: r.get(5)?,
        created: r.get(6)?,
        updated: r.get(7)?,
        error: r.get(8)?,
    })
}

fn member(r: &Row<'_>) -> Result<GridMemberRow> {
    Ok(GridMemberRow {
        grid: r.get(0)?,
        role: r.get(1)?,
        index: r.get(2)?,
        instance_id: r.get(3)?,
    })
}

impl Store {
    /// Record a new grid (its state as given, normally `creating`). A taken name is a
    /// conflict.
    pub fn insert_grid(&self, g: &GridRow) -> Result<()> {
        self.tx(|tx| {
            let r = tx.execute(
                &format!(
                    "INSERT INTO grids({COLS}, origin) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
                ),
                params![
                    g.name,
                    g.owner,
                    g.state,
                    g.network,
                    g.expires,
                    g.file,
                    g.created,
                    g.updated,
                    g.error,
                    self.origin()
                ],
            );
            match r {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict {
                        kind: "grid",
                        id: g.name.clone(),
                    })
                }
                r => r?,
            };
            append_event(
                tx,
                &g.owner,
                "grid.create",
                &g.name,
                &serde_json::json!({ "network": g.network, "expires": g.expires }),
            )
        })
    }

    pub fn grid(&self, name: &str) -> Result<Option<GridRow>> {
        optional(self.conn().query_row(
            &format!("SELECT {COLS} FROM grids WHERE name = ?1"),
            [name],
            row,
        ))
    }

    /// Every grid, or those of `owners` (a caller's own, by name and legacy name), by name.
    pub fn grids(&self, owners: Option<&[&str]>) -> Result<Vec<GridRow>> {
        let conn = self.conn();
        match owners {
            None => conn.query_map(
                &format!("SELECT {COLS} FROM grids ORDER BY name"),
                params![],
                row,
            ),
            Some(o) => {
                let marks = (1..=o.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let args: Vec<Value> = o.iter().map(|s| Value::from(*s)).collect();
                conn.query_map(
                    &format!("SELECT {COLS} FROM grids WHERE owner IN ({marks}) ORDER BY name"),
                    args,
                    row,
                )
            }
        }
    }

    /// This service's grids (or those of none) in one of `states`: what start-up settles.
    pub fn grids_in(&self, states: &[&str]) -> Result<Vec<GridRow>> {
        let mut args: Vec<Value> = states.iter().map(|s| Value::from(*s)).collect();
        let marks = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (ours, origin) = self.ours("origin", states.len() + 1);
        args.extend(origin);
        self.conn().query_map(
            &format!("SELECT {COLS} FROM grids WHERE state IN ({marks}) AND {ours} ORDER BY name"),
            args,
            row,
        )
    }

    /// This service's grids whose expiry is at or before `at`.
    pub fn expired_grids(&self, at: &str) -> Result<Vec<GridRow>> {
        let (ours, origin) = self.ours("origin", 2);
        let mut args = vec![Value::from(at)];
        args.extend(origin);
        self.conn().query_map(
            &format!(
                "SELECT {COLS} FROM grids WHERE expires IS NOT NULL AND expires <= ?1 AND {ours}
                 ORDER BY expires"
            ),
            args,
            row,
        )
    }

    /// Move grid `name` from `from` to `to` (with `error`, or none). False, changing
    /// nothing, when it is not in `from`: someone else acted first.
    pub fn set_grid_state(
        &self,
        actor: &str,
        name: &str,
        from: &str,
        to: &str,
        error: Option<&str>,
    ) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE grids SET state = ?3, error = ?4, updated = ?5 WHERE name = ?1 AND state = ?2",
                params![name, from, to, error, now()],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    actor,
                    &format!("grid.{to}"),
                    name,
                    &serde_json::json!({ "from": from, "error": error }),
                )?;
            }
            Ok(n == 1)
        })
    }

    /// A new expiry for the grid (its members' are the caller's to change alike).
    pub fn set_grid_expiry(&self, actor: &str, name: &str, expires: &str) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE grids SET expires = ?2, updated = ?3 WHERE name = ?1",
                params![name, expires, now()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "grid",
                    id: name.to_string(),
                });
            }
            append_event(
                tx,
                actor,
                "grid.extend",
                name,
                &serde_json::json!({ "expires": expires }),
            )
        })
    }

    /// Record that instance `id` is member `index` of `role` in `grid`. Written right after
    /// the instance's own record, so a teardown finds every instance the grid made.
    pub fn add_grid_member(&self, grid: &str, role: &str, index: i64, id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO grid_members(grid, role, idx, instance_id) VALUES (?1, ?2, ?3, ?4)",
            params![grid, role, index, id],
        )?;
        Ok(())
    }

    /// The grid's members by role and index.
    pub fn grid_members(&self, grid: &str) -> Result<Vec<GridMemberRow>> {
        self.conn().query_map(
            "SELECT grid, role, idx, instance_id FROM grid_members WHERE grid = ?1
             ORDER BY role, idx",
            [grid],
            member,
        )
    }

    /// The grid instance `id` is a member of, if any.
    pub fn grid_of_instance(&self, id: &str) -> Result<Option<String>> {
        optional(self.conn().query_row(
            "SELECT grid FROM grid_members WHERE instance_id = ?1",
            [id],
            |r| r.get(0),
        ))
    }

    pub fn remove_grid_member(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM grid_members WHERE instance_id = ?1", [id])?;
        Ok(())
    }

    /// Forget grid `name` and its member rows (its instances are the caller's to have
    /// destroyed first).
    pub fn delete_grid(&self, actor: &str, name: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute("DELETE FROM grid_members WHERE grid = ?1", [name])?;
            let n = tx.execute("DELETE FROM grids WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "grid",
                    id: name.to_string(),
                });
            }
            append_event(tx, actor, "grid.delete", name, &serde_json::json!({}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    fn grid(name: &str, owner: &str, expires: Option<&str>) -> GridRow {
        GridRow {
            name: name.into(),
            owner: owner.into(),
            state: "creating".into(),
            network: Some("lab".into()),
            expires: expires.map(str::to_string),
            file: "[grid]\n".into(),
            created: now(),
            updated: now(),
            error: None,
        }
    }

    #[test]
    fn grids_are_recorded_listed_by_owner_and_removed_with_their_members() {
        for db in TestDb::all() {
            let s = db.open();
            s.insert_grid(&grid("g1", "alice", None)).unwrap();
            s.insert_grid(&grid("g2", "bob", None)).unwrap();
            assert!(matches!(
                s.insert_grid(&grid("g1", "bob", None)),
                Err(StoreError::Conflict { kind: "grid", .. })
            ));
            let names = |o: Option<&[&str]>| -> Vec<String> {
                s.grids(o).unwrap().into_iter().map(|g| g.name).collect()
            };
            assert_eq!(names(None), ["g1", "g2"]);
            assert_eq!(names(Some(&["alice", "alice-legacy"])), ["g1"]);
            assert!(names(Some(&["carol"])).is_empty());
            s.add_grid_member("g1", "wn", 2, "bbbbbbbbbbbb").unwrap();
            s.add_grid_member("g1", "ce", 1, "aaaaaaaaaaaa").unwrap();
            s.add_grid_member("g1", "wn", 1, "cccccccccccc").unwrap();
            // One instance is one member of one grid.
            assert!(s.add_grid_member("g2", "x", 1, "aaaaaaaaaaaa").is_err());
            let m = s.grid_members("g1").unwrap();
            let order: Vec<(&str, i64)> = m.iter().map(|m| (m.role.as_str(), m.index)).collect();
            assert_eq!(order, [("ce", 1), ("wn", 1), ("wn", 2)]);
            assert_eq!(
                s.grid_of_instance("bbbbbbbbbbbb").unwrap().as_deref(),
                Some("g1")
            );
            s.remove_grid_member("bbbbbbbbbbbb").unwrap();
            assert_eq!(s.grid_members("g1").unwrap().len(), 2);
            s.delete_grid("alice", "g1").unwrap();
            assert!(s.grid("g1").unwrap().is_none());
            assert!(s.grid_of_instance("aaaaaaaaaaaa").unwrap().is_none());
            assert!(matches!(
                s.delete_grid("alice", "g1"),
                Err(StoreError::NotFound { .. })
            ));
            let kinds: Vec<String> = s.events(20).unwrap().into_iter().map(|e| e.kind).collect();
            assert!(kinds.contains(&"grid.delete".to_string()), "{kinds:?}");
        }
    }

    #[test]
    fn state_changes_are_compare_and_set() {
        for db in TestDb::all() {
            let s = db.open();
            s.insert_grid(&grid("g", "alice", None)).unwrap();
            assert!(s
                .set_grid_state("alice", "g", "creating", "up", None)
                .unwrap());
            // Whoever expected `creating` lost.
            assert!(!s
                .set_grid_state("alice", "g", "creating", "failed", Some("x"))
                .unwrap());
            assert!(s
                .set_grid_state("alice", "g", "up", "deleting", None)
                .unwrap());
            assert_eq!(s.grids_in(&["creating", "deleting"]).unwrap().len(), 1);
            assert!(s.grids_in(&["up"]).unwrap().is_empty());
            assert!(s
                .set_grid_state("alice", "g", "deleting", "failed", Some("member x: busy"))
                .unwrap());
            let g = s.grid("g").unwrap().unwrap();
            assert_eq!(
                (g.state.as_str(), g.error.as_deref()),
                ("failed", Some("member x: busy"))
            );
        }
    }

    #[test]
    fn expired_grids_are_found_and_extended() {
        for db in TestDb::all() {
            let s = db.open();
            s.insert_grid(&grid("old", "alice", Some("2000-01-01T00:00:00.000Z")))
                .unwrap();
            s.insert_grid(&grid("new", "alice", Some("2999-01-01T00:00:00.000Z")))
                .unwrap();
            s.insert_grid(&grid("never", "alice", None)).unwrap();
            let due: Vec<String> = s
                .expired_grids(&now())
                .unwrap()
                .into_iter()
                .map(|g| g.name)
                .collect();
            assert_eq!(due, ["old"]);
            s.set_grid_expiry("alice", "old", "2999-06-01T00:00:00.000Z")
                .unwrap();
            assert!(s.expired_grids(&now()).unwrap().is_empty());
            assert!(matches!(
                s.set_grid_expiry("alice", "nosuch", "2999-06-01T00:00:00.000Z"),
                Err(StoreError::NotFound { .. })
            ));
        }
    }
}
