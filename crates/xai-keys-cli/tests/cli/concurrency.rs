//! Several `xai-keys` processes at once against one store: every change survives (no lost
//! update), the audit log has exactly one line per change, races on one key have one winner,
//! and readers running alongside always see a valid store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::common::*;

const PROCS: usize = 6;
const PER_PROC: usize = 15;

/// Every audit line, via `xai-keys events` (the log file or the etcd log alike).
fn log_events(env: &Env) -> Vec<serde_json::Map<String, Value>> {
    let v = env.ok(&["events", "--limit", "10000"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_object().unwrap().clone())
        .collect()
}

fn field<'a>(e: &'a serde_json::Map<String, Value>, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn six_processes_issuing_and_revoking_lose_no_update() {
    let env = Env::new();
    let done = AtomicBool::new(false);
    let (kept, revoked, reads) = std::thread::scope(|s| {
        // A reader listing in a loop while the writers run: never an error, never a torn store.
        let reader = s.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let out = env.cmd().arg("list").output().unwrap();
                assert_exit(&out, 0, &["list"]);
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert!(v.is_object());
                n += 1;
            }
            n
        });
        let writers: Vec<_> = (0..PROCS)
            .map(|p| {
                let env = &env;
                s.spawn(move || {
                    let mut kept = Vec::new();
                    let mut revoked = Vec::new();
                    for i in 0..PER_PROC {
                        let (_, id) = env.issue("user", &format!("p{p}-{i}"));
                        if i % 2 == 1 {
                            let v = env.ok(&["revoke", &id]);
                            assert_eq!(v["key_id"], id.as_str());
                            revoked.push(id);
                        } else {
                            kept.push(id);
                        }
                    }
                    (kept, revoked)
                })
            })
            .collect();
        let mut kept = BTreeSet::new();
        let mut revoked = BTreeSet::new();
        for w in writers {
            let (k, r) = w.join().unwrap();
            kept.extend(k);
            revoked.extend(r);
        }
        done.store(true, Ordering::Relaxed);
        (kept, revoked, reader.join().unwrap())
    });
    assert_eq!(kept.len(), PROCS * PER_PROC.div_ceil(2));
    assert_eq!(revoked.len(), PROCS * (PER_PROC / 2));
    // No lost update: exactly the kept keys.
    let ids: BTreeSet<String> = env.ids().into_iter().collect();
    assert_eq!(ids, kept);
    // One issue line per key, one revoke line per revoked key, nothing else.
    let mut lines: BTreeMap<(String, String), usize> = BTreeMap::new();
    let events = log_events(&env);
    for e in &events {
        *lines
            .entry((field(e, "action").into(), field(e, "key_id").into()))
            .or_default() += 1;
    }
    for id in kept.iter().chain(&revoked) {
        assert_eq!(lines.get(&("issue".into(), id.clone())), Some(&1), "{id}");
    }
    for id in &revoked {
        assert_eq!(lines.get(&("revoke".into(), id.clone())), Some(&1), "{id}");
    }
    assert_eq!(events.len(), PROCS * PER_PROC + revoked.len());
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["ok"], true);
    assert!(reads > 0);
}

/// Runs `args` in `n` processes started together; returns (exit code, stdout, stderr) of each.
fn race(env: &Env, n: usize, args: &[&str]) -> Vec<(i32, Value, String)> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            let mut c = std::process::Command::new(BIN);
            for (k, _) in std::env::vars() {
                if k.starts_with("XAI_") {
                    c.env_remove(k);
                }
            }
            if env.is_etcd() {
                c.env("XAI_STATE_DIR", env.dir.path());
            }
            c.arg("--store")
                .arg(&env.store)
                .args(["-o", "json"])
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

#[test]
fn racing_revokes_of_one_key_have_exactly_one_winner() {
    let env = Env::new();
    let (_, keep) = env.issue("user", "bystander");
    let (_, id) = env.issue("admin", "target");
    let results = race(&env, 5, &["revoke", &id]);
    let winners: Vec<_> = results.iter().filter(|r| r.0 == 0).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].1["key_id"], id.as_str());
    for (code, _, err) in results.iter().filter(|r| r.0 != 0) {
        assert_eq!(*code, 1);
        assert!(err.contains("not_found"), "{err}");
    }
    assert_eq!(env.ids(), vec![keep]);
    let revokes = log_events(&env)
        .iter()
        .filter(|e| field(e, "action") == "revoke")
        .count();
    assert_eq!(revokes, 1);
    assert_eq!(env.verify().0, 0);
}

#[test]
fn racing_rotations_of_one_key_have_exactly_one_winner() {
    for grace in [false, true] {
        let env = Env::new();
        let (_, id) = env.issue("operator", "svc");
        let mut args = vec!["rotate", id.as_str()];
        if grace {
            args.extend(["--grace", "1h"]);
        }
        let results = race(&env, 4, &args);
        let winners: Vec<_> = results.iter().filter(|r| r.0 == 0).collect();
        assert_eq!(winners.len(), 1, "grace {grace}: {results:?}");
        let new = winners[0].1["key_id"].as_str().unwrap().to_string();
        assert_eq!(winners[0].1["replaced"], id.as_str());
        for (code, _, err) in results.iter().filter(|r| r.0 != 0) {
            assert_eq!(*code, 1, "{err}");
        }
        let ids: BTreeSet<String> = env.ids().into_iter().collect();
        let want: BTreeSet<String> = if grace {
            [id.clone(), new.clone()].into()
        } else {
            [new.clone()].into()
        };
        assert_eq!(ids, want, "grace {grace}");
        let actions: Vec<String> = log_events(&env)
            .iter()
            .map(|e| field(e, "action").to_string())
            .collect();
        let mid = if grace { "expire" } else { "revoke" };
        assert_eq!(actions, ["issue", "issue", mid, "rotate"], "grace {grace}");
        assert_eq!(env.verify().0, 0);
    }
}
