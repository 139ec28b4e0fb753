//! Host id ranges for user-namespaced instances: each owner's instances map uid/gid 0–65535
//! to a range of 65,536 unprivileged host ids of that owner's own, so root in one tenant's
//! instance is neither root on the host nor the same host user as root in another tenant's.
//!
//! A range starts at `slot × 65536`. An owner's first choice of slot is a hash of the owner
//! key, so the same owner usually gets the same range on every host (a cold-migrated instance
//! keeps its file owners); the data dir's registry (`idmap.json`, under an exclusive lock)
//! makes the choice unique per data dir: a slot taken by another key moves to the next free one.

use std::collections::BTreeMap;
use std::path::Path;

use crate::record::{io_err, lock_file, write_atomic};
use crate::{DriverError, Result};

/// Ids in one range: the 16-bit ids every distribution's files use.
pub const IDS_PER_RANGE: u32 = 65_536;
/// Host ids below 16 × 65536 = 1,048,576 are left to the host's own users and subuid ranges.
const FIRST_SLOT: u32 = 16;
/// The last slot would reach (uid_t)-1, which means "no id" to the kernel.
const SLOTS: u32 = u32::MAX / IDS_PER_RANGE - FIRST_SLOT;

/// The first host id of `key`'s range in this data dir, allocated on first use.
pub fn base_for(data_dir: &Path, key: &str) -> Result<u32> {
    if key.is_empty() || key.contains('\0') {
        return Err(DriverError::InvalidSpec {
            field: "owner",
            reason: "an id range needs a non-empty owner without NUL".into(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io_err("idmap", key, data_dir.display(), e))?;
    let lock_path = data_dir.join("idmap.lock");
    let _lock = lock_file(&lock_path).map_err(|e| io_err("idmap", key, lock_path.display(), e))?;
    let path = data_dir.join("idmap.json");
    let mut map: BTreeMap<String, u32> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DriverError::Backend {
            op: "idmap",
            id: key.to_string(),
            detail: format!("{} is not valid: {e}", path.display()),
            retryable: false,
            source: None,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(io_err("idmap", key, path.display(), e)),
    };
    if let Some(slot) = map.get(key) {
        return Ok(slot * IDS_PER_RANGE);
    }
    let taken: std::collections::HashSet<u32> = map.values().copied().collect();
    let start = fnv1a(key.as_bytes()) % SLOTS;
    let slot = (0..SLOTS)
        .map(|i| FIRST_SLOT + (start + i) % SLOTS)
        .find(|s| !taken.contains(s))
        .ok_or_else(|| DriverError::HostNotReady {
            driver: "oci",
            reason: "every host id range is taken".into(),
        })?;
    map.insert(key.to_string(), slot);
    let text = serde_json::to_vec_pretty(&map).expect("a map of strings to numbers serialises");
    write_atomic(&path, &text).map_err(|e| io_err("idmap", key, path.display(), e))?;
    Ok(slot * IDS_PER_RANGE)
}

/// FNV-1a: a stable spread of owner keys over the slots (not a security boundary; the
/// registry is what keeps ranges apart).
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_stable_distinct_unprivileged_and_below_the_invalid_id() {
        let d = tempfile::tempdir().unwrap();
        let a = base_for(d.path(), "alice").unwrap();
        let b = base_for(d.path(), "bob").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            base_for(d.path(), "alice").unwrap(),
            a,
            "stable per data dir"
        );
        for base in [a, b] {
            assert!(base >= FIRST_SLOT * IDS_PER_RANGE);
            assert_eq!(base % IDS_PER_RANGE, 0);
            assert!(u64::from(base) + u64::from(IDS_PER_RANGE) <= u64::from(u32::MAX));
        }
        // Another data dir gives the same owner the same first choice.
        let d2 = tempfile::tempdir().unwrap();
        assert_eq!(base_for(d2.path(), "alice").unwrap(), a);
    }

    #[test]
    fn a_taken_slot_moves_to_the_next_free_one() {
        let d = tempfile::tempdir().unwrap();
        let want = FIRST_SLOT + fnv1a(b"carol") % SLOTS;
        let mut m = BTreeMap::new();
        m.insert("squatter".to_string(), want);
        std::fs::write(d.path().join("idmap.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let c = base_for(d.path(), "carol").unwrap();
        assert_ne!(c, want * IDS_PER_RANGE);
        assert!(matches!(
            base_for(d.path(), ""),
            Err(DriverError::InvalidSpec { field: "owner", .. })
        ));
    }
}
