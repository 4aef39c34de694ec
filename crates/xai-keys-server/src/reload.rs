//! Keeping the index equal to the store, whoever changes it.
//!
//! A watcher thread asks the store for its [`StoreVersion`] (a few `stat` calls) every poll
//! interval and reloads when it changes, so a key revoked or issued by the CLI, a restore or
//! another gateway takes effect here within one interval plus one load. The gateway's own
//! mutations reload right after their commit, coalesced: a caller whose commit is already
//! covered by a reload that started after it returns at once. Indexes are swapped whole.
//!
//! A store that cannot be read keeps the last good index serving and marks the health
//! unreadable (mutations refused). A store that no longer matches its audit log (an edit
//! outside xai-keys, a truncated log) is trusted only for restrictions: see
//! [`KeyIndex::restricted_by`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use xai_keys_core::store::{Freshness, Integrity, KeyStore, StoreVersion};

use std::collections::HashSet;

use xai_keys_core::audit::{FollowFrom, LogFollower, str_field};
use xai_keys_core::envkeys::EnvKey;
use xai_keys_core::record::KeyMap;
use xai_keys_core::token::KeyId;

use crate::index::KeyIndex;
use crate::relock;

/// The store as the gateway last saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreHealth {
    /// `ok`, `degraded` (serving restrictions only), `unreadable` (serving the last good
    /// index), `stale` (a networked store not confirmed lately: serving the last good index)
    /// or `stale_refusing` (unconfirmed past `XAI_STORE_MAX_STALENESS`: every key refused).
    pub status: &'static str,
    /// Why it is not `ok`.
    pub problem: Option<String>,
    /// Epoch seconds of the last successful reload.
    pub last_reload: Option<f64>,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub keys: usize,
    pub integrity: &'static str,
    /// What the last successful load warned about (a store, log or directory readable by
    /// group or others; legacy records filled in; an interrupted change completed). The store
    /// is still served and changed, as the CLI does with a warning: these are reported
    /// (`/health`, `xai_keys_store_warnings`), not refused.
    pub warnings: Vec<String>,
    /// Seconds since a networked store last confirmed the index (`None`: confirmed, or a file).
    pub stale_for_secs: Option<f64>,
    /// The staleness rule: refuse keys after this many seconds unconfirmed (`None`: fail-static).
    pub max_staleness_secs: Option<f64>,
}

impl StoreHealth {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Why the gateway cannot start on this store.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the key store {location}: {source}")]
    Load {
        location: String,
        source: xai_keys_core::error::Error,
    },
    #[error(
        "the key store {location} cannot be trusted: {problem}. Run `xai-keys verify` to see why, then `xai-keys verify --adopt` (if the change was intended) or `xai-keys restore`"
    )]
    Untrusted { location: String, problem: String },
}

fn integrity_name(i: &Integrity) -> &'static str {
    match i {
        Integrity::Recorded => "recorded",
        Integrity::NoChainYet => "no_chain_yet",
        Integrity::Mismatch => "mismatch",
        Integrity::Erased => "erased",
        Integrity::Unverifiable(_) => "unverifiable",
    }
}

fn integrity_problem(i: &Integrity, exists: bool) -> Option<String> {
    match i {
        Integrity::Mismatch if !exists => Some(
            "the store file is missing but its audit log records keys (deleted or moved?): every key is refused until it is back".into(),
        ),
        Integrity::Recorded | Integrity::NoChainYet => None,
        Integrity::Mismatch => Some(
            "the store is not the state recorded by its audit log (edited outside xai-keys, or the log was truncated)".into(),
        ),
        Integrity::Erased => Some(
            "the audit log has no record of the keys in the store (the log was emptied or replaced)".into(),
        ),
        Integrity::Unverifiable(why) => Some(format!("the audit log cannot be checked: {why}")),
    }
}

/// Keys from the environment and which of them the store manages: an id seen in the store or
/// anywhere in its audit log is the store's for good (imported, then maybe revoked), so the
/// environment's copy is never served again. The log is read once from its start, then only
/// what each reload finds appended.
#[derive(Default)]
struct EnvTracker {
    keys: Vec<EnvKey>,
    managed: HashSet<KeyId>,
    follower: Option<LogFollower>,
}

impl EnvTracker {
    /// Updates `managed` from a snapshot's keys and the log; `false` when the log could not be
    /// read (no environment key is served then: which of them were revoked is unknown).
    fn refresh(&mut self, store: &dyn KeyStore, keys: &KeyMap) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        for k in &self.keys {
            if keys.contains_key(&k.key_id) {
                self.managed.insert(k.key_id.clone());
            }
        }
        if self.keys.iter().all(|k| self.managed.contains(&k.key_id)) {
            return true;
        }
        if self.follower.is_none() {
            match store.log_follower(Some(FollowFrom {
                offset: 0,
                file_id: None,
                last_hash: None,
            })) {
                Ok(f) => self.follower = Some(f),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit log to check the environment's keys; not serving them");
                    return false;
                }
            }
        }
        let Some(f) = self.follower.as_mut() else {
            return false;
        };
        // Each poll reads what was appended since the last; a bounded number of rounds.
        for _ in 0..1_000 {
            match f.poll() {
                Ok(batch) if batch.events.is_empty() && batch.reset.is_none() => return true,
                Ok(batch) => {
                    for line in &batch.events {
                        if let Some(id) = str_field(line, "key_id")
                            && let Some(k) = self.keys.iter().find(|k| k.key_id.as_str() == id)
                        {
                            self.managed.insert(k.key_id.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit log to check the environment's keys; not serving them");
                    return false;
                }
            }
        }
        true
    }

    fn unmanaged(&self) -> impl Iterator<Item = &EnvKey> {
        self.keys
            .iter()
            .filter(|k| !self.managed.contains(&k.key_id))
    }

    /// `index` plus the environment's unmanaged keys (none when the log could not be read).
    fn apply(&mut self, store: &dyn KeyStore, keys: &KeyMap, index: KeyIndex) -> KeyIndex {
        if self.keys.is_empty() {
            return index;
        }
        if self.refresh(store, keys) {
            index.with_env(self.unmanaged())
        } else {
            index
        }
    }
}

struct ReloadState {
    env: EnvTracker,
    version: Option<StoreVersion>,
    /// The last index built from a store that matched its log.
    good: Arc<KeyIndex>,
    /// Start number of the last completed reload.
    completed: u64,
    /// Every key is refused: the store went unconfirmed past the staleness limit.
    refusing: bool,
}

/// The current index, its health, and the reload machinery.
pub struct IndexHandle {
    current: ArcSwap<KeyIndex>,
    health: Mutex<StoreHealth>,
    state: Mutex<ReloadState>,
    started: AtomicU64,
    max_staleness: Option<Duration>,
    /// The store's last freshness was stale (a reload meanwhile reports `stale`, not `ok`).
    unconfirmed: AtomicBool,
}

impl IndexHandle {
    /// Loads the store for the first time. Refuses a store that cannot be read or does not
    /// match its audit log: there is no good index to fall back on.
    pub fn initial(store: &dyn KeyStore, now: f64) -> Result<Self, StartError> {
        Self::initial_with_env(store, now, Vec::new())
    }

    /// [`IndexHandle::initial`], also serving `env_keys` (from the environment) for as long as
    /// the store does not manage them.
    pub fn initial_with_env(
        store: &dyn KeyStore,
        now: f64,
        env_keys: Vec<EnvKey>,
    ) -> Result<Self, StartError> {
        let version = store.version().ok();
        let snap = store.load(now).map_err(|e| StartError::Load {
            location: store.location(),
            source: e,
        })?;
        if let Some(problem) = integrity_problem(&snap.integrity, snap.exists) {
            return Err(StartError::Untrusted {
                location: store.location(),
                problem,
            });
        }
        for w in &snap.warnings {
            tracing::warn!(store = %store.location(), "{w}");
        }
        let mut env = EnvTracker {
            keys: env_keys,
            ..Default::default()
        };
        let idx = Arc::new(env.apply(store, &snap.keys, KeyIndex::from_keys(&snap.keys)));
        let health = StoreHealth {
            status: "ok",
            problem: None,
            last_reload: Some(now),
            reloads: 1,
            failed_reloads: 0,
            keys: idx.len(),
            integrity: integrity_name(&snap.integrity),
            warnings: snap.warnings.clone(),
            stale_for_secs: None,
            max_staleness_secs: Some(crate::config::DEFAULT_MAX_STALENESS.as_secs_f64()),
        };
        Ok(IndexHandle {
            current: ArcSwap::new(idx.clone()),
            health: Mutex::new(health),
            state: Mutex::new(ReloadState {
                env,
                version,
                good: idx,
                completed: 0,
                refusing: false,
            }),
            started: AtomicU64::new(0),
            max_staleness: Some(crate::config::DEFAULT_MAX_STALENESS),
            unconfirmed: AtomicBool::new(false),
        })
    }

    /// The staleness rule for a networked store: refuse every key once the store has gone
    /// unconfirmed for longer than `max` (`None`: fail-static, never refuse).
    pub fn with_staleness(mut self, max: Option<Duration>) -> Self {
        self.max_staleness = max;
        relock(&self.health).max_staleness_secs = max.map(|d| d.as_secs_f64());
        self
    }

    /// The store version the index was last built from (`None`: rebuild at the next poll).
    pub fn seen_version(&self) -> Option<StoreVersion> {
        relock(&self.state).version.clone()
    }

    /// The index to authenticate against (cheap; lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<KeyIndex>> {
        self.current.load()
    }

    /// The current index, owned (for work that outlives a request's guard).
    pub fn load_full(&self) -> Arc<KeyIndex> {
        self.current.load_full()
    }

    pub fn health(&self) -> StoreHealth {
        relock(&self.health).clone()
    }

    /// Reloads if the store's version changed since the last reload, and applies the
    /// staleness rule of a networked store.
    pub fn poll(&self, store: &dyn KeyStore, now: f64) {
        let fresh = store.freshness();
        let mut st = relock(&self.state);
        let refuse = match &fresh {
            Freshness::Live => false,
            Freshness::Stale { for_secs, .. } => self
                .max_staleness
                .is_some_and(|max| *for_secs > max.as_secs_f64()),
        };
        if refuse {
            if !st.refusing {
                st.refusing = true;
                // Nothing authenticates against an index that can no longer be refreshed.
                self.current
                    .store(Arc::new(KeyIndex::from_keys(&KeyMap::new())));
                tracing::error!(
                    store = %store.location(),
                    "key store unconfirmed past XAI_STORE_MAX_STALENESS: refusing every key until it answers (XAI_STORE_FAIL_STATIC=1 would keep serving)"
                );
            }
        } else {
            let was_stale = relock(&self.health).status.starts_with("stale");
            let live = matches!(fresh, Freshness::Live);
            self.unconfirmed.store(!live, Ordering::SeqCst);
            if st.refusing || (was_stale && live) {
                // Back (or confirmed again): rebuild from the store, whatever its version.
                st.refusing = false;
                st.version = None;
            }
            match store.version() {
                Ok(v) if st.version.as_ref() == Some(&v) => {}
                Ok(v) => self.reload_locked(&mut st, store, Some(v), now),
                Err(e) => self.fail(&e.to_string()),
            }
        }
        let mut h = relock(&self.health);
        match fresh {
            Freshness::Live => h.stale_for_secs = None,
            Freshness::Stale { for_secs, problem } => {
                h.stale_for_secs = Some(for_secs);
                let rule = match self.max_staleness {
                    Some(max) => format!(
                        "every key is refused after {}s unconfirmed (XAI_STORE_MAX_STALENESS)",
                        max.as_secs_f64()
                    ),
                    None => "XAI_STORE_FAIL_STATIC is on: it is served however stale".into(),
                };
                if refuse {
                    if h.status != "stale_refusing" {
                        tracing::error!(store = %store.location(), stale_for = for_secs, "key store stale: every key refused");
                    }
                    h.status = "stale_refusing";
                    h.keys = 0;
                    h.problem = Some(format!(
                        "the store has not been confirmed for {for_secs:.1}s ({problem}); {rule}; changes refused"
                    ));
                } else if h.status == "ok" || h.status.starts_with("stale") {
                    if h.status != "stale" {
                        tracing::warn!(store = %store.location(), %problem, "key store unconfirmed: serving the last good index");
                    }
                    h.status = "stale";
                    h.problem = Some(format!(
                        "the store has not been confirmed for {for_secs:.1}s ({problem}); serving the last good index; {rule}"
                    ));
                }
            }
        }
    }

    /// Makes sure the index reflects a commit that just returned (coalesced).
    pub fn refresh_after_commit(&self, store: &dyn KeyStore, now: f64) {
        let ticket = self.started.load(Ordering::SeqCst);
        let mut st = relock(&self.state);
        if st.completed > ticket || st.refusing {
            return;
        }
        let v = store.version().ok();
        self.reload_locked(&mut st, store, v, now);
    }

    fn fail(&self, problem: &str) {
        let mut h = relock(&self.health);
        let reported = format!(
            "{problem}; serving the last good index, changes refused until the store is readable"
        );
        // Logged when the problem starts or changes, not at every poll.
        if h.status != "unreadable" || h.problem.as_deref() != Some(reported.as_str()) {
            tracing::error!(
                problem,
                "key store unreadable; serving the last good index and refusing changes"
            );
        }
        h.status = "unreadable";
        h.problem = Some(reported);
        h.failed_reloads += 1;
    }

    fn reload_locked(
        &self,
        st: &mut ReloadState,
        store: &dyn KeyStore,
        version: Option<StoreVersion>,
        now: f64,
    ) {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let snap = match store.load(now) {
            Ok(s) => s,
            Err(e) => {
                // Try again on the next poll even if the version does not change.
                st.version = None;
                st.completed = n;
                self.fail(&e.to_string());
                return;
            }
        };
        st.version = version;
        st.completed = n;
        let problem = integrity_problem(&snap.integrity, snap.exists);
        let idx = match &problem {
            None => {
                let idx = Arc::new(st.env.apply(
                    store,
                    &snap.keys,
                    KeyIndex::from_keys(&snap.keys),
                ));
                st.good = idx.clone();
                idx
            }
            Some(p) => {
                tracing::error!(
                    problem = %p,
                    "key store does not match its audit log: applying removals and restrictions only; run `xai-keys verify`"
                );
                let restricted = st.good.restricted_by(&snap.keys);
                Arc::new(st.env.apply(store, &snap.keys, restricted))
            }
        };
        let keys = idx.len();
        self.current.store(idx);
        let mut h = relock(&self.health);
        let was = h.status;
        match problem {
            None if self.unconfirmed.load(Ordering::SeqCst) => {
                // The staleness overlay in `poll` keeps its problem text.
                h.status = "stale";
            }
            None => {
                h.status = "ok";
                h.problem = None;
                if was != "ok" {
                    tracing::info!("key store readable and consistent again");
                }
            }
            Some(p) => {
                h.status = "degraded";
                h.problem = Some(format!(
                    "{p}; only removals and restrictions are applied, changes refused. Run `xai-keys verify`"
                ));
            }
        }
        h.last_reload = Some(now);
        h.reloads += 1;
        h.keys = keys;
        h.integrity = integrity_name(&snap.integrity);
        // Logged when they change, not at every reload.
        if h.warnings != snap.warnings {
            for w in snap.warnings.iter().filter(|w| !h.warnings.contains(w)) {
                tracing::warn!(store = %store.location(), "{w}");
            }
            h.warnings = snap.warnings;
        }
    }
}

/// Runs [`IndexHandle::poll`] every `interval` on a plain thread until `stop` is set.
pub fn spawn_watcher(
    handle: Arc<IndexHandle>,
    store: Arc<dyn KeyStore>,
    clock: crate::Clock,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("xai-keys-store-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A backend that is told of changes (etcd's watched copy) wakes this early.
                let seen = handle.seen_version();
                store.wait_for_change(seen.as_ref(), interval);
                handle.poll(store.as_ref(), clock());
            }
        })
}
