//! The hostname pool: names (and optional addresses) from configuration, leased to
//! instances. The store's primary key on the leased name is what guarantees that no name is
//! ever held by two live instances; the choice of a free name happens in the same IMMEDIATE
//! transaction as the insert.

use vfarm_store::auth::Lease;
use vfarm_store::Store;

use crate::config::PoolEntry;
use crate::{AuthError, Result};

#[derive(Debug, Clone, Default)]
pub struct HostnamePool {
    entries: Vec<(String, Option<String>)>,
    /// Seconds a given-back name stays out of the pool.
    quarantine_secs: u64,
}

impl HostnamePool {
    pub fn new(entries: &[PoolEntry]) -> HostnamePool {
        HostnamePool {
            entries: entries
                .iter()
                .map(|e| (e.name.clone(), e.address.map(|a| a.to_string())))
                .collect(),
            quarantine_secs: 0,
        }
    }

    /// Keep given-back names out of the pool for `secs` (`hostname_quarantine`).
    pub fn with_quarantine(mut self, secs: u64) -> HostnamePool {
        self.quarantine_secs = secs;
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lease a name to `holder`: `requested` if given (it must be in the pool and free),
    /// otherwise the first free one in configuration order.
    pub fn allocate(
        &self,
        store: &Store,
        holder: &str,
        owner: &str,
        requested: Option<&str>,
    ) -> Result<Lease> {
        match requested {
            Some(r) => {
                let want = r.trim_end_matches('.').to_ascii_lowercase();
                let entry = self
                    .entries
                    .iter()
                    .find(|(n, _)| *n == want)
                    .ok_or_else(|| AuthError::HostnameNotInPool {
                        name: r.to_string(),
                    })?;
                let q = self.quarantine_secs;
                match store.lease_hostname(std::slice::from_ref(entry), holder, owner, q)? {
                    Some(l) => Ok(l),
                    None => match store.quarantined_hostnames(q)?.remove(&want) {
                        Some(until) if store.hostname_lease(&want)?.is_none() => {
                            Err(AuthError::HostnameQuarantined { name: want, until })
                        }
                        _ => Err(AuthError::HostnameTaken { name: want }),
                    },
                }
            }
            None => store
                .lease_hostname(&self.entries, holder, owner, self.quarantine_secs)?
                .ok_or(AuthError::PoolExhausted {
                    size: self.entries.len(),
                }),
        }
    }

    /// Return `holder`'s name to the pool; the name, or None when it held none.
    pub fn release(store: &Store, holder: &str) -> Result<Option<String>> {
        Ok(store.release_hostname(holder)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    fn pool(n: usize) -> HostnamePool {
        let entries: Vec<PoolEntry> = (0..n)
            .map(|i| PoolEntry {
                name: format!("node{i:03}.example.org"),
                address: Some(format!("192.0.2.{}", i % 250 + 1).parse().unwrap()),
            })
            .collect();
        HostnamePool::new(&entries)
    }

    #[test]
    fn requested_taken_unknown_and_release() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let p = pool(3);
            let a = p
                .allocate(&s, "i1", "alice", Some("NODE001.example.org"))
                .unwrap();
            assert_eq!(a.name, "node001.example.org");
            assert_eq!(a.address.as_deref(), Some("192.0.2.2"));
            let e = p
                .allocate(&s, "i2", "bob", Some("node001.example.org"))
                .unwrap_err();
            assert_eq!(
                (e.code().as_str(), e.field()),
                ("hostname_taken", Some("hostname"))
            );
            let e = p
                .allocate(&s, "i2", "bob", Some("elsewhere.org"))
                .unwrap_err();
            assert_eq!(e.code().as_str(), "hostname_not_in_pool");
            assert_eq!(
                p.allocate(&s, "i2", "bob", None).unwrap().name,
                "node000.example.org"
            );
            assert_eq!(
                p.allocate(&s, "i3", "bob", None).unwrap().name,
                "node002.example.org"
            );
            assert_eq!(
                p.allocate(&s, "i4", "bob", None)
                    .unwrap_err()
                    .code()
                    .as_str(),
                "pool_exhausted"
            );
            assert_eq!(
                HostnamePool::release(&s, "i1").unwrap().as_deref(),
                Some("node001.example.org")
            );
            assert_eq!(
                p.allocate(&s, "i4", "bob", None).unwrap().name,
                "node001.example.org"
            );
            assert_eq!(
                HostnamePool::new(&[])
                    .allocate(&s, "i9", "x", None)
                    .unwrap_err()
                    .code()
                    .as_str(),
                "pool_exhausted"
            );
        }
    }

    /// Issue 18: a given-back name stays out of the pool for the quarantine, asked for by
    /// name or not; without a quarantine it comes straight back.
    #[test]
    fn released_names_wait_out_the_quarantine() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let q = pool(2).with_quarantine(600);
            assert_eq!(
                q.allocate(&s, "i1", "a", None).unwrap().name,
                "node000.example.org"
            );
            HostnamePool::release(&s, "i1").unwrap();
            let e = q
                .allocate(&s, "i2", "a", Some("node000.example.org"))
                .unwrap_err();
            assert_eq!(e.code().as_str(), "hostname_taken", "{e}");
            assert!(e.to_string().contains("hostname_quarantine"), "{e}");
            // Unasked, the pool passes over it to the next free name, then runs dry.
            assert_eq!(
                q.allocate(&s, "i2", "a", None).unwrap().name,
                "node001.example.org"
            );
            assert_eq!(
                q.allocate(&s, "i3", "a", None).unwrap_err().code().as_str(),
                "pool_exhausted"
            );
            // Destroying the instance record gives its name back the same way.
            let none = pool(2);
            assert_eq!(
                none.allocate(&s, "i3", "a", Some("node000.example.org"))
                    .unwrap()
                    .name,
                "node000.example.org"
            );
        }
    }

    /// Issue 5, acceptance 2 for the pool: 200 concurrent allocations (threads, spread over
    /// separate store connections as separate processes would be) over 150 names: exactly
    /// 150 succeed, 50 are told the pool is exhausted, and no name is given twice. SQLite:
    /// one connection per thread; PostgreSQL: 20 (its default limit is 100 connections).
    #[test]
    fn two_hundred_concurrent_allocations_over_150_names() {
        for db in vfarm_store::testing::TestDb::all() {
            let conns = if db.backend() == "postgres" { 20 } else { 200 };
            let stores: Vec<Arc<Store>> = (0..conns).map(|_| Arc::new(db.open())).collect();
            let p = Arc::new(pool(150));
            let barrier = Arc::new(Barrier::new(200));
            let handles: Vec<_> = (0..200)
                .map(|i| {
                    let (s, p, barrier) = (stores[i % conns].clone(), p.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        p.allocate(&s, &format!("inst{i}"), &format!("owner{}", i % 7), None)
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let names: Vec<&str> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|l| l.name.as_str()))
                .collect();
            assert_eq!(names.len(), 150, "{}", db.backend());
            assert_eq!(
                names.iter().collect::<HashSet<_>>().len(),
                150,
                "duplicates on {}",
                db.backend()
            );
            let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(errors.len(), 50);
            for e in errors {
                assert_eq!(e.code().as_str(), "pool_exhausted", "{e}");
                assert!(e.to_string().contains("150"), "{e}");
            }
            let s = db.open();
            assert_eq!(s.hostname_leases().unwrap().len(), 150);
        }
    }
}
