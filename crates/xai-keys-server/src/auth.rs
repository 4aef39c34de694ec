//! The per-request authentication decision: route access × credentials × index → outcome.
//!
//! Pure and synchronous (no I/O, time passed in), so the criterion bench and the unit tests
//! exercise exactly what the middleware runs. Every refusal has a typed [`Denial`]; its status
//! follows from the type (unknown credential → 401, valid but not enough → 403), never from
//! searching a message (reference defect AB).

use axum::http::{Method, StatusCode};
use xai_keys_core::scope::Scope;
use xai_keys_core::token::KeyId;

use crate::credentials::{Credentials, Presented, Source};
use crate::error::ApiError;
use crate::index::{KeyIndex, Lookup};
use crate::policy::{Access, is_read_method};
use xai_keys_core::record::KeyState;

/// The authenticated key of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: KeyId,
    pub scope: Scope,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    /// No credential at all.
    Missing,
    /// `?api_key=` was sent while query keys are disabled.
    QueryKeyDisabled,
    /// Our prefix with a bad checksum.
    Malformed(Source),
    /// Not a key in the store (never issued, or revoked).
    Unknown(Source),
    Expired {
        key_id: KeyId,
        expired_at: f64,
    },
    Disabled {
        key_id: KeyId,
    },
    InsufficientScope {
        key_id: KeyId,
        scope: Scope,
        source: Source,
    },
}

impl Denial {
    /// The typed reason, as in responses, metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Missing => "missing_credentials",
            Denial::QueryKeyDisabled => "query_key_disabled",
            Denial::Malformed(_) => "malformed_key",
            Denial::Unknown(_) => "unknown_key",
            Denial::Expired { .. } => "expired",
            Denial::Disabled { .. } => "disabled",
            Denial::InsufficientScope { .. } => "insufficient_scope",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Denial::Missing
            | Denial::QueryKeyDisabled
            | Denial::Malformed(_)
            | Denial::Unknown(_) => StatusCode::UNAUTHORIZED,
            Denial::Expired { .. } | Denial::Disabled { .. } | Denial::InsufficientScope { .. } => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// The key concerned, when the credential named a stored key.
    pub fn key_id(&self) -> Option<&KeyId> {
        match self {
            Denial::Expired { key_id, .. }
            | Denial::Disabled { key_id }
            | Denial::InsufficientScope { key_id, .. } => Some(key_id),
            _ => None,
        }
    }

    /// A credential was presented but did not authenticate (counts toward the brute-force
    /// throttle). A valid key with too little scope is not a guess.
    pub fn is_failed_guess(&self) -> bool {
        matches!(self, Denial::Malformed(_) | Denial::Unknown(_))
    }

    /// Which refusal says the most when several credentials failed.
    fn rank(&self) -> u8 {
        match self {
            Denial::Missing => 0,
            Denial::QueryKeyDisabled => 1,
            Denial::Unknown(_) => 2,
            Denial::Malformed(_) => 3,
            Denial::Expired { .. } => 4,
            Denial::Disabled { .. } => 5,
            Denial::InsufficientScope { .. } => 6,
        }
    }

    /// The response for this refusal on a route of `access` (`route` names it).
    pub fn to_api_error(&self, access: Access, route: &str) -> ApiError {
        let admin_route = matches!(access, Access::Admin | Access::Operator | Access::Auditor);
        let code = if admin_route {
            "admin_unauthorized"
        } else {
            "unauthorized"
        };
        let message = match self {
            Denial::Missing if admin_route => format!(
                "{route} needs {} credentials: send an admin key in X-Admin-Token (or Authorization: Admin …), or a key of the right scope in X-API-Key",
                need(access)
            ),
            Denial::Missing => "API key required: send it in the X-API-Key header (or Authorization: Bearer …)".to_string(),
            Denial::QueryKeyDisabled => "API keys in the query string (?api_key=) are disabled because URLs end up in logs; send the key in the X-API-Key header".to_string(),
            Denial::Malformed(s) => format!(
                "the key in {} starts with xai_ but its checksum is wrong (mistyped or truncated); copy the whole key again",
                s.as_str()
            ),
            Denial::Unknown(s) => format!(
                "the key in {} is not valid (unknown or revoked); ask an operator for a key",
                s.as_str()
            ),
            Denial::Expired { key_id, expired_at } => format!(
                "API key {} expired at {}; ask an operator for a new key",
                key_id.fingerprint(),
                iso(*expired_at)
            ),
            Denial::Disabled { key_id } => format!(
                "API key {} is disabled; an operator can re-enable it (`xai-keys enable {}`)",
                key_id.fingerprint(),
                key_id.fingerprint()
            ),
            Denial::InsufficientScope { key_id, scope, source } => {
                if matches!(source, Source::XAdminToken | Source::AuthorizationAdmin) {
                    format!(
                        "the key in {} ({}) has scope {scope}; admin tokens must be admin keys",
                        source.as_str(),
                        key_id.fingerprint()
                    )
                } else {
                    format!(
                        "Forbidden: insufficient scope: API key {} has scope {scope}; {route} needs {}",
                        key_id.fingerprint(),
                        need(access)
                    )
                }
            }
        };
        ApiError::new(self.status(), code, message).with_reason(self.reason())
    }
}

fn need(access: Access) -> &'static str {
    match access {
        Access::Public => "no",
        Access::User => "user, operator or admin",
        Access::Peer => "peer",
        Access::Operator => "operator or admin",
        Access::Auditor => "auditor, operator or admin",
        Access::Admin => "admin",
    }
}

/// RFC 3339 UTC for messages.
pub fn iso(epoch: f64) -> String {
    jiff::Timestamp::from_millisecond((epoch * 1000.0) as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{epoch}"))
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed, as this key (or anonymously on a public or opened route).
    Allowed(Option<Principal>),
    Denied(Denial),
}

/// Whether a key of `scope` may use a route of `access` with `method`.
pub fn permitted(access: Access, scope: Scope, method: &Method) -> bool {
    let read = is_read_method(method);
    match access {
        Access::Public => true,
        // Until peer signing lands, the reference's rule: any valid non-read-only key.
        Access::User | Access::Peer => {
            matches!(scope, Scope::User | Scope::Operator | Scope::Admin)
                || (scope == Scope::Auditor && read)
        }
        Access::Operator => matches!(scope, Scope::Operator | Scope::Admin),
        Access::Auditor => {
            matches!(scope, Scope::Operator | Scope::Admin) || (scope == Scope::Auditor && read)
        }
        Access::Admin => scope == Scope::Admin,
    }
}

fn check(
    index: &KeyIndex,
    p: &Presented,
    admin_token: bool,
    access: Access,
    method: &Method,
    now: f64,
) -> Result<Principal, Denial> {
    let e = match index.lookup(&p.value) {
        Lookup::Found(e) => e,
        Lookup::Malformed => return Err(Denial::Malformed(p.source)),
        Lookup::Unknown => return Err(Denial::Unknown(p.source)),
    };
    match e.state(now) {
        KeyState::Active => {}
        KeyState::Disabled => {
            return Err(Denial::Disabled {
                key_id: e.key_id.clone(),
            });
        }
        KeyState::Expired => {
            return Err(Denial::Expired {
                key_id: e.key_id.clone(),
                expired_at: e.expires_at.unwrap_or(now),
            });
        }
    }
    let ok = if admin_token {
        e.scope == Scope::Admin
    } else {
        permitted(access, e.scope, method)
    };
    if ok {
        Ok(Principal {
            key_id: e.key_id.clone(),
            scope: e.scope,
        })
    } else {
        Err(Denial::InsufficientScope {
            key_id: e.key_id.clone(),
            scope: e.scope,
            source: p.source,
        })
    }
}

/// Decides one request. `auth_required = false` opens `user` routes only: admin, operator,
/// auditor and peer routes always need credentials (reference defect I).
pub fn decide(
    index: &KeyIndex,
    access: Access,
    method: &Method,
    creds: &Credentials,
    auth_required: bool,
    now: f64,
) -> Outcome {
    if access == Access::Public {
        return Outcome::Allowed(None);
    }
    let mut worst: Option<Denial> = None;
    let candidates = [
        creds.admin_token.as_ref().map(|p| (p, true)),
        creds.api_key.as_ref().map(|p| (p, false)),
    ];
    for (p, admin_token) in candidates.into_iter().flatten() {
        match check(index, p, admin_token, access, method, now) {
            Ok(principal) => return Outcome::Allowed(Some(principal)),
            Err(d) => {
                if worst.as_ref().is_none_or(|w| d.rank() > w.rank()) {
                    worst = Some(d);
                }
            }
        }
    }
    if access == Access::User && !auth_required {
        return Outcome::Allowed(None);
    }
    Outcome::Denied(worst.unwrap_or(if creds.query_key_refused {
        Denial::QueryKeyDisabled
    } else {
        Denial::Missing
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::extract;
    use axum::http::{HeaderMap, HeaderValue};
    use xai_keys_core::record::{KeyMap, KeyRecord};
    use xai_keys_core::token::PlainToken;

    fn rec(scope: Scope, exp: Option<f64>, disabled: bool) -> KeyRecord {
        KeyRecord {
            label: String::new(),
            created: 0.0,
            scope,
            expires_at: exp,
            permanent: exp.is_none(),
            disabled,
            origin: None,
            replaced_by: None,
            extra: None,
            hydration: Default::default(),
        }
    }

    struct Fixture {
        idx: KeyIndex,
        user: PlainToken,
        admin: PlainToken,
        auditor: PlainToken,
        operator: PlainToken,
        expired: PlainToken,
        disabled: PlainToken,
    }

    fn fixture() -> Fixture {
        let mk = || PlainToken::generate().unwrap();
        let f = (mk(), mk(), mk(), mk(), mk(), mk());
        let mut keys = KeyMap::new();
        keys.insert(f.0.key_id(), rec(Scope::User, Some(1000.0), false));
        keys.insert(f.1.key_id(), rec(Scope::Admin, None, false));
        keys.insert(f.2.key_id(), rec(Scope::Auditor, None, false));
        keys.insert(f.3.key_id(), rec(Scope::Operator, None, false));
        keys.insert(f.4.key_id(), rec(Scope::User, Some(10.0), false));
        keys.insert(f.5.key_id(), rec(Scope::User, None, true));
        Fixture {
            idx: KeyIndex::from_keys(&keys),
            user: f.0,
            admin: f.1,
            auditor: f.2,
            operator: f.3,
            expired: f.4,
            disabled: f.5,
        }
    }

    fn creds(pairs: &[(&'static str, &str)]) -> Credentials {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        extract(&h, None, false).unwrap()
    }

    fn reason(o: Outcome) -> &'static str {
        match o {
            Outcome::Allowed(_) => "allowed",
            Outcome::Denied(d) => d.reason(),
        }
    }

    #[test]
    fn scopes_are_enforced_on_every_route_class() {
        let f = fixture();
        let d = |access, m: Method, t: &PlainToken| {
            reason(decide(
                &f.idx,
                access,
                &m,
                &creds(&[("x-api-key", t.expose())]),
                true,
                100.0,
            ))
        };
        assert_eq!(d(Access::User, Method::POST, &f.user), "allowed");
        assert_eq!(
            d(Access::User, Method::POST, &f.auditor),
            "insufficient_scope"
        );
        assert_eq!(d(Access::User, Method::GET, &f.auditor), "allowed");
        assert_eq!(
            d(Access::Peer, Method::POST, &f.auditor),
            "insufficient_scope"
        );
        assert_eq!(d(Access::Admin, Method::GET, &f.user), "insufficient_scope");
        assert_eq!(
            d(Access::Admin, Method::GET, &f.operator),
            "insufficient_scope"
        );
        assert_eq!(d(Access::Admin, Method::POST, &f.admin), "allowed");
        assert_eq!(d(Access::Operator, Method::POST, &f.operator), "allowed");
        assert_eq!(
            d(Access::Operator, Method::GET, &f.auditor),
            "insufficient_scope"
        );
        assert_eq!(d(Access::Auditor, Method::GET, &f.auditor), "allowed");
        assert_eq!(
            d(Access::Auditor, Method::POST, &f.auditor),
            "insufficient_scope"
        );
        assert_eq!(d(Access::User, Method::POST, &f.expired), "expired");
        assert_eq!(d(Access::User, Method::POST, &f.disabled), "disabled");
    }

    #[test]
    fn auth_off_opens_user_routes_only() {
        let f = fixture();
        let none = creds(&[]);
        assert_eq!(
            decide(&f.idx, Access::User, &Method::POST, &none, false, 1.0),
            Outcome::Allowed(None)
        );
        for a in [
            Access::Admin,
            Access::Operator,
            Access::Auditor,
            Access::Peer,
        ] {
            assert_eq!(
                reason(decide(&f.idx, a, &Method::GET, &none, false, 1.0)),
                "missing_credentials"
            );
        }
        assert_eq!(
            reason(decide(
                &f.idx,
                Access::User,
                &Method::POST,
                &none,
                true,
                1.0
            )),
            "missing_credentials"
        );
    }

    #[test]
    fn typed_statuses_and_precedence() {
        let f = fixture();
        // A bad admin token does not hide a valid admin X-API-Key (defect AB).
        let c = creds(&[("x-admin-token", "nope"), ("x-api-key", f.admin.expose())]);
        assert!(matches!(
            decide(&f.idx, Access::Admin, &Method::GET, &c, true, 1.0),
            Outcome::Allowed(Some(_))
        ));
        // A user key as admin token: valid but not enough.
        let c = creds(&[("x-admin-token", f.user.expose())]);
        let Outcome::Denied(d) = decide(&f.idx, Access::Admin, &Method::GET, &c, true, 1.0) else {
            panic!()
        };
        assert_eq!(d.status(), StatusCode::FORBIDDEN);
        let c = creds(&[("authorization", "Admin nope")]);
        let Outcome::Denied(d) = decide(&f.idx, Access::Admin, &Method::GET, &c, true, 1.0) else {
            panic!()
        };
        assert_eq!(
            (d.status(), d.reason()),
            (StatusCode::UNAUTHORIZED, "unknown_key")
        );
        let e = d.to_api_error(Access::Admin, "/admin/api-keys");
        assert_eq!(e.code, "admin_unauthorized");
        let mut bad = f.user.expose().to_string();
        bad.pop();
        bad.push('!');
        let c = creds(&[("x-api-key", &bad)]);
        assert_eq!(
            reason(decide(&f.idx, Access::User, &Method::POST, &c, true, 1.0)),
            "malformed_key"
        );
    }

    #[test]
    fn messages_never_echo_keys() {
        let f = fixture();
        for t in [&f.user, &f.expired, &f.disabled] {
            let c = creds(&[("x-api-key", t.expose())]);
            if let Outcome::Denied(d) = decide(&f.idx, Access::Admin, &Method::GET, &c, true, 100.0)
            {
                let body = d.to_api_error(Access::Admin, "/admin/x").body().to_string();
                assert!(!body.contains(t.expose()));
            }
        }
    }
}
