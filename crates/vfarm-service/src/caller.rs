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
        Caller { user, admin: true }
    }

    /// One of the service's own agents (the reaper, the watcher), acting as admin.
    pub fn agent(name: &str) -> Caller {
        Caller {
            user: name.to_string(),
            admin: true,
        }
    }

    /// A caller by name (an API request's identity).
    pub fn new(user: impl Into<String>, admin: bool) -> Caller {
        Caller {
            user: user.into(),
            admin,
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
