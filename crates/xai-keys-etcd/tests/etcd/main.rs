//! Integration tests of the etcd backend against real etcd members on loopback
//! (`xai_keys_testkit::EtcdCluster`). Each test starts its own small cluster and uses its own
//! prefixes, so tests run in parallel and leave nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use xai_keys_core::Error;
use xai_keys_core::audit::{self, Actor, AuditDraft, AuditEvent, EventQuery, FollowFrom};
use xai_keys_core::lockdown::{self, EngageLockdown};
use xai_keys_core::ops::{IssueRequest, IssuedKey, KeyManager, RotateRequest};
use xai_keys_core::policy::{TtlPolicy, TtlRequest};
use xai_keys_core::record::KeyMap;
use xai_keys_core::scope::Scope;
use xai_keys_core::store::{
    Durability, FileStore, FileStoreOptions, Freshness, Integrity, KeyStore, VerifyOptions,
};
use xai_keys_core::token::PlainToken;
use xai_keys_core::usage::{KeyUsage, UsageMap};
use xai_keys_core::window::{self, OpenWindow};
use xai_keys_etcd::{EtcdOptions, EtcdStore, EtcdUrl};
use xai_keys_testkit::EtcdCluster;

// ---------------------------------------------------------------------------------------------
// Helpers

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn actor() -> Actor {
    Actor::Cli {
        user: "tester".into(),
        host: "ci".into(),
    }
}

fn cluster(n: usize) -> EtcdCluster {
    EtcdCluster::start(n).expect("start etcd")
}

fn try_open_url(url: &str, vars: &[(&str, &str)], watch: bool) -> xai_keys_core::Result<EtcdStore> {
    let owned: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let var = move |k: &str| owned.get(k).cloned();
    let u = EtcdUrl::parse(url)?;
    EtcdStore::open(EtcdOptions {
        watch,
        ..EtcdOptions::from_env(u, &var)?
    })
}

fn open_url(url: &str, vars: &[(&str, &str)], watch: bool) -> EtcdStore {
    try_open_url(url, vars, watch).expect("open etcd store")
}

fn open(c: &EtcdCluster, prefix: &str) -> EtcdStore {
    open_url(&c.url(prefix), &[], false)
}

fn open_watched(c: &EtcdCluster, prefix: &str) -> EtcdStore {
    open_url(&c.url(prefix), &[], true)
}

fn issue(store: &dyn KeyStore, label: &str) -> IssuedKey {
    issue_at(store, label, now())
}

fn issue_at(store: &dyn KeyStore, label: &str, t: f64) -> IssuedKey {
    KeyManager::new(store, TtlPolicy::default())
        .issue(
            IssueRequest {
                scope: Scope::User,
                label: label.into(),
                ttl: TtlRequest::Default,
                secret: None,
            },
            &actor(),
            t,
        )
        .expect("issue")
}

fn revoke(store: &dyn KeyStore, id: &str) {
    KeyManager::new(store, TtlPolicy::default())
        .revoke(id, Some("test"), &actor(), now())
        .expect("revoke");
}

/// Every audit line, oldest first.
fn all_events(store: &dyn KeyStore) -> Vec<AuditEvent> {
    store
        .events(&EventQuery {
            limit: audit::MAX_EVENT_LIMIT,
            ..Default::default()
        })
        .expect("events")
        .events
}

fn action(e: &AuditEvent) -> &str {
    audit::str_field(e, "action").unwrap_or("")
}

fn key_ids(store: &dyn KeyStore) -> Vec<String> {
    store
        .load(now())
        .expect("load")
        .keys
        .keys()
        .map(|k| k.as_str().to_string())
        .collect()
}

fn assert_verify_ok(store: &dyn KeyStore) {
    let rep = store
        .verify(&actor(), now(), VerifyOptions::default())
        .expect("verify");
    assert!(rep.ok, "verify failed: {:#?}", rep.checks);
    assert_eq!(store.check_log_chain().expect("chain"), None);
}

/// Waits up to `limit` for `f` to hold; returns how long it took.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            panic!("not within {limit:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_live(s: &dyn KeyStore) -> bool {
    s.freshness() == Freshness::Live
}

/// A chain of events is contiguous, oldest first: each line's `prev_hash` is the last one's `hash`.
fn assert_contiguous(evs: &[AuditEvent]) {
    for w in evs.windows(2) {
        assert_eq!(
            audit::str_field(&w[1], "prev_hash"),
            audit::str_field(&w[0], "hash"),
            "events out of order or with a gap"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Compare-and-swap commits

#[test]
fn concurrent_issues_through_separate_stores_all_land() {
    let c = cluster(1);
    let url = c.url("cas/p1");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let store = open_url(&url, &[], false);
                (0..25)
                    .map(|i| {
                        issue(&store, &format!("t{t}-{i}"))
                            .info
                            .key_id
                            .as_str()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut issued: Vec<String> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    issued.sort();
    let store = open(&c, "cas/p1");
    assert_eq!(key_ids(&store), issued);
    let evs = all_events(&store);
    assert_eq!(evs.len(), 100);
    assert!(evs.iter().all(|e| action(e) == "issue"));
    assert_contiguous(&evs);
    assert_eq!(store.load(now()).unwrap().integrity, Integrity::Recorded);
    assert_verify_ok(&store);
}

/// Gateways (watched stores) start a change from their watched copy. A copy that is behind
/// loses the compare-and-swap and the change is made again on a fresh read; a change the copy
/// would refuse (a key issued elsewhere a moment ago that it has not seen yet) is decided again
/// on a fresh read, never refused from the copy.
#[test]
fn changes_through_watched_copies_lose_nothing_and_refuse_nothing_wrongly() {
    let c = cluster(1);
    let url = c.url("cas/copies");
    let plain = open_url(&url, &[], false);
    let w1 = open_url(&url, &[], true);
    // A key issued through an unwatched store, revoked at once through a watched one.
    for i in 0..30 {
        let k = issue(&plain, &format!("elsewhere-{i}"));
        revoke(&w1, k.info.key_id.as_str());
    }
    // Two watched stores racing each other's copies, and an unwatched writer beside them.
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let store = open_url(&url, &[], t < 2);
                let mut kept = Vec::new();
                for i in 0..20 {
                    let k = issue(&store, &format!("t{t}-{i}"));
                    if i % 2 == 0 {
                        revoke(&store, k.info.key_id.as_str());
                    } else {
                        kept.push(k.info.key_id.as_str().to_string());
                    }
                }
                kept
            })
        })
        .collect();
    let mut kept: Vec<String> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    kept.sort();
    assert_eq!(key_ids(&plain), kept);
    wait_for(
        Duration::from_secs(5),
        "the watched copy to catch up",
        || key_ids(&w1) == kept,
    );
    let evs = all_events(&plain);
    // 30 issues and 30 revokes, then 60 issues and 30 revokes: each change audited once.
    assert_eq!(evs.len(), 150);
    assert_eq!(evs.iter().filter(|e| action(e) == "revoke").count(), 60);
    assert_contiguous(&evs);
    assert_verify_ok(&plain);
}

#[test]
fn a_change_that_lost_the_race_is_audited_once() {
    let c = cluster(1);
    let a = open(&c, "cas/race");
    let b = open(&c, "cas/race");
    issue(&a, "first");
    let calls = AtomicUsize::new(0);
    let tok = PlainToken::generate().unwrap();
    let id = tok.key_id();
    let rec = a
        .load(now())
        .unwrap()
        .keys
        .values()
        .next()
        .cloned()
        .unwrap();
    let info = a
        .commit(&actor(), now(), &mut |keys: &mut KeyMap| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // Another writer commits between this attempt's read and its write.
                issue(&b, "interloper");
            }
            keys.insert(id.clone(), rec.clone());
            Ok(vec![AuditDraft::new("issue", Some(id.as_str()))])
        })
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the change ran again");
    assert_eq!(info.lines.len(), 1);
    let evs = all_events(&a);
    assert_eq!(evs.len(), 3, "first, interloper, ours: {evs:#?}");
    assert_eq!(
        evs.iter()
            .filter(|e| audit::str_field(e, "key_id") == Some(id.as_str()))
            .count(),
        1
    );
    assert_eq!(key_ids(&a).len(), 3);
    assert_verify_ok(&a);
}

// ---------------------------------------------------------------------------------------------
// Integrity

#[test]
fn out_of_band_edits_are_caught_and_adopt_recovers() {
    let c = cluster(1);
    let s = open(&c, "integ/a");
    let k = issue(&s, "victim");
    issue(&s, "other");
    let id = k.info.key_id.as_str().to_string();
    let key = format!("/integ/a/keys/{id}");
    let v = c
        .etcdctl(&["get", &key, "--print-value-only"])
        .unwrap()
        .trim_end()
        .to_string();
    let mut rec: serde_json::Map<String, Value> = serde_json::from_str(&v).unwrap();
    rec.insert("label".into(), Value::from("tampered"));
    rec.insert("scope".into(), Value::from("admin"));
    c.etcdctl(&["put", &key, &Value::Object(rec).to_string()])
        .unwrap();

    let snap = s.load(now()).unwrap();
    assert_eq!(snap.integrity, Integrity::Mismatch);
    // A watched copy sees the same.
    let w = open_watched(&c, "integ/a");
    assert_eq!(w.load(now()).unwrap().integrity, Integrity::Mismatch);
    let err = KeyManager::new(&s, TtlPolicy::default())
        .issue(
            IssueRequest {
                scope: Scope::User,
                label: "x".into(),
                ttl: TtlRequest::Default,
                secret: None,
            },
            &actor(),
            now(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::StoreMismatch { .. }), "{err}");
    let rep = s.verify(&actor(), now(), VerifyOptions::default()).unwrap();
    assert!(!rep.ok);
    let check = rep
        .checks
        .iter()
        .find(|c| c.name == "store matches log")
        .unwrap();
    assert_eq!(check.status, "fail", "{check:?}");
    assert_eq!(all_events(&s).len(), 2, "nothing was written");

    let rep = s
        .verify(&actor(), now(), VerifyOptions { adopt: true })
        .unwrap();
    assert!(rep.ok, "{:#?}", rep.checks);
    assert_eq!(s.load(now()).unwrap().integrity, Integrity::Recorded);
    let evs = all_events(&s);
    assert_eq!(action(evs.last().unwrap()), "adopt");
    issue(&s, "after adopt");
    assert_verify_ok(&s);
    wait_for(Duration::from_secs(2), "watched copy recorded", || {
        w.load(now()).unwrap().integrity == Integrity::Recorded
    });
}

#[test]
fn a_deleted_last_log_line_is_unverifiable() {
    let c = cluster(1);
    let s = open(&c, "integ/b");
    let w = open_watched(&c, "integ/b");
    issue(&s, "one");
    issue(&s, "two");
    wait_for(Duration::from_secs(2), "watched copy has both", || {
        w.load(now()).unwrap().keys.len() == 2
    });
    c.etcdctl(&["del", "/integ/b/log/0000000000000002"])
        .unwrap();
    let snap = s.load(now()).unwrap();
    assert!(
        matches!(snap.integrity, Integrity::Unverifiable(_)),
        "{:?}",
        snap.integrity
    );
    let err = KeyManager::new(&s, TtlPolicy::default())
        .revoke(key_ids(&s)[0].as_str(), None, &actor(), now())
        .unwrap_err();
    assert!(matches!(err, Error::StoreMismatch { .. }), "{err}");
    assert!(
        !s.verify(&actor(), now(), VerifyOptions::default())
            .unwrap()
            .ok
    );
    // The watched copy must not keep reporting the deleted line as the log's end.
    wait_for(Duration::from_secs(3), "watched copy unverifiable", || {
        matches!(w.load(now()).unwrap().integrity, Integrity::Unverifiable(_))
    });
}

// ---------------------------------------------------------------------------------------------
// The watched copy

/// `etcd://<member i only>/prefix`.
fn member_url(c: &EtcdCluster, i: usize, prefix: &str) -> String {
    format!("etcd://{}/{prefix}", c.endpoints()[i])
}

#[test]
fn watched_copy_follows_commits_and_reports_freshness() {
    let mut c = cluster(3);
    let w = open_watched(&c, "mirror/a");
    let s = open(&c, "mirror/a");
    assert!(is_live(&w));
    let k = issue(&s, "k1");
    let id = k.info.key_id.as_str().to_string();
    let took = wait_for(Duration::from_secs(1), "issue visible", || {
        key_ids(&w).contains(&id)
    });
    eprintln!("issue visible through the watch after {took:?}");
    let v1 = w.version().unwrap();
    revoke(&s, &id);
    wait_for(Duration::from_secs(1), "revoke visible", || {
        !key_ids(&w).contains(&id)
    });
    assert_ne!(w.version().unwrap(), v1);
    assert_eq!(w.load(now()).unwrap().integrity, Integrity::Recorded);
    assert_eq!(w.lockdown().unwrap(), None);

    // Idle for longer than every client timeout: the copy stays confirmed the whole time.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(7) {
        assert!(
            is_live(&w),
            "{:?} after {:?} idle",
            w.freshness(),
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A hung cluster: stale after 1.5 s, live again after it resumes.
    let t0 = Instant::now();
    for i in 0..3 {
        c.pause(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let early = w.freshness();
    wait_for(Duration::from_secs(4), "stale while paused", || {
        !is_live(&w)
    });
    eprintln!(
        "stale after {:?} (at 1 s: {early:?}); {:?}",
        t0.elapsed(),
        w.freshness()
    );
    // Reads still answer from the copy.
    assert!(w.load(now()).is_ok());
    for i in 0..3 {
        c.resume(i).unwrap();
    }
    c.wait_healthy().unwrap();
    let took = wait_for(Duration::from_secs(10), "live after resume", || is_live(&w));
    eprintln!("live again {took:?} after resume");
    let k2 = issue(&s, "after pause");
    wait_for(Duration::from_secs(2), "write after resume visible", || {
        key_ids(&w).contains(&k2.info.key_id.as_str().to_string())
    });

    // The whole cluster stopped and restarted.
    c.stop_all();
    wait_for(Duration::from_secs(5), "stale while stopped", || {
        !is_live(&w)
    });
    let err = KeyManager::new(&s, TtlPolicy::default())
        .revoke(k2.info.key_id.as_str(), None, &actor(), now())
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    c.restart_all().unwrap();
    let k3 = issue(&s, "after restart");
    let took = wait_for(Duration::from_secs(10), "caught up after restart", || {
        is_live(&w) && key_ids(&w).contains(&k3.info.key_id.as_str().to_string())
    });
    eprintln!("caught up {took:?} after restart_all");
    assert_eq!(key_ids(&w), key_ids(&s));
    assert_eq!(w.load(now()).unwrap().integrity, Integrity::Recorded);
}

#[test]
fn watched_copy_catches_up_after_missing_writes_and_a_compaction() {
    let mut c = cluster(3);
    // The copy talks to member 0 only; the writer to members 1 and 2.
    let w = open_url(&member_url(&c, 0, "mirror/b"), &[], true);
    let s = open_url(
        &format!("etcd://{},{}/mirror/b", c.endpoints()[1], c.endpoints()[2]),
        &[],
        false,
    );
    let k1 = issue(&s, "k1");
    wait_for(Duration::from_secs(1), "k1 visible", || {
        key_ids(&w).contains(&k1.info.key_id.as_str().to_string())
    });

    // Writes while the copy's member is down, then history compacted past them.
    c.kill(0);
    c.wait_healthy().unwrap();
    let k2 = issue(&s, "k2");
    revoke(&s, k1.info.key_id.as_str());
    for i in 0..5 {
        issue(&s, &format!("filler {i}"));
    }
    c.compact().unwrap();
    let k3 = issue(&s, "k3");
    wait_for(
        Duration::from_secs(5),
        "stale while its member is down",
        || !is_live(&w),
    );
    c.restart(0).unwrap();
    let want = key_ids(&s);
    let took = wait_for(
        Duration::from_secs(10),
        "converged after compaction",
        || is_live(&w) && key_ids(&w) == want,
    );
    eprintln!("converged {took:?} after the member restarted");
    assert!(key_ids(&w).contains(&k2.info.key_id.as_str().to_string()));
    assert!(key_ids(&w).contains(&k3.info.key_id.as_str().to_string()));
    assert_eq!(w.load(now()).unwrap().integrity, Integrity::Recorded);

    // And a compaction while it is connected changes nothing.
    c.compact().unwrap();
    let k4 = issue(&s, "k4");
    wait_for(Duration::from_secs(2), "k4 visible", || {
        key_ids(&w).contains(&k4.info.key_id.as_str().to_string())
    });
    assert!(is_live(&w));
}

// ---------------------------------------------------------------------------------------------
// Events and the log follower

/// Commits `n` audit lines (no key change) in one transaction at time `t`.
fn bulk(store: &EtcdStore, n: usize, act: &'static str, key_id: &str, t: f64) {
    let info = store
        .commit(&actor(), t, &mut |_keys: &mut KeyMap| {
            Ok((0..n)
                .map(|i| AuditDraft::new(act, Some(key_id)).with("i", i))
                .collect())
        })
        .unwrap();
    assert_eq!(info.lines.len(), n);
}

#[test]
fn events_filter_order_and_page_across_ranges() {
    let c = cluster(1);
    let s = open_url(&c.url("ev/a"), &[("XAI_ETCD_MAX_TXN_OPS", "4096")], false);
    let t0 = now() - 1000.0;
    let id_a = "aa".repeat(32);
    let id_b = "bb".repeat(32);
    bulk(&s, 1500, "bulk_a", &id_a, t0);
    bulk(&s, 1000, "bulk_b", &id_b, t0 + 100.0);
    let k = issue(&s, "last");
    let kid = k.info.key_id.as_str().to_string();

    let q = |limit: usize| EventQuery {
        limit,
        ..Default::default()
    };
    let page = s.events(&q(2600)).unwrap();
    assert_eq!(page.events.len(), 2501);
    assert_eq!(page.end_offset, 2502);
    assert_contiguous(&page.events);
    assert_eq!(action(&page.events[0]), "bulk_a");
    assert_eq!(action(page.events.last().unwrap()), "issue");

    let page = s.events(&q(2200)).unwrap();
    assert_eq!(page.events.len(), 2200, "the most recent 2200");
    assert_contiguous(&page.events);
    assert_eq!(page.events[0].get("i"), Some(&Value::from(301)));

    let page = s
        .events(&EventQuery {
            limit: 2000,
            action: Some("bulk_a".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 1500, "past a page of other lines");
    assert_contiguous(&page.events);

    let page = s
        .events(&EventQuery {
            limit: 10,
            key_id: Some("aaaa".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 10);
    assert_eq!(page.events[9].get("i"), Some(&Value::from(1499)));
    assert_eq!(page.events[0].get("i"), Some(&Value::from(1490)));

    let page = s
        .events(&EventQuery {
            limit: 5000,
            since: Some(t0 + 50.0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 1001);
    assert!(page.events.iter().all(|e| action(e) != "bulk_a"));

    let page = s
        .events(&EventQuery {
            limit: 3,
            key_id: Some(kid[..12].into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert!(s.events(&q(0)).is_err());
    assert!(s.events(&q(audit::MAX_EVENT_LIMIT + 1)).is_err());
    assert_verify_ok(&s);

    // A follower from the start reads the 1500-line commit whole (pages of 512 inside).
    let mut f = s
        .log_follower(Some(FollowFrom {
            offset: 0,
            file_id: None,
            last_hash: None,
        }))
        .unwrap();
    let b = f.poll().unwrap();
    assert!(b.events.len() >= 1500, "{}", b.events.len());
    assert!(
        !audit::continues(b.events.last().unwrap()),
        "a poll ends at the end of a commit"
    );
    let mut total = b.events.len();
    while total < 2501 {
        let b = f.poll().unwrap();
        assert!(!b.events.is_empty());
        total += b.events.len();
    }
    assert_eq!(total, 2501);
    assert_eq!(f.offset(), 2502);
}

#[test]
fn log_follower_from_end_resume_and_whole_commits() {
    let c = cluster(1);
    let s = open(&c, "follow/a");
    issue(&s, "before");
    let mut f = s.log_follower(None).unwrap();
    assert!(
        f.poll().unwrap().events.is_empty(),
        "None starts at the end"
    );
    let k = issue(&s, "new");
    let b = f.poll().unwrap();
    assert_eq!(b.events.len(), 1);
    assert_eq!(
        audit::str_field(&b.events[0], "key_id"),
        Some(k.info.key_id.as_str())
    );
    let saved = f.offset();
    assert_eq!(saved, 3);
    let page = s
        .events(&EventQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.end_offset, saved,
        "events' end is where a follower starts"
    );

    KeyManager::new(&s, TtlPolicy::default())
        .rotate(
            k.info.key_id.as_str(),
            RotateRequest::default(),
            &actor(),
            now(),
        )
        .unwrap();
    let b = f.poll().unwrap();
    let acts: Vec<&str> = b.events.iter().map(action).collect();
    assert_eq!(
        acts,
        ["issue", "revoke", "rotate"],
        "one poll, whole commit"
    );
    assert!(f.poll().unwrap().events.is_empty());

    let mut g = s
        .log_follower(Some(FollowFrom {
            offset: saved,
            file_id: None,
            last_hash: None,
        }))
        .unwrap();
    let b = g.poll().unwrap();
    assert_eq!(b.events.len(), 3, "resumed at the saved position");
    assert_eq!(g.offset(), f.offset());
}

// ---------------------------------------------------------------------------------------------
// Backup and restore

#[test]
fn backup_restore_round_trip() {
    let c = cluster(1);
    let s = open(&c, "br/a");
    let k1 = issue(&s, "k1");
    let k2 = issue(&s, "k2");
    let k3 = issue(&s, "k3");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b1");
    let m = s.backup(&dir, now()).unwrap();
    assert_eq!(m.keys, 3);
    assert_eq!(m.log_lines, 3);
    revoke(&s, k2.info.key_id.as_str());
    let k4 = issue(&s, "k4");

    let rep = s.restore(&dir, &actor(), now()).unwrap();
    assert_eq!(
        rep.revoked_since_backup,
        vec![k2.info.key_id.as_str().to_string()]
    );
    assert_eq!(rep.dropped_keys, vec![k4.info.key_id.as_str().to_string()]);
    let mut want = vec![
        k1.info.key_id.as_str().to_string(),
        k3.info.key_id.as_str().to_string(),
    ];
    want.sort();
    assert_eq!(key_ids(&s), want, "a revoked key is not revived");
    assert_eq!(action(all_events(&s).last().unwrap()), "restore");
    assert_verify_ok(&s);

    // Into an empty prefix: the backup's log seeds the new one.
    let e = open(&c, "br/empty");
    let rep = e.restore(&dir, &actor(), now()).unwrap();
    assert_eq!(rep.restored_keys, 3);
    assert_eq!(key_ids(&e).len(), 3);
    let evs = all_events(&e);
    assert_eq!(evs.len(), 4);
    assert_contiguous(&evs);
    assert_eq!(
        audit::str_field(&evs[0], "prev_hash"),
        Some(audit::GENESIS),
        "starts at genesis"
    );
    assert_eq!(e.load(now()).unwrap().integrity, Integrity::Recorded);
    assert_verify_ok(&e);
    issue(&e, "new on restored");
    assert_verify_ok(&e);
}

/// The cluster's current revision.
fn revision(c: &EtcdCluster) -> i64 {
    let out = c.etcdctl(&["get", "/", "-w", "json"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// The records under `prefix` at revision `rev` (0: now), by key id.
fn records_at(c: &EtcdCluster, prefix: &str, rev: i64) -> BTreeMap<String, String> {
    let dir = format!("/{prefix}/keys/");
    let rev = format!("--rev={rev}");
    let out = c.etcdctl(&["get", "--prefix", &dir, &rev]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() % 2, 0, "key and value lines: {out}");
    lines
        .chunks(2)
        .map(|kv| {
            (
                kv[0].strip_prefix(&dir).unwrap().to_string(),
                kv[1].to_string(),
            )
        })
        .collect()
}

#[test]
fn a_restore_larger_than_one_transaction_commits_in_audited_parts_restrictions_first() {
    let c = cluster(1);
    // 8 operations per transaction: 4 record changes per part.
    let s = open_url(&c.url("rs/a"), &[("XAI_ETCD_MAX_TXN_OPS", "8")], false);
    let ks: Vec<IssuedKey> = (0..12).map(|i| issue(&s, &format!("k{i}"))).collect();
    let id = |i: usize| ks[i].info.key_id.as_str().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    s.backup(&dir, now()).unwrap();

    // After the backup: one key revoked (never to come back), one disabled (stays disabled),
    // five issued (dropped by the restore), and five records lost outside xai-keys (brought
    // back by it).
    revoke(&s, &id(2));
    s.commit(&actor(), now(), &mut |keys: &mut KeyMap| {
        let k = keys.get_mut(&ks[3].info.key_id).unwrap();
        k.disabled = true;
        Ok(vec![AuditDraft::new("disable", Some(id(3).as_str()))])
    })
    .unwrap();
    let new: Vec<String> = (0..5)
        .map(|i| issue(&s, &format!("n{i}")).info.key_id.as_str().to_string())
        .collect();
    for i in 5..10 {
        c.etcdctl(&["del", &format!("/rs/a/keys/{}", id(i))])
            .unwrap();
    }
    assert_eq!(s.load(now()).unwrap().integrity, Integrity::Mismatch);
    let before = records_at(&c, "rs/a", 0);
    let rev_before = revision(&c);
    let lines_before = all_events(&s).len();

    let rep = s.restore(&dir, &actor(), now()).unwrap();
    // 5 removals and 5 additions, 4 per part.
    assert_eq!(rep.transactions, 3, "{rep:?}");
    assert_eq!(rep.revoked_since_backup, vec![id(2)]);
    assert_eq!(rep.restricted_since_backup, vec![id(3)]);
    let mut dropped = new.clone();
    dropped.sort();
    assert_eq!(rep.dropped_keys, dropped);

    let after = records_at(&c, "rs/a", 0);
    let mut want: Vec<String> = (0..12).filter(|i| *i != 2).map(id).collect();
    want.sort();
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), want);
    assert!(s.load(now()).unwrap().keys[&ks[3].info.key_id].disabled);
    assert_eq!(s.load(now()).unwrap().integrity, Integrity::Recorded);
    assert_verify_ok(&s);

    // Every part is its own audited commit, and says how far the restore has come.
    let evs = all_events(&s);
    let parts: Vec<&AuditEvent> = evs[lines_before..].iter().collect();
    assert_eq!(parts.len(), 3);
    for (n, (e, left)) in parts.iter().zip([6, 2, 0]).enumerate() {
        assert_eq!(action(e), "restore");
        assert_eq!(e.get("part").and_then(Value::as_u64), Some(n as u64 + 1));
        assert_eq!(e.get("records_left").and_then(Value::as_u64), Some(left));
    }
    assert_contiguous(&evs);

    // Between the parts, every key the store held was as it was before or as the restore left
    // it, and the removals came first: no key revived before every dropped key was gone.
    let rev_after = revision(&c);
    let mut seen_states = 0;
    for rev in rev_before + 1..=rev_after {
        let at = records_at(&c, "rs/a", rev);
        for (k, v) in &at {
            assert!(
                before.get(k) == Some(v) || after.get(k) == Some(v),
                "revision {rev}: {k} is in neither the state before nor after the restore"
            );
        }
        assert!(
            !at.contains_key(&id(2)),
            "revision {rev}: the revoked key came back"
        );
        let revived = (5..10).filter(|i| at.contains_key(&id(*i))).count();
        let dropped_left = new.iter().filter(|k| at.contains_key(*k)).count();
        assert!(
            revived == 0 || dropped_left == 0,
            "revision {rev}: {revived} keys brought back while {dropped_left} dropped keys remain"
        );
        seen_states += 1;
    }
    assert_eq!(seen_states, 3, "one revision per part");

    // Within the limit the restore stays one transaction, with no part fields.
    let rep = s.restore(&dir, &actor(), now()).unwrap();
    assert_eq!(rep.transactions, 1);
    let last = all_events(&s).pop().unwrap();
    assert_eq!(action(&last), "restore");
    assert!(last.get("part").is_none());
    assert_verify_ok(&s);
}

#[test]
fn a_restore_in_parts_racing_writers_never_revives_a_key_revoked_meanwhile() {
    let c = cluster(1);
    let url = c.url("rr/a");
    let vars = [("XAI_ETCD_MAX_TXN_OPS", "8")];
    let s = open_url(&url, &vars, false);
    let ks: Vec<IssuedKey> = (0..6).map(|i| issue(&s, &format!("k{i}"))).collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    s.backup(&dir, now()).unwrap();
    // 30 keys after the backup: 30 removals, 4 per part.
    for i in 0..30 {
        issue(&s, &format!("after-{i}"));
    }
    let victim = ks[0].info.key_id.as_str().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        // Another admin, on another connection, while the restore runs: revokes a key the
        // backup holds, then keeps issuing keys (each one more change for the restore).
        let racer = scope.spawn(|| {
            let other = open_url(&url, &vars, false);
            revoke(&other, &victim);
            let mut issued = 0;
            while !stop.load(Ordering::Relaxed) && issued < 200 {
                issue(&other, &format!("racing-{issued}"));
                issued += 1;
            }
        });
        let outcome = s.restore(&dir, &actor(), now());
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        outcome
    });
    match &outcome {
        Ok(rep) => assert!(rep.transactions >= 2, "{rep:?}"),
        Err(e) => assert!(
            e.to_string().contains("not converging")
                && e.to_string().contains("run the restore again"),
            "{e}"
        ),
    }
    // Whichever way the race went, the revoked key is not back, and the store is whole.
    assert!(
        !key_ids(&s).contains(&victim),
        "a key revoked during the restore came back: {outcome:?}"
    );
    assert_eq!(s.load(now()).unwrap().integrity, Integrity::Recorded);
    assert_contiguous(&all_events(&s));
    assert_verify_ok(&s);
    // And a restore run again, with nobody racing it, finishes: only the backup's keys but the
    // revoked one.
    let rep = s.restore(&dir, &actor(), now()).unwrap();
    assert!(rep.transactions >= 1);
    let mut want: Vec<String> = ks[1..]
        .iter()
        .map(|k| k.info.key_id.as_str().to_string())
        .collect();
    want.sort();
    assert_eq!(key_ids(&s), want);
    assert_verify_ok(&s);
}

// ---------------------------------------------------------------------------------------------
// Usage statistics

fn usage(last: f64, count: u64) -> KeyUsage {
    KeyUsage {
        last_used: last,
        count,
        last_client: "127.0.0.1".into(),
        last_route: "/x".into(),
    }
}

#[test]
fn usage_merges_across_stores_and_drops_revoked_keys() {
    let c = cluster(1);
    let a = open(&c, "usage/a");
    let b = open(&c, "usage/a");
    assert!(a.usage().unwrap().is_empty());
    let id1 = format!("aa{}", "1".repeat(62));
    let id2 = format!("aa{}", "2".repeat(62));
    let id3 = format!("bb{}", "3".repeat(62));
    let all = |_: &str| true;
    let t = now();
    a.record_usage(
        &UsageMap::from([(id1.clone(), usage(t, 2)), (id3.clone(), usage(t, 1))]),
        &all,
        t,
    )
    .unwrap();
    b.record_usage(
        &UsageMap::from([(id1.clone(), usage(t + 1.0, 3)), (id2.clone(), usage(t, 7))]),
        &all,
        t + 1.0,
    )
    .unwrap();
    let u = a.usage().unwrap();
    assert_eq!(u[&id1].count, 5);
    assert_eq!(u[&id1].last_used, t + 1.0);
    assert_eq!(u[&id2].count, 7);
    assert_eq!(u[&id3].count, 1);

    // Concurrent flushes from both stores: no count is lost.
    std::thread::scope(|sc| {
        for st in [&a, &b] {
            let id1 = id1.clone();
            sc.spawn(move || {
                for _ in 0..10 {
                    st.record_usage(&UsageMap::from([(id1.clone(), usage(t, 1))]), &all, t)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(a.usage().unwrap()[&id1].count, 25);

    // id2 and id3 revoked: a flush that touches id1 only drops both.
    let live = |id: &str| id != id2 && id != id3;
    a.record_usage(&UsageMap::from([(id1.clone(), usage(t, 1))]), &live, t)
        .unwrap();
    let u = b.usage().unwrap();
    assert_eq!(u.keys().cloned().collect::<Vec<_>>(), vec![id1.clone()]);
    assert_eq!(u[&id1].count, 26);
}

// ---------------------------------------------------------------------------------------------
// Change window and lockdown

#[test]
fn window_and_lockdown_are_audited() {
    let c = cluster(1);
    let s = open(&c, "wl/a");
    let w = open_watched(&c, "wl/a");
    let t = now();
    let req = OpenWindow {
        ticket: "CHG-1".into(),
        reason: "deploy".into(),
        duration_secs: 3600.0,
    };
    window::open(&s, &req, &actor(), t).unwrap();
    let err = window::open(&s, &req, &actor(), t + 1.0).unwrap_err();
    assert!(matches!(err, Error::WindowOpen { .. }), "{err}");
    // Straight at the store, bypassing the helper's pre-check.
    let w2 = xai_keys_core::window::ChangeWindow {
        ticket: "CHG-2".into(),
        reason: String::new(),
        opened_at: t,
        expires_at: t + 60.0,
        opened_by: actor().to_string(),
    };
    let err = s
        .set_change_window(
            &actor(),
            t + 1.0,
            Some(&w2),
            AuditDraft::new("window_open", None),
        )
        .unwrap_err();
    assert!(matches!(err, Error::WindowOpen { .. }), "{err}");
    // Lines written inside the window carry its ticket.
    let k = issue_at(&s, "in window", t + 2.0);
    assert_eq!(
        audit::str_field(all_events(&s).last().unwrap(), "change_window"),
        Some("CHG-1")
    );
    wait_for(Duration::from_secs(2), "watched window", || {
        w.change_window()
            .unwrap()
            .is_some_and(|x| x.ticket == "CHG-1")
    });
    assert!(
        window::close(&s, "done", &actor(), t + 3.0)
            .unwrap()
            .is_some()
    );
    assert!(
        window::close(&s, "again", &actor(), t + 4.0)
            .unwrap()
            .is_none()
    );
    assert_eq!(s.change_window().unwrap(), None);

    assert!(
        lockdown::release(&s, "none", &actor(), t)
            .unwrap()
            .is_none()
    );
    let l = lockdown::engage(
        &s,
        &EngageLockdown {
            reason: "incident".into(),
            ticket: "INC-9".into(),
            admin_networks: vec!["10.0.0.0/8".into()],
        },
        &actor(),
        t + 5.0,
    )
    .unwrap();
    assert_eq!(s.lockdown().unwrap(), Some(l.clone()));
    wait_for(Duration::from_secs(2), "watched lockdown", || {
        w.lockdown().unwrap() == Some(l.clone())
    });
    assert_eq!(
        lockdown::release(&s, "over", &actor(), t + 6.0).unwrap(),
        Some(l)
    );
    assert_eq!(s.lockdown().unwrap(), None);
    assert!(
        lockdown::release(&s, "again", &actor(), t + 7.0)
            .unwrap()
            .is_none()
    );
    wait_for(Duration::from_secs(2), "watched lockdown off", || {
        w.lockdown().unwrap().is_none()
    });

    let acts: Vec<String> = all_events(&s)
        .iter()
        .map(|e| action(e).to_string())
        .collect();
    assert_eq!(
        acts,
        [
            "window_open",
            "issue",
            "window_close",
            "lockdown_on",
            "lockdown_off"
        ]
    );
    assert!(key_ids(&s).contains(&k.info.key_id.as_str().to_string()));
    assert_verify_ok(&s);
}

// ---------------------------------------------------------------------------------------------
// Migration from a file store

fn file_store(dir: &Path) -> FileStore {
    FileStore::new(
        dir.join("api_keys.json"),
        FileStoreOptions {
            durability: Durability::UnsafeNoSync,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn migrate_copies_resumes_and_refuses_foreign_prefixes() {
    let c = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let fs = file_store(tmp.path());
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            issue(&fs, &format!("f{i}"))
                .info
                .key_id
                .as_str()
                .to_string(),
        );
    }
    revoke(&fs, &ids[0]);
    ids.remove(0);
    ids.sort();
    let file_log = std::fs::read(tmp.path().join("api_keys.json.log")).unwrap();
    let file_lines: Vec<&[u8]> = file_log
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(file_lines.len(), 7);

    // Full copy.
    let to = open(&c, "mig/a");
    let rep = xai_keys_etcd::migrate(&fs, &to, &actor(), now()).unwrap();
    assert!(!rep.already_migrated);
    assert_eq!(rep.copied_lines, 7);
    assert_eq!(rep.keys, 5);
    assert_eq!(key_ids(&to), ids);
    let evs = all_events(&to);
    assert_eq!(evs.len(), 8);
    assert_eq!(action(&evs[7]), "migrate");
    assert_verify_ok(&to);
    issue(&to, "on etcd");

    // Re-run: nothing written.
    let rep = xai_keys_etcd::migrate(&fs, &to, &actor(), now()).unwrap();
    assert!(rep.already_migrated);
    assert_eq!(rep.changes_since, 1);
    assert_eq!(all_events(&to).len(), 9);

    // Resume after an interruption: the first 4 lines were copied, no head.
    for (i, l) in file_lines.iter().take(4).enumerate() {
        c.etcdctl(&[
            "put",
            &format!("/mig/b/log/{:016}", i + 1),
            std::str::from_utf8(l).unwrap(),
        ])
        .unwrap();
    }
    let to_b = open(&c, "mig/b");
    assert!(matches!(
        to_b.load(now()).unwrap().integrity,
        Integrity::Unverifiable(_)
    ));
    let rep = xai_keys_etcd::migrate(&fs, &to_b, &actor(), now()).unwrap();
    assert_eq!(rep.copied_lines, 3);
    assert_eq!(key_ids(&to_b), ids);
    assert_verify_ok(&to_b);

    // A prefix holding another store.
    let other = open(&c, "mig/c");
    issue(&other, "someone else");
    let err = xai_keys_etcd::migrate(&fs, &other, &actor(), now()).unwrap_err();
    assert!(matches!(err, Error::Migration { .. }), "{err}");
    assert_eq!(all_events(&other).len(), 1);
    // A prefix holding other log lines, no head.
    c.etcdctl(&["put", "/mig/d/log/0000000000000001", r#"{"action":"x"}"#])
        .unwrap();
    let d = open(&c, "mig/d");
    let err = xai_keys_etcd::migrate(&fs, &d, &actor(), now()).unwrap_err();
    assert!(matches!(err, Error::Migration { .. }), "{err}");
    assert!(
        c.etcdctl(&["get", "/mig/d/", "--prefix", "--keys-only"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .eq(["/mig/d/log/0000000000000001"]),
        "nothing written"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits and failures

#[test]
fn a_change_over_max_txn_ops_writes_nothing() {
    let c = cluster(1);
    let s = open_url(&c.url("ops/a"), &[("XAI_ETCD_MAX_TXN_OPS", "8")], false);
    let k = issue(&s, "seed");
    let rec = s.load(now()).unwrap().keys[&k.info.key_id].clone();
    let before = all_events(&s).len();
    let err = s
        .commit(&actor(), now(), &mut |keys: &mut KeyMap| {
            let mut drafts = Vec::new();
            for _ in 0..5 {
                let id = PlainToken::generate()?.key_id();
                keys.insert(id.clone(), rec.clone());
                drafts.push(AuditDraft::new("issue", Some(id.as_str())));
            }
            Ok(drafts)
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("XAI_ETCD_MAX_TXN_OPS"), "{err}");
    assert_eq!(key_ids(&s).len(), 1);
    assert_eq!(all_events(&s).len(), before);
    assert_verify_ok(&s);
}

#[test]
fn open_fails_fast_when_the_cluster_is_down() {
    let port = xai_keys_testkit::free_port();
    let url = format!("etcd://127.0.0.1:{port}/down");
    let t0 = Instant::now();
    let err = try_open_url(&url, &[("XAI_ETCD_TIMEOUT", "1s")], false).unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    match &err {
        Error::Unavailable { store, .. } => assert_eq!(store, &url),
        other => panic!("{other}"),
    }
    let err = try_open_url(&url, &[("XAI_ETCD_TIMEOUT", "1s")], true).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[test]
fn etcd_authentication() {
    let c = cluster(1);
    c.etcdctl(&["user", "add", "root:rootpw", "--interactive=false"])
        .unwrap();
    c.etcdctl(&["role", "add", "root"]).unwrap();
    c.etcdctl(&["user", "grant-role", "root", "root"]).unwrap();
    c.etcdctl(&["user", "add", "xai:xaipw", "--interactive=false"])
        .unwrap();
    c.etcdctl(&["role", "add", "xai"]).unwrap();
    c.etcdctl(&[
        "role",
        "grant-permission",
        "xai",
        "readwrite",
        "/auth/a/",
        "--prefix=true",
    ])
    .unwrap();
    c.etcdctl(&["user", "grant-role", "xai", "xai"]).unwrap();
    c.etcdctl(&["auth", "enable"]).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, "xaipw\n").unwrap();
    let s = open_url(
        &c.url("auth/a"),
        &[
            ("XAI_ETCD_USER", "xai"),
            ("XAI_ETCD_PASSWORD_FILE", pwfile.to_str().unwrap()),
        ],
        true,
    );
    issue(&s, "with auth");
    assert_verify_ok(&s);
    assert!(is_live(&s));

    let err = try_open_url(
        &c.url("auth/a"),
        &[
            ("XAI_ETCD_USER", "xai"),
            ("XAI_ETCD_PASSWORD", "wrong"),
            ("XAI_ETCD_TIMEOUT", "2s"),
        ],
        false,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("XAI_ETCD_USER"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    // No password at all: refused by etcd, and the message says where credentials go.
    let err = try_open_url(&c.url("auth/a"), &[("XAI_ETCD_TIMEOUT", "2s")], false).unwrap_err();
    assert!(err.to_string().contains("XAI_ETCD_USER"), "{err}");
    // A prefix the user may not touch.
    let other = try_open_url(
        &c.url("auth/other"),
        &[("XAI_ETCD_USER", "xai"), ("XAI_ETCD_PASSWORD", "xaipw")],
        false,
    );
    match other {
        Err(e) => assert!(e.to_string().contains("read and write"), "{e}"),
        Ok(_) => panic!("a store outside the user's permissions opened"),
    }
}

// ---------------------------------------------------------------------------------------------
// TLS (etcds://) with client certificates

/// Runs `openssl` with `args` in `dir`, failing the test with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) is needed for the TLS test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `NAME.key` and `NAME.pem`, valid for `DAYS` days.
fn self_signed_ca(dir: &Path, name: &str, cn: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-subj", &subj, "-days", DAYS,
        ],
    );
}

const DAYS: &str = "2";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA.
fn make_pki(dir: &Path) {
    self_signed_ca(dir, "ca", "xai-test-ca");
    for (name, usage) in [
        ("server", "serverAuth,clientAuth"),
        ("client", "clientAuth"),
    ] {
        let csr = format!("{name}.csr");
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN=xai-test-{name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-extfile",
                &ext,
                "-days",
                DAYS,
            ],
        );
    }
    // A second CA that signed nothing here: trusting it must fail.
    self_signed_ca(dir, "other", "other-ca");
}

/// One etcd member serving clients over TLS only, requiring client certificates.
struct TlsMember(std::process::Child, tempfile::TempDir);

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    make_pki(pki);
    let (client, peer) = (xai_keys_testkit::free_port(), xai_keys_testkit::free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(pki.join("etcd.log")).unwrap();
    let child = std::process::Command::new(
        std::env::var("XAI_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into()),
    )
    .args(["--name", "tls0", "--data-dir"])
    .arg(pki.join("data"))
    .args([
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
    ])
    .args([
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
    ])
    .args(["--initial-cluster", &format!("tls0={peer_url}")])
    .arg("--cert-file")
    .arg(pki.join("server.pem"))
    .arg("--key-file")
    .arg(pki.join("server.key"))
    .arg("--trusted-ca-file")
    .arg(pki.join("ca.pem"))
    .arg("--client-cert-auth")
    .args(["--logger", "zap", "--log-outputs", "stderr"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(log)
    .spawn()
    .expect("start etcd");
    let member = TlsMember(child, dir);
    let pki = member.1.path();
    let path = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let url = format!("etcds://127.0.0.1:{client}/tls");
    let (ca, cert, key, other) = (
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        path("other.pem"),
    );
    let good = [
        ("XAI_ETCD_CA_FILE", ca.as_str()),
        ("XAI_ETCD_CERT_FILE", cert.as_str()),
        ("XAI_ETCD_KEY_FILE", key.as_str()),
        ("XAI_ETCD_TIMEOUT", "2s"),
    ];
    // The member takes a moment to serve: retry the open (bounded).
    let mut store = None;
    let started = Instant::now();
    while store.is_none() && started.elapsed() < Duration::from_secs(20) {
        match try_open_url(&url, &good, true) {
            Ok(s) => store = Some(s),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let store = store.unwrap_or_else(|| {
        panic!(
            "no TLS connection within 20 s; etcd log:\n{}",
            std::fs::read_to_string(pki.join("etcd.log")).unwrap_or_default()
        )
    });
    // The whole path works over TLS: a commit, the watched copy, verify.
    let k = issue(&store, "over-tls");
    wait_for(Duration::from_secs(2), "the watched copy over TLS", || {
        key_ids(&store).contains(&k.info.key_id.to_string())
    });
    assert_verify_ok(&store);
    assert!(is_live(&store));

    // Without a client certificate the member refuses the connection.
    let no_cert = [
        ("XAI_ETCD_CA_FILE", ca.as_str()),
        ("XAI_ETCD_TIMEOUT", "2s"),
    ];
    let e = try_open_url(&url, &no_cert, false).unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    // A CA that did not sign the member's certificate is not trusted.
    let wrong_ca = [
        ("XAI_ETCD_CA_FILE", other.as_str()),
        ("XAI_ETCD_CERT_FILE", cert.as_str()),
        ("XAI_ETCD_KEY_FILE", key.as_str()),
        ("XAI_ETCD_TIMEOUT", "2s"),
    ];
    let e = try_open_url(&url, &wrong_ca, false).unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    // Plain etcd:// to a TLS port does not get through either.
    let e = try_open_url(
        &format!("etcd://127.0.0.1:{client}/tls"),
        &[("XAI_ETCD_TIMEOUT", "2s")],
        false,
    )
    .unwrap_err();
    assert_eq!(e.code(), "store_unavailable", "{e}");
    // etcds:// without a CA is a configuration error, before any connection.
    let e = try_open_url(&url, &[], false).unwrap_err();
    assert!(e.to_string().contains("XAI_ETCD_CA_FILE"), "{e}");
}

/// More records than one range page (`PAGE`, 2,000): the consistent read pages at one
/// revision, for a plain read and for a gateway's watched copy.
#[test]
fn stores_larger_than_one_page_read_whole_and_consistent() {
    let c = cluster(1);
    let url = c.url("big");
    let big = open_url(&url, &[("XAI_ETCD_MAX_TXN_OPS", "4096")], false);
    let first = issue(&big, "template");
    let template = big.load(now()).unwrap().keys[&first.info.key_id].clone();
    big.commit(&actor(), now(), &mut |keys: &mut KeyMap| {
        for i in 0..2_500 {
            keys.insert(
                xai_keys_core::KeyId::of_plaintext(&format!("bulk-{i}")),
                template.clone(),
            );
        }
        Ok(vec![AuditDraft::new("bulk_add", None).with("keys", 2_500)])
    })
    .unwrap();
    for s in [open_url(&url, &[], false), open_url(&url, &[], true)] {
        let snap = s.load(now()).unwrap();
        assert_eq!(snap.keys.len(), 2_501);
        assert_eq!(snap.integrity, Integrity::Recorded);
    }
    assert_verify_ok(&open(&c, "big"));
}
