//! Last-use tracking: per key, last use time, use count, last client and route.
//!
//! The hot path only updates an in-memory map (one short mutex, no allocation for a key seen
//! before). A flusher merges the map into the store's usage sidecar every few seconds and on
//! shutdown (`KeyStore::record_usage`, which locks and writes atomically, so gateways sharing
//! a store add up). A failed flush keeps the counts for the next one: nothing is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use xai_keys_core::store::KeyStore;
use xai_keys_core::token::KeyId;
use xai_keys_core::usage::{KeyUsage, UsageMap};

use crate::relock;

#[derive(Debug, Clone)]
struct Local {
    last_used: f64,
    count: u64,
    client: IpAddr,
    route: Arc<str>,
}

/// Usage seen by this process and not yet flushed.
#[derive(Debug, Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<KeyId, Local>>,
    /// The batch a flush is writing: still part of [`UsageTracker::snapshot`] until the file
    /// has it, so an idle check never misses a use that is on its way to disk.
    inflight: Mutex<UsageMap>,
    /// One flush at a time (the periodic one and the final one at shutdown).
    flushing: Mutex<()>,
}

fn to_core(l: &Local) -> KeyUsage {
    KeyUsage {
        last_used: l.last_used,
        count: l.count,
        last_client: l.client.to_string(),
        last_route: l.route.to_string(),
    }
}

impl UsageTracker {
    /// Records one authenticated use.
    pub fn record(&self, key: &KeyId, now: f64, client: IpAddr, route: &Arc<str>) {
        let mut m = relock(&self.pending);
        if let Some(l) = m.get_mut(key) {
            l.count += 1;
            if now >= l.last_used {
                l.last_used = now;
                l.client = client;
                if !Arc::ptr_eq(&l.route, route) {
                    l.route = route.clone();
                }
            }
        } else {
            m.insert(
                key.clone(),
                Local {
                    last_used: now,
                    count: 1,
                    client,
                    route: route.clone(),
                },
            );
        }
    }

    /// The unflushed usage, without taking it.
    pub fn snapshot(&self) -> UsageMap {
        let pending = relock(&self.pending);
        let mut out: UsageMap = pending
            .iter()
            .map(|(k, l)| (k.to_string(), to_core(l)))
            .collect();
        xai_keys_core::usage::merge(&mut out, &relock(&self.inflight));
        out
    }

    /// Writes the unflushed usage to the store's sidecar. On failure the usage is kept and
    /// merged with what arrives meanwhile.
    pub fn flush(
        &self,
        store: &dyn KeyStore,
        live: &dyn Fn(&str) -> bool,
        now: f64,
    ) -> xai_keys_core::error::Result<usize> {
        let _one = relock(&self.flushing);
        let (taken, deltas) = {
            let mut pending = relock(&self.pending);
            let taken: HashMap<KeyId, Local> = std::mem::take(&mut *pending);
            let deltas: UsageMap = taken
                .iter()
                .map(|(k, l)| (k.to_string(), to_core(l)))
                .collect();
            // Moved to `inflight` under the `pending` lock: a snapshot sees them in one or
            // the other, never in neither.
            relock(&self.inflight).clone_from(&deltas);
            (taken, deltas)
        };
        if taken.is_empty() {
            return Ok(0);
        }
        let written = store.record_usage(&deltas, live, now);
        let mut pending = relock(&self.pending);
        relock(&self.inflight).clear();
        match written {
            Ok(()) => Ok(taken.len()),
            Err(e) => {
                for (k, old) in taken {
                    match pending.get_mut(&k) {
                        Some(newer) => {
                            newer.count += old.count;
                            if old.last_used > newer.last_used {
                                newer.last_used = old.last_used;
                                newer.client = old.client;
                                newer.route = old.route;
                            }
                        }
                        None => {
                            pending.insert(k, old);
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xai_keys_core::token::PlainToken;

    #[test]
    fn records_and_merges() {
        let t = UsageTracker::default();
        let k = PlainToken::generate().unwrap().key_id();
        let r: Arc<str> = Arc::from("/send");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        t.record(&k, 10.0, ip, &r);
        t.record(&k, 12.0, ip, &r);
        t.record(&k, 11.0, "10.0.0.1".parse().unwrap(), &r);
        let s = t.snapshot();
        let u = &s[k.as_str()];
        assert_eq!(
            (u.count, u.last_used, u.last_client.as_str()),
            (3, 12.0, "127.0.0.1")
        );
        let mut stored = UsageMap::new();
        stored.insert(
            k.to_string(),
            KeyUsage {
                last_used: 20.0,
                count: 5,
                last_client: "x".into(),
                last_route: "/y".into(),
            },
        );
        xai_keys_core::usage::merge(&mut stored, &s);
        let m = stored;
        assert_eq!((m[k.as_str()].count, m[k.as_str()].last_used), (8, 20.0));
    }
}
