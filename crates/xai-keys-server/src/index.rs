//! The in-memory key index the hot path authenticates against.
//!
//! Built from a store snapshot: SHA-256 digest of the key → metadata. A lookup hashes the
//! presented secret once, finds the entry by digest, and confirms it with a constant-time
//! comparison; expiry is judged at request time, so an index never needs a reload for a key
//! to expire. Indexes are immutable and swapped whole (see `reload`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use xai_keys_core::record::{KeyMap, KeyRecord, KeyState};
use xai_keys_core::scope::Scope;
use xai_keys_core::token::{KeyId, TokenShape, classify};

/// Hashes a SHA-256 digest by taking 8 of its bytes: the keys are already uniform, and only
/// stored keys are ever inserted, so a caller cannot flood a bucket.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (i * 8);
        }
    }
}

type DigestMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

/// What the gateway needs of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key_id: KeyId,
    digest: [u8; 32],
    pub scope: Scope,
    pub expires_at: Option<f64>,
    pub disabled: bool,
    /// `Some(variable)` for a key configured in the environment (never in the store).
    pub env_var: Option<&'static str>,
}

impl Entry {
    fn of(id: &KeyId, r: &KeyRecord) -> Self {
        Entry {
            key_id: id.clone(),
            digest: id.digest_bytes(),
            scope: r.scope,
            expires_at: r.expires_at,
            disabled: r.disabled,
            env_var: None,
        }
    }

    pub fn state(&self, now: f64) -> KeyState {
        if self.disabled {
            KeyState::Disabled
        } else if self.expires_at.is_some_and(|e| now >= e) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// The result of looking a presented secret up.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Entry),
    /// Our prefix with a bad checksum: refused without a lookup.
    Malformed,
    Unknown,
}

/// An immutable index of every key in a snapshot.
#[derive(Debug, Default)]
pub struct KeyIndex {
    map: DigestMap<Entry>,
}

impl KeyIndex {
    pub fn from_keys(keys: &KeyMap) -> Self {
        let mut map = DigestMap::with_capacity_and_hasher(keys.len(), Default::default());
        for (id, r) in keys {
            let e = Entry::of(id, r);
            map.insert(e.digest, e);
        }
        KeyIndex { map }
    }

    /// Keys present in both `self` (the last good index) and `newer` (a snapshot that does not
    /// match its audit log), each as restricted as either says: a key removed, disabled or
    /// shortened outside xai-keys takes effect; one added, re-enabled, extended or re-scoped
    /// does not.
    pub fn restricted_by(&self, newer: &KeyMap) -> Self {
        let mut map = DigestMap::with_capacity_and_hasher(self.map.len(), Default::default());
        for (id, r) in newer {
            let digest = id.digest_bytes();
            let Some(old) = self.map.get(&digest) else {
                continue;
            };
            if old.scope != r.scope {
                continue;
            }
            let expires_at = match (old.expires_at, r.expires_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (Some(a), None) => Some(a),
                (None, b) => b,
            };
            map.insert(
                digest,
                Entry {
                    key_id: id.clone(),
                    digest,
                    scope: old.scope,
                    expires_at,
                    disabled: old.disabled || r.disabled,
                    env_var: None,
                },
            );
        }
        KeyIndex { map }
    }

    /// Adds keys from the environment that the store does not manage (see
    /// `xai_keys_core::envkeys`): they never expire and are never disabled. A key the index
    /// already has (from the store) keeps its stored state.
    pub fn with_env<'a>(
        mut self,
        keys: impl Iterator<Item = &'a xai_keys_core::envkeys::EnvKey>,
    ) -> Self {
        for k in keys {
            let digest = k.key_id.digest_bytes();
            self.map.entry(digest).or_insert_with(|| Entry {
                key_id: k.key_id.clone(),
                digest,
                scope: k.scope,
                expires_at: None,
                disabled: false,
                env_var: Some(k.var),
            });
        }
        self
    }

    /// The keys from the environment this index serves.
    pub fn env_entries(&self) -> impl Iterator<Item = &Entry> {
        self.map.values().filter(|e| e.env_var.is_some())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: &KeyId) -> Option<&Entry> {
        self.map.get(&id.digest_bytes())
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.map.values()
    }

    /// Finds the key a presented secret belongs to.
    pub fn lookup(&self, presented: &str) -> Lookup<'_> {
        if presented.is_empty() {
            return Lookup::Unknown;
        }
        if matches!(classify(presented), TokenShape::Malformed(_)) {
            return Lookup::Malformed;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        match self.map.get(&digest) {
            Some(e) if bool::from(e.digest.ct_eq(&digest)) => Lookup::Found(e),
            _ => Lookup::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xai_keys_core::token::PlainToken;

    fn rec(scope: Scope, exp: Option<f64>, disabled: bool) -> KeyRecord {
        KeyRecord {
            label: "t".into(),
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

    #[test]
    fn lookup_by_digest() {
        let t = PlainToken::generate().unwrap();
        let mut keys = KeyMap::new();
        keys.insert(t.key_id(), rec(Scope::User, Some(100.0), false));
        let idx = KeyIndex::from_keys(&keys);
        match idx.lookup(t.expose()) {
            Lookup::Found(e) => {
                assert_eq!(e.key_id, t.key_id());
                assert_eq!(e.state(99.0), KeyState::Active);
                assert_eq!(e.state(100.0), KeyState::Expired);
            }
            other => panic!("{other:?}"),
        }
        let mut bad = t.expose().to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'a' { 'b' } else { 'a' });
        assert!(matches!(idx.lookup(&bad), Lookup::Malformed));
        assert!(matches!(idx.lookup("legacy-or-unknown"), Lookup::Unknown));
        assert!(matches!(idx.lookup(""), Lookup::Unknown));
    }

    #[test]
    fn restriction_only_takes_restrictions() {
        let a = PlainToken::generate().unwrap().key_id();
        let b = PlainToken::generate().unwrap().key_id();
        let c = PlainToken::generate().unwrap().key_id();
        let mut good = KeyMap::new();
        good.insert(a.clone(), rec(Scope::User, Some(100.0), false));
        good.insert(b.clone(), rec(Scope::User, Some(100.0), true));
        let idx = KeyIndex::from_keys(&good);
        let mut edited = KeyMap::new();
        edited.insert(a.clone(), rec(Scope::User, Some(1000.0), false)); // extended
        edited.insert(b.clone(), rec(Scope::User, Some(50.0), false)); // re-enabled, shortened
        edited.insert(c.clone(), rec(Scope::Admin, None, false)); // added
        let r = idx.restricted_by(&edited);
        assert_eq!(r.get(&a).unwrap().expires_at, Some(100.0));
        assert!(r.get(&b).unwrap().disabled);
        assert_eq!(r.get(&b).unwrap().expires_at, Some(50.0));
        assert!(r.get(&c).is_none());
        edited.remove(&a); // removed
        assert!(idx.restricted_by(&edited).get(&a).is_none());
    }
}
