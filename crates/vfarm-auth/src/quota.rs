//! Per-owner quotas: a pure check, and a reservation that checks and records in one
//! IMMEDIATE store transaction, so concurrent requests can never overshoot a limit together.

use vfarm_store::auth::{Resources, Usage};
use vfarm_store::Store;

use crate::config::{Quota, QuotaConfig};
use crate::{AuthError, Result};

fn milli(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{} CPUs", v / 1000)
    } else {
        format!("{:.3} CPUs", v as f64 / 1000.0)
    }
}

/// Whether `owner`, holding `used`, may add one instance with `req` under `quota`.
pub fn check(owner: &str, quota: &Quota, used: &Usage, req: &Resources) -> Result<()> {
    let over = |resource: &'static str, would: String, limit: String| {
        Err(AuthError::QuotaExceeded {
            owner: owner.to_string(),
            resource,
            would,
            limit,
        })
    };
    if let Some(l) = quota.instances {
        if used.instances + 1 > l {
            return over("instances", (used.instances + 1).to_string(), l.to_string());
        }
    }
    if let Some(l) = quota.cpus_milli {
        let w = used.cpus_milli + req.cpus_milli;
        if w > l {
            return over("cpus", milli(w), milli(l));
        }
    }
    if let Some(l) = quota.memory_mib {
        let w = used.memory_mib + req.memory_mib;
        if w > l {
            return over("memory", format!("{w} MiB"), format!("{l} MiB"));
        }
    }
    if let Some(l) = quota.disk_mib {
        let w = used.disk_mib + req.disk_mib;
        if w > l {
            return over("disk", format!("{w} MiB"), format!("{l} MiB"));
        }
    }
    Ok(())
}

/// Reserve `req` for `holder` (an instance id) if `owner` stays within quota.
pub fn reserve(
    store: &Store,
    quotas: &QuotaConfig,
    holder: &str,
    owner: &str,
    req: Resources,
) -> Result<()> {
    let quota = quotas.for_owner(owner);
    store.reserve_quota(holder, owner, req, |used| check(owner, &quota, used, &req))
}

/// Release `holder`'s reservation (false: it held none).
pub fn release(store: &Store, holder: &str) -> Result<bool> {
    Ok(store.release_quota(holder)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn r(cpus_milli: u64, memory_mib: u64) -> Resources {
        Resources {
            cpus_milli,
            memory_mib,
            disk_mib: 0,
        }
    }

    #[test]
    fn check_names_the_resource() {
        let q = Quota {
            instances: Some(2),
            cpus_milli: Some(2000),
            memory_mib: Some(1024),
            disk_mib: None,
        };
        let used = Usage {
            instances: 1,
            cpus_milli: 1000,
            memory_mib: 512,
            disk_mib: 99_999,
        };
        assert!(check("a", &q, &used, &r(1000, 512)).is_ok());
        let e = check("a", &q, &used, &r(1500, 0)).unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.field()),
            ("quota_exceeded", Some("cpus"))
        );
        assert!(e.to_string().contains("2.500 CPUs"), "{e}");
        assert_eq!(
            check("a", &q, &used, &r(0, 513)).unwrap_err().field(),
            Some("memory")
        );
        let full = Usage {
            instances: 2,
            ..used
        };
        assert_eq!(
            check("a", &q, &full, &r(0, 0)).unwrap_err().field(),
            Some("instances")
        );
        assert!(check("a", &Quota::default(), &full, &r(u64::MAX / 4, 0)).is_ok());
    }

    /// 40 threads on separate connections (SQLite: one each; PostgreSQL: 10, shared)
    /// reserve 1 CPU each against a 10-CPU quota: exactly 10 get through, the rest are told
    /// which limit they hit.
    #[test]
    fn concurrent_reservations_never_overshoot() {
        for db in vfarm_store::testing::TestDb::all() {
            let quotas = QuotaConfig {
                default: Quota {
                    cpus_milli: Some(10_000),
                    ..Quota::default()
                },
                ..QuotaConfig::default()
            };
            let conns = if db.backend() == "postgres" { 10 } else { 40 };
            let stores: Vec<Arc<Store>> = (0..conns).map(|_| Arc::new(db.open())).collect();
            let barrier = Arc::new(Barrier::new(40));
            let handles: Vec<_> = (0..40)
                .map(|i| {
                    let (s, quotas, barrier) =
                        (stores[i % conns].clone(), quotas.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        reserve(&s, &quotas, &format!("i{i}"), "alice", r(1000, 64))
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let ok = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(ok, 10, "{}", db.backend());
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                assert_eq!(e.code().as_str(), "quota_exceeded", "{e}");
            }
            let s = db.open();
            assert_eq!(s.quota_usage("alice").unwrap().cpus_milli, 10_000);
            let held = results.iter().position(|r| r.is_ok()).unwrap();
            assert!(release(&s, &format!("i{held}")).unwrap());
            assert_eq!(s.quota_usage("alice").unwrap().cpus_milli, 9_000);
            assert!(reserve(&s, &quotas, "again", "alice", r(1000, 64)).is_ok());
        }
    }
}
