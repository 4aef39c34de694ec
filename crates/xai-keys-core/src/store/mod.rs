//! The store interface: one trait, several backends.
//!
//! The CLI, the gateway and the tests talk to [`KeyStore`] only. A backend keeps the keys and the
//! audit log together and guarantees that a commit is all-or-nothing, serialised with every other
//! writer (other threads and other processes), and durable with its audit lines before it returns.
//! The local JSON file ([`file::FileStore`]) is the default; a distributed backend (etcd) plugs in
//! behind the same trait.

use std::path::Path;

use crate::audit::{Actor, AuditDraft, EventPage, EventQuery};
use crate::error::Result;
use crate::record::KeyMap;

pub mod file;
pub(crate) mod fsutil;

pub use file::{Durability, FileStore, FileStoreOptions};

/// A consistent read of the store.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub keys: KeyMap,
    /// False when the store does not exist yet (no keys; nothing was created).
    pub exists: bool,
    /// Non-fatal findings an operator should see (readable permissions, legacy records…).
    pub warnings: Vec<String>,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// The audit lines appended, in order (empty when the change was a no-op).
    pub lines: Vec<crate::audit::AuditEvent>,
    pub store_sha256: String,
    pub warnings: Vec<String>,
}

/// One status line of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    pub detail: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub store: String,
    pub log: String,
    pub ok: bool,
    pub keys: usize,
    pub log_lines: usize,
    pub checks: Vec<Check>,
}

/// Options of `verify`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Record the current store file as the audited state (after an out-of-band change).
    pub adopt: bool,
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupManifest {
    pub format: String,
    pub created: f64,
    pub source: String,
    pub store_file: String,
    pub store_sha256: String,
    pub store_bytes: u64,
    pub keys: usize,
    pub log_file: String,
    pub log_sha256: String,
    pub log_bytes: u64,
    pub log_lines: usize,
    pub log_last_hash: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub restored_keys: usize,
    /// Keys in the backup whose revocation the live log records after the backup: left out.
    pub revoked_since_backup: Vec<String>,
    /// Keys in the backup disabled or shortened since the backup: kept that way.
    pub restricted_since_backup: Vec<String>,
    /// Keys in the live store that the backup does not have (issued after it): dropped.
    pub dropped_keys: Vec<String>,
}

/// A change applied under the store's exclusive lock to a freshly read map. It returns the
/// audit lines describing what it did; an empty list means "nothing to do" and writes nothing.
pub type Change<'a> = dyn FnMut(&mut KeyMap) -> Result<Vec<AuditDraft>> + 'a;

/// A key store with its audit log.
pub trait KeyStore: Send + Sync {
    /// Where the store lives, for messages (`/abs/path/api_keys.json`, `etcd://…`).
    fn location(&self) -> String;

    /// Reads the current keys. Never creates anything.
    fn load(&self, now: f64) -> Result<Snapshot>;

    /// Applies `change` atomically and durably, with its audit lines, as `actor` at `now`.
    fn commit(&self, actor: &Actor, now: f64, change: &mut Change<'_>) -> Result<CommitInfo>;

    /// Reads recent audit events (tail only).
    fn events(&self, q: &EventQuery) -> Result<EventPage>;

    /// Checks the store, the audit chain and permissions.
    fn verify(&self, actor: &Actor, now: f64, opts: VerifyOptions) -> Result<VerifyReport>;

    /// Writes a consistent snapshot (store, log, manifest) to the new directory `out`.
    fn backup(&self, out: &Path, now: f64) -> Result<BackupManifest>;

    /// Restores a backup without truncating the live log or reviving revoked keys.
    fn restore(&self, from: &Path, actor: &Actor, now: f64) -> Result<RestoreReport>;
}
