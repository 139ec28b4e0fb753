//! Identity and access state (migration 5): bearer tokens (only a hash of the secret),
//! hostname leases, quota reservations and the audit log.
//!
//! The rules (what a token looks like, which name to pick, what a quota allows) live in
//! `vfarm-auth`; this module keeps the rows and makes each change one IMMEDIATE transaction.

use serde::Serialize;

use crate::{
    is_unique_violation, now, optional, params, Cursor, Db, Page, Result, Row, Store, StoreError,
    Value,
};

/// A token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub user: String,
    pub name: Option<String>,
    #[serde(skip)]
    pub secret_hash: String,
    pub created: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
    pub last_used: Option<String>,
}

/// A hostname held by an instance (or a reservation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub address: Option<String>,
    pub holder: String,
    pub owner: String,
    pub allocated: String,
}

/// Resources held (or asked for) by one instance. CPUs in thousandths, sizes in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

/// What an owner holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub instances: u64,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub method: String,
    pub action: String,
    pub object: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

// `user` is a reserved word in PostgreSQL: always quoted.
const TOKEN_COLS: &str = "id, \"user\", name, secret_hash, created, expires, revoked, last_used";

fn token_row(r: &Row<'_>) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        user: r.get(1)?,
        name: r.get(2)?,
        secret_hash: r.get(3)?,
        created: r.get(4)?,
        expires: r.get(5)?,
        revoked: r.get(6)?,
        last_used: r.get(7)?,
    })
}

fn lease_row(r: &Row<'_>) -> Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        address: r.get(1)?,
        holder: r.get(2)?,
        owner: r.get(3)?,
        allocated: r.get(4)?,
    })
}

impl Store {
    /// Store a new token (the caller made the id and hashed the secret).
    pub fn insert_token(&self, t: &TokenRow) -> Result<()> {
        self.conn()
            .execute(
                &format!("INSERT INTO tokens({TOKEN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
                params![
                    t.id,
                    t.user,
                    t.name,
                    t.secret_hash,
                    t.created,
                    t.expires,
                    t.revoked,
                    t.last_used
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict {
                        kind: "token",
                        id: t.id.clone(),
                    }
                } else {
                    e
                }
            })?;
        Ok(())
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        let conn = self.conn();
        optional(conn.query_row(
            &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
            [id],
            token_row,
        ))
    }

    /// Tokens, oldest first; of one user when given.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE CAST(?1 AS TEXT) IS NULL OR \"user\" = ?1 ORDER BY created, id"
        ))?;
        let rows = st.query_map([user], token_row)?;
        rows.collect::<Result<_, _>>()
    }

    /// Mark a token revoked (idempotent: a second revoke keeps the first time).
    pub fn revoke_token(&self, id: &str) -> Result<TokenRow> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![id, now()],
            )?;
            optional(tx.query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
                [id],
                token_row,
            ))?
            .ok_or_else(|| StoreError::NotFound {
                kind: "token",
                id: id.to_string(),
            })
        })
    }

    /// Record a use; written at most once a minute per token so requests do not all write.
    pub fn touch_token(&self, id: &str) -> Result<()> {
        let at = chrono::Utc::now();
        let stale = (at - chrono::Duration::seconds(60))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.conn().execute(
            "UPDATE tokens SET last_used = ?2 WHERE id = ?1 AND (last_used IS NULL OR last_used < ?3)",
            params![id, at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), stale],
        )?;
        Ok(())
    }

    /// Lease the first of `candidates` (name, address) that no one holds, for `holder`, in one
    /// IMMEDIATE transaction. `None`: all of them are held.
    ///
    /// A name given back within the last `quarantine_secs` is not a candidate.
    pub fn lease_hostname(
        &self,
        candidates: &[(String, Option<String>)],
        holder: &str,
        owner: &str,
        quarantine_secs: u64,
    ) -> Result<Option<Lease>> {
        self.tx(|tx| {
            let mut held = held_names(tx)?;
            if quarantine_secs > 0 {
                held.extend(quarantined(tx, quarantine_secs)?.into_keys());
            }
            let Some((name, address)) = candidates.iter().find(|(n, _)| !held.contains(n)) else {
                return Ok(None);
            };
            let lease = Lease {
                name: name.clone(),
                address: address.clone(),
                holder: holder.to_string(),
                owner: owner.to_string(),
                allocated: now(),
            };
            // The primary key on `name` is the guarantee; the check above only picks a name.
            tx.execute(
                "INSERT INTO hostname_leases(name, address, holder, owner, allocated)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    lease.name,
                    lease.address,
                    lease.holder,
                    lease.owner,
                    lease.allocated
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict {
                        kind: "hostname lease holder",
                        id: holder.to_string(),
                    }
                } else {
                    e
                }
            })?;
            Ok(Some(lease))
        })
    }

    /// The lease on `name`, if any.
    pub fn hostname_lease(&self, name: &str) -> Result<Option<Lease>> {
        let conn = self.conn();
        optional(conn.query_row(
            "SELECT name, address, holder, owner, allocated FROM hostname_leases WHERE name = ?1",
            [name],
            lease_row,
        ))
    }

    /// Give back the name `holder` holds; returns it (None: it held none).
    pub fn release_hostname(&self, holder: &str) -> Result<Option<String>> {
        self.tx(|tx| {
            let name: Option<String> = optional(tx.query_row(
                "SELECT name FROM hostname_leases WHERE holder = ?1",
                [holder],
                |r| r.get(0),
            ))?;
            give_back_name(tx, holder)?;
            Ok(name)
        })
    }

    /// Names given back within the last `quarantine_secs`, with when each may be leased again.
    pub fn quarantined_hostnames(
        &self,
        quarantine_secs: u64,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        self.tx(|tx| quarantined(tx, quarantine_secs))
    }

    /// The leases these holders hold (one page of a list, not the whole table).
    pub fn hostname_leases_of(&self, holders: &[&str]) -> Result<Vec<Lease>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        self.conn().query_map(
            &format!(
                "SELECT name, address, holder, owner, allocated FROM hostname_leases WHERE holder IN ({})",
                crate::marks(holders.len())
            ),
            holders,
            lease_row,
        )
    }

    pub fn hostname_leases(&self) -> Result<Vec<Lease>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, address, holder, owner, allocated FROM hostname_leases ORDER BY name",
        )?;
        let rows = st.query_map(params![], lease_row)?;
        rows.collect::<Result<_, _>>()
    }

    /// What `owner` holds now.
    pub fn quota_usage(&self, owner: &str) -> Result<Usage> {
        usage(&self.conn(), owner)
    }

    /// Hold `req` for `holder` against `owner`'s quota: `check` sees the current usage and
    /// refuses or allows, and the reservation is written in the same IMMEDIATE transaction,
    /// so two concurrent reservations can never both fit into the last free share.
    pub fn reserve_quota<E: From<StoreError>>(
        &self,
        holder: &str,
        owner: &str,
        req: Resources,
        check: impl FnOnce(&Usage) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.tx(|tx| {
            let used = usage(tx, owner)?;
            check(&used)?;
            tx.execute(
                "INSERT INTO quota_reservations(holder, owner, cpus_milli, memory_mib, disk_mib, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    holder,
                    owner,
                    req.cpus_milli as i64,
                    req.memory_mib as i64,
                    req.disk_mib as i64,
                    now()
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict {
                        kind: "quota reservation",
                        id: holder.to_string(),
                    }
                } else {
                    e
                }
            })?;
            Ok(())
        })
    }

    /// Release what `holder` reserved; false when it held nothing.
    pub fn release_quota(&self, holder: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM quota_reservations WHERE holder = ?1", [holder])?
            > 0)
    }

    /// Append an audit record.
    pub fn audit(
        &self,
        actor: &str,
        method: &str,
        action: &str,
        object: &str,
        outcome: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        append_audit(&self.conn(), actor, method, action, object, outcome, detail)
    }

    /// The most recent audit records (of one actor when given), oldest first.
    pub fn audit_log(&self, actor: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let filter = AuditFilter {
            actor: actor.map(str::to_string),
            action: None,
        };
        Ok(self.audit_page(&filter, None, limit)?.items)
    }

    /// The `limit` most recent audit records `filter` selects that are older than the
    /// record `before` (a `seq`; `None`: from the newest), oldest first, as
    /// [`audit_log`](Self::audit_log) returns them. When older ones remain, `next` is this
    /// page's oldest `seq` (as the cursor's `id`): the next page goes further back, so
    /// records appended meanwhile never shift it.
    pub fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<AuditEntry>> {
        let mut args: Vec<Value> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        if let Some(a) = &filter.actor {
            args.push(a.as_str().into());
            conds.push(format!("actor = ?{}", args.len()));
        }
        if let Some(p) = &filter.action {
            // A prefix compared as text (LIKE would fold case in SQLite and not in PostgreSQL).
            args.push(p.as_str().into());
            let n = args.len();
            conds.push(format!(
                "substr(action, 1, length(CAST(?{n} AS TEXT))) = CAST(?{n} AS TEXT)"
            ));
        }
        if let Some(b) = before {
            args.push(Value::Integer(b));
            conds.push(format!("seq < ?{}", args.len()));
        }
        let cond = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        args.push(Value::Integer(
            limit.saturating_add(1).min(i64::MAX as usize) as i64,
        ));
        let sql = format!(
            "SELECT seq, at, actor, method, action, object, outcome, detail FROM audit {cond}
             ORDER BY seq DESC LIMIT ?{}",
            args.len()
        );
        let mut items = self.conn().query_map(&sql, args, |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                method: r.get(3)?,
                action: r.get(4)?,
                object: r.get(5)?,
                outcome: r.get(6)?,
                detail: serde_json::from_str(&r.get::<_, String>(7)?)
                    .unwrap_or(serde_json::Value::Null),
            })
        })?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more.then(|| items.last()).flatten().map(|e| Cursor {
            key: String::new(),
            id: e.seq.to_string(),
        });
        items.reverse();
        Ok(Page { items, next })
    }
}

/// Which audit records a list holds; every field set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Actions starting with this (`DELETE /api/v1/instances/` for every destroy).
    pub action: Option<String>,
}

/// Delete `holder`'s lease and note when its name came back (the quarantine's start).
pub(crate) fn give_back_name(tx: &Db<'_>, holder: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO hostname_released(name, released)
         SELECT name, ?2 FROM hostname_leases WHERE holder = ?1
         ON CONFLICT(name) DO UPDATE SET released = excluded.released",
        params![holder, now()],
    )?;
    tx.execute("DELETE FROM hostname_leases WHERE holder = ?1", [holder])?;
    Ok(())
}

/// Name → the time its quarantine ends, for names released less than `secs` ago.
fn quarantined(tx: &Db<'_>, secs: u64) -> Result<std::collections::BTreeMap<String, String>> {
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let span = chrono::Duration::seconds(secs.min(i64::MAX as u64 / 1000) as i64);
    let since = fmt(chrono::Utc::now() - span);
    let mut st = tx.prepare("SELECT name, released FROM hostname_released WHERE released > ?1")?;
    let rows = st.query_map([since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = std::collections::BTreeMap::new();
    for row in rows {
        let (name, released) = row?;
        let until = chrono::DateTime::parse_from_rfc3339(&released)
            .map(|t| fmt(t.with_timezone(&chrono::Utc) + span))
            .unwrap_or(released);
        out.insert(name, until);
    }
    Ok(out)
}

fn held_names(tx: &Db<'_>) -> Result<std::collections::HashSet<String>> {
    let mut st = tx.prepare("SELECT name FROM hostname_leases")?;
    let rows = st.query_map(params![], |r| r.get::<_, String>(0))?;
    rows.collect::<Result<_, _>>()
}

fn usage(conn: &Db<'_>, owner: &str) -> Result<Usage> {
    conn.query_row(
        // PostgreSQL sums BIGINTs as NUMERIC: cast back.
        "SELECT COUNT(*), CAST(COALESCE(SUM(cpus_milli), 0) AS BIGINT),
                CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT), CAST(COALESCE(SUM(disk_mib), 0) AS BIGINT)
         FROM quota_reservations WHERE owner = ?1",
        [owner],
        |r| {
            Ok(Usage {
                instances: r.get::<_, i64>(0)? as u64,
                cpus_milli: r.get::<_, i64>(1)? as u64,
                memory_mib: r.get::<_, i64>(2)? as u64,
                disk_mib: r.get::<_, i64>(3)? as u64,
            })
        },
    )
}

/// Append an audit record inside an existing transaction or connection.
pub fn append_audit(
    conn: &Db<'_>,
    actor: &str,
    method: &str,
    action: &str,
    object: &str,
    outcome: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    conn.execute(
        "INSERT INTO audit(at, actor, method, action, object, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            now(),
            actor,
            method,
            action,
            object,
            outcome,
            detail.to_string()
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, user: &str) -> TokenRow {
        TokenRow {
            id: id.into(),
            user: user.into(),
            name: None,
            secret_hash: "00".into(),
            created: now(),
            expires: None,
            revoked: None,
            last_used: None,
        }
    }

    #[test]
    fn tokens_insert_list_revoke() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.insert_token(&token("a1", "alice")).unwrap();
            s.insert_token(&token("b2", "bob")).unwrap();
            assert!(matches!(
                s.insert_token(&token("a1", "eve")),
                Err(StoreError::Conflict { .. })
            ));
            assert_eq!(s.tokens(None).unwrap().len(), 2);
            assert_eq!(s.tokens(Some("bob")).unwrap()[0].id, "b2");
            let r = s.revoke_token("a1").unwrap();
            let first = r.revoked.clone().unwrap();
            assert_eq!(s.revoke_token("a1").unwrap().revoked.unwrap(), first);
            assert!(matches!(
                s.revoke_token("zz"),
                Err(StoreError::NotFound { .. })
            ));
            s.touch_token("b2").unwrap();
            assert!(s.token("b2").unwrap().unwrap().last_used.is_some());
        }
    }

    #[test]
    fn leases_never_share_a_name() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let pool: Vec<(String, Option<String>)> =
                vec![("n1".into(), None), ("n2".into(), None)];
            let a = s.lease_hostname(&pool, "i1", "alice", 0).unwrap().unwrap();
            let b = s.lease_hostname(&pool, "i2", "alice", 0).unwrap().unwrap();
            assert_ne!(a.name, b.name);
            assert!(s.lease_hostname(&pool, "i3", "bob", 0).unwrap().is_none());
            // One name per holder.
            assert!(s.release_hostname("i1").unwrap().is_some());
            assert!(matches!(
                s.lease_hostname(&pool, "i2", "alice", 0),
                Err(StoreError::Conflict { .. })
            ));
            assert_eq!(
                s.lease_hostname(&pool, "i3", "bob", 0)
                    .unwrap()
                    .unwrap()
                    .name,
                a.name
            );
            assert_eq!(s.release_hostname("nobody").unwrap(), None);
        }
    }

    #[test]
    fn reservations_sum_per_owner() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let r = Resources {
                cpus_milli: 1000,
                memory_mib: 512,
                disk_mib: 1024,
            };
            s.reserve_quota::<StoreError>("i1", "alice", r, |_| Ok(()))
                .unwrap();
            s.reserve_quota::<StoreError>("i2", "alice", r, |_| Ok(()))
                .unwrap();
            let u = s.quota_usage("alice").unwrap();
            assert_eq!((u.instances, u.cpus_milli, u.memory_mib), (2, 2000, 1024));
            assert_eq!(s.quota_usage("bob").unwrap(), Usage::default());
            let refused = s.reserve_quota("i3", "alice", r, |u| {
                if u.instances >= 2 {
                    Err(StoreError::Conflict {
                        kind: "quota",
                        id: "alice".into(),
                    })
                } else {
                    Ok(())
                }
            });
            assert!(refused.is_err());
            assert_eq!(s.quota_usage("alice").unwrap().instances, 2);
            assert!(s.release_quota("i1").unwrap());
            assert!(!s.release_quota("i1").unwrap());
        }
    }

    #[test]
    fn audit_appends_in_order() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            s.audit(
                "alice",
                "token",
                "token.create",
                "t1",
                "ok",
                &serde_json::json!({}),
            )
            .unwrap();
            s.audit(
                "bob",
                "client-cert",
                "instance.create",
                "i1",
                "denied",
                &serde_json::json!({"code": "quota_exceeded"}),
            )
            .unwrap();
            let all = s.audit_log(None, 10).unwrap();
            assert_eq!(all.len(), 2);
            assert!(all[0].seq < all[1].seq);
            assert_eq!(s.audit_log(Some("bob"), 10).unwrap()[0].outcome, "denied");
        }
    }

    /// Pages go back in time from the newest; records appended between pages neither
    /// repeat nor shift them. Filters: actor, and an action prefix (case-sensitive on both
    /// backends).
    #[test]
    fn audit_pages_and_filters() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let add = |actor: &str, action: &str, object: &str| {
                s.audit(actor, "token", action, object, "ok", &serde_json::json!({}))
                    .unwrap();
            };
            for n in 0..10 {
                let action = if n % 2 == 0 {
                    "instance.create"
                } else {
                    "token.create"
                };
                add(
                    if n < 6 { "alice" } else { "bob" },
                    action,
                    &format!("o{n}"),
                );
            }
            add("alice", "Instance.create", "upper");
            let all = AuditFilter::default();
            let objects = |p: &Page<AuditEntry>| -> Vec<String> {
                p.items.iter().map(|e| e.object.clone()).collect()
            };
            let p1 = s.audit_page(&all, None, 4).unwrap();
            assert_eq!(objects(&p1), ["o7", "o8", "o9", "upper"]);
            add("carol", "instance.create", "new");
            let before = |p: &Page<AuditEntry>| {
                let c = crate::Cursor::decode(&p.next.as_ref().unwrap().encode()).unwrap();
                c.id.parse::<i64>().unwrap()
            };
            let p2 = s.audit_page(&all, Some(before(&p1)), 4).unwrap();
            let p3 = s.audit_page(&all, Some(before(&p2)), 4).unwrap();
            assert_eq!(p3.next, None);
            let mut seen: Vec<String> = [objects(&p3), objects(&p2), objects(&p1)].concat();
            let want: Vec<String> = (0..10)
                .map(|n| format!("o{n}"))
                .chain(["upper".to_string()])
                .collect();
            assert_eq!(seen, want);
            seen.dedup();
            assert_eq!(seen.len(), 11);
            let f = AuditFilter {
                actor: Some("alice".into()),
                action: Some("instance.".into()),
            };
            assert_eq!(
                objects(&s.audit_page(&f, None, 100).unwrap()),
                ["o0", "o2", "o4"]
            );
            let f = AuditFilter {
                action: Some("token".into()),
                ..Default::default()
            };
            let p = s.audit_page(&f, None, 2).unwrap();
            assert_eq!(objects(&p), ["o7", "o9"]);
            assert_eq!(
                objects(&s.audit_page(&f, Some(before(&p)), 10).unwrap()),
                ["o1", "o3", "o5"]
            );
        }
    }
}
