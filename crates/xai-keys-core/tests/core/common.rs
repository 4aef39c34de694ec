//! Shared helpers: stores in temporary directories, an actor, replaying the audit log.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use xai_keys_core::audit::{Actor, AuditEvent};
use xai_keys_core::policy::TtlPolicy;
use xai_keys_core::record::{self, KeyMap, LoadContext};
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions};

/// A start time well inside the epoch-seconds range the tool sees in practice.
pub const T0: f64 = 1_760_000_000.25;

pub fn actor() -> Actor {
    Actor::Cli {
        user: "tester".into(),
        host: "host".into(),
    }
}

pub fn policy() -> TtlPolicy {
    TtlPolicy {
        allow_permanent: true,
        ..TtlPolicy::default()
    }
}

/// `<dir>/keys/api_keys.json` (the directory is created 0700 by the first commit).
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("keys").join("api_keys.json")
}

pub fn sibling(store: &Path, suffix: &str) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn open(store: &Path, durability: Durability) -> FileStore {
    FileStore::new(
        store,
        FileStoreOptions {
            durability,
            ..FileStoreOptions::default()
        },
    )
    .unwrap()
}

/// A store without fsync, for tests that commit many times.
pub fn fast(store: &Path) -> FileStore {
    open(store, Durability::UnsafeNoSync)
}

pub fn parse_keys(bytes: &[u8]) -> KeyMap {
    record::parse_store(
        bytes,
        Path::new("store"),
        LoadContext {
            now: T0,
            default_ttl_secs: 86_400.0,
        },
    )
    .unwrap()
}

/// Key ids in a store file (empty if it does not exist).
pub fn ids_in_file(store: &Path) -> BTreeSet<String> {
    match std::fs::read(store) {
        Ok(b) => parse_keys(&b).keys().map(|k| k.to_string()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Complete lines of a log, parsed.
pub fn log_events(log: &Path) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn action(e: &AuditEvent) -> &str {
    e.get("action").and_then(Value::as_str).unwrap_or("")
}

pub fn key_id(e: &AuditEvent) -> String {
    e.get("key_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The key set the audit log describes: `issue` adds, `revoke` removes.
pub fn replay(events: &[AuditEvent]) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for e in events {
        match action(e) {
            "issue" => {
                assert!(s.insert(key_id(e)), "issued twice: {e:?}");
            }
            "revoke" => {
                assert!(s.remove(&key_id(e)), "revoked a key not present: {e:?}");
            }
            _ => {}
        }
    }
    s
}

/// Writes a file 0600 (creating its directory 0700), as the store's own files are.
pub fn write_private(path: &Path, bytes: &[u8]) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Issues a default user key through `m`; returns its id.
pub fn issue(m: &xai_keys_core::ops::KeyManager<'_>, label: &str, now: f64) -> String {
    m.issue(
        xai_keys_core::ops::IssueRequest {
            scope: xai_keys_core::Scope::User,
            label: label.into(),
            ttl: xai_keys_core::policy::TtlRequest::Default,
            secret: None,
        },
        &actor(),
        now,
    )
    .unwrap()
    .info
    .key_id
    .to_string()
}
