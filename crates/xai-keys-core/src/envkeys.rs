//! Keys configured in the environment: the reference's `XAI_API_KEYS` (user keys),
//! `XAI_API_ADMIN_KEYS` and `XAI_API_ADMIN_TOKEN` (admin keys).
//!
//! They are accepted for compatibility and treated as break-glass credentials (reference
//! defect AA): they never expire, cannot be revoked (only removed from the environment), and
//! no audit line records their creation. Front ends report them (a startup warning, listings
//! with `source: env`, metrics), and [`import`] moves them into the store as ordinary audited,
//! expiring keys.
//!
//! Only the SHA-256 id of each secret is kept; the plaintext is dropped once hashed. Once a key
//! id is in the store, or has ever been in its audit log, the environment's copy is ignored: the
//! store decides (a key imported and then revoked stays revoked, whatever the environment says).

use crate::audit::Actor;
use crate::error::{Error, Result};
use crate::ops::KeyManager;
use crate::policy::TtlRequest;
use crate::record::{KeyMap, KeyRecord, Origin};
use crate::scope::Scope;
use crate::store::KeyStore;
use crate::token::KeyId;

/// The variables read, with the scope of their keys.
pub const VARS: &[(&str, Scope)] = &[
    ("XAI_API_KEYS", Scope::User),
    ("XAI_API_ADMIN_KEYS", Scope::Admin),
    ("XAI_API_ADMIN_TOKEN", Scope::Admin),
];

/// Shortest secret accepted from the environment (as `bootstrap-admin`'s 32 would break the
/// reference's shorter tokens, this is the floor below which a secret is guessable offline).
pub const MIN_SECRET_LEN: usize = 16;

/// One key from the environment (its id only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvKey {
    pub key_id: KeyId,
    pub scope: Scope,
    /// The variable it came from.
    pub var: &'static str,
    /// 1-based position in the variable's comma-separated list.
    pub position: usize,
}

impl EnvKey {
    /// The label it gets when imported: `env:XAI_API_KEYS#2`.
    pub fn label(&self) -> String {
        format!("env:{}#{}", self.var, self.position)
    }
}

/// Reads the variables through `lookup`. An empty or unset variable has no keys. A secret that
/// is too short, holds whitespace or control characters, or appears with two scopes is an
/// error naming the variable and the position (never the secret).
pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Vec<EnvKey>> {
    let mut out: Vec<EnvKey> = Vec::new();
    for (var, scope) in VARS {
        let Some(raw) = lookup(var) else { continue };
        // The admin token is one value; the lists are comma-separated.
        let items: Vec<&str> = if *var == "XAI_API_ADMIN_TOKEN" {
            vec![raw.trim()]
        } else {
            raw.split(',').map(str::trim).collect()
        };
        for (i, secret) in items.into_iter().enumerate() {
            if secret.is_empty() {
                continue;
            }
            let position = i + 1;
            if secret.chars().count() < MIN_SECRET_LEN
                || secret.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::InvalidInput(format!(
                    "{var}: entry {position} is not a usable key (at least {MIN_SECRET_LEN} characters, no spaces or control characters); issue a real key with `xai-keys issue` instead"
                )));
            }
            let key_id = KeyId::of_plaintext(secret);
            if let Some(other) = out.iter().find(|k| k.key_id == key_id) {
                if other.scope != *scope {
                    return Err(Error::InvalidInput(format!(
                        "{var}: entry {position} is also entry {} of {} with scope {}: one secret cannot have two scopes; remove one",
                        other.position, other.var, other.scope
                    )));
                }
                continue;
            }
            out.push(EnvKey {
                key_id,
                scope: *scope,
                var,
                position,
            });
        }
    }
    Ok(out)
}

/// The warning front ends print when keys come from the environment (`None` without any).
pub fn warning(keys: &[EnvKey]) -> Option<String> {
    if keys.is_empty() {
        return None;
    }
    let mut per_var: Vec<String> = Vec::new();
    for (var, _) in VARS {
        let n = keys.iter().filter(|k| k.var == *var).count();
        if n > 0 {
            per_var.push(format!("{var}: {n}"));
        }
    }
    Some(format!(
        "{} key(s) come from the environment ({}): they never expire and cannot be revoked; move them into the store with `xai-keys import-env`, then remove them from the environment",
        keys.len(),
        per_var.join(", ")
    ))
}

/// A key from the environment as listings show it (the shape of a stored key's listing, with
/// `source: env` and the variable): active, never expiring, its last use when recorded.
pub fn listing_json(
    scope: Scope,
    var: &str,
    label: &str,
    usage: Option<&crate::usage::KeyUsage>,
) -> serde_json::Value {
    let mut j = serde_json::json!({
        "scope": scope.as_str(),
        "label": label,
        "source": "env",
        "variable": var,
        "created": null,
        "expires_at": null,
        "permanent": true,
        "expired": false,
        "state": "active",
    });
    if let (Some(u), Some(o)) = (usage, j.as_object_mut()) {
        o.insert("last_used".into(), u.last_used.into());
        o.insert("use_count".into(), u.count.into());
    }
    j
}

/// What [`import`] did with one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// Added to the store with this record.
    Added(KeyRecord),
    /// Already in the store: nothing to do.
    AlreadyInStore,
    /// Absent from the store but in its audit log (revoked earlier): never registered again.
    Retired,
}

/// Moves `keys` into the store in one commit, as expiring keys (`ttl`) labelled with their
/// variable, audited as `issue` lines with `origin: env`. Keys already in the store are left
/// alone and keys with a history in the audit log (revoked) are refused, so that a revoked key
/// never comes back through the environment.
pub fn import(
    mgr: &KeyManager<'_>,
    store: &dyn KeyStore,
    keys: &[EnvKey],
    ttl: TtlRequest,
    actor: &Actor,
    now: f64,
) -> Result<Vec<(EnvKey, Imported)>> {
    let present = store.load(now)?.keys;
    let mut plan: Vec<(EnvKey, Imported)> = Vec::new();
    for k in keys {
        let outcome = if present.contains_key(&k.key_id) {
            Imported::AlreadyInStore
        } else if has_history(store, &k.key_id)? {
            Imported::Retired
        } else {
            let record = mgr.env_record(k.scope, k.label(), ttl, now)?;
            Imported::Added(record)
        };
        plan.push((k.clone(), outcome));
    }
    let adds: Vec<(KeyId, KeyRecord)> = plan
        .iter()
        .filter_map(|(k, o)| match o {
            Imported::Added(r) => Some((k.key_id.clone(), r.clone())),
            _ => None,
        })
        .collect();
    if !adds.is_empty() {
        mgr.insert_many(&adds, actor, now)?;
    }
    Ok(plan)
}

/// Whether `id` appears anywhere in the store's audit log.
pub fn has_history(store: &dyn KeyStore, id: &KeyId) -> Result<bool> {
    let page = store.events(&crate::audit::EventQuery {
        limit: 1,
        key_id: Some(id.to_string()),
        ..Default::default()
    })?;
    Ok(!page.events.is_empty())
}

/// The keys of `env` that the store does not manage: absent from `store_keys` and not in
/// `managed` (ids seen in the store or its audit log).
pub fn unmanaged<'a>(
    env: &'a [EnvKey],
    store_keys: &'a KeyMap,
    managed: &'a std::collections::HashSet<KeyId>,
) -> impl Iterator<Item = &'a EnvKey> {
    env.iter()
        .filter(move |k| !store_keys.contains_key(&k.key_id) && !managed.contains(&k.key_id))
}

/// The origin recorded for imported environment keys.
pub const ORIGIN: Origin = Origin::Environment;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Vec<EnvKey>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn lists_are_split_deduplicated_and_scoped() {
        let a = "user-secret-aaaaaaaaaaaa";
        let b = "user-secret-bbbbbbbbbbbb";
        let t = "admin-token-cccccccccccc";
        let keys = parse(&[
            ("XAI_API_KEYS", &format!(" {a}, ,{b},{a}")),
            ("XAI_API_ADMIN_TOKEN", t),
            ("XAI_API_ADMIN_KEYS", ""),
        ])
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].key_id, KeyId::of_plaintext(a));
        assert_eq!(keys[0].scope, Scope::User);
        assert_eq!(keys[1].position, 3);
        assert_eq!(keys[1].label(), "env:XAI_API_KEYS#3");
        assert_eq!(keys[2].scope, Scope::Admin);
        assert_eq!(keys[2].var, "XAI_API_ADMIN_TOKEN");
        let w = warning(&keys).unwrap();
        assert!(
            w.contains("XAI_API_KEYS: 2") && w.contains("import-env"),
            "{w}"
        );
        assert!(warning(&[]).is_none());
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn weak_or_ambiguous_secrets_are_refused_without_echoing_them() {
        let e = parse(&[("XAI_API_KEYS", "good-secret-aaaaaaaaaa,short")]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("XAI_API_KEYS") && m.contains("entry 2"), "{m}");
        assert!(!m.contains("short"), "{m}");
        let e = parse(&[("XAI_API_ADMIN_TOKEN", "has a space in it 1234")]).unwrap_err();
        assert!(e.to_string().contains("XAI_API_ADMIN_TOKEN"));
        let s = "same-secret-dddddddddddd";
        let e = parse(&[("XAI_API_KEYS", s), ("XAI_API_ADMIN_KEYS", s)]).unwrap_err();
        assert!(e.to_string().contains("two scopes"), "{e}");
    }
}
