//! The audit log: who did what to which object, when, and how it ended.

use vfarm_store::Store;

use crate::{Identity, Result};

/// How an audited action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused for the caller (the error code).
    Denied(String),
    /// Failed on the server side (the error code).
    Failed(String),
}

impl Outcome {
    pub fn as_string(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Denied(c) => format!("denied:{c}"),
            Outcome::Failed(c) => format!("failed:{c}"),
        }
    }
}

/// The actor of commands run locally (`vfarm token create` …): the login name.
pub fn local_actor() -> String {
    crate::identity::local_user()
}

/// Append one record for `who` (an API caller) or, with `None`, for the local user.
pub fn record(
    store: &Store,
    who: Option<&Identity>,
    action: &str,
    object: &str,
    outcome: &Outcome,
    detail: &serde_json::Value,
) -> Result<()> {
    let (actor, method) = match who {
        Some(i) => (i.user.clone(), i.method.as_str()),
        None => (local_actor(), "local"),
    };
    store.audit(&actor, method, action, object, &outcome.as_string(), detail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthMethod;

    #[test]
    fn records_actor_method_and_outcome() {
        for db in vfarm_store::testing::TestDb::all() {
            let s = db.open();
            let alice = Identity {
                user: "/C=XX/CN=Alice".into(),
                method: AuthMethod::ClientCert,
                admin: false,
                token_id: None,
                subject: None,
                issuer: None,
            };
            record(
                &s,
                Some(&alice),
                "instance.create",
                "abc",
                &Outcome::Denied("quota_exceeded".into()),
                &serde_json::json!({"cpus": 4}),
            )
            .unwrap();
            record(
                &s,
                None,
                "token.create",
                "t1",
                &Outcome::Ok,
                &serde_json::json!({}),
            )
            .unwrap();
            let log = s.audit_log(None, 10).unwrap();
            assert_eq!(log[0].actor, "/C=XX/CN=Alice");
            assert_eq!(log[0].method, "client-cert");
            assert_eq!(log[0].outcome, "denied:quota_exceeded");
            assert_eq!(log[0].detail["cpus"], 4);
            assert_eq!(log[1].method, "local");
            assert!(!log[1].actor.is_empty());
        }
    }
}
