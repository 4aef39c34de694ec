//! The store interface: one trait, several backends.
//!
//! The CLI, the gateway and the tests talk to [`KeyStore`] only. A backend keeps the keys and the
//! audit log together and guarantees that a commit is all-or-nothing, serialised with every other
//! writer (other threads and other processes), and durable with its audit lines before it returns.
//! The local JSON file ([`file::FileStore`]) is the default; a distributed backend (etcd) plugs in
//! behind the same trait.
//!
//! Beside the keys, a backend keeps last-use statistics ([`crate::usage`]): a long-running
//! gateway records them in batches, front ends read them. They are not audited and not part of
//! the store's integrity: losing them loses nothing but statistics.

use std::path::Path;

use crate::audit::{Actor, AuditDraft, EventPage, EventQuery, FollowFrom, LogFollower};
use crate::error::Result;
use crate::record::KeyMap;
use crate::usage::UsageMap;
use crate::window::ChangeWindow;

pub mod file;
pub(crate) mod fsutil;

/// Reads a small regular file that a hostile local user might replace: `None` when it does not
/// exist; never follows a symbolic link, never blocks on a FIFO, refuses more than `max` bytes.
/// For the settings files front ends read (allow-lists, key rings).
pub fn read_small_regular_file(path: &std::path::Path, max: u64) -> crate::Result<Option<Vec<u8>>> {
    fsutil::read_small_regular(path, max)
}

pub use file::{Durability, FileStore, FileStoreOptions};

/// How a loaded store stands against the state its audit log last recorded.
///
/// Readers serve the keys whatever this says (a writer refuses all but [`Integrity::Recorded`]
/// and [`Integrity::NoChainYet`]); a front end can use it to alert, to expose a health signal,
/// or to refuse to serve. The same finding is also one of [`Snapshot::warnings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// The store is the state recorded by the last audit line.
    Recorded,
    /// No chained audit line yet (a reference-format store, or nothing written): nothing to check against.
    NoChainYet,
    /// The store differs from the state the log last recorded (edited outside xai-keys, or the log was truncated).
    Mismatch,
    /// The store carries our records but the log has no chained line (log emptied/replaced).
    Erased,
    /// The log tail could not be read or is damaged; message says why.
    Unverifiable(String),
}

impl Integrity {
    /// Whether the store is anchored to its log as far as a tail read can tell
    /// ([`Integrity::Recorded`] or [`Integrity::NoChainYet`]): the states writers accept.
    pub fn is_consistent(&self) -> bool {
        matches!(self, Integrity::Recorded | Integrity::NoChainYet)
    }

    /// A short stable name (`recorded`, `no_chain_yet`, `mismatch`, `erased`,
    /// `unverifiable`), for metrics labels and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Integrity::Recorded => "recorded",
            Integrity::NoChainYet => "no_chain_yet",
            Integrity::Mismatch => "mismatch",
            Integrity::Erased => "erased",
            Integrity::Unverifiable(_) => "unverifiable",
        }
    }
}

/// A consistent read of the store.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub keys: KeyMap,
    /// False when the store does not exist yet (no keys; nothing was created).
    pub exists: bool,
    /// Non-fatal findings an operator should see (readable permissions, legacy records…).
    pub warnings: Vec<String>,
    /// The store against its audit log (the structured form of the integrity warning, if any).
    pub integrity: Integrity,
}

/// An opaque token that changes whenever the store may have changed (a commit, a rename, a
/// truncation, a replacement, a chmod, an out-of-band edit). Compare two for equality only:
/// a long-running front end polls [`KeyStore::version`] and calls [`KeyStore::load`] when it
/// differs from the last one it loaded at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVersion(pub String);

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
    /// Transactions the restore was committed in: 1, unless the backend bounds a transaction
    /// (etcd's `--max-txn-ops`) below the records it rewrites; then each part is its own audited
    /// commit, restrictions first (see the etcd backend's `restore`).
    pub transactions: usize,
}

/// A change applied under the store's exclusive lock to a freshly read map. It returns the
/// audit lines describing what it did; an empty list means "nothing to do" and writes nothing.
pub type Change<'a> = dyn FnMut(&mut KeyMap) -> Result<Vec<AuditDraft>> + 'a;

/// How current a backend's view of the store is (see [`KeyStore::freshness`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// Reads reflect the store (a local file is always read directly; a networked backend has
    /// confirmed its view with the cluster recently).
    Live,
    /// The backend cannot confirm its view: reads return the last state it saw.
    Stale {
        /// Seconds since the view was last confirmed.
        for_secs: f64,
        /// Why (the last error).
        problem: String,
    },
}

/// A key store with its audit log.
pub trait KeyStore: Send + Sync {
    /// Where the store lives, for messages (`/abs/path/api_keys.json`, `etcd://…`).
    fn location(&self) -> String;

    /// Whether what [`KeyStore::load`] returns is confirmed current. A file store reads the
    /// file every time and is always [`Freshness::Live`]; a networked backend serving from a
    /// watched copy reports how long it has gone without confirming it, so that a gateway can
    /// stop trusting an index it can no longer refresh.
    fn freshness(&self) -> Freshness {
        Freshness::Live
    }

    /// Reads the current keys. Creates no store, no log and no key; the file store may complete
    /// an interrupted commit first (rolling its pending file forward or cutting an uncommitted
    /// log tail, as a writer would) and, to do so or to look again at a store that does not match
    /// its log, takes the writers' lock, creating the empty `<store>.lock` file.
    fn load(&self, now: f64) -> Result<Snapshot>;

    /// A cheap change detector (a few `stat` calls for the file store; nothing is read or
    /// created): equal versions mean nothing a [`KeyStore::load`] reads has changed. Take the
    /// version *before* the load it describes, so a change in between is seen at the next poll.
    fn version(&self) -> Result<StoreVersion>;

    /// Waits at most `limit` for the store to change from version `seen`, returning early when
    /// the backend learns of a change (a watched copy that moved). A polling front end calls it
    /// between polls instead of sleeping. The file store has no such signal: it sleeps.
    fn wait_for_change(&self, seen: Option<&StoreVersion>, limit: std::time::Duration) {
        let _ = seen;
        std::thread::sleep(limit);
    }

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

    /// Reads the last-use statistics (no lock: they are replaced atomically). Nothing recorded
    /// yet is an empty map; an unreadable record is [`crate::Error::CorruptUsage`].
    fn usage(&self) -> Result<UsageMap>;

    /// Merges `deltas` into the last-use statistics under the backend's usage lock (counts add;
    /// the last use, client and route come from whichever side has the later `last_used`),
    /// drops every key for which `live(key_id)` is false (revoked keys), and writes the result
    /// atomically with `updated = now`. See [`crate::usage::merge`].
    fn record_usage(&self, deltas: &UsageMap, live: &dyn Fn(&str) -> bool, now: f64) -> Result<()>;

    /// A follower of the audit log from a position saved earlier ([`FollowFrom`]), or from
    /// the end of the log (`None`: only lines appended from now on). A saved position whose
    /// file identity no longer matches (the log copied, restored from a snapshot, or on a
    /// device renumbered at boot) is kept when the line ending there still has the saved hash,
    /// and otherwise read from the start of the new file.
    fn log_follower(&self, from: Option<FollowFrom>) -> Result<LogFollower>;

    /// Checks the whole audit log's hash chain (read only, nothing is locked or written):
    /// `None` when it holds, else the first broken line (1-based) and the problem.
    fn check_log_chain(&self) -> Result<Option<(usize, String)>>;

    /// The change window as last recorded, open or not (check [`ChangeWindow::is_open`]).
    fn change_window(&self) -> Result<Option<ChangeWindow>>;

    /// Records `window` (`Some`: opened, `None`: closed) together with its audit line `draft`,
    /// serialised with every other open and close. Opening while a window is open at `now` is
    /// [`crate::Error::WindowOpen`]; closing when none is open writes nothing (`Ok(None)`).
    /// Use [`crate::window::open`] and [`crate::window::close`], which validate first.
    fn set_change_window(
        &self,
        actor: &Actor,
        now: f64,
        window: Option<&ChangeWindow>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>>;

    /// The lockdown in force, if any ([`crate::lockdown`]).
    fn lockdown(&self) -> Result<Option<crate::lockdown::Lockdown>>;

    /// Records `lockdown` (`Some`: on, or replaced; `None`: off) together with its audit line
    /// `draft`, serialised with every other change of lockdown. Turning it off when it is not
    /// on writes nothing (`Ok(None)`). Use [`crate::lockdown::engage`] and
    /// [`crate::lockdown::release`], which validate first.
    fn set_lockdown(
        &self,
        actor: &Actor,
        now: f64,
        lockdown: Option<&crate::lockdown::Lockdown>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>>;
}
