//! Bearer tokens: `vft_<id>_<secret>`, the secret 256 random bits.
//!
//! The store keeps only SHA-256(secret). A fast hash is right here: slow password hashes
//! (bcrypt, argon2) exist to make guessing *low-entropy* passwords expensive, but a 256-bit
//! random secret cannot be guessed at any hashing speed, so they would only add tens of
//! milliseconds to every request. A stolen database still yields no usable token.
//! The comparison of hashes is constant-time (`openssl::memcmp::eq`).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use vfarm_store::auth::TokenRow;
use vfarm_store::Store;

use crate::{AuthError, Result};

pub const PREFIX: &str = "vft_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// A new token: `token` is shown once and never stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    pub token: String,
    #[serde(flatten)]
    pub row: TokenRow,
}

fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(hex::encode(buf))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Check a user name or label: non-empty, printable, bounded.
pub(crate) fn check_text(field: &'static str, v: &str, max: usize) -> Result<()> {
    if v.trim().is_empty() {
        return Err(AuthError::invalid(field, v, "must not be empty"));
    }
    if v.len() > max {
        return Err(AuthError::invalid(
            field,
            v,
            format!("longer than {max} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, v, "contains control characters"));
    }
    Ok(())
}

/// Create a token for `user`, valid for `expiry_secs` (None: until revoked).
pub fn create(
    store: &Store,
    user: &str,
    name: Option<&str>,
    expiry_secs: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Created> {
    check_text("user", user, 1024)?;
    if let Some(n) = name {
        check_text("name", n, 200)?;
    }
    let expires = match expiry_secs {
        Some(s) => Some(ts(now
            + chrono::Duration::seconds(i64::try_from(s).map_err(|_| {
                AuthError::invalid("expiry", &s.to_string(), "too long")
            })?))),
        None => None,
    };
    let secret = random_hex(SECRET_BYTES)?;
    // A clash of 48-bit ids is rare but possible: draw again rather than fail.
    for _ in 0..8 {
        let row = TokenRow {
            id: random_hex(ID_BYTES)?,
            user: user.to_string(),
            name: name.map(str::to_string),
            secret_hash: hash(&secret),
            created: ts(now),
            expires: expires.clone(),
            revoked: None,
            last_used: None,
        };
        match store.insert_token(&row) {
            Ok(()) => {
                return Ok(Created {
                    token: format!("{PREFIX}{}_{secret}", row.id),
                    row,
                })
            }
            Err(vfarm_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AuthError::invalid(
        "id",
        "",
        "could not draw a free token id",
    ))
}

/// Split `vft_<id>_<secret>`; None when it does not have that shape.
fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexlen = |s: &str, n: usize| s.len() == n * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexlen(id, ID_BYTES) && hexlen(secret, SECRET_BYTES)).then_some((id, secret))
}

/// The token's row when `presented` is a valid, unrevoked, unexpired token.
pub fn verify(store: &Store, presented: &str, now: DateTime<Utc>) -> Result<TokenRow> {
    let (id, secret) = parse(presented.trim()).ok_or(AuthError::InvalidToken)?;
    let row = store.token(id)?.ok_or(AuthError::InvalidToken)?;
    let want = row.secret_hash.as_bytes();
    let got = hash(secret);
    if want.len() != got.len() || !openssl::memcmp::eq(want, got.as_bytes()) {
        return Err(AuthError::InvalidToken);
    }
    // Only a holder of the secret learns that a token is revoked or expired.
    let row = usable(row, now)?;
    // `last_used` is written at most once a minute per token: a statement per request,
    // even one that changes no row, would take the database's write lock every time and
    // serialise all writers behind reads.
    let fresh = row
        .last_used
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| now - t.with_timezone(&Utc) < chrono::Duration::seconds(TOUCH_EVERY_SECS));
    if !fresh {
        store.touch_token(&row.id)?;
    }
    Ok(row)
}

/// The row when it is neither revoked nor expired.
fn usable(row: TokenRow, now: DateTime<Utc>) -> Result<TokenRow> {
    if let Some(at) = &row.revoked {
        return Err(AuthError::TokenRevoked {
            id: row.id,
            at: at.clone(),
        });
    }
    if let Some(exp) = &row.expires {
        let due = DateTime::parse_from_rfc3339(exp)
            .map(|t| t.with_timezone(&Utc) <= now)
            .unwrap_or(true);
        if due {
            return Err(AuthError::TokenExpired {
                id: row.id,
                at: exp.clone(),
            });
        }
    }
    Ok(row)
}

/// How often a token's `last_used` is written at most.
pub const TOUCH_EVERY_SECS: i64 = 60;

/// Prefix of a web session value (the UI's cookie).
pub const SESSION_PREFIX: &str = "vfs_";

/// The key web sessions are signed with: `<data>/session.key` (0600), made on first use.
pub fn session_key(data_dir: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("session.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuthError::io("read", &path, e)),
    }
    let mut key = vec![0u8; 32];
    openssl::rand::rand_bytes(&mut key)?;
    let tmp = data_dir.join(format!("session.key.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key))
        .map_err(|e| AuthError::io("write", &tmp, e))?;
    // Two services starting at once: the first link wins and both read it back.
    std::fs::hard_link(&tmp, &path).ok();
    let _ = std::fs::remove_file(&tmp);
    std::fs::read(&path).map_err(|e| AuthError::io("read", &path, e))
}

fn session_mac(key: &[u8], token_id: &str) -> Result<String> {
    let pkey = openssl::pkey::PKey::hmac(key)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)?;
    signer.update(b"vfarm-session:")?;
    signer.update(token_id.as_bytes())?;
    Ok(hex::encode(signer.sign_to_vec()?))
}

/// A web session for a verified token: `vfs_<token id>_<HMAC>`. It stands for the token
/// (and ends with it) without holding its secret, and is no bearer token.
pub fn session_value(key: &[u8], row: &TokenRow) -> Result<String> {
    Ok(format!(
        "{SESSION_PREFIX}{}_{}",
        row.id,
        session_mac(key, &row.id)?
    ))
}

/// The token behind a session value, when the value is genuine and the token still usable.
pub fn verify_session(
    store: &Store,
    key: &[u8],
    value: &str,
    now: DateTime<Utc>,
) -> Result<TokenRow> {
    let (id, mac) = value
        .strip_prefix(SESSION_PREFIX)
        .and_then(|r| r.split_once('_'))
        .ok_or(AuthError::InvalidToken)?;
    let want = session_mac(key, id)?;
    if want.len() != mac.len() || !openssl::memcmp::eq(want.as_bytes(), mac.as_bytes()) {
        return Err(AuthError::InvalidToken);
    }
    let row = store.token(id)?.ok_or(AuthError::InvalidToken)?;
    usable(row, now)
}

/// The id (the public part) of `given`: an id as is, or the id of a whole pasted token.
pub fn id_of(given: &str) -> &str {
    let given = given.trim();
    parse(given).map(|(i, _)| i).unwrap_or(given)
}

/// Revoke by id (the public part); the token stops working at once.
pub fn revoke(store: &Store, id: &str) -> Result<TokenRow> {
    // Accept a whole token too, so a leaked one can be pasted as is.
    let id = id_of(id);
    store.revoke_token(id).map_err(|e| match e {
        vfarm_store::StoreError::NotFound { .. } => AuthError::TokenNotFound { id: id.into() },
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn create_verify_revoke() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let c = create(&s, "alice", Some("laptop"), None, now()).unwrap();
            assert!(c.token.starts_with("vft_"));
            assert_eq!(c.token.len(), 4 + 12 + 1 + 64);
            // Only the hash is stored.
            let stored = s.token(&c.row.id).unwrap().unwrap();
            assert!(!c.token.contains(&stored.secret_hash));
            assert_eq!(stored.secret_hash.len(), 64);
            assert_eq!(verify(&s, &c.token, now()).unwrap().user, "alice");
            // Wrong secret, unknown id, malformed: all the same error.
            let mut wrong = c.token.clone();
            let last = wrong.pop().unwrap();
            wrong.push(if last == '0' { '1' } else { '0' });
            for bad in [wrong.as_str(), "vft_000000000000_00", "Bearer x", ""] {
                assert!(
                    matches!(verify(&s, bad, now()), Err(AuthError::InvalidToken)),
                    "{bad}"
                );
            }
            let other = create(&s, "bob", None, None, now()).unwrap();
            revoke(&s, &c.row.id).unwrap();
            assert_eq!(
                verify(&s, &c.token, now()).unwrap_err().code().as_str(),
                "token_revoked"
            );
            assert_eq!(verify(&s, &other.token, now()).unwrap().user, "bob");
            assert_eq!(
                revoke(&s, "ffffffffffff").unwrap_err().code().as_str(),
                "token_not_found"
            );
            // Revoking by the whole token string works too.
            revoke(&s, &other.token).unwrap();
            assert!(verify(&s, &other.token, now()).is_err());
        }
    }

    #[test]
    fn expiry_is_enforced() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let c = create(&s, "alice", None, Some(3600), now()).unwrap();
            assert!(verify(&s, &c.token, now()).is_ok());
            let later = now() + chrono::Duration::seconds(3600);
            assert_eq!(
                verify(&s, &c.token, later).unwrap_err().code().as_str(),
                "token_expired"
            );
        }
    }

    #[test]
    fn bad_user_or_name_is_refused_by_field() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let e = create(&s, " ", None, None, now()).unwrap_err();
            assert_eq!(e.field(), Some("user"));
            let e = create(&s, "alice", Some("a\nb"), None, now()).unwrap_err();
            assert_eq!(e.field(), Some("name"));
            assert!(s.tokens(None).unwrap().is_empty());
        }
    }

    #[test]
    fn secrets_differ() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let a = create(&s, "u", None, None, now()).unwrap();
            let b = create(&s, "u", None, None, now()).unwrap();
            assert_ne!(a.token, b.token);
            assert_ne!(a.row.secret_hash, b.row.secret_hash);
        }
    }

    /// Issue 24: a token used again within a minute writes nothing, so it is verified even
    /// while another process holds the database's write lock (before, every request ran an
    /// UPDATE and waited for the lock).
    #[test]
    fn recent_use_is_not_written_again() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let store = Store::open(&path).unwrap();
        let t = Utc::now();
        let c = create(&store, "alice", None, None, t).unwrap();
        verify(&store, &c.token, Utc::now()).unwrap();
        let first = store.token(&c.row.id).unwrap().unwrap().last_used.unwrap();
        let other = Store::open(&path).unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            other
                .tx(|_| -> std::result::Result<(), vfarm_store::StoreError> {
                    locked_tx.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_secs(3));
                    Ok(())
                })
                .unwrap();
        });
        locked_rx.recv().unwrap();
        let t0 = std::time::Instant::now();
        verify(&store, &c.token, Utc::now()).unwrap();
        let took = t0.elapsed();
        holder.join().unwrap();
        assert!(
            took < std::time::Duration::from_secs(1),
            "waited {took:?} for the write lock"
        );
        assert_eq!(
            store.token(&c.row.id).unwrap().unwrap().last_used.unwrap(),
            first
        );
    }
}
