//! The audit log's readers: the line parser, the chain verifier (`audit::verify_chain`, what
//! `xai-keys verify` runs) and the tail reader (`audit::read_head`, what every commit reads
//! before appending), over arbitrary log bytes.
//!
//! Checks: nothing panics (`read_head` reads a copy in a temporary directory); every parsed
//! line maps to a security event (`events::from_audit_line`); the two readers agree: on a log
//! the verifier finds intact, the tail reader reports no problem, the same torn bytes and the
//! same chain head and store digest; and a verified chain stays verified: appending a line
//! built by `build_line` on the head `read_head` gives (after cutting the torn tail, as a
//! commit does) verifies, with that line as the new head.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xai_keys_core::audit::{
    Actor, AuditDraft, AuditEvent, GENESIS, build_line, continues, is_chained, read_head,
    verify_chain_bytes,
};
use xai_keys_core::events::{audit_event_id, from_audit_line};

/// The log file `read_head` reads: one per process, in a directory removed at exit.
fn log_path() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("a temporary directory");
        let p = d.path().join("api_keys.json.log");
        (d, p)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let path = log_path();
    // Every line, as the tail readers and the event mapping see it.
    for line in data.split(|&b| b == b'\n') {
        if let Ok(obj) = serde_json::from_slice::<AuditEvent>(line) {
            let _ = from_audit_line(&obj, true);
            let _ = audit_event_id(&obj);
            let _ = continues(&obj);
        }
    }

    let rep = verify_chain_bytes(data, path).expect("in-memory verification does no I/O");
    assert!(rep.torn_bytes <= data.len() as u64);
    assert!(rep.legacy_lines + rep.chained_lines <= rep.lines);

    std::fs::write(path, data).expect("write the log copy");
    let head = read_head(path);
    if rep.first_error.is_some() {
        return;
    }
    // An intact log: the tail reader agrees with the full verification.
    let head = match head {
        Ok(h) => h,
        Err(e) => panic!("read_head fails on a log that verifies: {e}"),
    };
    assert_eq!(
        head.problem, None,
        "read_head finds a problem in a log that verifies"
    );
    assert_eq!(head.torn_bytes, rep.torn_bytes, "torn bytes differ");
    assert_eq!(head.complete_len + head.torn_bytes, data.len() as u64);
    let complete = &data[..head.complete_len as usize];
    let last_complete = complete
        .strip_suffix(b"\n")
        .and_then(|c| c.split(|&b| b == b'\n').next_back())
        .and_then(|l| serde_json::from_slice::<AuditEvent>(l).ok());
    match last_complete {
        Some(obj) if is_chained(&obj) => {
            let hash = obj.get("hash").and_then(Value::as_str).map(str::to_string);
            assert_eq!(head.chain_head, hash, "chain head differs");
            assert_eq!(
                head.store_sha256,
                obj.get("store_sha256")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                "anchor differs"
            );
            // The complete part's verification ends on the same line.
            let rep2 = verify_chain_bytes(complete, path).expect("in memory");
            assert_eq!(rep2.last_hash, hash);
            assert_eq!(rep2.last_store_sha256, head.store_sha256);
        }
        _ if head.complete_len == 0 => assert_eq!(head.chain_head.as_deref(), Some(GENESIS)),
        _ => {}
    }

    // A verified chain stays verified: cut the torn tail, append the next line.
    std::fs::write(path, complete).expect("write the log copy");
    let prev = match head.next_prev_hash(path) {
        Ok(p) => p,
        Err(e) => panic!("next_prev_hash fails on a log that verifies: {e}"),
    };
    let draft = AuditDraft::new("issue", Some(&"ab".repeat(32)))
        .with("label", "fuzz")
        .with("scope", "user");
    let actor = Actor::System;
    let (line, hash) = build_line(1_800_000_000.5, &draft, &actor, &"cd".repeat(32), &prev);
    let mut appended = complete.to_vec();
    appended.extend_from_slice(line.as_bytes());
    appended.push(b'\n');
    let rep3 = verify_chain_bytes(&appended, path).expect("in memory");
    assert_eq!(
        rep3.first_error, None,
        "appending to a verified log broke the chain"
    );
    assert_eq!(rep3.torn_bytes, 0);
    assert_eq!(rep3.last_hash.as_deref(), Some(hash.as_str()));
    std::fs::write(path, &appended).expect("write the log copy");
    let head3 = read_head(path).expect("read_head on the appended log");
    assert_eq!(head3.problem, None);
    assert_eq!(head3.chain_head.as_deref(), Some(hash.as_str()));
    assert_eq!(head3.complete_len, appended.len() as u64);
});
