//! A gateway's watched copy of the store.
//!
//! One task on the bridge's runtime loads the prefix at a revision, then follows etcd's watch
//! stream from the next revision, applying each response (all events of one transaction arrive
//! together) and publishing a new parsed [`State`]. A heartbeat reads the head with a
//! linearizable read every [`HEARTBEAT`]: each success confirms the copy (its revision is at
//! least the head's), and a copy that falls behind the head for longer than a second is reloaded
//! in full. The watch is opened with require-leader, so a member cut off from the quorum ends
//! the stream instead of going silent.
//!
//! When etcd cannot be reached, the copy keeps its last state and [`Mirror::freshness`] reports
//! for how long it has not been confirmed; when etcd returns, the watch resumes from the last
//! revision applied, and a compacted revision (history gone) means a full reload.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use xai_keys_core::Result;
use xai_keys_core::store::Freshness;

use crate::layout::Layout;
use crate::store::{Inner, RawRecords, RawState, State, parse_records, read_raw};

/// How often the copy is confirmed against the head.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(250);
/// Unconfirmed for longer than this, the copy is reported stale.
const STALE_AFTER: Duration = Duration::from_millis(1500);

struct Shared {
    raw: RawState,
    /// The parsed state of `raw` (rebuilt when `raw` changes).
    state: Option<Arc<State>>,
    /// When the copy was last confirmed current.
    confirmed: Instant,
    /// The last error, while unconfirmed.
    problem: Option<String>,
    /// Bumped whenever the copy changes (the gateway's store version).
    generation: u64,
}

pub(crate) struct Mirror {
    inner: Arc<Inner>,
    shared: Mutex<Shared>,
    /// Signalled whenever the copy's revision moves (see [`Mirror::wait_for`]).
    moved: std::sync::Condvar,
}

impl Mirror {
    /// Loads the prefix (an error if the cluster does not answer) and starts following it.
    pub(crate) fn start(inner: Arc<Inner>) -> Result<Arc<Mirror>> {
        let (c, l) = (inner.client.clone(), inner.layout.clone());
        let raw = inner
            .bridge
            .run("load the store", async move { read_raw(c, l).await })?;
        let mirror = Arc::new(Mirror {
            inner: inner.clone(),
            shared: Mutex::new(Shared {
                raw: RawState::default(),
                state: None,
                confirmed: Instant::now(),
                problem: None,
                generation: 0,
            }),
            moved: std::sync::Condvar::new(),
        });
        mirror.install(raw);
        let weak = Arc::downgrade(&mirror);
        inner.bridge.spawn(async move {
            follow(weak).await;
        });
        Ok(mirror)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the copy with a full read.
    fn install(&self, raw: RawState) {
        self.install_changed(raw, None);
    }

    /// Replaces the copy with `raw`. With `touched` (the record ids a watch response put or
    /// deleted), only those records are parsed again and the others are taken from the
    /// current parsed state; without it, or without a parsed state to start from, every
    /// record is parsed. Either way the result is checked as a full read is (render, digest,
    /// head, log tail).
    fn install_changed(&self, raw: RawState, touched: Option<&BTreeMap<String, bool>>) {
        let mut sh = self.lock();
        let now = xai_keys_core_now();
        let ctx = xai_keys_core::record::LoadContext {
            now,
            default_ttl_secs: self.inner.opts.default_ttl_secs,
        };
        let location = &self.inner.location;
        let state = match (touched, sh.state.take()) {
            (Some(touched), Some(prev)) => {
                // The previous state is usually held here alone (a gateway's load copies the
                // keys out): reuse its map rather than copying it.
                let prev = Arc::try_unwrap(prev).unwrap_or_else(|shared| (*shared).clone());
                let mut keys = prev.keys;
                let put: RawRecords = touched
                    .iter()
                    .filter(|(_, put)| **put)
                    .filter_map(|(id, _)| {
                        raw.records
                            .get_key_value(id.as_str())
                            .map(|(k, v)| (k.clone(), v.clone()))
                    })
                    .collect();
                let deleted: std::collections::BTreeSet<&str> = touched
                    .iter()
                    .filter(|(_, put)| !**put)
                    .map(|(id, _)| id.as_str())
                    .collect();
                if !deleted.is_empty() {
                    keys.retain(|k, _| !deleted.contains(k.as_str()));
                }
                parse_records(&put, location, ctx).and_then(|parsed| {
                    keys.extend(parsed);
                    State::from_parsed(raw.clone(), keys, location, &mut self.inner.render())
                })
            }
            _ => State::from_raw(raw.clone(), location, ctx, &mut self.inner.render()),
        };
        match state {
            Ok(s) => {
                sh.state = Some(Arc::new(s));
                sh.problem = None;
            }
            Err(e) => {
                // Unparseable records: no copy to answer from. `load` then reads etcd itself
                // and gets the error, so the gateway reports the store unreadable and keeps its
                // last good index, as with a damaged file.
                tracing::error!(store = %self.inner.location, "{e}");
                sh.state = None;
            }
        }
        sh.raw = raw;
        self.moved.notify_all();
        // Every install is a change of what `load` returns (records, head, window, lockdown):
        // the version moves with it, and only with it (usage and log-only events do not make
        // gateways rebuild their index).
        sh.generation += 1;
        sh.confirmed = Instant::now();
    }

    /// Waits (at most `limit`) until the copy has applied revision `rev`: a writer on this
    /// process sees its own change in the copy when its commit returns.
    pub(crate) fn wait_for(&self, rev: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut sh = self.lock();
        while sh.raw.rev < rev {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(store = %self.inner.location, rev, "etcd: the watched copy did not reach the change's revision in time; the next poll will");
                return;
            }
            sh = match self.moved.wait_timeout(sh, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Waits at most `limit` until the copy's version differs from `seen` (returns at once
    /// when it already does). Without a `seen` version or a copy, it waits the whole `limit`:
    /// a caller polling in a loop never spins. The gateway's reload thread waits here between
    /// polls, so a change is indexed as soon as the watch delivers it.
    pub(crate) fn wait_for_change(&self, seen: Option<&str>, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut sh = self.lock();
        loop {
            let current = sh.state.as_ref().map(|_| format!("etcd:{}", sh.generation));
            if let (Some(seen), Some(current)) = (seen, current.as_deref())
                && current != seen
            {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            sh = match self.moved.wait_timeout(sh, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The last parsed state.
    pub(crate) fn state(&self) -> Option<Arc<State>> {
        self.lock().state.clone()
    }

    pub(crate) fn version(&self) -> Option<String> {
        let sh = self.lock();
        sh.state.as_ref()?;
        Some(format!("etcd:{}", sh.generation))
    }

    pub(crate) fn freshness(&self) -> Freshness {
        let sh = self.lock();
        let age = sh.confirmed.elapsed();
        // Only the age counts: a watch stream that fails right after a confirmation is
        // re-opened by the follower; the copy is stale only once nothing confirms it.
        if age <= STALE_AFTER {
            Freshness::Live
        } else {
            Freshness::Stale {
                for_secs: age.as_secs_f64(),
                problem: sh
                    .problem
                    .clone()
                    .unwrap_or_else(|| "no confirmation from the cluster".into()),
            }
        }
    }

    fn confirm(&self) {
        let mut sh = self.lock();
        sh.confirmed = Instant::now();
        sh.problem = None;
    }

    fn trouble(&self, problem: String) {
        let mut sh = self.lock();
        if sh.problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!(store = %self.inner.location, %problem, "etcd: the watched copy is not confirmed");
        }
        sh.problem = Some(problem);
    }

    fn revision(&self) -> i64 {
        self.lock().raw.rev
    }

    /// Applies one watch response's events (one or more whole transactions) at `rev`. Returns
    /// false when the copy cannot be updated from the events alone (the log's last line was
    /// deleted: the new last line is not in them) and must be reloaded in full.
    fn apply(&self, layout: &Layout, events: &[etcd_client::Event], rev: i64) -> bool {
        let mut raw = self.lock().raw.clone();
        let mut changed = false;
        // Record ids put (true) or deleted (false) by these events: only they are parsed again.
        let mut touched: BTreeMap<String, bool> = BTreeMap::new();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let key = kv.key();
            let put = matches!(ev.event_type(), EventType::Put);
            let value = put.then(|| kv.value().to_vec());
            if key == layout.head().as_bytes() {
                raw.head = value.map(|v| (v, kv.mod_revision()));
                changed = true;
            } else if key == layout.window().as_bytes() {
                raw.window = value;
                changed = true;
            } else if key == layout.lockdown().as_bytes() {
                raw.lockdown = value;
                changed = true;
            } else if let Some(id) = layout.key_id(key) {
                touched.insert(id.to_string(), value.is_some());
                match value {
                    Some(v) => raw.records.insert(Arc::from(id), Arc::from(v)),
                    None => raw.records.remove(id),
                };
                changed = true;
            } else if let Some(seq) = layout.log_seq(key) {
                match value {
                    Some(v) if raw.tail.as_ref().is_none_or(|(s, _)| seq >= *s) => {
                        raw.tail = Some((seq, v));
                        changed = true;
                    }
                    Some(_) => {}
                    // The last line deleted (outside xai-keys): which line ends the log now
                    // is only known from a full read.
                    None if raw.tail.as_ref().is_some_and(|(s, _)| seq >= *s) => return false,
                    None => {}
                }
            }
        }
        raw.rev = rev.max(raw.rev);
        if changed {
            self.install_changed(raw, Some(&touched));
        } else {
            let mut sh = self.lock();
            sh.raw.rev = raw.rev;
            self.moved.notify_all();
            sh.confirmed = Instant::now();
        }
        true
    }
}

fn xai_keys_core_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Follows the prefix until the mirror is dropped.
async fn follow(weak: std::sync::Weak<Mirror>) {
    let mut need_full = false;
    loop {
        let Some(m) = weak.upgrade() else { return };
        let inner = m.inner.clone();
        let layout = inner.layout.clone();
        if need_full {
            match tokio::time::timeout(
                inner.opts.timeout * 4,
                read_raw(inner.client.clone(), layout.clone()),
            )
            .await
            {
                Ok(Ok(raw)) => {
                    m.install(raw);
                    need_full = false;
                }
                Ok(Err(e)) => {
                    m.trouble(format!("reload: {}", crate::bridge::describe(&e)));
                    drop(m);
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
                Err(_) => {
                    m.trouble("reload: no answer from the cluster".into());
                    drop(m);
                    continue;
                }
            }
        }
        let from = m.revision() + 1;
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut wc = inner.client.watch_client();
        let stream =
            tokio::time::timeout(inner.opts.timeout, wc.watch(layout.all(), Some(opts))).await;
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                m.trouble(format!("watch: {}", crate::bridge::describe(&e)));
                drop(m);
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            }
            Err(_) => {
                m.trouble("watch: no answer from the cluster".into());
                drop(m);
                continue;
            }
        };
        drop(m);
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the head was first seen ahead of the copy (a watch that fell behind).
        let mut behind_since: Option<Instant> = None;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(m) = weak.upgrade() else { return };
                    match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() {
                                if resp.compact_revision() > 0 {
                                    tracing::warn!(store = %inner.location, compacted = resp.compact_revision(), "etcd: history compacted past the copy; reloading in full");
                                    need_full = true;
                                } else {
                                    m.trouble(format!("watch canceled: {}", resp.cancel_reason()));
                                }
                                break;
                            }
                            let rev = resp.header().map_or(0, |h| h.revision());
                            if !resp.events().is_empty() && !m.apply(&layout, resp.events(), rev) {
                                need_full = true;
                                break;
                            }
                        }
                        Ok(None) => {
                            m.trouble("watch stream ended".into());
                            break;
                        }
                        Err(e) => {
                            m.trouble(format!("watch: {}", crate::bridge::describe(&e)));
                            break;
                        }
                    }
                }
                _ = beat.tick() => {
                    let Some(m) = weak.upgrade() else { return };
                    let mut kv = inner.client.kv_client();
                    let head = layout.head();
                    let res = tokio::time::timeout(
                        HEARTBEAT * 4,
                        kv.get(head, Some(GetOptions::new().with_keys_only())),
                    ).await;
                    match res {
                        Ok(Ok(r)) => {
                            let head_rev = r.kvs().first().map_or(0, |kv| kv.mod_revision());
                            if head_rev <= m.revision() {
                                behind_since = None;
                                m.confirm();
                            } else {
                                // The head moved past the copy: normal for a moment (the
                                // watch event is on its way), a fault if it lasts.
                                let since = *behind_since.get_or_insert_with(Instant::now);
                                if since.elapsed() > Duration::from_secs(1) {
                                    m.trouble("the watch fell behind the head; reloading".into());
                                    need_full = true;
                                    break;
                                }
                            }
                        }
                        Ok(Err(e)) => m.trouble(crate::bridge::describe(&e)),
                        Err(_) => m.trouble("no answer from the cluster within 1s".into()),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
