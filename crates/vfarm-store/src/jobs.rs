//! Batch jobs and their events.
//!
//! Every state change is compare-and-set on `state` inside one IMMEDIATE transaction that
//! also appends a `job_events` row, so two dispatchers (or a dispatcher and a `cancel`)
//! cannot both win: a job is claimed once, gets one runner and ends once.

use serde::{Deserialize, Serialize};

use crate::{append_event, now, optional, params, Db, Result, Row, Store, StoreError, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: i64,
    pub name: Option<String>,
    pub owner: String,
    pub queue: String,
    pub priority: i32,
    pub state: String,
    pub reason: Option<String>,
    pub backend: String,
    pub driver: String,
    pub image_id: String,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub walltime_secs: u64,
    /// JSON `vfarm_jobs::JobSpec`.
    pub spec: String,
    pub submitted: String,
    pub claimed: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub runner_pid: Option<i64>,
    pub runner_start: Option<i64>,
    pub payload_pid: Option<i64>,
    pub payload_start: Option<i64>,
    pub instance_id: Option<String>,
    pub slurm_id: Option<i64>,
    pub updated: String,
}

const COLS: &str = "id, name, owner, queue, priority, state, reason, backend, driver, image_id, \
    cpus_milli, memory_mib, walltime_secs, spec, submitted, claimed, started, ended, exit_code, \
    error, cancel_requested, runner_pid, runner_start, payload_pid, payload_start, instance_id, \
    slurm_id, updated";

fn row(r: &Row<'_>) -> Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        queue: r.get(3)?,
        priority: r.get(4)?,
        state: r.get(5)?,
        reason: r.get(6)?,
        backend: r.get(7)?,
        driver: r.get(8)?,
        image_id: r.get(9)?,
        cpus_milli: r.get::<_, i64>(10)? as u64,
        memory_mib: r.get::<_, i64>(11)? as u64,
        walltime_secs: r.get::<_, i64>(12)? as u64,
        spec: r.get(13)?,
        submitted: r.get(14)?,
        claimed: r.get(15)?,
        started: r.get(16)?,
        ended: r.get(17)?,
        exit_code: r.get(18)?,
        error: r.get(19)?,
        cancel_requested: r.get::<_, i64>(20)? != 0,
        runner_pid: r.get(21)?,
        runner_start: r.get(22)?,
        payload_pid: r.get(23)?,
        payload_start: r.get(24)?,
        instance_id: r.get(25)?,
        slurm_id: r.get(26)?,
        updated: r.get(27)?,
    })
}

/// A job to insert (state `queued`).
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub name: Option<&'a str>,
    pub owner: &'a str,
    pub queue: &'a str,
    pub priority: i32,
    pub backend: &'a str,
    pub driver: &'a str,
    pub image_id: &'a str,
    pub cpus_milli: u64,
    pub memory_mib: u64,
    pub walltime_secs: u64,
    pub spec: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEventRow {
    pub seq: i64,
    pub job_id: i64,
    pub at: String,
    pub kind: String,
    /// JSON.
    pub detail: String,
}

/// How a job ended.
#[derive(Debug, Clone, Default)]
pub struct JobEnd<'a> {
    pub state: &'a str,
    pub reason: &'a str,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
    pub instance_id: Option<&'a str>,
}

/// The answer to a runner registering for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// This runner runs the job.
    Registered,
    /// A cancel arrived before the runner started anything.
    CancelRequested,
    /// Another runner holds it, or the job is no longer `starting`.
    Refused { state: String },
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: now cancelled.
    Cancelled,
    /// Claimed or running: the flag is set; the runner (pid given) must be signalled.
    Requested { runner: Option<(i64, Option<i64>)> },
    /// Already final, in this state.
    AlreadyFinal { state: String },
}

fn job_event(conn: &Db<'_>, id: i64, kind: &str, detail: &serde_json::Value) -> Result<()> {
    conn.execute(
        "INSERT INTO job_events(job_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, now(), kind, detail.to_string()],
    )?;
    Ok(())
}

fn get(conn: &Db<'_>, id: i64) -> Result<JobRow> {
    optional(conn.query_row(&format!("SELECT {COLS} FROM jobs WHERE id = ?1"), [id], row))?
        .ok_or_else(|| StoreError::NotFound {
            kind: "job",
            id: id.to_string(),
        })
}

impl Store {
    /// Record a submitted job; returns its id.
    pub fn insert_job(&self, j: &NewJob<'_>) -> Result<i64> {
        self.tx(|tx| {
            let t = now();
            let id: i64 = tx.query_row(
                "INSERT INTO jobs(name, owner, queue, priority, state, backend, driver, image_id,
                   cpus_milli, memory_mib, walltime_secs, spec, submitted, updated)
                 VALUES (?1,?2,?3,?4,'queued',?5,?6,?7,?8,?9,?10,?11,?12,?12) RETURNING id",
                params![
                    j.name,
                    j.owner,
                    j.queue,
                    j.priority,
                    j.backend,
                    j.driver,
                    j.image_id,
                    j.cpus_milli as i64,
                    j.memory_mib as i64,
                    j.walltime_secs as i64,
                    j.spec,
                    t
                ],
                |r| r.get(0),
            )?;
            let d =
                serde_json::json!({"queue": j.queue, "priority": j.priority, "image": j.image_id});
            job_event(tx, id, "submit", &d)?;
            append_event(tx, j.owner, "job.submit", &id.to_string(), &d)?;
            Ok(id)
        })
    }

    pub fn job(&self, id: i64) -> Result<JobRow> {
        get(&self.conn(), id)
    }

    /// Jobs in any of `states` (all jobs when empty), oldest first.
    /// How many jobs are in each state.
    pub fn job_state_counts(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = st.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()
    }

    pub fn jobs(&self, states: &[&str]) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {COLS} FROM jobs ORDER BY id"))?;
        let rows: Vec<JobRow> = st.query_map(params![], row)?.collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|r| states.is_empty() || states.contains(&r.state.as_str()))
            .collect())
    }

    /// Jobs in `states`, by index (the dispatcher's hot query).
    pub fn jobs_in(&self, states: &[&str]) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut out = Vec::new();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM jobs WHERE state = ?1 ORDER BY id"
        ))?;
        for s in states {
            out.extend(st.query_map([s], row)?.collect::<Result<Vec<_>, _>>()?);
        }
        Ok(out)
    }

    /// Jobs that ended at or after `since` (RFC 3339), for the fair-share history.
    pub fn jobs_ended_since(&self, since: &str) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM jobs WHERE ended IS NOT NULL AND ended >= ?1 ORDER BY id"
        ))?;
        let rows = st.query_map([since], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// queued → starting, in one transaction: true if this caller claimed it.
    pub fn claim_job(&self, id: i64, detail: &serde_json::Value) -> Result<bool> {
        self.tx(|tx| {
            let t = now();
            let n = tx.execute(
                "UPDATE jobs SET state = 'starting', claimed = ?2, updated = ?2, origin = ?3
                 WHERE id = ?1 AND state = 'queued'",
                params![id, t, self.origin()],
            )?;
            if n == 1 {
                job_event(tx, id, "claim", detail)?;
            }
            Ok(n == 1)
        })
    }

    /// Starting or running jobs that another service claimed: their runners are on its
    /// machine, so only its dispatcher can tell whether they are alive, and they use its
    /// capacity, not this one's. Empty when this store has no origin.
    pub fn jobs_claimed_elsewhere(&self) -> Result<std::collections::HashSet<i64>> {
        let Some(mine) = self.origin() else {
            return Ok(Default::default());
        };
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id FROM jobs WHERE state IN ('starting', 'running') AND origin IS NOT NULL AND origin <> ?1",
        )?;
        let ids = st.query_map([mine], |r| r.get(0))?;
        ids.collect::<Result<_, _>>()
    }

    /// A runner takes a claimed job. Only one runner ever registers for a job.
    pub fn register_runner(&self, id: i64, pid: i64, start: i64) -> Result<Registration> {
        self.tx(|tx| {
            let j = get(tx, id)?;
            if j.state != "starting" || j.runner_pid.is_some() {
                return Ok(Registration::Refused { state: j.state });
            }
            if j.cancel_requested {
                return Ok(Registration::CancelRequested);
            }
            tx.execute(
                "UPDATE jobs SET runner_pid = ?2, runner_start = ?3, updated = ?4 WHERE id = ?1",
                params![id, pid, start, now()],
            )?;
            job_event(tx, id, "runner", &serde_json::json!({"pid": pid}))?;
            Ok(Registration::Registered)
        })
    }

    /// The runner's payload process (`vfarm run`), so a lost runner's payload can be stopped.
    pub fn set_job_payload(&self, id: i64, pid: i64, start: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET payload_pid = ?2, payload_start = ?3, updated = ?4 WHERE id = ?1",
            params![id, pid, start, now()],
        )?;
        Ok(())
    }

    pub fn set_job_slurm_id(&self, id: i64, slurm_id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET slurm_id = ?2, updated = ?3 WHERE id = ?1",
            params![id, slurm_id, now()],
        )?;
        Ok(())
    }

    /// starting → running.
    pub fn mark_job_running(&self, id: i64) -> Result<bool> {
        self.tx(|tx| {
            let t = now();
            let n = tx.execute(
                "UPDATE jobs SET state = 'running', started = ?2, updated = ?2
                 WHERE id = ?1 AND state = 'starting'",
                params![id, t],
            )?;
            if n == 1 {
                job_event(tx, id, "start", &serde_json::json!({}))?;
            }
            Ok(n == 1)
        })
    }

    /// Record a job's end if it is still in one of `from`: exit status, reason, timings and
    /// an event, all at once. False if someone else ended it first.
    pub fn end_job(&self, id: i64, from: &[&str], end: &JobEnd<'_>) -> Result<bool> {
        self.tx(|tx| {
            let j = get(tx, id)?;
            if !from.contains(&j.state.as_str()) {
                return Ok(false);
            }
            let t = now();
            tx.execute(
                "UPDATE jobs SET state = ?2, reason = ?3, exit_code = ?4, error = ?5,
                   instance_id = COALESCE(?6, instance_id), ended = ?7, updated = ?7,
                   claimed = COALESCE(claimed, ?8)
                 WHERE id = ?1",
                params![
                    id,
                    end.state,
                    end.reason,
                    end.exit_code,
                    end.error,
                    end.instance_id,
                    t,
                    // A job cancelled while queued held no capacity: claimed = ended.
                    if j.state == "queued" { Some(&t) } else { None }
                ],
            )?;
            let d = serde_json::json!({"state": end.state, "reason": end.reason,
                "exit_code": end.exit_code, "error": end.error, "from": j.state});
            job_event(tx, id, "end", &d)?;
            append_event(tx, &j.owner, "job.end", &id.to_string(), &d)?;
            Ok(true)
        })
    }

    /// Cancel: a queued job is cancelled at once; a claimed or running one is flagged for its
    /// runner, whose pid is returned so the caller can signal it.
    pub fn request_cancel(&self, actor: &str, id: i64) -> Result<CancelOutcome> {
        self.tx(|tx| {
            let j = get(tx, id)?;
            match j.state.as_str() {
                "queued" => {
                    let t = now();
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', reason = 'cancelled', ended = ?2,
                           claimed = ?2, updated = ?2, cancel_requested = 1 WHERE id = ?1",
                        params![id, t],
                    )?;
                    let d = serde_json::json!({"state": "cancelled", "reason": "cancelled", "from": "queued", "by": actor});
                    job_event(tx, id, "end", &d)?;
                    append_event(tx, actor, "job.cancel", &id.to_string(), &d)?;
                    Ok(CancelOutcome::Cancelled)
                }
                "starting" | "running" => {
                    tx.execute(
                        "UPDATE jobs SET cancel_requested = 1, updated = ?2 WHERE id = ?1",
                        params![id, now()],
                    )?;
                    let d = serde_json::json!({"by": actor});
                    job_event(tx, id, "cancel-request", &d)?;
                    append_event(tx, actor, "job.cancel", &id.to_string(), &d)?;
                    Ok(CancelOutcome::Requested {
                        runner: j.runner_pid.map(|p| (p, j.runner_start)),
                    })
                }
                _ => Ok(CancelOutcome::AlreadyFinal { state: j.state }),
            }
        })
    }

    /// A job's events, oldest first.
    pub fn job_events(&self, id: i64) -> Result<Vec<JobEventRow>> {
        self.job_events_where("job_id", id.into())
    }

    /// Every job event of one kind, oldest first (e.g. all claims, to check the order).
    pub fn job_events_of_kind(&self, kind: &str) -> Result<Vec<JobEventRow>> {
        self.job_events_where("kind", kind.into())
    }

    /// Job events whose `column` (a fixed name, never user input) equals `value`.
    fn job_events_where(&self, column: &'static str, value: Value) -> Result<Vec<JobEventRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT seq, job_id, at, kind, detail FROM job_events WHERE {column} = ?1 ORDER BY seq"
        ))?;
        let rows = st
            .query_map([value], |r| {
                Ok(JobEventRow {
                    seq: r.get(0)?,
                    job_id: r.get(1)?,
                    at: r.get(2)?,
                    kind: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::testing::new_job as new;

    #[test]
    fn a_job_is_claimed_and_registered_once_and_ends_once() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let id = new(&s, "alice");
            assert_eq!(s.job(id).unwrap().state, "queued");
            assert!(s.claim_job(id, &serde_json::json!({})).unwrap());
            assert!(!s.claim_job(id, &serde_json::json!({})).unwrap());
            assert_eq!(
                s.register_runner(id, 10, 1).unwrap(),
                Registration::Registered
            );
            assert!(matches!(
                s.register_runner(id, 11, 1).unwrap(),
                Registration::Refused { .. }
            ));
            assert!(s.mark_job_running(id).unwrap());
            let end = JobEnd {
                state: "failed",
                reason: "exit",
                exit_code: Some(3),
                ..Default::default()
            };
            assert!(s.end_job(id, &["starting", "running"], &end).unwrap());
            assert!(!s.end_job(id, &["starting", "running"], &end).unwrap());
            let j = s.job(id).unwrap();
            assert_eq!((j.state.as_str(), j.exit_code), ("failed", Some(3)));
            assert!(j.claimed.is_some() && j.started.is_some() && j.ended.is_some());
            let kinds: Vec<_> = s
                .job_events(id)
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            assert_eq!(kinds, ["submit", "claim", "runner", "start", "end"]);
        }
    }

    #[test]
    fn cancel_in_each_state() {
        for db in crate::testing::TestDb::all() {
            let s = db.open();
            let q = new(&s, "a");
            assert_eq!(s.request_cancel("a", q).unwrap(), CancelOutcome::Cancelled);
            assert_eq!(s.job(q).unwrap().state, "cancelled");
            assert!(!s.claim_job(q, &serde_json::json!({})).unwrap());
            let c = new(&s, "a");
            s.claim_job(c, &serde_json::json!({})).unwrap();
            assert_eq!(
                s.request_cancel("a", c).unwrap(),
                CancelOutcome::Requested { runner: None }
            );
            // The runner comes up after the cancel: it must not run the job.
            assert_eq!(
                s.register_runner(c, 5, 6).unwrap(),
                Registration::CancelRequested
            );
            assert!(matches!(
                s.request_cancel("a", q).unwrap(),
                CancelOutcome::AlreadyFinal { .. }
            ));
            assert!(matches!(s.job(999), Err(StoreError::NotFound { .. })));
        }
    }

    /// Several stores (own connections, as separate processes would have) on one database
    /// race to claim the same jobs: each job is claimed exactly once.
    #[test]
    fn several_stores_on_one_database_claim_once() {
        for db in crate::testing::TestDb::all() {
            let stores: Vec<_> = (0..4).map(|_| std::sync::Arc::new(db.open())).collect();
            let ids: Vec<i64> = (0..20).map(|_| new(&stores[0], "o")).collect();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(stores.len()));
            let handles: Vec<_> = stores
                .iter()
                .map(|s| {
                    let (s, ids, barrier) = (s.clone(), ids.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        ids.iter()
                            .filter(|id| s.claim_job(**id, &serde_json::json!({})).unwrap())
                            .count()
                    })
                })
                .collect();
            let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(total, ids.len(), "{}", db.backend());
            let claims = stores[1].job_events_of_kind("claim").unwrap();
            assert_eq!(claims.len(), ids.len(), "{}", db.backend());
        }
    }
}
