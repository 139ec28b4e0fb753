//! Who is acting. Every state change carries the caller, so the event log and the audit name
//! the person (or the service's own agent) that asked, whichever front end they used.

/// The identity an operation acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name recorded as actor and owner: a login name (CLI, unix socket), a token's
    /// user or a certificate's DN (API), or a service agent (`vfarm-reaper`).
    pub user: String,
    /// Admins see and act on everything.
    pub admin: bool,
    /// Acting from this machine (the CLI, the unix socket, the service's own agents): what it
    /// builds is public, not owned.
    pub local: bool,
}

impl Caller {
    /// The person running the CLI on this machine (`sudo` keeps the invoking user's name).
    /// The only place an identity is read from the environment.
    pub fn local() -> Caller {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| {
                if crate::env::is_root() {
                    "root".into()
                } else {
                    "local".into()
                }
            });
        Caller {
            user,
            admin: true,
            local: true,
        }
    }

    /// One of the service's own agents (the reaper, the watcher), acting as admin.
    pub fn agent(name: &str) -> Caller {
        Caller {
            user: name.to_string(),
            admin: true,
            local: true,
        }
    }

    /// A caller by name (an API request's identity).
    pub fn new(user: impl Into<String>, admin: bool) -> Caller {
        Caller {
            user: user.into(),
            admin,
            local: false,
        }
    }

    /// Whether the caller may see and act on what `owner` owns: admins everything, others
    /// their own (a certificate user also its records from before owners carried the
    /// issuer).
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin
            || self.user == owner
            || vfarm_auth::identity::legacy_owner_of(&self.user).is_some_and(|l| l == owner)
    }

    /// Who owns what the caller builds: a remote non-admin owns it; admins and local users
    /// build public images.
    pub fn owner_of_builds(&self) -> Option<&str> {
        (!self.admin && !self.local).then_some(self.user.as_str())
    }
}

/// An authenticated request's identity as the operations see it.
impl From<&vfarm_auth::Identity> for Caller {
    fn from(id: &vfarm_auth::Identity) -> Caller {
        Caller {
            user: id.user.clone(),
            admin: id.admin,
            local: id.method == vfarm_auth::AuthMethod::UnixPeer,
        }
    }
}

/// The caller may not do this: not an admin, or not the owner.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Forbidden {
    pub field: Option<&'static str>,
    pub message: String,
}

impl Caller {
    /// Refused unless the caller is an admin; `what` names what is reserved to admins.
    pub fn require_admin(&self, what: &str) -> Result<(), Forbidden> {
        if self.admin {
            return Ok(());
        }
        Err(Forbidden {
            field: None,
            message: format!("{what} is for admins"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfarm_auth::identity::{owner_key, UNKNOWN_ISSUER};
    use vfarm_auth::{AuthMethod, Identity};

    fn identity(user: &str, method: AuthMethod, admin: bool) -> Identity {
        Identity {
            user: user.into(),
            method,
            admin,
            token_id: None,
            subject: None,
            issuer: None,
        }
    }

    #[test]
    fn who_owns_builds_and_who_may_access() {
        let alice = owner_key("/CN=Alice", "/CN=Site CA");
        let remote = Caller::from(&identity(&alice, AuthMethod::ClientCert, false));
        assert_eq!(remote.owner_of_builds(), Some(alice.as_str()));
        assert!(remote.may_access(&alice));
        // Her records from before owners carried the issuer stay hers; another CA's are not.
        assert!(remote.may_access(&owner_key("/CN=Alice", UNKNOWN_ISSUER)));
        assert!(!remote.may_access(&owner_key("/CN=Alice", "/CN=Other CA")));
        assert!(!remote.may_access("bob"));
        let peer = Caller::from(&identity("carol", AuthMethod::UnixPeer, false));
        assert_eq!(peer.owner_of_builds(), None);
        assert!(!peer.may_access("bob"));
        let admin = Caller::from(&identity("root", AuthMethod::Token, true));
        assert_eq!(admin.owner_of_builds(), None);
        assert!(admin.may_access("bob"));
        assert_eq!(Caller::local().owner_of_builds(), None);
    }
}
