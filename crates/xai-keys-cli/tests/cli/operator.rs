//! Operator review: the runbook's commands as an operator types them (tables on a terminal),
//! drop-in compatibility with `manage_api_keys.py` automation, and the quality of refusals.

use std::path::Path;

use serde_json::Value;

use crate::commands::{
    chmod, error_json, files, refused, run, sha256_hex, stderr_of, stdout_of, table,
};
use crate::common::*;

const DAY: f64 = 86_400.0;

fn write_owner_only(p: &Path, text: &str) {
    let dir = p.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o700);
    std::fs::write(p, text).unwrap();
    chmod(p, 0o600);
}

fn hex_id(c: char) -> String {
    c.to_string().repeat(64)
}

/// `xai-keys --store … -o table ARGS` with any exit code.
fn table_any(env: &Env, args: &[&str]) -> std::process::Output {
    base_cmd()
        .arg("--store")
        .arg(&env.store)
        .args(["-o", "table"])
        .args(args)
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Compatibility with manage_api_keys.py

/// The reference accepts `--ttl-days` together with `--ttl-hours` ("days win"); wrappers that
/// always pass both must keep working.
#[test]
fn ttl_days_wins_over_ttl_hours_as_in_the_reference() {
    let env = Env::new();
    let out = run(
        &env,
        &[
            "issue",
            "--label",
            "both",
            "--ttl-days",
            "2",
            "--ttl-hours",
            "5",
        ],
        &[],
        None,
    );
    assert_exit(&out, 0, &["issue", "--ttl-days", "2", "--ttl-hours", "5"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ttl = v["expires_at"].as_f64().unwrap() - v["created"].as_f64().unwrap();
    assert!((ttl - 2.0 * DAY).abs() < 1e-3, "{v}");
    assert!(
        stderr_of(&out).contains("--ttl-days wins"),
        "{}",
        stderr_of(&out)
    );

    // bootstrap-admin has the same flags in the reference.
    let out = run(
        &env,
        &[
            "bootstrap-admin",
            "--secret-stdin",
            "--ttl-days",
            "1",
            "--ttl-hours",
            "3",
        ],
        &[],
        Some(&"s".repeat(40)),
    );
    assert_exit(&out, 0, &["bootstrap-admin", "--ttl-days", "--ttl-hours"]);
    let list = env.ok(&["list", "--scope", "admin"]);
    let rec = list.as_object().unwrap().values().next().unwrap().clone();
    let ttl = rec["expires_at"].as_f64().unwrap() - rec["created"].as_f64().unwrap();
    assert!((ttl - DAY).abs() < 1e-3, "{rec}");

    // --permanent with a lifetime stays a contradiction (a usage error).
    env.fails(&["issue", "--ttl-hours", "1", "--permanent"], 2);
}

/// `issue --plaintext-stdin -o json` prints the reference's fields in the reference's order
/// (without the plaintext).
#[test]
fn plaintext_stdin_json_keeps_the_reference_field_order() {
    let env = Env::new();
    let out = run(
        &env,
        &["issue", "--plaintext-stdin", "--label", "hsm"],
        &[],
        Some(&"h".repeat(40)),
    );
    assert_exit(&out, 0, &["issue", "--plaintext-stdin"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        &keys[..5],
        &["key_id", "scope", "label", "expires_at", "permanent"],
        "{v}"
    );
    assert!(v.get("api_key").is_none());
}

// ---------------------------------------------------------------------------------------------
// Tables

/// Labels come from stores and logs other tools wrote (the reference accepted any string): in a
/// table they must neither drive the terminal (ESC sequences, bidi overrides) nor forge rows.
#[test]
fn tables_escape_terminal_control_characters_from_the_store_and_log() {
    let env = Env::new();
    let (a, b) = (hex_id('a'), hex_id('b'));
    let store = format!(
        r#"{{
  "{a}": {{
    "label": "esc\u001b[2Jcleared\nFORGED ROW",
    "created": 1700000000.0,
    "scope": "user",
    "expires_at": 4102444800.0,
    "permanent": false
  }},
  "{b}": {{
    "label": "bidi \u202eevil\u202c end",
    "created": 1700000000.0,
    "scope": "admin",
    "expires_at": 4102444800.0,
    "permanent": false
  }}
}}"#
    );
    write_owner_only(&env.store, &store);
    let log = format!(
        "{{\"timestamp\": 1700000000.0, \"action\": \"issue\", \"key_id\": \"{a}\", \"label\": \"esc\\u001b[2Jcleared\\nFORGED ROW\", \"scope\": \"user\"}}\n"
    );
    write_owner_only(&env.log(), &log);

    for cmd in ["list", "events"] {
        let text = stdout_of(&table(&env, &[cmd]));
        assert!(!text.contains('\u{1b}'), "{cmd}: raw ESC in {text:?}");
        assert!(
            !text.contains('\u{202e}'),
            "{cmd}: raw bidi override in {text:?}"
        );
        assert!(
            text.contains("\\u{1b}[2J"),
            "{cmd}: escape not shown: {text:?}"
        );
        let rows = if cmd == "list" { 2 } else { 1 };
        assert_eq!(
            text.lines().count(),
            rows + 1,
            "{cmd}: forged row in {text:?}"
        );
    }
    // JSON keeps the label exactly (JSON escapes it itself).
    let v = env.ok(&["list"]);
    assert_eq!(v[&a]["label"], "esc\u{1b}[2Jcleared\nFORGED ROW");
}

/// The free-text label is the last column of the events table, so long and wide (CJK) labels
/// do not push the other columns out of line.
#[test]
fn events_table_keeps_columns_aligned_with_long_and_wide_labels() {
    let env = Env::new();
    env.issue("user", "日本語のラベル");
    env.issue("user", &"y".repeat(200));
    env.issue("admin", "plain");
    let text = stdout_of(&table(&env, &["events"]));
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.trim_end().ends_with("LABEL"), "{header}");
    let actor_at = header.find("ACTOR").unwrap();
    for l in lines {
        assert_eq!(l.find("cli:"), Some(actor_at), "misaligned: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// With `-o json`, every error on stderr is one JSON object — `verify` failures included.
#[test]
fn verify_failure_with_json_output_prints_a_json_error() {
    let env = Env::new();
    env.issue("user", "a");
    chmod(&env.store, 0o666);
    let err = env.fails(&["verify"], 1);
    let v = error_json(&err);
    assert_eq!(v["error"], "integrity_failed", "{err}");
    assert!(
        v["message"].as_str().unwrap().contains("store permissions"),
        "{v}"
    );
    for l in err.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
    // For people, the failing checks are named too.
    let out = table_any(&env, &["verify"]);
    assert_exit(&out, 1, &["verify"]);
    assert!(
        stderr_of(&out).contains("integrity check failed (store permissions)"),
        "{}",
        stderr_of(&out)
    );
    chmod(&env.store, 0o600);
}

/// A cron backup with a mistyped --store must fail, not write an empty "successful" backup.
#[test]
fn backup_of_a_missing_store_is_refused_and_creates_nothing() {
    let env = Env::new();
    let out_dir = env.dir.path().join("bk");
    let v = refused(
        &env,
        &["backup", "--out", out_dir.to_str().unwrap()],
        "no_store",
    );
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(env.store.to_str().unwrap()), "{msg}");
    assert!(msg.contains("--store"), "{msg}");
    assert!(!out_dir.exists());
    assert!(!env.store.parent().unwrap().exists());
}

/// `not_found` and friends say which store was searched (a wrong XAI_API_KEY_STORE is the usual
/// cause), in text and in JSON.
#[test]
fn key_lookup_errors_name_the_store() {
    let env = Env::new();
    env.issue("user", "a");
    let missing = hex_id('0');
    let v = refused(&env, &["revoke", &missing], "not_found");
    assert_eq!(v["store"], env.store.to_str().unwrap(), "{v}");
    let out = table_any(&env, &["revoke", &missing]);
    assert_exit(&out, 1, &["revoke"]);
    assert!(
        stderr_of(&out).contains(env.store.to_str().unwrap()),
        "{}",
        stderr_of(&out)
    );
}

/// The runbook: "Every command prints the store it uses". For people (tables) each command
/// names it on stderr; stdout stays the command's output.
#[test]
fn table_output_names_the_store_for_every_command() {
    let env = Env::new();
    let store = env.store.to_str().unwrap().to_string();
    let (_, id) = env.issue("user", "a");
    let (_, other) = env.issue("user", "b");
    let bk = env.dir.path().join("bk");
    let import_id = hex_id('c');
    let secret = "z".repeat(40);
    let cases: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["issue", "--label", "t"],
        vec!["import", "--key-id", &import_id],
        vec!["disable", &id],
        vec!["enable", &id],
        vec!["rotate", &id],
        vec!["revoke", &other],
        vec!["bootstrap-admin", "--secret", &secret],
        vec!["events"],
        vec!["backup", "--out", bk.to_str().unwrap()],
        vec!["restore", bk.to_str().unwrap()],
    ];
    for args in cases {
        let out = table(&env, &args);
        assert!(
            stderr_of(&out).contains(&store),
            "{args:?} does not name the store: {}",
            stderr_of(&out)
        );
        assert!(!stdout_of(&out).starts_with("store:"), "{args:?}");
    }
    // `events` on a store without a log says so instead of an unexplained empty table.
    let fresh = Env::new();
    let out = table(&fresh, &["events"]);
    assert!(
        stderr_of(&out).contains("does not exist yet"),
        "{}",
        stderr_of(&out)
    );
    assert!(!fresh.store.parent().unwrap().exists());
}

/// A bad `--reason` is reported as the reason, not as a "label".
#[test]
fn revoke_reason_errors_name_the_reason_flag() {
    let env = Env::new();
    let (_, id) = env.issue("user", "a");
    let before = files(&env);
    for reason in ["two\nlines".to_string(), "r".repeat(300)] {
        let v = refused(
            &env,
            &["revoke", &id, "--reason", &reason],
            "invalid_reason",
        );
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("--reason") && !msg.contains("label"), "{msg}");
    }
    assert_eq!(files(&env), before);
    env.ok(&["revoke", &id, "--reason", "INC-42"]);
}

/// `events --action` with an action xai-keys never writes gets a hint, not just `[]`.
#[test]
fn unknown_event_action_gets_a_hint() {
    let env = Env::new();
    env.issue("user", "a");
    let out = run(&env, &["events", "--action", "revoked"], &[], None);
    assert_exit(&out, 0, &["events", "--action", "revoked"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        Value::Array(vec![])
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("\"revoked\"") && err.contains("revoke,"),
        "{err}"
    );
    // A known action with no match stays quiet.
    let out = run(&env, &["events", "--action", "revoke"], &[], None);
    assert!(!stderr_of(&out).contains("note:"), "{}", stderr_of(&out));
}

/// `--secret-stdin` / `--plaintext-stdin` on a terminal would echo the secret: refused with the
/// way to pipe it (needs util-linux `script` for a pseudo-terminal; skipped without it).
#[test]
fn secrets_are_not_read_from_a_terminal() {
    let env = Env::new();
    for flag in ["bootstrap-admin --secret-stdin", "issue --plaintext-stdin"] {
        let cmd = format!("{BIN} --store {} {flag}", env.store.display());
        let out = match std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(_) => {
                eprintln!("skipped: no `script` to provide a terminal");
                return;
            }
        };
        let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
        assert_eq!(out.status.code(), Some(1), "{flag}: {text}");
        assert!(
            text.contains("is a terminal") && text.contains("printf %s"),
            "{text}"
        );
    }
    assert!(!env.store.parent().unwrap().exists());
}

// ---------------------------------------------------------------------------------------------
// Found in review; fixed in xai-keys-core.

/// A backup whose store was edited (a user key made admin) and whose manifest sums were
/// recomputed restores today: the manifest is only a checksum, and the backup's own audit log,
/// whose last line records the store's SHA-256, is not compared with the backup store.
#[test]
fn restore_refuses_a_backup_whose_store_was_edited_and_manifest_recomputed() {
    let env = Env::new();
    let (_, id) = env.issue("user", "a");
    let bk = env.dir.path().join("bk");
    env.ok(&["backup", "--out", bk.to_str().unwrap()]);
    let sp = bk.join("api_keys.json");
    let text = read(&sp).replace("\"scope\": \"user\"", "\"scope\": \"admin\"");
    assert!(text.contains("\"scope\": \"admin\""), "{text}");
    std::fs::write(&sp, &text).unwrap();
    let mp = bk.join("manifest.json");
    let mut m: Value = serde_json::from_str(&read(&mp)).unwrap();
    m["store_sha256"] = sha256_hex(text.as_bytes()).into();
    m["store_bytes"] = text.len().into();
    std::fs::write(&mp, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let before = files(&env);
    refused(&env, &["restore", bk.to_str().unwrap()], "backup_error");
    assert_eq!(files(&env), before);
    assert_eq!(env.ok(&["list"])[&id]["scope"], "user");
}

/// Emptying (or deleting) the audit log must not erase the history undetected: verify fails and
/// writers refuse (a write would start a fresh chain and hide the erasure) until `verify --adopt`.
#[test]
fn verify_detects_an_emptied_audit_log() {
    let env = Env::new();
    env.issue("user", "a");
    std::fs::write(env.log(), "").unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    env.fails(&["issue", "--label", "b"], 1);
}
