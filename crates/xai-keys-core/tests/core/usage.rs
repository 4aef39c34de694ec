//! Usage statistics as the front ends use them: `Snapshot::integrity`, the idle guard of
//! `revoke_guarded`, and statistics recorded for keys that are later revoked.

use std::fs;

use xai_keys_core::Error;
use xai_keys_core::ops::KeyManager;
use xai_keys_core::store::{Integrity, KeyStore};
use xai_keys_core::usage::{KeyUsage, UsageMap};

use crate::common::*;

fn used(id: &str, last_used: f64) -> UsageMap {
    UsageMap::from([(
        id.to_string(),
        KeyUsage {
            last_used,
            count: 3,
            last_client: "10.1.2.3".into(),
            last_route: "/api/v1/send".into(),
        },
    )])
}

#[test]
fn snapshots_say_how_the_store_stands_against_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let s = fast(&sp);
    assert_eq!(s.load(T0).unwrap().integrity, Integrity::NoChainYet);
    let m = KeyManager::new(&s, policy());
    issue(&m, "a", T0);
    let snap = s.load(T0).unwrap();
    assert_eq!(snap.integrity, Integrity::Recorded);
    assert!(snap.integrity.is_consistent());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);

    // Edited outside xai-keys.
    let original = fs::read(&sp).unwrap();
    let mut edited = original.clone();
    edited.extend_from_slice(b"\n");
    fs::write(&sp, &edited).unwrap();
    let snap = s.load(T0).unwrap();
    assert_eq!(snap.integrity, Integrity::Mismatch);
    assert_eq!(snap.integrity.code(), "mismatch");
    assert_eq!(snap.warnings.len(), 1, "{:?}", snap.warnings);
    fs::write(&sp, &original).unwrap();

    // The log's last line edited: the tail does not verify.
    let log = sibling(&sp, ".log");
    let good_log = fs::read_to_string(&log).unwrap();
    fs::write(&log, good_log.replace("\"label\":\"a\"", "\"label\":\"b\"")).unwrap();
    match s.load(T0).unwrap().integrity {
        Integrity::Unverifiable(why) => assert!(why.contains("line 1"), "{why}"),
        other => panic!("expected Unverifiable, got {other:?}"),
    }

    // The log erased while the store holds xai-keys records.
    fs::remove_file(&log).unwrap();
    let snap = s.load(T0).unwrap();
    assert_eq!(snap.integrity, Integrity::Erased);
    assert!(!snap.integrity.is_consistent());

    // A reference-format store with no log: nothing to check against.
    let ref_dir = tempfile::tempdir().unwrap();
    let rp = store_path(ref_dir.path());
    write_private(
        &rp,
        format!(
            "{{\"{}\": {{\"label\": \"x\", \"created\": {T0}, \"scope\": \"user\", \"expires_at\": null, \"permanent\": true}}}}",
            "ab".repeat(32)
        )
        .as_bytes(),
    );
    let snap = fast(&rp).load(T0).unwrap();
    assert_eq!(snap.integrity, Integrity::NoChainYet);
    assert_eq!(snap.keys.len(), 1);
}

#[test]
fn the_idle_guard_refuses_a_key_used_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let s = fast(&sp);
    let m = KeyManager::new(&s, policy());
    let id = issue(&m, "svc", T0);
    let now = T0 + 10_000.0;
    s.record_usage(&used(&id, now - 60.0), &|_: &str| true, now - 50.0)
        .unwrap();

    // Used 60 s ago: a 15-minute guard refuses, naming when, who and the way out.
    let e = m
        .revoke_guarded(&id[..12], Some("INC-1"), Some(900.0), None, &actor(), now)
        .unwrap_err();
    assert_eq!(e.code(), "recently_used");
    match &e {
        Error::RecentlyUsed {
            key_id,
            last_used,
            idle_secs,
            last_client,
            last_route,
        } => {
            assert_eq!(key_id, &id);
            assert_eq!(*last_used, now - 60.0);
            assert_eq!(*idle_secs, 900.0);
            assert_eq!(last_client, "10.1.2.3");
            assert_eq!(last_route, "/api/v1/send");
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("10.1.2.3") && msg.contains("/api/v1/send"),
        "{msg}"
    );
    assert!(s.load(now).unwrap().keys.keys().any(|k| k.as_str() == id));
    assert_eq!(
        log_events(&sibling(&sp, ".log")).len(),
        1,
        "a refusal wrote a line"
    );

    // The boundary: used exactly `window` ago is idle; one second less is not.
    let e = m
        .revoke_guarded(&id, None, Some(60.5), None, &actor(), now)
        .unwrap_err();
    assert_eq!(e.code(), "recently_used");

    // The caller's unflushed uses count too (the later one wins).
    let e = m
        .revoke_guarded(
            &id,
            None,
            Some(30.0),
            Some(&used(&id, now - 1.0)),
            &actor(),
            now,
        )
        .unwrap_err();
    assert!(matches!(e, Error::RecentlyUsed { last_used, .. } if last_used == now - 1.0));

    // Invalid windows name the flag.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = m
            .revoke_guarded(&id, None, Some(bad), None, &actor(), now)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        assert!(e.to_string().contains("--if-idle"), "{e}");
    }

    let info = m
        .revoke_guarded(&id, Some("INC-1"), Some(60.0), None, &actor(), now)
        .unwrap();
    assert_eq!(info.key_id.as_str(), id);
    assert!(s.load(now).unwrap().keys.is_empty());

    // The next flush drops the revoked key's statistics.
    let live = s.load(now).unwrap().keys;
    s.record_usage(
        &UsageMap::new(),
        &|k: &str| live.keys().any(|l| l.as_str() == k),
        now,
    )
    .unwrap();
    assert!(s.usage().unwrap().is_empty());
}

#[test]
fn the_idle_guard_refuses_when_statistics_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let s = fast(&sp);
    let m = KeyManager::new(&s, policy());
    let id = issue(&m, "svc", T0);
    // Never used: any window allows it.
    let k2 = issue(&m, "svc2", T0);
    m.revoke_guarded(&k2, None, Some(1e9), None, &actor(), T0 + 1.0)
        .unwrap();
    write_private(&sibling(&sp, ".usage"), b"not json");
    let e = m
        .revoke_guarded(&id, None, Some(60.0), None, &actor(), T0 + 1.0)
        .unwrap_err();
    assert_eq!(e.code(), "corrupt_usage", "{e}");
    // Without the guard the statistics are not read.
    m.revoke_guarded(&id, None, None, None, &actor(), T0 + 1.0)
        .unwrap();
}
