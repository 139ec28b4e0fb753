//! The host inventory of several hosts: nodes, their heartbeats and capacity, and which
//! instance runs on which node.
//!
//! A host is `pending` from `vfarm host add` (a one-time join token, stored as its hash) until
//! a node joins with that token; then `up` while it reports, and `down` once its heartbeat
//! is older than the cut-off. Going down turns its instances `lost` in the same transaction;
//! its next heartbeat takes over the node's own states again (re-adoption). Every change is
//! a compare-and-set in one transaction, so several control processes sharing one database
//! can all run the same checks without a leader.

use std::collections::HashMap;

use serde::Serialize;

use crate::{append_event, now, optional, params, Db, Result, Row, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub name: String,
    /// pending | up | down
    pub state: String,
    pub drained: bool,
    pub dn: Option<String>,
    pub cert_serial: Option<String>,
    pub url: Option<String>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    /// Drivers and capabilities: `oci`, `qemu`, `qemu:kvm`, `qemu:snapshots`, …
    pub features: Vec<String>,
    /// Instances it last reported running.
    pub running: i64,
    pub created: String,
    pub joined: Option<String>,
    pub last_heartbeat: Option<String>,
    /// Instances placed there (any state).
    pub instances: i64,
    pub used_cpus_milli: i64,
    pub used_memory_mib: i64,
    pub lost: i64,
    /// When the join token stops working (pending hosts).
    pub token_expires: Option<String>,
    /// The node's own report of what it can run (`vfarm doctor`), from its last heartbeat.
    pub checks: Option<serde_json::Value>,
    /// The QEMU accelerator the node measured (`kvm`, `tcg`), from `checks`.
    pub accelerator: Option<String>,
}

const COLS: &str = "h.name, h.state, h.drained, h.dn, h.cert_serial, h.url, h.cpus, h.memory_mib,
    h.disk_mib, h.features, h.running, h.created, h.joined, h.last_heartbeat,
    (SELECT COUNT(*) FROM instance_hosts p WHERE p.host = h.name),
    (SELECT CAST(COALESCE(SUM(p.cpus_milli), 0) AS BIGINT) FROM instance_hosts p WHERE p.host = h.name),
    (SELECT CAST(COALESCE(SUM(p.memory_mib), 0) AS BIGINT) FROM instance_hosts p WHERE p.host = h.name),
    (SELECT COUNT(*) FROM instance_hosts p JOIN instances i ON i.id = p.instance_id
       WHERE p.host = h.name AND i.state = 'lost'),
    h.token_expires, h.checks";

fn row(r: &Row<'_>) -> Result<HostRow> {
    let features: String = r.get(9)?;
    let checks: Option<serde_json::Value> = r
        .get::<_, Option<String>>(19)?
        .and_then(|c| serde_json::from_str(&c).ok());
    let accelerator = checks
        .as_ref()
        .and_then(|c| c.get("accelerator"))
        .and_then(|a| a.as_str())
        .map(str::to_string);
    Ok(HostRow {
        name: r.get(0)?,
        state: r.get(1)?,
        drained: r.get::<_, i64>(2)? != 0,
        dn: r.get(3)?,
        cert_serial: r.get(4)?,
        url: r.get(5)?,
        cpus: r.get(6)?,
        memory_mib: r.get(7)?,
        disk_mib: r.get(8)?,
        features: serde_json::from_str(&features).unwrap_or_default(),
        running: r.get(10)?,
        created: r.get(11)?,
        joined: r.get(12)?,
        last_heartbeat: r.get(13)?,
        instances: r.get(14)?,
        used_cpus_milli: r.get(15)?,
        used_memory_mib: r.get(16)?,
        lost: r.get(17)?,
        token_expires: r.get(18)?,
        checks,
        accelerator,
    })
}

fn all(conn: &Db<'_>) -> Result<Vec<HostRow>> {
    let mut st = conn.prepare(&format!("SELECT {COLS} FROM hosts h ORDER BY h.name"))?;
    let rows = st.query_map(params![], row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// What a node reports every few seconds.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat<'a> {
    pub url: &'a str,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub features: &'a [String],
    /// Every instance the node has, with its state there.
    pub instances: &'a [(String, String)],
    /// The node's `vfarm doctor` report as JSON; `None` from nodes that do not send one.
    pub checks: Option<&'a str>,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeartbeatOutcome {
    /// The host's state before this heartbeat.
    pub was: String,
    /// `lost` instances the node still has: their state is the node's again.
    pub readopted: Vec<String>,
    /// Other instances whose state the node reported differently (id, from, to).
    pub changed: Vec<(String, String, String)>,
    /// Instances placed there that the node no longer has: now `lost`.
    pub missing: Vec<String>,
}

impl Store {
    /// A new host, `pending` until a node joins with the token whose hash is given. Issuing a
    /// token again for a host that has not joined yet replaces the old one; a joined host is
    /// a conflict (remove it first).
    pub fn add_host(
        &self,
        actor: &str,
        name: &str,
        token_sha256: &str,
        expires: &str,
    ) -> Result<()> {
        self.tx(|tx| {
            let state: Option<String> = optional(tx.query_row(
                "SELECT state FROM hosts WHERE name = ?1",
                [name],
                |r| r.get(0),
            ))?;
            match state.as_deref() {
                None => {
                    tx.execute(
                        "INSERT INTO hosts(name, state, token_sha256, token_expires, created)
                         VALUES (?1, 'pending', ?2, ?3, ?4)",
                        params![name, token_sha256, expires, now()],
                    )?;
                }
                Some("pending") => {
                    tx.execute(
                        "UPDATE hosts SET token_sha256 = ?2, token_expires = ?3 WHERE name = ?1",
                        params![name, token_sha256, expires],
                    )?;
                }
                Some(_) => {
                    return Err(StoreError::Conflict {
                        kind: "host",
                        id: name.to_string(),
                    })
                }
            }
            append_event(
                tx,
                actor,
                "host.add",
                name,
                &serde_json::json!({ "expires": expires }),
            )?;
            Ok(())
        })
    }

    /// Use a join token: true (and the token is gone) if `name` is pending with this token
    /// and it has not expired at `at`. The host stays `down` until its first heartbeat.
    pub fn join_host(
        &self,
        name: &str,
        token_sha256: &str,
        at: &str,
        dn: &str,
        cert_serial: &str,
    ) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE hosts SET state = 'down', token_sha256 = NULL, token_expires = NULL,
                   dn = ?3, cert_serial = ?4, joined = ?5
                 WHERE name = ?1 AND state = 'pending' AND token_sha256 = ?2 AND token_expires > ?5",
                params![name, token_sha256, dn, cert_serial, at],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    dn,
                    "host.join",
                    name,
                    &serde_json::json!({ "serial": cert_serial }),
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Set the URL of host `name` (at join; the heartbeat never changes it).
    pub fn set_host_url(&self, name: &str, url: &str) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE hosts SET url = ?2 WHERE name = ?1",
                params![name, url],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "host",
                    id: name.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Record a heartbeat of the joined host `name` whose certificate subject is `dn`. `None`
    /// when no joined host has that name and subject (the caller refuses the node).
    pub fn host_heartbeat(
        &self,
        name: &str,
        dn: &str,
        hb: &Heartbeat<'_>,
    ) -> Result<Option<HeartbeatOutcome>> {
        self.tx(|tx| {
            let was: Option<String> = optional(tx.query_row(
                "SELECT state FROM hosts WHERE name = ?1 AND dn = ?2 AND state <> 'pending'",
                [name, dn],
                |r| r.get(0),
            ))?;
            let Some(was) = was else {
                return Ok(None);
            };
            let t = now();
            let running = hb.instances.iter().filter(|(_, s)| s == "running").count() as i64;
            tx.execute(
                "UPDATE hosts SET state = 'up', url = ?2, cpus = ?3, memory_mib = ?4, disk_mib = ?5,
                   features = ?6, running = ?7, last_heartbeat = ?8, checks = ?9 WHERE name = ?1",
                params![
                    name,
                    hb.url,
                    hb.cpus,
                    hb.memory_mib,
                    hb.disk_mib,
                    serde_json::to_string(hb.features).unwrap_or_else(|_| "[]".into()),
                    running,
                    t,
                    hb.checks
                ],
            )?;
            if was != "up" {
                append_event(tx, dn, "host.up", name, &serde_json::json!({ "was": was }))?;
            }
            let reported: HashMap<&str, &str> = hb
                .instances
                .iter()
                .map(|(i, s)| (i.as_str(), s.as_str()))
                .collect();
            let placed: Vec<(String, String)> = tx.query_map(
                "SELECT i.id, i.state FROM instance_hosts p JOIN instances i ON i.id = p.instance_id
                     WHERE p.host = ?1 ORDER BY i.id",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut out = HeartbeatOutcome {
                was,
                ..Default::default()
            };
            for (id, state) in placed {
                let to = match (reported.get(id.as_str()), state.as_str()) {
                    // Being created or moved: the control's own call settles it.
                    (_, "creating") => continue,
                    (Some(s), st) if *s == st => continue,
                    (Some(s), "lost") => {
                        out.readopted.push(id.clone());
                        s.to_string()
                    }
                    // The node's record is in the middle of its own create.
                    (Some(&"creating"), _) => continue,
                    (Some(s), _) => {
                        out.changed.push((id.clone(), state.clone(), s.to_string()));
                        s.to_string()
                    }
                    (None, "lost") => continue,
                    (None, _) => {
                        out.missing.push(id.clone());
                        "lost".to_string()
                    }
                };
                let error = (to == "lost").then_some("its host no longer has it");
                tx.execute(
                    "UPDATE instances SET state = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                    params![id, to, error, t],
                )?;
                let kind = if state == "lost" && to != "lost" {
                    "instance.readopted".to_string()
                } else {
                    format!("instance.{to}")
                };
                append_event(
                    tx,
                    dn,
                    &kind,
                    &id,
                    &serde_json::json!({ "from": state, "host": name }),
                )?;
            }
            Ok(Some(out))
        })
    }

    pub fn hosts(&self) -> Result<Vec<HostRow>> {
        all(&self.conn())
    }

    pub fn host(&self, name: &str) -> Result<Option<HostRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {COLS} FROM hosts h WHERE h.name = ?1"),
            [name],
            row,
        ))
    }

    /// The join token hash and its expiry of the pending host `name` (None: no such host, or
    /// it is not pending). The join endpoint compares the hash itself, in constant time.
    pub fn pending_join_token(&self, name: &str) -> Result<Option<(String, String)>> {
        let conn = self.conn();
        optional(conn.query_row(
            "SELECT token_sha256, token_expires FROM hosts
              WHERE name = ?1 AND state = 'pending'
                AND token_sha256 IS NOT NULL AND token_expires IS NOT NULL",
            [name],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        ))
    }

    /// Whether any host was ever added: the control then places instances on nodes.
    pub fn has_hosts(&self) -> Result<bool> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM hosts", params![], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// Drain (no new instances) or undrain a host. False when there is no such host.
    pub fn set_host_drained(&self, actor: &str, name: &str, drained: bool) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE hosts SET drained = ?2 WHERE name = ?1",
                params![name, drained as i64],
            )?;
            if n == 1 {
                let kind = if drained {
                    "host.drain"
                } else {
                    "host.undrain"
                };
                append_event(tx, actor, kind, name, &serde_json::json!({}))?;
            }
            Ok(n == 1)
        })
    }

    /// Remove a host that has no instances (its certificate is the caller's to revoke).
    pub fn remove_host(&self, actor: &str, name: &str) -> Result<HostRow> {
        self.tx(|tx| {
            let host = optional(tx.query_row(
                &format!("SELECT {COLS} FROM hosts h WHERE h.name = ?1"),
                [name],
                row,
            ))?
            .ok_or_else(|| StoreError::NotFound {
                kind: "host",
                id: name.to_string(),
            })?;
            if host.instances > 0 {
                return Err(StoreError::Conflict {
                    kind: "host with instances",
                    id: format!("{name} ({} instance(s))", host.instances),
                });
            }
            tx.execute("DELETE FROM hosts WHERE name = ?1", [name])?;
            append_event(
                tx,
                actor,
                "host.remove",
                name,
                &serde_json::json!({ "serial": host.cert_serial }),
            )?;
            Ok(host)
        })
    }

    /// Hosts `up` whose last heartbeat is older than `cutoff` go `down`, and their instances
    /// `lost`, in one transaction. Returns each host marked down with its lost instances.
    pub fn mark_hosts_down(&self, actor: &str, cutoff: &str) -> Result<Vec<(String, Vec<String>)>> {
        self.tx(|tx| {
            let stale: Vec<String> = tx.query_map(
                "SELECT name FROM hosts WHERE state = 'up' AND last_heartbeat < ?1 ORDER BY name",
                [cutoff],
                |r| r.get(0),
            )?;
            let t = now();
            let mut out = Vec::new();
            for name in stale {
                tx.execute("UPDATE hosts SET state = 'down' WHERE name = ?1", [&name])?;
                append_event(
                    tx,
                    actor,
                    "host.down",
                    &name,
                    &serde_json::json!({ "cutoff": cutoff }),
                )?;
                let ids: Vec<(String, String)> = tx.query_map(
                    "SELECT i.id, i.state FROM instance_hosts p JOIN instances i ON i.id = p.instance_id
                         WHERE p.host = ?1 AND i.state <> 'lost' ORDER BY i.id",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                for (id, from) in &ids {
                    tx.execute(
                        "UPDATE instances SET state = 'lost', error = ?2, updated = ?3 WHERE id = ?1",
                        params![id, format!("host {name} stopped answering"), t],
                    )?;
                    append_event(
                        tx,
                        actor,
                        "instance.lost",
                        id,
                        &serde_json::json!({ "from": from, "host": name }),
                    )?;
                }
                out.push((name, ids.into_iter().map(|(i, _)| i).collect()));
            }
            Ok(out)
        })
    }

    /// Place instance `id` (already recorded) on the host `choose` picks (with its reason)
    /// from every host as it stands inside this transaction; the share is promised before
    /// anyone else looks, and an `instance.place` event by `actor` records where and why.
    pub fn place_instance<E: From<StoreError>>(
        &self,
        actor: &str,
        id: &str,
        cpus_milli: u64,
        memory_mib: u64,
        choose: impl FnOnce(&[HostRow]) -> std::result::Result<(String, String), E>,
    ) -> std::result::Result<String, E> {
        self.tx(|tx| {
            let hosts = all(tx)?;
            let (host, reason) = choose(&hosts)?;
            tx.execute(
                "INSERT INTO instance_hosts(instance_id, host, cpus_milli, memory_mib) VALUES (?1, ?2, ?3, ?4)",
                params![id, host, cpus_milli as i64, memory_mib as i64],
            )?;
            append_event(
                tx,
                actor,
                "instance.place",
                id,
                &serde_json::json!({ "host": host, "reason": reason }),
            )?;
            Ok(host)
        })
    }

    /// Why instance `id` went to its host (the `instance.place` event's reason).
    pub fn placement_reason(&self, id: &str) -> Result<Option<String>> {
        let detail: Option<String> = optional(self.conn().query_row(
            "SELECT detail FROM events WHERE kind = 'instance.place' AND object = ?1
             ORDER BY seq DESC LIMIT 1",
            [id],
            |r| r.get(0),
        ))?;
        Ok(detail
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d["reason"].as_str().map(str::to_string)))
    }

    /// The host instance `id` was placed on; `None`: the control's own machine.
    pub fn instance_host(&self, id: &str) -> Result<Option<String>> {
        optional(self.conn().query_row(
            "SELECT host FROM instance_hosts WHERE instance_id = ?1",
            [id],
            |r| r.get(0),
        ))
    }

    /// The host instance `id` was placed on and the share promised there (CPUs in
    /// thousandths, memory in MiB).
    pub fn instance_placement(&self, id: &str) -> Result<Option<(String, i64, i64)>> {
        optional(self.conn().query_row(
            "SELECT host, cpus_milli, memory_mib FROM instance_hosts WHERE instance_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        ))
    }

    /// Every placed instance's host.
    pub fn instance_hosts(&self) -> Result<HashMap<String, String>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT instance_id, host FROM instance_hosts")?;
        let rows = st
            .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_>>()?;
        Ok(rows)
    }

    /// [`instance_hosts`](Self::instance_hosts) of these instances only.
    pub fn instance_hosts_of(&self, ids: &[&str]) -> Result<HashMap<String, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self.conn().query_map(
            &format!(
                "SELECT instance_id, host FROM instance_hosts WHERE instance_id IN ({})",
                crate::marks(ids.len())
            ),
            ids,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// After a migration: the instance runs on `to` now.
    pub fn move_instance_host(&self, actor: &str, id: &str, from: &str, to: &str) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE instance_hosts SET host = ?3 WHERE instance_id = ?1 AND host = ?2",
                params![id, from, to],
            )?;
            if n == 1 {
                append_event(
                    tx,
                    actor,
                    "instance.migrated",
                    id,
                    &serde_json::json!({ "from": from, "to": to }),
                )?;
            }
            Ok(n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::InstanceRow;

    fn inst(s: &Store, id: &str, state: &str) {
        s.insert_instance(&InstanceRow {
            id: id.into(),
            name: None,
            image_id: "img".into(),
            driver: "oci".into(),
            owner: "alice".into(),
            state: state.into(),
            exit_code: None,
            hostname: id.into(),
            spec: "{}".into(),
            created: now(),
            started: None,
            expires: None,
            updated: now(),
            error: None,
        })
        .unwrap();
    }

    fn joined(s: &Store, name: &str) {
        s.add_host("admin", name, "h", "2999-01-01T00:00:00.000Z")
            .unwrap();
        assert!(s
            .join_host(name, "h", &now(), &format!("CN={name}"), "01")
            .unwrap());
    }

    fn beat(s: &Store, name: &str, instances: &[(String, String)]) -> Option<HeartbeatOutcome> {
        let features = vec!["oci".to_string()];
        s.host_heartbeat(
            name,
            &format!("CN={name}"),
            &Heartbeat {
                url: "https://10.0.0.1:8751",
                cpus: 2,
                memory_mib: 1024,
                disk_mib: 10_000,
                features: &features,
                instances,
                checks: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_heartbeat_with_checks_records_the_accelerator_and_one_without_clears_it() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            joined(&s, "n1");
            let hb = |checks| Heartbeat {
                url: "https://10.0.0.1:8751",
                checks,
                ..Default::default()
            };
            let report = r#"{"checks":[],"accelerator":"kvm","core_ok":true,"elapsed_ms":1}"#;
            s.host_heartbeat("n1", "CN=n1", &hb(Some(report)))
                .unwrap()
                .unwrap();
            let h = s.host("n1").unwrap().unwrap();
            assert_eq!(h.accelerator.as_deref(), Some("kvm"));
            assert_eq!(h.checks.unwrap()["core_ok"], true);
            // A node older than the report: accepted, and nothing stale is kept.
            s.host_heartbeat("n1", "CN=n1", &hb(None)).unwrap().unwrap();
            let h = s.host("n1").unwrap().unwrap();
            assert_eq!(
                (h.state.as_str(), h.accelerator, h.checks),
                ("up", None, None)
            );
        }
    }

    #[test]
    fn tokens_are_one_time_and_expire() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.add_host("admin", "n1", "h1", "2999-01-01T00:00:00.000Z")
                .unwrap();
            assert!(!s.join_host("n1", "wrong", &now(), "CN=n1", "01").unwrap());
            assert!(s.join_host("n1", "h1", &now(), "CN=n1", "01").unwrap());
            assert!(!s.join_host("n1", "h1", &now(), "CN=n1", "02").unwrap());
            assert_eq!(s.host("n1").unwrap().unwrap().state, "down");
            // A joined host cannot get a new token.
            assert!(matches!(
                s.add_host("admin", "n1", "h2", "2999-01-01T00:00:00.000Z"),
                Err(StoreError::Conflict { .. })
            ));
            s.add_host("admin", "n2", "h2", "2000-01-01T00:00:00.000Z")
                .unwrap();
            assert!(!s.join_host("n2", "h2", &now(), "CN=n2", "03").unwrap());
        }
    }

    #[test]
    fn heartbeats_need_the_joined_subject() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            joined(&s, "n1");
            assert!(beat(&s, "n1", &[]).is_some());
            let h = s.host("n1").unwrap().unwrap();
            assert_eq!((h.state.as_str(), h.cpus, h.features.len()), ("up", 2, 1));
            assert!(s
                .host_heartbeat("n1", "CN=other", &Heartbeat::default())
                .unwrap()
                .is_none());
            assert!(s
                .host_heartbeat("n9", "CN=n9", &Heartbeat::default())
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn down_hosts_lose_their_instances_and_get_them_back() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            joined(&s, "n1");
            joined(&s, "n2");
            for (id, host) in [("a", "n1"), ("b", "n1"), ("c", "n2")] {
                inst(&s, id, "running");
                let placed = s
                    .place_instance::<StoreError>("admin", id, 1000, 64, |_| {
                        Ok((host.to_string(), String::new()))
                    })
                    .unwrap();
                assert_eq!(placed, host);
            }
            let running = |ids: &[&str]| -> Vec<(String, String)> {
                ids.iter()
                    .map(|i| (i.to_string(), "running".to_string()))
                    .collect()
            };
            beat(&s, "n1", &running(&["a", "b"]));
            beat(&s, "n2", &running(&["c"]));
            let h = s.host("n1").unwrap().unwrap();
            assert_eq!((h.instances, h.used_cpus_milli, h.running), (2, 2000, 2));
            // Nobody is stale before now; everyone after.
            assert!(s
                .mark_hosts_down("monitor", "2000-01-01T00:00:00.000Z")
                .unwrap()
                .is_empty());
            std::thread::sleep(std::time::Duration::from_millis(5));
            let cut = now();
            beat(&s, "n2", &running(&["c"]));
            let down = s.mark_hosts_down("monitor", &cut).unwrap();
            assert_eq!(down, vec![("n1".to_string(), vec!["a".into(), "b".into()])]);
            assert_eq!(s.instance("a").unwrap().unwrap().state, "lost");
            assert_eq!(s.instance("c").unwrap().unwrap().state, "running");
            assert_eq!(s.host("n1").unwrap().unwrap().lost, 2);
            // Marked once only.
            assert!(s.mark_hosts_down("monitor", &cut).unwrap().is_empty());
            // Back: a still runs, b is gone from the node.
            let out = beat(&s, "n1", &running(&["a"])).unwrap();
            assert_eq!(out.was, "down");
            assert_eq!(out.readopted, vec!["a".to_string()]);
            assert!(out.missing.is_empty());
            assert_eq!(s.instance("a").unwrap().unwrap().state, "running");
            assert_eq!(s.instance("b").unwrap().unwrap().state, "lost");
            // A state change on the node is taken over; a missing instance becomes lost.
            let out = beat(&s, "n2", &[]).unwrap();
            assert_eq!(out.missing, vec!["c".to_string()]);
            assert_eq!(s.instance("c").unwrap().unwrap().state, "lost");
        }
    }

    #[test]
    fn removal_needs_an_empty_host_and_placement_sees_promises() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            joined(&s, "n1");
            inst(&s, "a", "running");
            s.place_instance::<StoreError>("admin", "a", 500, 128, |hosts| {
                assert_eq!(hosts.len(), 1);
                assert_eq!(hosts[0].used_cpus_milli, 0);
                Ok(("n1".into(), "the only host".into()))
            })
            .unwrap();
            assert_eq!(
                s.placement_reason("a").unwrap().as_deref(),
                Some("the only host")
            );
            s.place_instance::<StoreError>("admin", "zz", 500, 128, |hosts| {
                assert_eq!(hosts[0].used_cpus_milli, 500);
                Err(StoreError::Conflict {
                    kind: "capacity",
                    id: "n1".into(),
                })
            })
            .unwrap_err();
            assert!(matches!(
                s.remove_host("admin", "n1"),
                Err(StoreError::Conflict { .. })
            ));
            assert_eq!(s.instance_host("a").unwrap().as_deref(), Some("n1"));
            s.delete_instance("admin", "a").unwrap();
            assert_eq!(s.instance_host("a").unwrap(), None);
            assert_eq!(
                s.remove_host("admin", "n1").unwrap().cert_serial.as_deref(),
                Some("01")
            );
            assert!(s.hosts().unwrap().is_empty());
        }
    }
}
