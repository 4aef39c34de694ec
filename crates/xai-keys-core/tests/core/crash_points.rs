//! Every crash point of a commit, simulated on real files.
//!
//! A commit writes `<store>.pending`, appends its audit lines (the commit point) and renames the
//! pending file over the store. A process killed (or a machine that loses power) part-way leaves
//! the old store, the full pending file and *any prefix* of the appended bytes: the kernel may
//! cut a multi-page `write` short when SIGKILL arrives, and unsynced appends survive a power
//! loss in part. For every such prefix, recovery (by `verify`, by a reader, by the next writer)
//! must yield exactly the old state (the commit did not happen, its lines are gone) or, for the
//! complete append only, exactly the new state. A multi-line commit (`rotate`: issue, revoke,
//! rotate) must never be half-applied, and no state change may survive without all of its lines.

use std::collections::BTreeSet;
use std::path::Path;

use xai_keys_core::audit;
use xai_keys_core::ops::{KeyManager, RotateRequest};
use xai_keys_core::store::{KeyStore, VerifyOptions};

use crate::common::*;

/// The files before and after one commit.
struct Transition {
    name: &'static str,
    old_store: Vec<u8>,
    old_log: Vec<u8>,
    new_store: Vec<u8>,
    new_log: Vec<u8>,
}

/// Builds a store with three keys, then applies `change` and records both states.
fn transition(
    name: &'static str,
    before: impl FnOnce(&Path),
    change: impl FnOnce(&KeyManager<'_>, &[String]),
) -> Transition {
    let dir = tempfile::tempdir().unwrap();
    let sp = store_path(dir.path());
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    let ids: Vec<String> = (0..3)
        .map(|i| issue(&m, &format!("k{i}"), T0 + f64::from(i)))
        .collect();
    let old_store = std::fs::read(&sp).unwrap();
    let old_log = std::fs::read(sibling(&sp, ".log")).unwrap();
    before(&sp);
    change(&m, &ids);
    Transition {
        name,
        old_store,
        old_log,
        new_store: std::fs::read(&sp).unwrap(),
        new_log: std::fs::read(sibling(&sp, ".log")).unwrap(),
    }
}

fn transitions() -> Vec<Transition> {
    let now = T0 + 100.0;
    vec![
        transition(
            "issue",
            |_| {},
            |m, _| {
                issue(m, "new", now);
            },
        ),
        transition(
            "revoke",
            |_| {},
            |m, ids| {
                m.revoke(&ids[1], Some("test"), &actor(), now).unwrap();
            },
        ),
        transition(
            "rotate",
            |_| {},
            |m, ids| {
                m.rotate(&ids[0], RotateRequest::default(), &actor(), now)
                    .unwrap();
            },
        ),
        transition(
            "rotate --grace",
            |_| {},
            |m, ids| {
                let req = RotateRequest {
                    grace_secs: 3600.0,
                    ..RotateRequest::default()
                };
                m.rotate(&ids[2], req, &actor(), now).unwrap();
            },
        ),
        // A torn line from an earlier crash: the next commit removes it and records a
        // `recover` line before its own (a two-line commit).
        transition(
            "recover + issue",
            |sp| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(sibling(sp, ".log"))
                    .unwrap();
                f.write_all(b"{\"timestamp\": 17600").unwrap();
            },
            |m, _| {
                issue(m, "after-torn", now);
            },
        ),
    ]
}

/// How the crashed state is found and recovered.
#[derive(Clone, Copy, Debug)]
enum Recoverer {
    Verify,
    Reader,
    Writer,
}

fn lines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// Sets up `store`, `log`, `pending` in `dir`, recovers through `how`, checks the outcome is
/// exactly `old` or `new` (`applied`) of `t`.
fn check_state(
    dir: &Path,
    t: &Transition,
    log: &[u8],
    pending: Option<&[u8]>,
    applied: bool,
    how: Recoverer,
    what: &str,
) {
    let _ = std::fs::remove_dir_all(dir);
    let sp = store_path(dir);
    let lp = sibling(&sp, ".log");
    let pp = sibling(&sp, ".pending");
    write_private(&sp, &t.old_store);
    write_private(&lp, log);
    if let Some(p) = pending {
        write_private(&pp, p);
    }
    let (want_store, want_log) = if applied {
        (&t.new_store, &t.new_log)
    } else {
        (&t.old_store, &t.old_log)
    };
    let ctx = format!("{} / {what} / {how:?}", t.name);
    let store = fast(&sp);
    match how {
        Recoverer::Verify => {
            let rep = store
                .verify(&actor(), T0 + 200.0, VerifyOptions::default())
                .unwrap();
            assert!(rep.ok, "{ctx}: verify failed: {:#?}", rep.checks);
        }
        Recoverer::Reader => {
            let snap = store.load(T0 + 200.0).unwrap();
            let got: BTreeSet<String> = snap.keys.keys().map(|k| k.to_string()).collect();
            assert_eq!(
                got,
                parse_ids(want_store),
                "{ctx}: reader saw the wrong keys"
            );
        }
        Recoverer::Writer => {
            let m = KeyManager::new(&store, policy());
            let id = issue(&m, "next", T0 + 200.0);
            let now_log = std::fs::read(&lp).unwrap();
            assert!(
                now_log.starts_with(want_log),
                "{ctx}: the next writer did not build on the {} log",
                if applied { "new" } else { "old" }
            );
            let extra: Vec<String> = String::from_utf8_lossy(&now_log[want_log.len()..])
                .lines()
                .map(|l| {
                    let e: audit::AuditEvent = serde_json::from_str(l).unwrap();
                    action(&e).to_string()
                })
                .collect();
            assert!(
                extra == ["issue"] || extra == ["recover", "issue"],
                "{ctx}: unexpected lines {extra:?}"
            );
            let mut want_ids = parse_ids(want_store);
            want_ids.insert(id);
            assert_eq!(
                ids_in_file(&sp),
                want_ids,
                "{ctx}: wrong keys after next write"
            );
            let rep = audit::verify_chain(&lp).unwrap();
            assert_eq!(rep.first_error, None, "{ctx}");
            assert_eq!(replay(&log_events(&lp)), want_ids, "{ctx}: log disagrees");
            assert!(!pp.exists(), "{ctx}: pending file left behind");
            return;
        }
    }
    assert!(!pp.exists(), "{ctx}: pending file left behind");
    assert!(
        std::fs::read(&sp).unwrap() == *want_store,
        "{ctx}: store is not the {} state",
        if applied { "new" } else { "old" }
    );
    let got_log = std::fs::read(&lp).unwrap();
    assert!(
        got_log == *want_log,
        "{ctx}: log is not the {} log: {} lines, want {} (a half-applied commit?)\n{}",
        if applied { "new" } else { "old" },
        lines(&got_log),
        lines(want_log),
        String::from_utf8_lossy(&got_log[t.old_log.len().min(got_log.len())..])
    );
    assert_eq!(
        replay(&log_events(&lp)),
        parse_ids(want_store),
        "{ctx}: log and store disagree"
    );
}

fn parse_ids(store: &[u8]) -> BTreeSet<String> {
    parse_keys(store).keys().map(|k| k.to_string()).collect()
}

const HOW: [Recoverer; 3] = [Recoverer::Verify, Recoverer::Reader, Recoverer::Writer];

#[test]
fn every_cut_of_the_audit_append_recovers_to_old_or_new_state() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("s");
    for t in transitions() {
        assert!(t.new_log.starts_with(&t.old_log), "{}", t.name);
        let appended = &t.new_log[t.old_log.len()..];
        let want_lines = match t.name {
            "rotate" | "rotate --grace" => 3,
            "recover + issue" => 2,
            _ => 1,
        };
        assert_eq!(lines(appended), want_lines, "{}: lines per commit", t.name);
        // Every cut near a line boundary (where behaviour changes), every 11th byte elsewhere.
        let boundaries: Vec<usize> = std::iter::once(0)
            .chain(
                appended
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let near = |k: usize| boundaries.iter().any(|&b| k.abs_diff(b) <= 3);
        for k in (0..=appended.len()).filter(|&k| k % 11 == 0 || near(k)) {
            let mut log = t.old_log.clone();
            log.extend_from_slice(&appended[..k]);
            let applied = k == appended.len();
            let how = HOW[k % 3];
            check_state(
                &dir,
                &t,
                &log,
                Some(&t.new_store),
                applied,
                how,
                &format!("append cut at {k}/{}", appended.len()),
            );
        }
    }
}

#[test]
fn every_cut_of_the_pending_write_leaves_the_old_state() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("s");
    for t in transitions() {
        let step = (t.new_store.len() / 23).max(1);
        let cuts = (0..=t.new_store.len())
            .step_by(step)
            .chain([t.new_store.len()]);
        for (i, k) in cuts.enumerate() {
            check_state(
                &dir,
                &t,
                &t.old_log,
                Some(&t.new_store[..k]),
                false,
                HOW[i % 3],
                &format!("pending cut at {k}/{}", t.new_store.len()),
            );
        }
    }
}

#[test]
fn a_crash_after_the_rename_is_the_new_state() {
    let scratch = tempfile::tempdir().unwrap();
    for t in transitions() {
        for how in HOW {
            let dir = scratch.path().join("s");
            let _ = std::fs::remove_dir_all(&dir);
            let sp = store_path(&dir);
            write_private(&sp, &t.new_store);
            write_private(&sibling(&sp, ".log"), &t.new_log);
            let store = fast(&sp);
            match how {
                Recoverer::Verify => {
                    let rep = store
                        .verify(&actor(), T0 + 200.0, VerifyOptions::default())
                        .unwrap();
                    assert!(rep.ok, "{}: {:#?}", t.name, rep.checks);
                }
                Recoverer::Reader => {
                    let got: BTreeSet<String> = store
                        .load(T0 + 200.0)
                        .unwrap()
                        .keys
                        .keys()
                        .map(|k| k.to_string())
                        .collect();
                    assert_eq!(got, parse_ids(&t.new_store), "{}", t.name);
                }
                Recoverer::Writer => {
                    issue(&KeyManager::new(&store, policy()), "x", T0 + 200.0);
                    assert!(
                        std::fs::read(sibling(&sp, ".log"))
                            .unwrap()
                            .starts_with(&t.new_log)
                    );
                }
            }
        }
    }
}

/// A restore right after a crash plans from committed state only: a committed but unpublished
/// rotation counts (its revocation is honoured and its new key is reported dropped), a cut-short
/// one does not (the key it would have revoked is restored, and no revocation is claimed).
#[test]
fn restore_after_a_crash_plans_from_committed_state() {
    let scratch = tempfile::tempdir().unwrap();
    let a = scratch.path().join("a");
    let sp = store_path(&a);
    let store = fast(&sp);
    let m = KeyManager::new(&store, policy());
    let ids: Vec<String> = (0..3)
        .map(|i| issue(&m, &format!("k{i}"), T0 + f64::from(i)))
        .collect();
    let backup = scratch.path().join("backup");
    store.backup(&backup, T0 + 10.0).unwrap();
    let old_store = std::fs::read(&sp).unwrap();
    let old_log = std::fs::read(sibling(&sp, ".log")).unwrap();
    let rotated = m
        .rotate(&ids[0], RotateRequest::default(), &actor(), T0 + 20.0)
        .unwrap();
    let new_id = rotated.new.info.key_id.to_string();
    let new_store = std::fs::read(&sp).unwrap();
    let new_log = std::fs::read(sibling(&sp, ".log")).unwrap();
    let appended = &new_log[old_log.len()..];
    let second_line_end = appended
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    for (cut, committed) in [(second_line_end, false), (appended.len(), true)] {
        let c = scratch.path().join(format!("c{cut}"));
        let cp = store_path(&c);
        write_private(&cp, &old_store);
        let mut log = old_log.clone();
        log.extend_from_slice(&appended[..cut]);
        write_private(&sibling(&cp, ".log"), &log);
        write_private(&sibling(&cp, ".pending"), &new_store);
        let s = fast(&cp);
        let rep = s.restore(&backup, &actor(), T0 + 30.0).unwrap();
        if committed {
            assert_eq!(rep.revoked_since_backup, vec![ids[0].clone()]);
            assert_eq!(rep.dropped_keys, vec![new_id.clone()]);
            let mut want = all.clone();
            want.remove(&ids[0]);
            assert_eq!(ids_in_file(&cp), want);
        } else {
            assert!(rep.revoked_since_backup.is_empty(), "{rep:?}");
            assert!(rep.dropped_keys.is_empty(), "{rep:?}");
            assert_eq!(ids_in_file(&cp), all);
        }
        let v = s
            .verify(&actor(), T0 + 40.0, VerifyOptions::default())
            .unwrap();
        assert!(v.ok, "{:#?}", v.checks);
        let events = log_events(&sibling(&cp, ".log"));
        let tail: Vec<&str> = events.iter().skip(3).map(action).collect();
        if committed {
            assert_eq!(tail, ["issue", "revoke", "rotate", "restore"]);
        } else {
            assert_eq!(tail, ["recover", "restore"]);
        }
    }
}
