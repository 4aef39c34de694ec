//! (b) Any sequence of commits leaves an intact chain whose replay is the store; (c) editing,
//! deleting, swapping or truncating lines of such a log is detected.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use xai_keys_core::audit::{self, AuditDraft};
use xai_keys_core::ops::{IssueRequest, KeyManager, RotateRequest};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::record::{KeyMap, KeyRecord};
use xai_keys_core::store::{FileStore, KeyStore, VerifyOptions};
use xai_keys_core::{KeyId, Scope};

use crate::common::*;
use crate::props_store::{arb_id, arb_json, arb_record};

/// Names of extra fields in arbitrary drafts (never the line's own fields).
const FIELD_NAMES: [&str; 6] = [
    "label",
    "note",
    "detail",
    "nested",
    "ünïcödé \"quoted\" name",
    "n",
];

#[derive(Debug, Clone)]
enum Op {
    Issue {
        scope: Scope,
        label: String,
        ttl: Option<f64>,
        permanent: bool,
    },
    Revoke(Index),
    /// Disable an enabled key or enable a disabled one (always a change).
    Toggle(Index),
    Rotate {
        key: Index,
        grace: bool,
        label: Option<String>,
    },
    /// A commit with hand-made drafts: an `issue` of `id` and further lines, every one with
    /// arbitrary extra fields.
    Raw {
        id: KeyId,
        record: KeyRecord,
        drafts: Vec<Vec<(usize, Value)>>,
    },
}

fn label() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            prop::sample::select(Scope::ALL.to_vec()),
            label(),
            prop::option::of(1.0f64..1e9),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(scope, label, ttl, permanent)| Op::Issue {
                scope,
                label,
                ttl,
                permanent
            }),
        2 => any::<Index>().prop_map(Op::Revoke),
        2 => any::<Index>().prop_map(Op::Toggle),
        2 => (any::<Index>(), any::<bool>(), prop::option::of(label()))
            .prop_map(|(key, grace, label)| Op::Rotate { key, grace, label }),
        1 => (
            arb_id(),
            arb_record(),
            prop::collection::vec(
                prop::collection::vec((0..FIELD_NAMES.len(), arb_json()), 0..4),
                1..4
            ),
        )
            .prop_map(|(id, record, drafts)| Op::Raw { id, record, drafts }),
    ]
}

fn line_count(log: &Path) -> usize {
    std::fs::read(log)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Applies `op`; returns how many audit lines it should have written (0 when refused).
fn apply(store: &FileStore, op: &Op, now: f64) -> usize {
    let m = KeyManager::new(store, policy());
    let keys: KeyMap = store.load(now).unwrap().keys;
    let pick = |i: &Index| -> Option<(String, KeyRecord)> {
        (!keys.is_empty()).then(|| {
            let (k, r) = keys.iter().nth(i.index(keys.len())).unwrap();
            (k.to_string(), r.clone())
        })
    };
    match op {
        Op::Issue {
            scope,
            label,
            ttl,
            permanent,
        } => {
            let ttl = match (permanent, ttl) {
                (true, _) => TtlRequest::Permanent,
                (false, Some(s)) => TtlRequest::Seconds(*s),
                (false, None) => TtlRequest::Default,
            };
            let req = IssueRequest {
                scope: *scope,
                label: label.clone(),
                ttl,
                secret: None,
            };
            m.issue(req, &actor(), now).unwrap();
            1
        }
        Op::Revoke(i) => match pick(i) {
            Some((id, _)) => {
                m.revoke(&id, Some("prop"), &actor(), now).unwrap();
                1
            }
            None => 0,
        },
        Op::Toggle(i) => match pick(i) {
            Some((id, r)) => {
                m.set_disabled(&id, !r.disabled, &actor(), now).unwrap();
                1
            }
            None => 0,
        },
        Op::Rotate { key, grace, label } => match pick(key) {
            Some((id, _)) => {
                let req = RotateRequest {
                    grace_secs: if *grace { 3600.0 } else { 0.0 },
                    label: label.clone(),
                    ..RotateRequest::default()
                };
                // Refused for disabled, expired or already rotated keys: nothing written.
                m.rotate(&id, req, &actor(), now).map_or(0, |_| 3)
            }
            None => 0,
        },
        Op::Raw { id, record, drafts } => {
            if keys.contains_key(id) {
                return 0;
            }
            let info = store
                .commit(&actor(), now, &mut |keys: &mut KeyMap| {
                    keys.insert(id.clone(), record.clone());
                    Ok(drafts
                        .iter()
                        .enumerate()
                        .map(|(i, fields)| {
                            let mut d = if i == 0 {
                                AuditDraft::new("issue", Some(id.as_str()))
                            } else {
                                AuditDraft::new("note", None)
                            };
                            for (n, v) in fields {
                                d = d.with(FIELD_NAMES[*n], v.clone());
                            }
                            d
                        })
                        .collect())
                })
                .unwrap();
            assert_eq!(info.lines.len(), drafts.len());
            drafts.len()
        }
    }
}

/// Runs `ops` on a fresh store in `dir`; returns the store and the number of lines written.
fn run(dir: &Path, ops: &[Op]) -> (FileStore, usize) {
    let sp = store_path(dir);
    let store = fast(&sp);
    let log = sibling(&sp, ".log");
    let mut total = 0;
    for (i, op) in ops.iter().enumerate() {
        let before = line_count(&log);
        let want = apply(&store, op, T0 + i as f64 * 0.37);
        assert_eq!(line_count(&log) - before, want, "lines written by {op:?}");
        total += want;
    }
    (store, total)
}

fn verify_ok(store: &FileStore) -> (bool, String) {
    let rep = store
        .verify(&actor(), T0 + 1e4, VerifyOptions::default())
        .unwrap();
    (rep.ok, format!("{:#?}", rep.checks))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_commit_sequence_leaves_an_intact_chain(ops in prop::collection::vec(arb_op(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        let (store, total) = run(dir.path(), &ops);
        let log = store.log_path().to_path_buf();
        let rep = audit::verify_chain(&log).unwrap();
        prop_assert_eq!(&rep.first_error, &None);
        prop_assert_eq!(rep.torn_bytes, 0);
        prop_assert_eq!(rep.lines, total);
        prop_assert_eq!(rep.chained_lines, total);
        let (ok, checks) = verify_ok(&store);
        prop_assert!(ok, "{}", checks);
        prop_assert_eq!(replay(&log_events(&log)), ids_in_file(store.store_path()));
        // The head the next writer links to is the last line's hash.
        if total > 0 {
            prop_assert_eq!(Some(audit::read_head(&log).unwrap().next_prev_hash(&log).unwrap()), rep.last_hash);
        }
    }
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Replace one byte of one line (never with a newline).
    Edit {
        line: Index,
        byte: Index,
        to: u8,
    },
    Delete(Index),
    Swap(Index, Index),
    /// Cut the log inside its last line (from its first byte to just before its newline).
    TruncateLast(Index),
}

fn arb_tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>(), any::<u8>())
            .prop_map(|(line, byte, to)| Tamper::Edit { line, byte, to }),
        2 => any::<Index>().prop_map(Tamper::Delete),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Tamper::Swap(a, b)),
        2 => any::<Index>().prop_map(Tamper::TruncateLast),
    ]
}

/// Splits a log into lines, each with its newline.
fn split_lines(b: &[u8]) -> Vec<Vec<u8>> {
    b.split_inclusive(|&c| c == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tampering_is_detected(
        ops in prop::collection::vec(arb_op(), 0..8),
        tamper in arb_tamper(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Two issues first: at least two lines, and the last commit always changes the store.
        let mut all = vec![
            Op::Issue { scope: Scope::User, label: "a".into(), ttl: None, permanent: false },
            Op::Issue { scope: Scope::Admin, label: "b".into(), ttl: None, permanent: false },
        ];
        all.extend(ops);
        let (store, _) = run(dir.path(), &all);
        let log = store.log_path().to_path_buf();
        let (ok, checks) = verify_ok(&store);
        prop_assert!(ok, "untampered log fails: {}", checks);
        let original = std::fs::read(&log).unwrap();
        let lines = split_lines(&original);
        let n = lines.len();
        let chain_detects = || audit::verify_chain(&log).unwrap().first_error.is_some();
        match tamper {
            Tamper::Edit { line, byte, to } => {
                let li = line.index(n);
                let mut edited = lines.clone();
                let body_len = edited[li].len() - 1;
                let bi = byte.index(body_len);
                prop_assume!(to != b'\n' && edited[li][bi] != to);
                edited[li][bi] = to;
                std::fs::write(&log, edited.concat()).unwrap();
                let same_meaning = serde_json::from_slice::<Value>(&edited[li][..body_len]).ok()
                    == serde_json::from_slice::<Value>(&lines[li][..body_len]).ok();
                prop_assert!(
                    chain_detects() || same_meaning,
                    "undetected edit of line {} byte {}: {}",
                    li + 1, bi, String::from_utf8_lossy(&edited[li])
                );
            }
            Tamper::Delete(i) => {
                let li = i.index(n);
                let mut edited = lines.clone();
                edited.remove(li);
                std::fs::write(&log, edited.concat()).unwrap();
                if li + 1 < n {
                    prop_assert!(chain_detects(), "deleting line {} of {} undetected", li + 1, n);
                } else {
                    let (ok, checks) = verify_ok(&store);
                    prop_assert!(!ok, "deleting the last line ({}) undetected: {}",
                        String::from_utf8_lossy(&lines[li]), checks);
                }
            }
            Tamper::Swap(a, b) => {
                let (a, b) = (a.index(n), b.index(n));
                prop_assume!(a != b);
                let mut edited = lines.clone();
                edited.swap(a, b);
                std::fs::write(&log, edited.concat()).unwrap();
                prop_assert!(chain_detects(), "swapping lines {} and {} undetected", a + 1, b + 1);
            }
            Tamper::TruncateLast(cut) => {
                let last_start = original.len() - lines[n - 1].len();
                let at = last_start + cut.index(lines[n - 1].len());
                std::fs::write(&log, &original[..at]).unwrap();
                let (ok, checks) = verify_ok(&store);
                prop_assert!(!ok, "truncation at {} (last line starts at {}) undetected: {}",
                    at, last_start, checks);
            }
        }
    }
}
