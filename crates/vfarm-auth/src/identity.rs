//! Who a request is.

use serde::Serialize;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// A TLS client certificate chained to the configured CA directory; the user is the
    /// [`owner_key`] of its subject and issuer.
    ClientCert,
    /// A bearer token; the user is the one the token was created for.
    Token,
    /// The local unix socket; the user is the peer's login name.
    UnixPeer,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientCert => "client-cert",
            AuthMethod::Token => "token",
            AuthMethod::UnixPeer => "unix-peer",
        }
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The user, as owner records store it: for certificates the [`owner_key`] of subject
    /// and issuer (`/C=…/CN=Alice issuer=/C=…/CN=Some CA`), else the token's user or a login
    /// name.
    pub user: String,
    pub method: AuthMethod,
    pub admin: bool,
    /// The token used, for audit (`token` method only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The certificate's subject and issuer, [`escaped`](crate::dn::escaped) (`client-cert`
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// What separates subject and issuer in an [`owner_key`].
pub const ISSUER_SEP: &str = " issuer=";

/// The issuer part of owners recorded before identities carried their issuer (migration
/// 0010): `<subject> issuer=unknown`. No escaped DN is `unknown` (one starts with `/`).
pub const UNKNOWN_ISSUER: &str = "unknown";

/// The identity of a certificate subject issued by `issuer` (both [`escaped`](crate::dn::escaped)):
/// `<subject> issuer=<issuer>`. Unambiguous: an escaped DN has an unescaped `=` only right
/// after `/` or `+` and an attribute name, never after a space, so the first ` issuer=` whose
/// `=` is unescaped and outside a name ends the subject ([`split_owner_key`]).
pub fn owner_key(subject: &str, issuer: &str) -> String {
    format!("{subject}{ISSUER_SEP}{issuer}")
}

/// The (subject, issuer) of an [`owner_key`]; `None` for any other owner (a token's user, a
/// login name).
pub fn split_owner_key(key: &str) -> Option<(&str, &str)> {
    let b = key.as_bytes();
    // In an attribute name (after an unescaped `/` or `+`) or in a value.
    let mut in_name = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'/' | b'+' => in_name = true,
            b'=' if in_name => in_name = false,
            b'=' => {
                let start = (i + 1).checked_sub(ISSUER_SEP.len())?;
                return (key.get(start..=i)? == ISSUER_SEP).then(|| (&key[..start], &key[i + 1..]));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

impl Identity {
    /// Whether this caller may see or touch an object owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.user == owner || self.legacy_owner().is_some_and(|l| l == owner)
    }

    /// What owned this certificate user's objects before owners recorded the issuer (migration
    /// 0010): its subject with the issuer `unknown`. Those objects stay the subject's under
    /// any CA the site trusts for that subject (its namespace), as they were. A token made
    /// for a certificate user's owner key gets the same; a token user of any other name, none.
    pub fn legacy_owner(&self) -> Option<String> {
        legacy_owner_of(&self.user)
    }
}

/// [`Identity::legacy_owner`] of a user name as owner records store it.
pub fn legacy_owner_of(user: &str) -> Option<String> {
    split_owner_key(user)
        .filter(|(_, issuer)| *issuer != UNKNOWN_ISSUER)
        .map(|(subject, _)| owner_key(subject, UNKNOWN_ISSUER))
}

/// The login name of this process's user (`/etc/passwd`), else `uid-<n>`.
pub fn local_user() -> String {
    user_name(effective_uid())
}

/// The login name of `uid` (`/etc/passwd`), else `uid-<n>`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid-{uid}"))
}

fn effective_uid() -> u32 {
    // /proc/self/status "Uid:\treal\teffective…": the effective uid, without unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_admins() {
        let alice = Identity {
            user: "/C=XX/O=Test/CN=Alice".into(),
            method: AuthMethod::ClientCert,
            admin: false,
            token_id: None,
            subject: None,
            issuer: None,
        };
        assert!(alice.may_access("/C=XX/O=Test/CN=Alice"));
        assert!(!alice.may_access("/C=XX/O=Test/CN=Bob"));
        let admin = Identity {
            admin: true,
            ..alice.clone()
        };
        assert!(admin.may_access("anyone"));
        let v = serde_json::to_value(&alice).unwrap();
        assert_eq!(v["method"], "client-cert");
        assert!(v.get("token_id").is_none());
    }

    fn cert(subject: &str, issuer: &str) -> Identity {
        Identity {
            user: owner_key(subject, issuer),
            method: AuthMethod::ClientCert,
            admin: false,
            token_id: None,
            subject: Some(subject.into()),
            issuer: Some(issuer.into()),
        }
    }

    #[test]
    fn the_same_subject_from_two_issuers_is_two_owners() {
        let a = cert("/C=XX/O=A/CN=Admin", "/C=XX/O=A/CN=CA A");
        let b = cert("/C=XX/O=A/CN=Admin", "/C=XX/O=B/CN=CA B");
        assert_ne!(a.user, b.user);
        assert!(a.may_access(&a.user));
        assert!(!a.may_access(&b.user));
        assert!(!b.may_access(&a.user));
        // Records from before issuers were recorded stay the subject's.
        let legacy = "/C=XX/O=A/CN=Admin issuer=unknown";
        assert!(a.may_access(legacy) && b.may_access(legacy));
        assert!(!cert("/C=XX/O=A/CN=Other", "/C=XX/O=A/CN=CA A").may_access(legacy));
        // A token user named like that key is not a certificate: no legacy alias.
        let tok = Identity {
            user: "/C=XX/O=A/CN=Admin".into(),
            method: AuthMethod::Token,
            subject: None,
            issuer: None,
            ..a.clone()
        };
        assert!(!tok.may_access(legacy));
        // A token acting as the certificate user (its owner key) reaches them too.
        let tok = Identity {
            user: a.user.clone(),
            ..tok
        };
        assert!(tok.may_access(legacy) && tok.may_access(&a.user));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["user"], "/C=XX/O=A/CN=Admin issuer=/C=XX/O=A/CN=CA A");
        assert_eq!(v["issuer"], "/C=XX/O=A/CN=CA A");
    }

    #[test]
    fn owner_keys_split_back_whatever_the_values_hold() {
        // Escaped subjects and issuers, some carrying the separator's text in their values.
        let names = [
            "",
            "/CN=a",
            "/CN=a issuer",
            "/CN=a issuer\\=",
            "/CN=a issuer\\=\\/CN\\=b",
            "/CN=\\\\",
            "/O=x+CN= issuer",
            "/CN= issuer\\=/CN=c",
            "/1.2.3.4=v issuer",
        ];
        let mut keys = std::collections::HashSet::new();
        for s in names {
            for i in names.iter().chain(&[UNKNOWN_ISSUER]) {
                let k = owner_key(s, i);
                assert_eq!(split_owner_key(&k), Some((s, *i)), "{k}");
                assert!(keys.insert(k));
            }
        }
        for other in ["alice", "/CN=a", "/CN=a issuer\\=b", ""] {
            assert_eq!(split_owner_key(other), None, "{other}");
        }
    }
}
