//! Bearer tokens for the HTTP API: create (the secret is shown once), list, revoke. A caller
//! manages their own tokens; admins anyone's. Another user's token is not found, as a missing
//! one, so ids cannot be probed.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use vfarm_auth::token::Created;
use vfarm_store::auth::TokenRow;
use vfarm_store::Store;

use crate::caller::Forbidden;
use crate::jobs::Origin;
use crate::Caller;

/// `token create`: all optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    /// The user the token stands for (default: the caller). Only admins may name another.
    pub user: Option<String>,
    /// A label shown in the list.
    pub name: Option<String>,
    /// Lifetime, e.g. 12h, 30d, 1w (default: until revoked).
    pub expiry: Option<String>,
}

/// A new token and its secret (`token`), which is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// `vft_<id>_<secret>`: the bearer token.
    pub token: String,
    #[serde(flatten)]
    pub row: TokenView,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub name: Option<String>,
    pub created: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
    pub last_used: Option<String>,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> TokenView {
        TokenView {
            id: t.id,
            user: t.user,
            name: t.name,
            created: t.created,
            expires: t.expires,
            revoked: t.revoked,
            last_used: t.last_used,
        }
    }
}

impl From<Created> for CreatedToken {
    fn from(c: Created) -> CreatedToken {
        CreatedToken {
            token: c.token,
            row: c.row.into(),
        }
    }
}

impl TokenView {
    /// `active`, `revoked` or `expired` at `now` (an RFC 3339 time, as stored).
    pub fn state(&self, now: &str) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if self.expires.as_deref().is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// The audit method of a change: the API's middleware records the request with how the
/// caller authenticated; this record names the operation.
fn method(origin: Origin) -> &'static str {
    match origin {
        Origin::Local => "local",
        Origin::Remote => "api",
    }
}

/// Create a token for the caller, or (admins) for `req.user`.
pub fn create(
    store: &Store,
    caller: &Caller,
    origin: Origin,
    req: CreateToken,
) -> Result<CreatedToken> {
    let user = req.user.unwrap_or_else(|| caller.user.clone());
    if user != caller.user && !caller.admin {
        return Err(Forbidden {
            field: Some("user"),
            message: format!("only admins create tokens for another user (`{user}`)"),
        }
        .into());
    }
    let expiry_secs = req
        .expiry
        .as_deref()
        .map(|e| vfarm_core::instance::parse_duration("expiry", e))
        .transpose()?;
    let created = vfarm_auth::token::create(
        store,
        &user,
        req.name.as_deref(),
        expiry_secs,
        chrono::Utc::now(),
    )?;
    store.audit(
        &caller.user,
        method(origin),
        "token.create",
        &created.row.id,
        "ok",
        &serde_json::json!({ "user": user, "expires": created.row.expires }),
    )?;
    Ok(created.into())
}

/// The caller's tokens; an admin's: everyone's, or `user`'s. A non-admin naming another
/// user gets none (as for jobs: others see only their own anyway).
pub fn list(store: &Store, caller: &Caller, user: Option<&str>) -> Result<Vec<TokenView>> {
    let user = match (caller.admin, user) {
        (true, u) => u,
        (false, Some(u)) if u != caller.user => return Ok(Vec::new()),
        (false, _) => Some(caller.user.as_str()),
    };
    Ok(store
        .tokens(user)?
        .into_iter()
        .map(TokenView::from)
        .collect())
}

/// Revoke a token by id (or the whole token pasted); it stops working at once. Another
/// user's token is not found for a non-admin.
pub fn revoke(store: &Store, caller: &Caller, origin: Origin, id: &str) -> Result<TokenView> {
    let id = vfarm_auth::token::id_of(id);
    let not_found = || vfarm_auth::AuthError::TokenNotFound { id: id.into() };
    let row = store.token(id)?.ok_or_else(not_found)?;
    if !(caller.admin || caller.user == row.user) {
        return Err(not_found().into());
    }
    let row = vfarm_auth::token::revoke(store, id)?;
    store.audit(
        &caller.user,
        method(origin),
        "token.revoke",
        &row.id,
        "ok",
        &serde_json::json!({ "user": row.user }),
    )?;
    Ok(row.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_manage_their_own_tokens_and_admins_all() {
        let s = Store::open_in_memory().unwrap();
        let alice = Caller::new("alice", false);
        let bob = Caller::new("bob", false);
        let admin = Caller::new("root", true);
        let a = create(&s, &alice, Origin::Remote, CreateToken::default()).unwrap();
        assert_eq!(a.row.user, "alice");
        assert!(a.token.starts_with("vft_"));
        // Not for another user, unless admin.
        let err = create(
            &s,
            &alice,
            Origin::Remote,
            CreateToken {
                user: Some("bob".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            crate::classify(&err).map(|c| c.0),
            Some(vfarm_proto::ErrorCode::Forbidden)
        );
        let b = create(
            &s,
            &admin,
            Origin::Local,
            CreateToken {
                user: Some("bob".into()),
                name: Some("ci".into()),
                expiry: Some("2h".into()),
            },
        )
        .unwrap();
        assert_eq!(
            (b.row.user.as_str(), b.row.name.as_deref()),
            ("bob", Some("ci"))
        );
        assert!(b.row.expires.is_some());
        // Lists: own only; a non-admin naming another user sees nothing.
        let ids = |v: Vec<TokenView>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(list(&s, &alice, None).unwrap()), vec![a.row.id.clone()]);
        assert!(list(&s, &alice, Some("bob")).unwrap().is_empty());
        assert_eq!(ids(list(&s, &bob, None).unwrap()), vec![b.row.id.clone()]);
        assert_eq!(list(&s, &admin, None).unwrap().len(), 2);
        assert_eq!(
            ids(list(&s, &admin, Some("bob")).unwrap()),
            vec![b.row.id.clone()]
        );
        // Bob's token is not found for alice, and stays active.
        let err = revoke(&s, &alice, Origin::Remote, &b.row.id).unwrap_err();
        assert_eq!(
            crate::classify(&err).map(|c| c.0),
            Some(vfarm_proto::ErrorCode::TokenNotFound)
        );
        assert!(s.token(&b.row.id).unwrap().unwrap().revoked.is_none());
        // Her own, pasted whole, is revoked; the audit names her.
        let r = revoke(&s, &alice, Origin::Remote, &a.token).unwrap();
        assert!(r.revoked.is_some());
        let log = s.audit_log(None, 10).unwrap();
        assert!(log
            .iter()
            .any(|e| e.action == "token.revoke" && e.actor == "alice" && e.object == a.row.id));
        // A bad expiry names its field and stores nothing.
        let err = create(
            &s,
            &alice,
            Origin::Remote,
            CreateToken {
                expiry: Some("soon".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            crate::classify(&err).and_then(|c| c.1).as_deref(),
            Some("expiry")
        );
        assert_eq!(list(&s, &alice, None).unwrap().len(), 1);
    }
}
