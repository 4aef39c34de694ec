//! Threads sharing one `FileStore`, and a second `FileStore` on the same files (as a second
//! process would), all committing at once: no update is lost and the log has one line per change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use xai_keys_core::Scope;
use xai_keys_core::audit;
use xai_keys_core::ops::{IssueRequest, KeyManager};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::store::{FileStore, KeyStore, VerifyOptions};

use crate::common::*;

const PER_THREAD: usize = 25;

/// Issues `PER_THREAD` keys and revokes every other one; returns (kept, revoked).
fn worker(store: &FileStore, t: usize) -> (Vec<String>, Vec<String>) {
    let m = KeyManager::new(store, policy());
    let mut kept = Vec::new();
    let mut revoked = Vec::new();
    for i in 0..PER_THREAD {
        let now = T0 + (t * 1000 + i) as f64;
        let k = m
            .issue(
                IssueRequest {
                    scope: Scope::User,
                    label: format!("t{t}-{i}"),
                    ttl: TtlRequest::Default,
                    secret: None,
                },
                &actor(),
                now,
            )
            .unwrap();
        let id = k.info.key_id.to_string();
        if i % 2 == 1 {
            m.revoke(&id, None, &actor(), now + 0.5).unwrap();
            revoked.push(id);
        } else {
            kept.push(id);
        }
        if i % 5 == 0 {
            // Readers in between see a consistent store.
            store.load(now).unwrap();
        }
    }
    (kept, revoked)
}

#[test]
fn threads_sharing_a_store_and_a_second_store_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let shared = Arc::new(fast(&sp));
    let other = Arc::new(fast(&sp));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = if t < 3 {
                Arc::clone(&shared)
            } else {
                Arc::clone(&other)
            };
            std::thread::spawn(move || worker(&s, t))
        })
        .collect();
    let mut kept = BTreeSet::new();
    let mut revoked = BTreeSet::new();
    for h in handles {
        let (k, r) = h.join().unwrap();
        kept.extend(k);
        revoked.extend(r);
    }
    assert_eq!(kept.len() + revoked.len(), 4 * PER_THREAD);
    assert_eq!(ids_in_file(&sp), kept);
    // Both instances see the final state (the cache of each is refreshed).
    for s in [&shared, &other] {
        let got: BTreeSet<String> = s
            .load(T0 + 1e5)
            .unwrap()
            .keys
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(got, kept);
    }
    let events = log_events(&sibling(&sp, ".log"));
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        *count.entry((action(e).to_string(), key_id(e))).or_default() += 1;
    }
    for id in kept.iter().chain(&revoked) {
        assert_eq!(count.get(&("issue".into(), id.clone())), Some(&1), "{id}");
    }
    for id in &revoked {
        assert_eq!(count.get(&("revoke".into(), id.clone())), Some(&1), "{id}");
    }
    assert_eq!(events.len(), kept.len() + 2 * revoked.len());
    let rep = audit::verify_chain(&sibling(&sp, ".log")).unwrap();
    assert_eq!(rep.first_error, None);
    let v = shared
        .verify(&actor(), T0 + 1e5, VerifyOptions::default())
        .unwrap();
    assert!(v.ok, "{:#?}", v.checks);
}
