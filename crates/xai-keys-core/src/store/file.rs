//! The local JSON file backend: `<store>`, `<store>.log`, `<store>.lock`, `<store>.pending`,
//! and the last-use statistics `<store>.usage` with their own lock `<store>.usage.lock`
//! ([`crate::usage`]), and the change window `<store>.window` ([`crate::window`]).
//!
//! Commit protocol (documented in `docs/ARCHITECTURE.md`), all under an exclusive `flock` on
//! `<store>.lock` plus an in-process mutex:
//!
//! 1. Recover: drop a torn final log line (an append that never completed, including intact
//!    `tx_continues` lines that link to the head), and if the store's SHA-256 differs from the
//!    `store_sha256` of the last log line, roll forward from `<store>.pending` (a regular file,
//!    never a link) when its digest matches, else refuse (`StoreMismatch`). A tail that fails
//!    its checks (`audit::LogHead::problem`: edited, forged or inserted lines) is not a crash's
//!    work: nothing is removed or rolled forward, and writers refuse (`CorruptLog`).
//! 2. Re-read the store (or reuse the cached parse when its inode, size, mtime and ctime are
//!    unchanged), apply the change, render the new file (a long-running process re-serialises
//!    only the records that changed: `record::RenderCache`).
//! 3. Write `<store>.pending` (0600), fsync it and the directory.
//! 4. Append the audit lines (each carrying the new store's SHA-256; all but the last marked
//!    `tx_continues`) and fsync the log. This is the commit point: a commit counts only once
//!    its last line is complete, so recovery removes a partial line *and* the complete lines
//!    of a commit whose append was cut short (`audit::TX_CONTINUES`).
//! 5. Rename `<store>.pending` over `<store>`, fsync the directory. Report success.
//!
//! A crash before 4 leaves the old store and log (the pending file is discarded by the next
//! writer); a crash after 4 leaves a log that is one transaction ahead, completed by the next
//! writer, `verify` or reader. Either way no acknowledged change is lost and nothing unaudited
//! reaches the store.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::fsutil::{self, check_all};
use super::{
    BackupManifest, Change, Check, CommitInfo, Integrity, KeyStore, RestoreReport, Snapshot,
    StoreVersion, VerifyOptions, VerifyReport,
};
use crate::audit::{self, Actor, AuditDraft, EventPage, EventQuery};
use crate::error::{Error, Result};
use crate::record::{self, KeyMap, LoadContext, RenderCache};
use crate::token::{sha256_hex, short};
use crate::usage::{self, UsageMap};

/// Whether commits fsync. Only benchmarks measuring "excluding fsync" turn it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the pending file, the log and the directory (the default; always in production).
    Full,
    /// Skip fsync. Loses the crash guarantees; for benchmarks only.
    UnsafeNoSync,
}

/// Options of a [`FileStore`].
#[derive(Debug, Clone, Copy)]
pub struct FileStoreOptions {
    pub durability: Durability,
    /// How long a writer waits for another process's lock.
    pub lock_timeout: Duration,
    /// Called once (with the lock file's path) when a writer has waited [`LOCK_WAIT_NOTICE`]
    /// for another process's lock, so that a front end can say why it is silent.
    pub on_lock_wait: Option<fn(&Path)>,
    /// Default TTL, used to hydrate legacy records that lack `expires_at`.
    pub default_ttl_secs: f64,
}

/// How long a writer waits for the lock before [`FileStoreOptions::on_lock_wait`] is called.
pub const LOCK_WAIT_NOTICE: Duration = Duration::from_secs(1);

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            durability: Durability::Full,
            lock_timeout: Duration::from_secs(30),
            on_lock_wait: None,
            default_ttl_secs: crate::policy::TtlPolicy::default().default_ttl_secs,
        }
    }
}

/// Identity of a file version: a rename-based write always changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(m: &fs::Metadata) -> Self {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

#[derive(Debug)]
struct Cached {
    stamp: FileStamp,
    digest: String,
    keys: KeyMap,
    /// The records' rendered text, so that a commit re-serialises only what it changed.
    rendered: RenderCache,
}

/// Store bytes read (and hashed) by recovery, reused by the parse that follows.
struct PreRead {
    stamp: FileStamp,
    bytes: Vec<u8>,
    digest: String,
}

/// The current store contents as read under the lock.
struct Current {
    keys: KeyMap,
    /// SHA-256 of the file bytes; `None` when the file does not exist.
    digest: Option<String>,
    stamp: Option<FileStamp>,
    rendered: RenderCache,
}

impl Current {
    /// No store file: no keys.
    fn missing() -> Self {
        Current {
            keys: KeyMap::new(),
            digest: None,
            stamp: None,
            rendered: RenderCache::default(),
        }
    }
}

/// Computes a restore's replacement map and audit lines from the live log bytes.
pub(crate) type ReplacementPlan<'a> = dyn FnMut(&[u8]) -> Result<(KeyMap, Vec<AuditDraft>)> + 'a;

/// The outcome of recovery (step 1).
struct Recovered {
    head: audit::LogHead,
    /// The live store, when the commit builds on it.
    current: Option<Current>,
    /// Audit lines describing what recovery did.
    drafts: Vec<AuditDraft>,
    /// Messages for the operator.
    notes: Vec<String>,
}

/// Who runs recovery, which decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A commit on the live store: a store that is not the recorded state is refused.
    Live,
    /// `verify --adopt`: the live store is accepted as it is.
    Adopt,
    /// A restore: the store is replaced, so its state does not matter.
    Replace,
    /// A reader, `verify` or `backup`: completes or discards an interrupted commit only.
    Reader,
}

/// What the base of a commit is.
enum Base {
    /// The live store, checked against the log.
    Live,
    /// The live store, accepted as the audited state even if it differs (`verify --adopt`).
    Adopt,
    /// A replacement map; the live store is not read (restore).
    Replace(KeyMap),
}

impl Base {
    /// What recovery may do for a commit on this base.
    fn mode(&self) -> Mode {
        match self {
            Base::Live => Mode::Live,
            Base::Adopt => Mode::Adopt,
            Base::Replace(_) => Mode::Replace,
        }
    }
}

/// A JSON-file key store. Cheap to share across threads.
#[derive(Debug)]
pub struct FileStore {
    store: PathBuf,
    log: PathBuf,
    lock: PathBuf,
    pending: PathBuf,
    usage: PathBuf,
    usage_lock: PathBuf,
    window: PathBuf,
    lockdown: PathBuf,
    dir: PathBuf,
    opts: FileStoreOptions,
    /// In-process serialisation of writers, and the last parse of the store.
    cache: Mutex<Option<Cached>>,
    /// Set by the first load or commit. A first load does not keep a copy of the keys in the
    /// cache: a one-shot process (the CLI's `list`) would pay for the copy and never use it.
    served: AtomicBool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl FileStore {
    /// Opens (does not create) a store at `path`; relative paths are made absolute.
    pub fn new(path: impl AsRef<Path>, opts: FileStoreOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(Error::InvalidInput("the store path is empty".into()));
        }
        let store =
            std::path::absolute(path).map_err(|e| Error::io("resolve store path", path, e))?;
        if store.file_name().is_none() {
            return Err(Error::InvalidInput(format!(
                "store path {} must name a file",
                store.display()
            )));
        }
        let dir = store
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Ok(FileStore {
            log: sibling(&store, ".log"),
            lock: sibling(&store, ".lock"),
            pending: sibling(&store, ".pending"),
            usage: sibling(&store, ".usage"),
            usage_lock: sibling(&store, ".usage.lock"),
            window: sibling(&store, ".window"),
            lockdown: sibling(&store, ".lockdown"),
            store,
            dir,
            opts,
            cache: Mutex::new(None),
            served: AtomicBool::new(false),
        })
    }

    pub fn store_path(&self) -> &Path {
        &self.store
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `<store>.window`: the change window ([`crate::window`]).
    pub fn window_path(&self) -> &Path {
        &self.window
    }

    /// `<store>.lockdown`: the emergency lockdown in force ([`crate::lockdown`]).
    pub fn lockdown_path(&self) -> &Path {
        &self.lockdown
    }

    /// `<store>.usage`: the last-use statistics ([`crate::usage`]).
    pub fn usage_path(&self) -> &Path {
        &self.usage
    }

    fn ctx(&self, now: f64) -> LoadContext {
        LoadContext {
            now,
            default_ttl_secs: self.opts.default_ttl_secs,
        }
    }

    fn sync(&self) -> bool {
        self.opts.durability == Durability::Full
    }

    fn cache(&self) -> MutexGuard<'_, Option<Cached>> {
        // A poisoned cache is only a cache: start over from disk.
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                *g = None;
                g
            }
        }
    }

    /// Takes the cross-process lock, waiting up to the configured timeout (and saying so
    /// through `on_lock_wait` after [`LOCK_WAIT_NOTICE`]).
    fn lock_file(&self) -> Result<File> {
        fsutil::ensure_dir(&self.dir)?;
        // Created by root in a store another user owns, the lock file is that user's.
        fsutil::lock_exclusive(
            &self.lock,
            fsutil::owner_to_keep(&[&self.dir])?,
            self.opts.lock_timeout,
            LOCK_WAIT_NOTICE,
            self.opts.on_lock_wait,
        )
    }

    /// Reads the store, reusing the cached parse when the file is unchanged, or the bytes and
    /// digest that recovery already read (`preread`) when the file has not changed since.
    fn read_current(
        &self,
        cache: &mut Option<Cached>,
        now: f64,
        preread: Option<PreRead>,
    ) -> Result<Current> {
        let meta = match fs::metadata(&self.store) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *cache = None;
                return Ok(Current::missing());
            }
            Err(e) => return Err(Error::io("stat store", &self.store, e)),
        };
        let stamp = FileStamp::of(&meta);
        if let Some(c) = cache.take()
            && c.stamp == stamp
        {
            return Ok(Current {
                keys: c.keys,
                digest: Some(c.digest),
                stamp: Some(stamp),
                rendered: c.rendered,
            });
        }
        if let Some(p) = preread
            && p.stamp == stamp
        {
            let keys = record::parse_store(&p.bytes, &self.store, self.ctx(now))?;
            return Ok(Current {
                keys,
                digest: Some(p.digest),
                stamp: Some(stamp),
                rendered: RenderCache::default(),
            });
        }
        // The stamp kept is the one of the file actually read (it may have been replaced
        // since the stat above).
        let Some((stamp, bytes)) = read_with_stamp(&self.store)? else {
            return Ok(Current::missing());
        };
        let (keys, digest) = parse_and_digest(&bytes, &self.store, self.ctx(now))?;
        Ok(Current {
            keys,
            digest: Some(digest),
            stamp: Some(stamp),
            rendered: RenderCache::default(),
        })
    }

    /// Step 1 of the protocol, under the lock. Returns the live state and recovery notes.
    fn recover(&self, cache: &mut Option<Cached>, now: f64, mode: Mode) -> Result<Recovered> {
        let mut notes = Vec::new();
        let mut drafts = Vec::new();
        let mut head = audit::read_head(&self.log)?;
        // An edited or forged tail (not something a crash leaves): its anchor is not trusted,
        // nothing is rolled forward to it and none of its lines is removed as torn. Only a
        // restore (which replaces the store and plans from the log's lines) goes ahead.
        if let Some(p) = &head.problem
            && mode != Mode::Replace
        {
            if mode == Mode::Live
                && let Some(want) = &head.store_sha256
            {
                *cache = None;
                let bytes = fsutil::read_optional(&self.store)?;
                let got = bytes.as_deref().map(sha256_hex);
                if got.as_deref() != Some(want.as_str()) {
                    return Err(self.mismatch(
                        want,
                        got.as_deref(),
                        bytes.as_deref(),
                        now,
                        &format!("; the log's line {} also fails: {}", p.line, p.problem),
                    ));
                }
            }
            return Err(Error::CorruptLog {
                path: self.log.clone(),
                line: p.line,
                problem: p.problem.clone(),
            });
        }
        let tail_trusted = head.problem.is_none();
        if head.torn_bytes > 0 {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&self.log)
                .map_err(|e| Error::io("open audit log", &self.log, e))?;
            f.set_len(head.complete_len)
                .map_err(|e| Error::io("truncate torn line", &self.log, e))?;
            if self.sync() {
                f.sync_all()
                    .map_err(|e| Error::io("fsync audit log", &self.log, e))?;
            }
            notes.push(format!(
                "removed an interrupted, uncommitted append ({} bytes) from the end of {}",
                head.torn_bytes,
                self.log.display()
            ));
            drafts.push(
                AuditDraft::new("recover", None)
                    .with("detail", "removed torn final line")
                    .with("bytes", head.torn_bytes),
            );
            head.torn_bytes = 0;
        }
        let expected = head.store_sha256.clone();
        // With a cold cache the store is read and hashed once here and parsed from the same
        // bytes below (a CLI commit would otherwise read and hash it twice).
        let mut preread: Option<PreRead> = None;
        let mut digest_of_store = || -> Result<Option<String>> {
            let Some((stamp, bytes)) = read_with_stamp(&self.store)? else {
                return Ok(None);
            };
            let digest = sha256_hex(&bytes);
            preread = Some(PreRead {
                stamp,
                bytes,
                digest: digest.clone(),
            });
            Ok(Some(digest))
        };
        if let Some(want) = &expected {
            // Cheap path first: the cached digest if the file is unchanged. A stamp can repeat
            // (a reused inode, same size, timestamps within one clock tick), so a cached
            // digest that is not the recorded one proves nothing: read the file then.
            let current_digest = match cache.as_ref() {
                Some(c)
                    if c.digest == *want
                        && fs::metadata(&self.store).ok().map(|m| FileStamp::of(&m))
                            == Some(c.stamp) =>
                {
                    Some(c.digest.clone())
                }
                _ => {
                    *cache = None;
                    digest_of_store()?
                }
            };
            if current_digest.as_deref() != Some(want.as_str()) {
                if tail_trusted && self.pending_matches(want)? {
                    fs::rename(&self.pending, &self.store)
                        .map_err(|e| Error::io("roll forward pending store", &self.pending, e))?;
                    if self.sync() {
                        fsutil::sync_dir(&self.dir)?;
                    }
                    *cache = None;
                    preread = None;
                    notes.push(format!(
                        "completed an interrupted change: the audit log recorded it, {} now matches",
                        self.store.display()
                    ));
                } else if mode == Mode::Live {
                    *cache = None;
                    let bytes = fsutil::read_optional(&self.store)?;
                    return Err(self.mismatch(
                        want,
                        current_digest.as_deref(),
                        bytes.as_deref(),
                        now,
                        "",
                    ));
                }
            }
        }
        // Anything left in .pending was never committed (a symbolic link is removed, never
        // followed).
        if fs::symlink_metadata(&self.pending).is_ok() {
            fs::remove_file(&self.pending)
                .map_err(|e| Error::io("remove stale pending file", &self.pending, e))?;
        }
        let current = if matches!(mode, Mode::Live | Mode::Adopt) {
            Some(self.read_current(cache, now, preread)?)
        } else {
            None
        };
        Ok(Recovered {
            head,
            current,
            drafts,
            notes,
        })
    }

    /// Whether `<store>.pending` is a regular file (not a link to one) with SHA-256 `want`.
    fn pending_matches(&self, want: &str) -> Result<bool> {
        match fs::symlink_metadata(&self.pending) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat pending store", &self.pending, e)),
        }
        Ok(fsutil::read_optional(&self.pending)?.is_some_and(|b| sha256_hex(&b) == want))
    }

    /// A store that xai-keys wrote, with no chained audit line to anchor it.
    fn unanchored(&self) -> Error {
        Error::StoreMismatch {
            store: self.store.clone(),
            detail: format!(
                "it holds keys issued by xai-keys but {} has no chained line: the audit log was emptied, deleted or replaced (after a log rotation, accept the store with `verify --adopt`)",
                self.log.display()
            ),
        }
    }

    /// The error for a store that is not the state the log records: a store that does not
    /// even parse is reported as corrupt, with the line and column of the problem.
    fn mismatch(
        &self,
        want: &str,
        got: Option<&str>,
        bytes: Option<&[u8]>,
        now: f64,
        more: &str,
    ) -> Error {
        if let Some(b) = bytes
            && let Err(e) = record::parse_store(b, &self.store, self.ctx(now))
        {
            return e;
        }
        Error::StoreMismatch {
            store: self.store.clone(),
            detail: format!(
                "expected store_sha256 {}, found {}{more}",
                short(want),
                got.map_or("no file", short)
            ),
        }
    }

    fn commit_with(
        &self,
        actor: &Actor,
        now: f64,
        base: Base,
        change: &mut Change<'_>,
    ) -> Result<CommitInfo> {
        let mut cache = self.cache();
        let _lock = self.lock_file()?;
        self.commit_locked(&mut cache, actor, now, base, change)
    }

    /// Steps 1–5; the caller holds the in-process mutex (`cache`) and the file lock.
    fn commit_locked(
        &self,
        cache: &mut Option<Cached>,
        actor: &Actor,
        now: f64,
        base: Base,
        change: &mut Change<'_>,
    ) -> Result<CommitInfo> {
        let mut warnings = Vec::new();
        check_all(&[&self.dir, &self.store, &self.log], &mut warnings)?;
        let Recovered {
            head,
            current,
            mut drafts,
            notes,
        } = self.recover(cache, now, base.mode())?;
        warnings.extend(notes);
        // A store xai-keys wrote always has a chained line behind it. Without one the log was
        // emptied or deleted; writing now would start a fresh chain and hide the erasure.
        if matches!(base, Base::Live)
            && let Some(c) = &current
            && anchor(
                head.store_sha256.as_deref(),
                c.digest.as_deref(),
                written_by_us(&c.keys),
            ) == Anchor::Erased
        {
            *cache = None;
            return Err(self.unanchored());
        }
        let (mut keys, mut rendered) = match (base, current) {
            (Base::Replace(m), _) => (m, RenderCache::default()),
            (_, Some(c)) => (c.keys, c.rendered),
            (_, None) => (KeyMap::new(), RenderCache::default()),
        };
        // The cache was taken by read_current; it is rebuilt only after a successful write.
        let change_drafts = change(&mut keys)?;
        if change_drafts.is_empty() && drafts.is_empty() {
            return Ok(CommitInfo {
                lines: Vec::new(),
                store_sha256: String::new(),
                warnings,
            });
        }
        drafts.extend(change_drafts);
        let bytes = record::render_store_cached(&keys, &mut rendered);

        // Run as root on a store another user owns (`sudo xai-keys …`), the new store file,
        // and a log created now, keep that user as owner: a root-owned 0600 file would lock the
        // store's service out.
        let store_owner = fsutil::owner_to_keep(&[&self.store, &self.dir])?;
        let log_owner = fsutil::owner_to_keep(&[&self.dir])?;

        // 3. pending file (a large store is hashed meanwhile; the digest goes in the log lines)
        let (written, digest) = with_digest(
            &bytes,
            |b| rendered.digest(b),
            || fsutil::write_exclusive(&self.pending, &bytes, self.sync(), store_owner),
        );
        // The pending file's directory entry must be durable before the commit point, or a
        // crash could leave a committed log with nothing to roll forward from.
        let written = written.and_then(|()| {
            if self.sync() {
                fsutil::sync_dir(&self.dir)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&self.pending);
            return Err(e);
        }
        // 4. audit lines: the commit point
        let mut text = String::new();
        let mut prev = head.next_prev_hash(&self.log)?;
        let mut lines = Vec::with_capacity(drafts.len());
        // Every line but the last says the commit continues, so that a cut-short append is
        // recognised as uncommitted even when it ends on a line boundary.
        let last = drafts.len().saturating_sub(1);
        for (i, d) in drafts.iter().enumerate() {
            let marked;
            let d = if i < last {
                marked = d.clone().with(audit::TX_CONTINUES, true);
                &marked
            } else {
                d
            };
            let (event, h) = audit::build_event(now, d, actor, &digest, &prev);
            text.push_str(&Value::Object(event.clone()).to_string());
            text.push('\n');
            prev = h;
            lines.push(event);
        }
        let log_existed = head.complete_len > 0 || self.log.exists();
        if let Err(e) = self.append_log(text.as_bytes(), head.complete_len, log_owner) {
            let _ = fs::remove_file(&self.pending);
            return Err(e);
        }
        if !log_existed && self.sync() {
            fsutil::sync_dir(&self.dir)?;
        }
        // 5. publish
        fs::rename(&self.pending, &self.store)
            .map_err(|e| Error::io("rename pending store into place", &self.store, e))?;
        if self.sync() {
            fsutil::sync_dir(&self.dir)?;
        }
        if let Ok(m) = fs::metadata(&self.store) {
            self.served.store(true, Ordering::Relaxed);
            *cache = Some(Cached {
                stamp: FileStamp::of(&m),
                digest: digest.clone(),
                keys,
                rendered,
            });
        }
        Ok(CommitInfo {
            lines,
            store_sha256: digest,
            warnings,
        })
    }

    /// Appends and fsyncs; on failure removes whatever part of `bytes` reached the file.
    fn append_log(
        &self,
        bytes: &[u8],
        restore_len: u64,
        owner: Option<fsutil::Owner>,
    ) -> Result<()> {
        let mut f = fsutil::open_append(&self.log, owner)?;
        let res = f
            .write_all(bytes)
            .map_err(|e| Error::io("append to audit log", &self.log, e))
            .and_then(|()| {
                if self.sync() {
                    f.sync_data()
                        .map_err(|e| Error::io("fsync audit log", &self.log, e))
                } else {
                    Ok(())
                }
            });
        if res.is_err() {
            // Best effort: an uncommitted partial line would otherwise be removed as torn later.
            let _ = f.set_len(restore_len);
            let _ = f.sync_data();
        }
        res
    }

    /// Completes an interrupted commit if one is visible, without blocking readers for long.
    fn recover_if_pending(&self, now: f64, warnings: &mut Vec<String>) {
        if !self.pending.exists() {
            return;
        }
        let mut cache = self.cache();
        let res = self
            .lock_file()
            .and_then(|_lock| self.recover(&mut cache, now, Mode::Reader));
        match res {
            Ok(r) => warnings.extend(r.notes),
            Err(e) => warnings.push(format!("could not complete an interrupted change: {e}")),
        }
    }

    fn hydration_warnings(keys: &KeyMap, warnings: &mut Vec<String>) {
        let n = keys.values().filter(|r| r.hydration.any()).count();
        if n > 0 {
            warnings.push(format!(
                "{n} legacy record(s) lack created/scope/expires_at; defaults are shown and will be written by the next change"
            ));
        }
    }
}

impl FileStore {
    /// One read of the store checked against the log. `locked`: the caller holds the writers'
    /// lock (no commit is in flight; an interrupted one is completed here, not by taking the
    /// lock again).
    /// One read of the store checked against the log, under the in-process writers' mutex
    /// (`cache`): a commit of this process holds it from its log append to its rename, so the
    /// head and the store read here are of the same commit. `locked`: the caller also holds
    /// the writers' file lock (taken after the mutex, the writers' order), so no commit is in
    /// flight; an interrupted one is completed here rather than by taking the lock again.
    fn load_checked(
        &self,
        cache: &mut Option<Cached>,
        now: f64,
        locked: bool,
        mut warnings: Vec<String>,
    ) -> Result<Snapshot> {
        if locked && self.pending.exists() {
            match self.recover(cache, now, Mode::Reader) {
                Ok(r) => warnings.extend(r.notes),
                Err(e) => warnings.push(format!("could not complete an interrupted change: {e}")),
            }
        }
        // Cheap tamper check (a tail read): the store should be what the log last recorded.
        let head = audit::read_head(&self.log);
        let want = head.as_ref().ok().and_then(|h| h.store_sha256.clone());
        // A cached parse is reused only while the file's stamp is unchanged, and a stamp can
        // repeat (a reused inode, same size, timestamps within one clock tick): one whose
        // digest is not the recorded state may be stale, so the file is read again.
        if let (Some(c), Some(w)) = (cache.as_ref(), &want)
            && c.digest != *w
        {
            *cache = None;
        }
        let cur = self.read_current(cache, now, None)?;
        let exists = cur.stamp.is_some();
        Self::hydration_warnings(&cur.keys, &mut warnings);
        let integrity = match &head {
            Ok(audit::LogHead {
                problem: Some(p), ..
            }) => {
                let why = format!(
                    "audit log {} line {}: {}",
                    self.log.display(),
                    p.line,
                    p.problem
                );
                warnings.push(format!(
                    "{why}; the store cannot be checked against it. Run `xai-keys verify`"
                ));
                Integrity::Unverifiable(why)
            }
            Ok(_) => match anchor(
                want.as_deref(),
                cur.digest.as_deref(),
                written_by_us(&cur.keys),
            ) {
                Anchor::Erased => {
                    warnings.push(format!("{}; run `xai-keys verify`", self.unanchored()));
                    Integrity::Erased
                }
                Anchor::Mismatch { .. } => {
                    warnings.push(format!(
                        "{} is not the state recorded by the last audit line (changed outside xai-keys, or the log was truncated); run `xai-keys verify`",
                        self.store.display()
                    ));
                    Integrity::Mismatch
                }
                Anchor::Recorded => Integrity::Recorded,
                Anchor::NoChainYet => Integrity::NoChainYet,
            },
            Err(e) => {
                let why = format!("cannot read the audit log's tail: {e}");
                warnings.push(why.clone());
                Integrity::Unverifiable(why)
            }
        };
        // A cache hit implies an earlier call (only calls that set `served` fill the cache), so
        // a hit is always put back; a first load hands its parse over without copying it.
        let keep = self.served.swap(true, Ordering::Relaxed);
        let keys = match (cur.stamp, cur.digest) {
            (Some(stamp), Some(digest)) if keep => {
                let keys = cur.keys.clone();
                *cache = Some(Cached {
                    stamp,
                    digest,
                    keys: cur.keys,
                    rendered: cur.rendered,
                });
                keys
            }
            _ => cur.keys,
        };
        Ok(Snapshot {
            keys,
            exists,
            warnings,
            integrity,
        })
    }
}

impl KeyStore for FileStore {
    fn location(&self) -> String {
        self.store.display().to_string()
    }

    fn load(&self, now: f64) -> Result<Snapshot> {
        let mut warnings = Vec::new();
        // The writers' checks, directory included, before anything is read or rolled forward:
        // in a directory others can write to, the files (and `.pending`) may be theirs.
        check_all(&[&self.dir, &self.store, &self.log], &mut warnings)?;
        self.recover_if_pending(now, &mut warnings);
        let snap = self.load_checked(&mut self.cache(), now, false, warnings.clone())?;
        if !matches!(snap.integrity, Integrity::Mismatch | Integrity::Erased) {
            return Ok(snap);
        }
        // Another process may be between a commit's log append (its commit point) and its
        // rename: the log already records a store that is not in place yet. Such a commit holds
        // the writers' lock until it is complete, so look again under that lock before
        // reporting the store as changed outside xai-keys. Mutex first, then the file lock:
        // the order every writer takes them in.
        let mut cache = self.cache();
        match self.lock_file() {
            Ok(_lock) => self.load_checked(&mut cache, now, true, warnings),
            Err(_) => Ok(snap),
        }
    }

    fn version(&self) -> Result<StoreVersion> {
        let mut v = String::with_capacity(320);
        stamp_into(&mut v, 's', &self.store, true)?;
        stamp_into(&mut v, 'l', &self.log, true)?;
        // The pending file is never followed (recovery does not follow it either).
        stamp_into(&mut v, 'p', &self.pending, false)?;
        // The directory's identity and mode only: its timestamps change with every file
        // created or renamed in it (usage flushes, lock files) and would force needless loads,
        // but a chmod of it decides whether a load is refused.
        match fs::metadata(&self.dir) {
            Ok(m) => v.push_str(&format!(
                "d{}:{}:{:o}:{}:{}",
                m.dev(),
                m.ino(),
                m.mode(),
                m.uid(),
                m.gid()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => v.push_str("d-"),
            Err(e) => return Err(Error::io("stat directory", &self.dir, e)),
        }
        Ok(StoreVersion(v))
    }

    fn commit(&self, actor: &Actor, now: f64, change: &mut Change<'_>) -> Result<CommitInfo> {
        self.commit_with(actor, now, Base::Live, change)
    }

    fn events(&self, q: &EventQuery) -> Result<EventPage> {
        check_all(&[&self.dir, &self.log], &mut Vec::new())?;
        audit::read_events(&self.log, q)
    }

    fn verify(&self, actor: &Actor, now: f64, opts: VerifyOptions) -> Result<VerifyReport> {
        let mut checks = Vec::new();
        let mut push = |name: &str, status: &'static str, detail: String| {
            checks.push(Check {
                name: name.into(),
                status,
                detail,
            })
        };
        // Permissions first: nothing is rolled forward in a directory or from files others can
        // write to.
        let perms: Vec<(&str, &Path, Result<fsutil::PermCheck>)> = [
            ("directory", self.dir.as_path()),
            ("store permissions", self.store.as_path()),
            ("log permissions", self.log.as_path()),
        ]
        .into_iter()
        .map(|(name, p)| (name, p, fsutil::check_perms(p)))
        .collect();
        let perms_ok = perms.iter().all(|(_, _, r)| r.is_ok());
        // Lock (and recover) when we can; a read-only operator still gets a report.
        let mut notes = Vec::new();
        if opts.adopt {
            // Marked like KeyManager's lines when a change window is open (an unreadable
            // window counts as none: adopting is never blocked).
            let ticket = crate::window::current(self, now)
                .ok()
                .flatten()
                .map(|w| w.ticket);
            let info = self.commit_with(actor, now, Base::Adopt, &mut |keys: &mut KeyMap| {
                let mut d = AuditDraft::new("adopt", None)
                    .with(
                        "detail",
                        "store file accepted as the audited state by verify --adopt",
                    )
                    .with("keys", keys.len());
                if let Some(t) = &ticket {
                    d = d.with("change_window", t.clone());
                }
                Ok(vec![d])
            })?;
            notes.extend(info.warnings);
        } else if perms_ok {
            self.recover_if_pending(now, &mut notes);
        } else if self.pending.exists() {
            notes.push(format!(
                "an interrupted change ({}) was not completed: fix the permissions first",
                self.pending.display()
            ));
        }
        for n in notes {
            push("recovery", "warn", n);
        }
        // Permissions
        for (name, p, res) in perms {
            match res {
                Ok(fsutil::PermCheck::Ok) => {
                    push(name, "ok", format!("{} is owner-only", p.display()))
                }
                Ok(fsutil::PermCheck::Missing) => {
                    push(name, "ok", format!("{} does not exist yet", p.display()))
                }
                Ok(fsutil::PermCheck::Readable { mode: m, .. }) => push(
                    name,
                    "warn",
                    format!(
                        "{} is readable by group or others (mode {m:04o})",
                        p.display()
                    ),
                ),
                Err(e) => push(name, "fail", e.to_string()),
            }
        }
        // Store
        let bytes = fsutil::read_optional(&self.store);
        let mut keys_n = 0;
        let mut ours = false;
        let mut store_digest = None;
        // False when the store exists but cannot be read or parsed: it is then not compared
        // with the log (the "store" check fails; adopting such a store is no way out).
        let mut store_readable = true;
        match bytes {
            Ok(None) => push(
                "store",
                "ok",
                format!("{} does not exist yet (no keys)", self.store.display()),
            ),
            Ok(Some(b)) => {
                store_digest = Some(sha256_hex(&b));
                match record::parse_store(&b, &self.store, self.ctx(now)) {
                    Ok(keys) => {
                        keys_n = keys.len();
                        ours = written_by_us(&keys);
                        let legacy = keys.values().filter(|r| r.hydration.any()).count();
                        if legacy > 0 {
                            push(
                                "store",
                                "warn",
                                format!(
                                    "{keys_n} valid records; {legacy} legacy record(s) lack fields and are shown with defaults"
                                ),
                            );
                        } else {
                            push("store", "ok", format!("{keys_n} valid records"));
                        }
                    }
                    Err(e) => {
                        store_readable = false;
                        push("store", "fail", e.to_string());
                    }
                }
            }
            Err(e) => {
                store_readable = false;
                push("store", "fail", e.to_string());
            }
        }
        // Chain
        let mut log_lines = 0;
        match audit::verify_chain(&self.log) {
            Ok(rep) => {
                log_lines = rep.lines;
                match &rep.first_error {
                    Some((line, why)) => push(
                        "audit chain",
                        "fail",
                        format!("{}: first bad line {line}: {why}", self.log.display()),
                    ),
                    None => push(
                        "audit chain",
                        "ok",
                        format!(
                            "{} lines ({} legacy, {} chained), chain intact",
                            rep.lines, rep.legacy_lines, rep.chained_lines
                        ),
                    ),
                }
                if rep.torn_bytes > 0 {
                    push(
                        "audit tail",
                        "warn",
                        format!(
                            "{} bytes of an interrupted append at the end; removed by the next change",
                            rep.torn_bytes
                        ),
                    );
                }
                let state = anchor(
                    rep.last_store_sha256.as_deref(),
                    store_digest.as_deref(),
                    ours,
                );
                match state {
                    _ if !store_readable => push(
                        "store matches log",
                        "warn",
                        format!(
                            "not checked: {} cannot be read or parsed (see the store check); recover it with `xai-keys restore BACKUP`",
                            self.store.display()
                        ),
                    ),
                    Anchor::Mismatch { want } => push(
                        "store matches log",
                        "fail",
                        Error::StoreMismatch {
                            store: self.store.clone(),
                            detail: format!("log records store_sha256 {}", short(want)),
                        }
                        .to_string(),
                    ),
                    Anchor::Recorded => push(
                        "store matches log",
                        "ok",
                        "store is the state recorded by the last audit line".into(),
                    ),
                    Anchor::Erased => {
                        push("store matches log", "fail", self.unanchored().to_string())
                    }
                    Anchor::NoChainYet => push(
                        "store matches log",
                        "ok",
                        "no chained audit line yet (legacy or empty log)".into(),
                    ),
                }
            }
            Err(e) => push("audit chain", "fail", e.to_string()),
        }
        let ok = checks.iter().all(|c| c.status != "fail");
        Ok(VerifyReport {
            store: self.store.display().to_string(),
            log: self.log.display().to_string(),
            ok,
            keys: keys_n,
            log_lines,
            checks,
        })
    }

    fn backup(&self, out: &Path, now: f64) -> Result<BackupManifest> {
        crate::backup::backup_file_store(self, out, now)
    }

    fn restore(&self, from: &Path, actor: &Actor, now: f64) -> Result<RestoreReport> {
        crate::backup::restore_file_store(self, from, actor, now)
    }

    fn usage(&self) -> Result<UsageMap> {
        check_all(&[&self.dir, &self.usage], &mut Vec::new())?;
        Ok(usage::read(&self.usage)?.unwrap_or_default())
    }

    fn record_usage(&self, deltas: &UsageMap, live: &dyn Fn(&str) -> bool, now: f64) -> Result<()> {
        usage::record(
            &usage::UsagePaths {
                file: &self.usage,
                lock: &self.usage_lock,
                store: &self.store,
                dir: &self.dir,
                sync: self.sync(),
                lock_timeout: self.opts.lock_timeout,
            },
            deltas,
            live,
            now,
        )
    }

    fn log_follower(&self, from: Option<audit::FollowFrom>) -> Result<audit::LogFollower> {
        let (offset, file_id) = match from {
            Some(p) => (p.offset, audit::resume_identity(&self.log, &p)),
            None => {
                let page = audit::read_events(
                    &self.log,
                    &EventQuery {
                        limit: 1,
                        ..Default::default()
                    },
                )?;
                (page.end_offset, page.file_id)
            }
        };
        Ok(audit::LogFollower::new(&self.log, offset, file_id))
    }

    fn check_log_chain(&self) -> Result<Option<(usize, String)>> {
        Ok(audit::verify_chain(&self.log)?.first_error)
    }

    fn change_window(&self) -> Result<Option<crate::window::ChangeWindow>> {
        check_all(&[&self.dir, &self.window], &mut Vec::new())?;
        let corrupt = |problem: String| Error::CorruptWindow {
            path: self.window.clone(),
            problem,
        };
        let Some(bytes) =
            fsutil::read_small_regular(&self.window, 64 * 1024).map_err(|e| match e {
                Error::InvalidInput(m) => corrupt(m),
                other => other,
            })?
        else {
            return Ok(None);
        };
        let w: crate::window::ChangeWindow =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        // Only what `window::open` can write is believed: a hand-made file claiming a
        // window of years would mark every action as planned.
        crate::window::check_recorded(&w).map_err(corrupt)?;
        Ok(Some(w))
    }

    /// The audit line is the record; the window file is what readers consult. A close removes
    /// the file before its line is written and an open writes it after, so a crash in between
    /// can only leave the window closed, never open without its `window_open` line. Opens and
    /// closes are serialised by `<store>.window.lock`, held from the check to the file write,
    /// so two concurrent opens cannot both succeed.
    fn set_change_window(
        &self,
        actor: &Actor,
        now: f64,
        window: Option<&crate::window::ChangeWindow>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>> {
        let lock_path = sibling(&self.store, ".window.lock");
        check_all(&[&self.dir, &self.window, &lock_path], &mut Vec::new())?;
        fsutil::ensure_dir(&self.dir)?;
        let _lock = fsutil::lock_exclusive(
            &lock_path,
            fsutil::owner_to_keep(&[&self.store, &self.dir])?,
            self.opts.lock_timeout,
            LOCK_WAIT_NOTICE,
            self.opts.on_lock_wait,
        )?;
        if !crate::window::plan_change(window, self.change_window()?, now)? {
            return Ok(None);
        }
        if window.is_none() {
            match fs::remove_file(&self.window) {
                Ok(()) => {
                    if self.sync() {
                        fsutil::sync_dir(&self.dir)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove change window file", &self.window, e)),
            }
        }
        let mut draft = Some(draft);
        let info = self.commit(actor, now, &mut |_keys: &mut KeyMap| {
            Ok(draft.take().into_iter().collect())
        })?;
        if let Some(w) = window {
            self.write_state_file(&self.window, w, "change window")?;
        }
        Ok(Some(info))
    }

    fn lockdown(&self) -> Result<Option<crate::lockdown::Lockdown>> {
        check_all(&[&self.dir, &self.lockdown], &mut Vec::new())?;
        let corrupt = |problem: String| Error::CorruptLockdown {
            path: self.lockdown.clone(),
            problem,
        };
        let Some(bytes) =
            fsutil::read_small_regular(&self.lockdown, 64 * 1024).map_err(|e| match e {
                Error::InvalidInput(m) => corrupt(m),
                other => other,
            })?
        else {
            return Ok(None);
        };
        let l: crate::lockdown::Lockdown =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        crate::lockdown::check_recorded(&l).map_err(corrupt)?;
        Ok(Some(l))
    }

    /// Fails safe: on, the file is written before the audit line; off, the line is written
    /// before the file is removed. A crash in between leaves the lockdown in force (and
    /// `lockdown off` finishes the job), never recorded but not in force. Serialised by
    /// `<store>.lockdown.lock`.
    fn set_lockdown(
        &self,
        actor: &Actor,
        now: f64,
        lockdown: Option<&crate::lockdown::Lockdown>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>> {
        let lock_path = sibling(&self.store, ".lockdown.lock");
        check_all(&[&self.dir, &self.lockdown, &lock_path], &mut Vec::new())?;
        fsutil::ensure_dir(&self.dir)?;
        let owner = fsutil::owner_to_keep(&[&self.store, &self.dir])?;
        let _lock = fsutil::lock_exclusive(
            &lock_path,
            owner,
            self.opts.lock_timeout,
            LOCK_WAIT_NOTICE,
            self.opts.on_lock_wait,
        )?;
        // A damaged file still counts as "on" for turning it off (the off line is written and
        // the file removed); only "nothing there" makes off a no-op.
        let present = match self.lockdown() {
            Ok(l) => l.is_some(),
            Err(Error::CorruptLockdown { .. }) => true,
            Err(e) => return Err(e),
        };
        if lockdown.is_none() && !present {
            return Ok(None);
        }
        if let Some(l) = lockdown {
            self.write_state_file(&self.lockdown, l, "lockdown")?;
        }
        let mut draft = Some(draft);
        let info = self.commit(actor, now, &mut |_keys: &mut KeyMap| {
            Ok(draft.take().into_iter().collect())
        })?;
        if lockdown.is_none() {
            match fs::remove_file(&self.lockdown) {
                Ok(()) => {
                    if self.sync() {
                        fsutil::sync_dir(&self.dir)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove lockdown file", &self.lockdown, e)),
            }
        }
        Ok(Some(info))
    }
}

/// State files beside the store (the change window, the lockdown).
impl FileStore {
    /// Writes `value` as pretty JSON to `path` by a new 0600 file renamed into place (and, when
    /// durable, synced with its directory), owned like the store.
    fn write_state_file(
        &self,
        path: &Path,
        value: &impl serde::Serialize,
        what: &str,
    ) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::InvalidInput(format!("cannot render the {what}: {e}")))?;
        bytes.push(b'\n');
        let tmp = usage::temp_path(path)?;
        fsutil::write_exclusive(
            &tmp,
            &bytes,
            self.sync(),
            fsutil::owner_to_keep(&[&self.store, &self.dir])?,
        )?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("rename state file into place", path, e));
        }
        if self.sync() {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Internals shared with `backup.rs`.
impl FileStore {
    /// Runs `f` under the lock after recovery, with the store bytes and the complete log bytes.
    pub(crate) fn with_locked_files<T>(
        &self,
        now: f64,
        f: impl FnOnce(Option<&[u8]>, &[u8]) -> Result<T>,
    ) -> Result<T> {
        check_all(&[&self.dir, &self.store, &self.log], &mut Vec::new())?;
        let mut cache = self.cache();
        let _lock = self.lock_file()?;
        let head = self.recover(&mut cache, now, Mode::Reader)?.head;
        let store = fsutil::read_optional(&self.store)?;
        let mut log = fsutil::read_optional(&self.log)?.unwrap_or_default();
        log.truncate(usize::try_from(head.complete_len).unwrap_or(log.len()));
        f(store.as_deref(), &log)
    }

    /// Replaces the store with `keys` as a restore, appending `draft` (computed from the live
    /// log bytes). If the live log is missing, `seed_log` becomes the live log first.
    pub(crate) fn commit_replacement(
        &self,
        actor: &Actor,
        now: f64,
        seed_log: &[u8],
        plan: &mut ReplacementPlan<'_>,
    ) -> Result<CommitInfo> {
        // The writers' checks before anything is created or rolled forward (they run again,
        // under the lock, in commit_locked).
        check_all(&[&self.dir, &self.store, &self.log], &mut Vec::new())?;
        let mut cache = self.cache();
        let _lock = self.lock_file()?;
        if fs::symlink_metadata(&self.log).is_err() {
            fsutil::write_exclusive(
                &self.log,
                seed_log,
                self.sync(),
                fsutil::owner_to_keep(&[&self.dir])?,
            )?;
            if self.sync() {
                fsutil::sync_dir(&self.dir)?;
            }
        }
        // Plan from committed state only: complete an interrupted commit (so its revocations
        // count and the live store is current) or drop its uncommitted lines first.
        let recovered = self.recover(&mut cache, now, Mode::Replace)?;
        let live_log = fsutil::read_optional(&self.log)?.unwrap_or_default();
        let (keys, planned) = plan(&live_log)?;
        let mut drafts = Some(recovered.drafts.into_iter().chain(planned).collect());
        let mut info = self.commit_locked(
            &mut cache,
            actor,
            now,
            Base::Replace(keys),
            &mut |_keys: &mut KeyMap| Ok(drafts.take().unwrap_or_default()),
        )?;
        info.warnings.extend(recovered.notes);
        Ok(info)
    }
}

/// Whether a store holds records only xai-keys writes (`origin` is ours, never the reference
/// tool's). Such a store always has a chained audit line: without one, the log was emptied,
/// deleted or replaced; writers refuse, `verify` fails and readers warn until `verify --adopt`
/// (e.g. after a log rotation). A heuristic against accidents and naive tampering: an editor
/// can drop the field too.
fn written_by_us(keys: &KeyMap) -> bool {
    keys.values().any(|r| r.origin.is_some())
}

/// How the store stands against the state the audit log last recorded. One decision for
/// writers (which refuse all but `Recorded`/`NoChainYet`), readers (which warn) and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor<'a> {
    /// The store is the state the last chained line records.
    Recorded,
    /// The log records another state (`want`): an out-of-band edit or a truncated log.
    Mismatch { want: &'a str },
    /// The store holds xai-keys records but the log has no chained line: the log was erased.
    Erased,
    /// A legacy or empty log and a store xai-keys has not written: the chain starts later.
    NoChainYet,
}

fn anchor<'a>(want: Option<&'a str>, digest: Option<&str>, ours: bool) -> Anchor<'a> {
    match want {
        Some(w) if digest == Some(w) => Anchor::Recorded,
        Some(w) => Anchor::Mismatch { want: w },
        None if ours => Anchor::Erased,
        None => Anchor::NoChainYet,
    }
}

/// Appends `tag` and the stamp of `path` (device, inode, size, mtime and ctime in nanoseconds,
/// mode, owner) to `out`, or `tag-` when it does not exist. `follow`: stat through a link.
fn stamp_into(out: &mut String, tag: char, path: &Path, follow: bool) -> Result<()> {
    let meta = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    match meta {
        Ok(m) => {
            let s = FileStamp::of(&m);
            out.push_str(&format!(
                "{tag}{}:{}:{}:{}:{}:{:o}:{}:{};",
                s.dev,
                s.ino,
                s.len,
                s.mtime_ns,
                s.ctime_ns,
                m.mode(),
                m.uid(),
                m.gid()
            ));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(tag);
            out.push_str("-;");
            Ok(())
        }
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Reads a file with the stamp of the very file read (`None` if it does not exist).
fn read_with_stamp(path: &Path) -> Result<Option<(FileStamp, Vec<u8>)>> {
    use std::io::Read;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read store", path, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("stat store", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read store", path, e))?;
    Ok(Some((FileStamp::of(&meta), bytes)))
}

/// Parses store bytes and computes their SHA-256 (for the log anchor check and the cache).
fn parse_and_digest(bytes: &[u8], path: &Path, ctx: LoadContext) -> Result<(KeyMap, String)> {
    let (keys, digest) = with_digest(bytes, sha256_hex, || record::parse_store(bytes, path, ctx));
    Ok((keys?, digest))
}

/// Runs `work` and computes the SHA-256 of `bytes` with `hash` (hex, as `sha256_hex`). For a
/// large store (≥ 1 MiB, ~4,000 keys) the hash runs on a second thread meanwhile: it is the
/// largest part of a commit's CPU time, and with fsync it then costs no wall time at all.
fn with_digest<T>(
    bytes: &[u8],
    hash: impl FnOnce(&[u8]) -> String + Send,
    work: impl FnOnce() -> T,
) -> (T, String) {
    const PARALLEL_FROM: usize = 1 << 20;
    if bytes.len() < PARALLEL_FROM {
        return (work(), hash(bytes));
    }
    let (out, digest) = std::thread::scope(|s| {
        let hasher = std::thread::Builder::new()
            .name("xai-keys-sha256".into())
            .spawn_scoped(s, || hash(bytes));
        let out = work();
        (out, hasher.ok().and_then(|h| h.join().ok()))
    });
    // No thread (resource limits) or a failed one: hash here.
    (out, digest.unwrap_or_else(|| sha256_hex(bytes)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ops::{IssueRequest, KeyManager};
    use crate::policy::{TtlPolicy, TtlRequest};

    fn fast(path: &Path) -> FileStore {
        FileStore::new(
            path,
            FileStoreOptions {
                durability: Durability::UnsafeNoSync,
                ..FileStoreOptions::default()
            },
        )
        .unwrap()
    }

    /// Loads running while commits land (same store object, and a second object standing for
    /// another process, each with its own writer) always see a store that matches its log:
    /// never a spurious mismatch, and the re-check under the lock never deadlocks with a
    /// writer of its own object (a writer waiting out the lock timeout fails this test).
    #[test]
    fn loads_during_commits_never_report_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let opts = || FileStoreOptions {
            durability: Durability::UnsafeNoSync,
            lock_timeout: std::time::Duration::from_secs(5),
            ..FileStoreOptions::default()
        };
        let store = FileStore::new(&path, opts()).unwrap();
        let other = FileStore::new(&path, opts()).unwrap();
        let m = KeyManager::new(&store, TtlPolicy::default());
        let m2 = KeyManager::new(&other, TtlPolicy::default());
        issue(&m, 1.0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let writers: Vec<_> = [&m, &m2]
                .into_iter()
                .map(|m| {
                    s.spawn(move || {
                        for i in 0..100 {
                            issue(m, 2.0 + f64::from(i));
                        }
                    })
                })
                .collect();
            for reader in [&store, &other] {
                let stop = &stop;
                s.spawn(move || {
                    let mut loads = 0;
                    while !stop.load(Ordering::SeqCst) || loads == 0 {
                        let snap = reader.load(1.0).unwrap();
                        assert!(
                            snap.integrity.is_consistent(),
                            "load {loads}: {:?}",
                            snap.integrity
                        );
                        loads += 1;
                    }
                });
            }
            // Readers stop once the writers are done, also when one failed.
            let joined: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
            stop.store(true, Ordering::SeqCst);
            assert!(joined.iter().all(Result::is_ok), "a writer failed");
        });
    }

    fn issue(m: &KeyManager<'_>, now: f64) -> KeyId {
        m.issue(
            IssueRequest {
                scope: crate::Scope::User,
                label: "k".into(),
                ttl: TtlRequest::Default,
                secret: None,
            },
            &Actor::System,
            now,
        )
        .unwrap()
        .info
        .key_id
    }

    use crate::KeyId;

    /// File stamps can repeat: a rename-based write may reuse a freed inode, and with a
    /// coarse timestamp clock (a jiffy on many kernels) two writes within one tick, of the same
    /// size, look identical. A long-running process whose cached parse carries such a stamp
    /// used to serve it: a reader kept seeing a key another process had revoked, and a writer
    /// refused with a false `StoreMismatch`. The stamp collision is staged by rewriting the
    /// cached stamp to the current file's.
    #[test]
    fn a_cached_parse_with_a_repeated_stamp_is_not_served_against_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("keys").join("api_keys.json");
        let a = fast(&sp);
        let ma = KeyManager::new(&a, TtlPolicy::default());
        let k1 = issue(&ma, 1_800_000_000.0);
        a.load(1_800_000_001.0).unwrap();
        assert!(a.load(1_800_000_001.0).unwrap().keys.contains_key(&k1));
        // Another process revokes k1.
        let b = fast(&sp);
        KeyManager::new(&b, TtlPolicy::default())
            .revoke(k1.as_str(), None, &Actor::System, 1_800_000_002.0)
            .unwrap();
        let collide = || {
            let m = fs::metadata(&sp).unwrap();
            if let Some(c) = a.cache().as_mut() {
                c.stamp = FileStamp::of(&m);
            }
        };
        collide();
        let snap = a.load(1_800_000_003.0).unwrap();
        assert!(
            !snap.keys.contains_key(&k1),
            "a reader served a revoked key"
        );
        assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
        // And a writer builds on the real file, not the stale parse.
        let k2 = issue(&KeyManager::new(&b, TtlPolicy::default()), 1_800_000_004.0);
        a.load(1_800_000_005.0).unwrap();
        KeyManager::new(&b, TtlPolicy::default())
            .revoke(k2.as_str(), None, &Actor::System, 1_800_000_006.0)
            .unwrap();
        collide();
        let k3 = issue(&ma, 1_800_000_007.0);
        let keys = a.load(1_800_000_008.0).unwrap().keys;
        assert!(keys.contains_key(&k3));
        assert!(!keys.contains_key(&k1) && !keys.contains_key(&k2));
    }

    /// `version` changes with every commit and every out-of-band change a load would see, and
    /// with nothing else: it stats, never reads or creates.
    #[test]
    fn the_version_changes_with_every_change_and_only_then() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let sp = keys_dir.join("api_keys.json");
        let s = fast(&sp);
        let m = KeyManager::new(&s, TtlPolicy::default());
        let mut last = s.version().unwrap();
        assert_eq!(s.version().unwrap(), last);
        assert!(!keys_dir.exists(), "version created something");
        fn changed_from(last: &mut StoreVersion, what: &str, s: &FileStore) {
            let v = s.version().unwrap();
            assert_ne!(v, *last, "{what} did not change the version");
            assert_eq!(s.version().unwrap(), v, "two calls after {what} differ");
            *last = v;
        }
        let t = 1_800_000_000.0;
        let k1 = issue(&m, t);
        changed_from(&mut last, "issue", &s);
        let k2 = issue(&m, t + 1.0);
        changed_from(&mut last, "a second issue", &s);
        // A load changes nothing.
        s.load(t + 2.0).unwrap();
        s.load(t + 2.0).unwrap();
        assert_eq!(s.version().unwrap(), last, "a load changed the version");
        m.revoke(k1.as_str(), None, &Actor::System, t + 3.0)
            .unwrap();
        changed_from(&mut last, "revoke", &s);
        m.set_disabled(k2.as_str(), true, &Actor::System, t + 4.0)
            .unwrap();
        changed_from(&mut last, "disable", &s);
        // Out-of-band: an edit in place (same inode), a replacement, a chmod.
        let mut text = fs::read_to_string(&sp).unwrap();
        text.push('\n');
        fs::write(&sp, &text).unwrap();
        changed_from(&mut last, "an edit in place", &s);
        let copy = keys_dir.join("copy.json");
        fs::write(&copy, text.trim_end()).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&copy, &sp).unwrap();
        changed_from(&mut last, "a replacement", &s);
        fs::set_permissions(&sp, fs::Permissions::from_mode(0o400)).unwrap();
        changed_from(&mut last, "chmod 400", &s);
        fs::set_permissions(&sp, fs::Permissions::from_mode(0o600)).unwrap();
        changed_from(&mut last, "chmod 600", &s);
        // The log: a truncation, a chmod.
        let log = s.log_path().to_path_buf();
        let len = fs::metadata(&log).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        changed_from(&mut last, "a truncated log", &s);
        fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).unwrap();
        changed_from(&mut last, "chmod of the log", &s);
        // A pending file appearing and going; the directory's mode.
        fs::write(sibling(&sp, ".pending"), b"{}").unwrap();
        changed_from(&mut last, "a pending file", &s);
        fs::remove_file(sibling(&sp, ".pending")).unwrap();
        changed_from(&mut last, "the pending file removed", &s);
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o750)).unwrap();
        changed_from(&mut last, "chmod of the directory", &s);
        // Files beside the store that a load does not read do not count.
        fs::write(keys_dir.join("other"), b"x").unwrap();
        s.record_usage(
            &crate::usage::UsageMap::from([(
                k2.to_string(),
                crate::usage::KeyUsage {
                    last_used: t,
                    count: 1,
                    last_client: String::new(),
                    last_route: String::new(),
                },
            )]),
            &|_: &str| true,
            t,
        )
        .unwrap();
        assert_eq!(
            s.version().unwrap(),
            last,
            "an unrelated file changed the version"
        );
    }
}
