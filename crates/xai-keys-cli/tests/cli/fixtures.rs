//! A store and audit log written by hand in the Python reference's exact format (`json.dump(…,
//! indent=2)` for the store, `json.dumps(entry)` per log line) load, list and verify unchanged,
//! and the first mutation keeps every legacy record and starts the hash chain after the legacy
//! lines.

use std::path::Path;

use serde_json::{Value, json};

use crate::commands::{all_events, chmod, files, run, sha256_hex, stderr_of, stdout_of, table};
use crate::common::*;

/// Far in the future (2100-01-01), so the fixture never goes stale.
const FAR: &str = "4102444800.0";

struct Reference {
    env: Env,
    admin: String,
    permanent: String,
    older: String,
    expired: String,
    rotated_away: String,
    revoked: String,
    store_text: String,
    log_text: String,
}

fn id(name: &str) -> String {
    sha256_hex(name.as_bytes())
}

fn write_owner_only(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    chmod(p, 0o600);
}

/// Writes the reference-format store and log (0600, directory 0700); `None` on etcd.
fn reference() -> Option<Reference> {
    let env = Env::file_only()?;
    let dir = env.store.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    chmod(dir, 0o700);
    let admin = id("legacy admin key");
    let permanent = id("legacy permanent key");
    let older = id("older key without expiry");
    let expired = id("expired legacy key");
    let rotated_away = id("key rotated away");
    let revoked = id("key revoked by hand");
    // Python: json.dump(keys, f, indent=2) — ", " never appears, ": " after keys.
    let store_text = format!(
        r#"{{
  "{admin}": {{
    "label": "legacy-admin",
    "created": 1700000000.123456,
    "scope": "admin",
    "expires_at": {FAR},
    "permanent": false
  }},
  "{permanent}": {{
    "label": "legacy-perm",
    "created": 1700000100.5,
    "scope": "operator",
    "expires_at": null,
    "permanent": true
  }},
  "{older}": {{
    "label": "older-record",
    "created": 1600000000.25,
    "scope": "user"
  }},
  "{expired}": {{
    "label": "",
    "created": 1700000300.0,
    "scope": "auditor",
    "expires_at": 1700003900.0,
    "permanent": false
  }}
}}"#
    );
    // Python: json.dumps(entry) — ", " and ": " separators, keys in insertion order.
    let log_text = [
        format!(
            r#"{{"timestamp": 1600000000.25, "action": "issue", "key_id": "{older}", "label": "older-record", "scope": "user"}}"#
        ),
        format!(
            r#"{{"timestamp": 1700000000.123456, "action": "issue", "key_id": "{admin}", "label": "legacy-admin", "scope": "admin", "expires_at": {FAR}, "permanent": false}}"#
        ),
        format!(
            r#"{{"timestamp": 1700000050.0, "action": "issue", "key_id": "{rotated_away}", "label": "legacy-perm", "scope": "operator", "expires_at": {FAR}, "permanent": false}}"#
        ),
        format!(r#"{{"timestamp": 1700000100.5, "action": "revoke", "key_id": "{rotated_away}"}}"#),
        format!(
            r#"{{"timestamp": 1700000100.5, "action": "issue", "key_id": "{permanent}", "label": "legacy-perm", "scope": "operator", "expires_at": null, "permanent": true}}"#
        ),
        format!(
            r#"{{"timestamp": 1700000100.5, "action": "rotate", "key_id": "{permanent}", "replaced": "{rotated_away}", "scope": "operator", "expires_at": null, "permanent": true}}"#
        ),
        format!(
            r#"{{"timestamp": 1700000200.0, "action": "issue", "key_id": "{revoked}", "label": "temp", "scope": "user", "expires_at": {FAR}, "permanent": false}}"#
        ),
        format!(r#"{{"timestamp": 1700000250.75, "action": "revoke", "key_id": "{revoked}"}}"#),
        format!(
            r#"{{"timestamp": 1700000300.0, "action": "issue", "key_id": "{expired}", "label": "", "scope": "auditor", "expires_at": 1700003900.0, "permanent": false}}"#
        ),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    write_owner_only(&env.store, &store_text);
    write_owner_only(&env.log(), &log_text);
    Some(Reference {
        env,
        admin,
        permanent,
        older,
        expired,
        rotated_away,
        revoked,
        store_text,
        log_text,
    })
}

fn chain_detail(rep: &Value) -> String {
    rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit chain")
        .map(|c| c["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn reference_store_and_log_list_and_verify_unchanged() {
    // The reference implementation's files: the file backend only (etcd's way in is `migrate`).
    let Some(r) = reference() else { return };
    let env = &r.env;
    let before = files(env);

    let out = run(env, &["list"], &[], None);
    assert_exit(&out, 0, &["list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = list.as_object().unwrap();
    assert_eq!(m.len(), 4, "{list}");
    let a = &list[&r.admin];
    assert_eq!(a["label"], "legacy-admin");
    assert_eq!(a["created"], 1_700_000_000.123_456);
    assert_eq!(a["scope"], "admin");
    assert_eq!(a["expires_at"], 4_102_444_800.0);
    assert_eq!(
        (a["permanent"].clone(), a["expired"].clone()),
        (json!(false), json!(false))
    );
    let p = &list[&r.permanent];
    assert_eq!(p["expires_at"], Value::Null);
    assert_eq!(p["permanent"], true);
    assert_eq!(p["expired"], false);
    let e = &list[&r.expired];
    assert_eq!(e["expired"], true);
    assert_eq!(e["state"], "expired");
    assert_eq!(e["label"], "");
    // The [older] record gets defaults for display, without being rewritten.
    let o = &list[&r.older];
    assert_eq!(o["scope"], "user");
    assert_eq!(o["created"], 1_600_000_000.25);
    assert_eq!(o["permanent"], false);
    assert_eq!(o["expired"], false);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let exp = o["expires_at"].as_f64().unwrap();
    assert!(
        exp > now + 89.0 * 86_400.0 && exp < now + 91.0 * 86_400.0,
        "{o}"
    );
    assert!(stderr_of(&out).contains("legacy"), "{}", stderr_of(&out));
    assert_eq!(files(env), before, "list rewrote the reference files");

    // Filters work on legacy records.
    let admins = env.ok(&["list", "--scope", "admin"]);
    assert_eq!(admins.as_object().unwrap().len(), 1);
    let expired = env.ok(&["list", "--state", "expired"]);
    assert!(expired.get(&r.expired).is_some());

    // Events: every line, oldest first, fields as the reference wrote them.
    let evs = all_events(env);
    assert_eq!(evs.len(), 9);
    assert_eq!(evs[0]["key_id"], r.older.as_str());
    assert_eq!(evs[0]["timestamp"], 1_600_000_000.25);
    assert_eq!(evs[8]["key_id"], r.expired.as_str());
    let rotated = env.ok(&["events", "--key-id", &r.rotated_away]);
    let acts: Vec<&str> = rotated
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(acts, vec!["issue", "revoke", "rotate"]);
    let rot = env.ok(&["events", "--action", "rotate"]);
    assert_eq!(rot[0]["replaced"], r.rotated_away.as_str());
    assert_eq!(rot[0]["key_id"], r.permanent.as_str());
    let revokes = env.ok(&["events", "--action", "revoke", "--limit", "1"]);
    assert_eq!(revokes[0]["key_id"], r.revoked.as_str());
    assert_eq!(
        env.ok(&["events", "--since", "1700000100.5"])
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert!(stdout_of(&table(env, &["events"])).contains("rotate"));
    assert!(stdout_of(&table(env, &["list"])).contains("legacy-admin"));

    // Verify accepts it (legacy records are a warning, not a failure).
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert!(chain_detail(&rep).contains("9 legacy, 0 chained"), "{rep}");

    assert_eq!(
        files(env),
        before,
        "a read-only command changed the reference files"
    );
    assert_eq!(read(&env.store), r.store_text);
    assert_eq!(mode(&env.store), 0o600);
    assert_eq!(mode(&env.log()), 0o600);
    let names: Vec<String> = std::fs::read_dir(env.store.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "read-only commands created files: {names:?}"
    );
}

#[test]
fn first_mutation_keeps_legacy_records_and_starts_the_chain_after_the_legacy_lines() {
    // The reference implementation's files: the file backend only (etcd's way in is `migrate`).
    let Some(r) = reference() else { return };
    let env = &r.env;
    let (plain, new_id) = env.issue("user", "first-rust-key");
    assert!(plain.starts_with("xai_"));

    let list = env.ok(&["list"]);
    for k in [&r.admin, &r.permanent, &r.older, &r.expired, &new_id] {
        assert!(list.get(k).is_some(), "{k} lost: {list}");
    }
    assert_eq!(list.as_object().unwrap().len(), 5);
    assert_eq!(list[&r.admin]["created"], 1_700_000_000.123_456);
    assert_eq!(list[&r.admin]["expires_at"], 4_102_444_800.0);
    assert_eq!(list[&r.permanent]["permanent"], true);
    assert_eq!(list[&r.permanent]["expires_at"], Value::Null);
    assert_eq!(list[&r.older]["created"], 1_600_000_000.25);
    assert_eq!(list[&r.older]["label"], "older-record");

    // The store is still the reference format: 2-space indented object of records.
    let store: Value = serde_json::from_str(&read(&env.store)).unwrap();
    for k in [&r.admin, &r.permanent, &r.older, &r.expired] {
        let rec = &store[k];
        for field in ["label", "created", "scope", "expires_at", "permanent"] {
            assert!(rec.get(field).is_some(), "{field} missing in {rec}");
        }
    }
    assert!(read(&env.store).starts_with("{\n  \""));
    // The legacy record's hydrated expiry is now persisted.
    assert!(store[&r.older]["expires_at"].is_number());
    assert_eq!(store[&r.older]["expires_at"], list[&r.older]["expires_at"]);

    // The log keeps the legacy lines byte for byte; the chain starts right after them.
    let log = read(&env.log());
    assert!(log.starts_with(&r.log_text), "legacy lines were rewritten");
    let first_new: Value =
        serde_json::from_str(log[r.log_text.len()..].lines().next().unwrap()).unwrap();
    assert_eq!(first_new["action"], "issue");
    assert_eq!(first_new["key_id"], new_id.as_str());
    assert_eq!(
        first_new["prev_hash"],
        sha256_hex(r.log_text.as_bytes()).as_str()
    );
    assert_eq!(
        first_new["store_sha256"],
        sha256_hex(read(&env.store).as_bytes()).as_str()
    );
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert!(chain_detail(&rep).contains("9 legacy, 1 chained"), "{rep}");

    // Further mutations on legacy keys, by prefix, keep the chain intact.
    env.ok(&["revoke", &r.admin[..12]]);
    let v = env.ok(&["rotate", &r.older[..16], "--grace", "1h"]);
    assert_eq!(v["label"], "older-record");
    assert_eq!(v["replaced"], r.older.as_str());
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert!(chain_detail(&rep).contains("9 legacy"), "{rep}");
    // Editing a legacy line is now detected: the first chained line no longer links to it.
    let edited = read(&env.log()).replacen("legacy-admin", "legacy-admon", 1);
    std::fs::write(env.log(), edited).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    assert!(chain_detail(&rep).contains("line 10"), "{rep}");
}
