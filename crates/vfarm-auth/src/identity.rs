//! Who a request is.

use serde::Serialize;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// A TLS client certificate chained to the configured CA directory; the user is its
    /// subject DN in OpenSSL's one-line form.
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
    /// The user: a DN (`/C=…/O=…/CN=…`) for certificates, the token's user, or a login name.
    pub user: String,
    pub method: AuthMethod,
    pub admin: bool,
    /// The token used, for audit (`token` method only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

impl Identity {
    /// Whether this caller may see or touch an object owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }
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
}
