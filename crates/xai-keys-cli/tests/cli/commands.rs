//! Every CLI command end to end, including each refusal: issue, import, list, revoke,
//! disable/enable, rotate, events, watch-events, bootstrap-admin, verify, backup, restore,
//! plus corrupt stores and insecure permissions.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const DAY: f64 = 86_400.0;

// ---------------------------------------------------------------------------------------------
// Helpers shared with `fixtures.rs`.

/// Runs `xai-keys --store … -o json ARGS` with extra environment variables and optional stdin.
pub fn run(env: &Env, args: &[&str], vars: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = env.cmd();
    c.args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    if let Some(s) = stdin {
        c.write_stdin(s.to_string());
    }
    c.output().unwrap()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit 0 and parses stdout as JSON.
pub fn ok_json(out: &Output, args: &[&str]) -> Value {
    assert_exit(out, 0, args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}): {}", stdout_of(out)))
}

/// The JSON error object `-o json` prints as the last line of stderr.
pub fn error_json(stderr: &str) -> Value {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("empty stderr"));
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stderr line is not a JSON error ({e}): {stderr}"))
}

/// Asserts exit 1 with the JSON error `code`; returns the error object.
pub fn refused(env: &Env, args: &[&str], code: &str) -> Value {
    let err = env.fails(args, 1);
    let v = error_json(&err);
    assert_eq!(v["error"], code, "xai-keys {args:?}: {err}");
    v
}

/// The store and log bytes (`None` when missing); on etcd, every key and value under the
/// prefix (and `None`).
pub fn files(env: &Env) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    if env.is_etcd() {
        let all = env.persisted();
        return ((!all.is_empty()).then(|| all.into_bytes()), None);
    }
    (
        std::fs::read(&env.store).ok(),
        std::fs::read(env.log()).ok(),
    )
}

/// Every audit event, oldest first.
pub fn all_events(env: &Env) -> Vec<Value> {
    env.ok(&["events", "--limit", "10000"])
        .as_array()
        .unwrap()
        .clone()
}

/// Lowercase hex SHA-256 (via coreutils `sha256sum`; no hashing crate among the dev-dependencies).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    hex.split_whitespace().next().unwrap().to_string()
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `xai-keys --store … -o table ARGS`, asserting exit 0.
pub fn table(env: &Env, args: &[&str]) -> Output {
    table_with(env, &[], args)
}

/// [`table`] with these variables set.
pub fn table_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let out = base_cmd()
        .arg("--store")
        .arg(&env.store)
        .args(["-o", "table"])
        .envs(vars.iter().copied())
        .args(args)
        .output()
        .unwrap();
    assert_exit(&out, 0, args);
    out
}

/// Key ids listed by `list ARGS`.
fn listed(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["list"];
    a.extend_from_slice(args);
    let mut ids: Vec<String> = env.ok(&a).as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn issue_json(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["issue"];
    a.extend_from_slice(args);
    env.ok(&a)
}

fn f(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Usage

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let out = base_cmd().output().unwrap();
    assert_exit(&out, 2, &[]);
    env.fails(&["frobnicate"], 2);
    env.fails(&["issue", "--no-such-flag"], 2);
    env.fails(&["issue", "--ttl", "1h", "--ttl-days", "1"], 2);
    env.fails(&["issue", "--ttl-days", "1", "--permanent"], 2);
    env.fails(&["bootstrap-admin", "--secret", "x", "--secret-stdin"], 2);
    env.fails(&["revoke"], 2);
    assert!(env.nothing_created());
}

// ---------------------------------------------------------------------------------------------
// issue

#[test]
fn issue_every_scope_prints_reference_fields_and_never_persists_the_plaintext() {
    let env = Env::new();
    for scope in ["user", "operator", "auditor", "admin"] {
        let label = format!("svc-{scope}");
        let v = issue_json(&env, &["--scope", scope, "--label", &label]);
        for field in [
            "api_key",
            "key_id",
            "scope",
            "label",
            "expires_at",
            "permanent",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {v}");
        }
        assert_eq!(v["scope"], scope);
        assert_eq!(v["label"], label.as_str());
        assert_eq!(v["permanent"], false);
        let plain = s(&v, "api_key");
        assert!(plain.starts_with("xai_"), "{plain}");
        assert_eq!(s(&v, "key_id"), sha256_hex(plain.as_bytes()));
        // Default TTL: 90 days from creation.
        assert!(
            close(f(&v, "expires_at"), f(&v, "created") + 90.0 * DAY),
            "{v}"
        );
        assert!(!env.persisted().contains(plain));
    }
    // Case-insensitive scope names are accepted and normalised.
    let v = issue_json(&env, &["--scope", "ADMIN"]);
    assert_eq!(v["scope"], "admin");
    let list = env.ok(&["list"]);
    assert_eq!(list.as_object().unwrap().len(), 5);
    let scopes: Vec<&str> = list
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["scope"].as_str().unwrap())
        .collect();
    for scope in ["user", "operator", "auditor", "admin"] {
        assert!(scopes.contains(&scope), "{scopes:?}");
    }
    // Every issue is audited with the reference fields and an actor.
    let evs = all_events(&env);
    assert_eq!(evs.len(), 5);
    for e in &evs {
        assert_eq!(e["action"], "issue");
        for field in [
            "timestamp",
            "key_id",
            "label",
            "scope",
            "expires_at",
            "permanent",
        ] {
            assert!(e.get(field).is_some(), "{field} missing from {e}");
        }
        assert!(s(e, "actor").starts_with("cli:"), "{e}");
    }
    if !env.is_etcd() {
        assert_eq!(mode(&env.store), 0o600);
        assert_eq!(mode(&env.log()), 0o600);
        assert_eq!(mode(env.store.parent().unwrap()), 0o700);
    }
}

#[test]
fn issue_refuses_an_unknown_scope_as_usage_error_listing_valid_scopes() {
    let env = Env::new();
    for args in [
        &["issue", "--scope", "root", "--label", "x"][..],
        &[
            "import",
            "--key-id",
            &"a".repeat(64),
            "--scope",
            "superuser",
        ],
        &["list", "--scope", "nobody"],
        &["rotate", &"a".repeat(64), "--scope", "god"],
    ] {
        let err = env.fails(args, 2);
        assert!(err.contains("user, operator, auditor, admin"), "{err}");
    }
    assert!(env.nothing_created());
}

#[test]
fn ttl_flags_set_expires_at_to_created_plus_ttl() {
    let env = Env::new();
    let cases: [(&[&str], f64); 5] = [
        (&["--ttl", "36h"], 36.0 * 3600.0),
        (&["--ttl", "2w"], 14.0 * DAY),
        (&["--ttl-days", "2.5"], 2.5 * DAY),
        (&["--ttl-hours", "5"], 5.0 * 3600.0),
        (&["--ttl-hours", "0.5"], 1800.0),
    ];
    for (flags, secs) in cases {
        let v = issue_json(&env, flags);
        assert!(
            close(f(&v, "expires_at") - f(&v, "created"), secs),
            "{flags:?}: {v}"
        );
        assert_eq!(v["permanent"], false);
        let rec = &env.ok(&["list"])[s(&v, "key_id")];
        assert_eq!(rec["expires_at"], v["expires_at"]);
        assert_eq!(rec["created"], v["created"]);
    }
}

#[test]
fn zero_or_negative_ttl_is_an_error_and_writes_nothing() {
    let fresh = Env::new();
    let env = Env::new();
    env.issue("user", "existing");
    let before = files(&env);
    for flags in [
        &["--ttl-days", "0"][..],
        &["--ttl-days", "-1"],
        &["--ttl-days", "-0.5"],
        &["--ttl-hours", "0"],
        &["--ttl-hours", "-3"],
        &["--ttl", "0s"],
        &["--ttl-days", "NaN"],
        &["--ttl-hours", "inf"],
    ] {
        let mut args = vec!["issue", "--label", "bad"];
        args.extend_from_slice(flags);
        let err = env.fails(&args, 1);
        let msg = error_json(&err)["message"].as_str().unwrap().to_string();
        assert!(msg.contains("TTL") && msg.contains("positive"), "{msg}");
        assert_eq!(files(&env), before, "{flags:?} wrote something");
        fresh.fails(&args, 1);
        assert!(fresh.nothing_created());
    }
    // Not a duration at all.
    let err = env.fails(&["issue", "--ttl", "soon"], 1);
    assert!(err.contains("--ttl"), "{err}");
    assert_eq!(files(&env), before);
}

#[test]
fn issue_refuses_invalid_labels() {
    let env = Env::new();
    let long = "x".repeat(257);
    for label in ["line\nbreak", "tab\there", long.as_str()] {
        refused(&env, &["issue", "--label", label], "invalid_label");
        refused(
            &env,
            &["import", "--key-id", &sha256_hex(b"l"), "--label", label],
            "invalid_label",
        );
    }
    assert!(!env.store_exists());
    // Surrounding whitespace is trimmed; 256 characters are fine.
    let v = issue_json(&env, &["--label", "  padded  "]);
    assert_eq!(v["label"], "padded");
    let ok = "y".repeat(256);
    assert_eq!(issue_json(&env, &["--label", &ok])["label"], ok.as_str());
    let (_, id) = env.issue("user", "r");
    refused(&env, &["revoke", &id, "--reason", "a\nb"], "invalid_reason");
    refused(&env, &["rotate", &id, "--label", &long], "invalid_label");
    assert!(env.ids().contains(&id));
}

#[test]
fn permanent_keys_need_the_environment_opt_in() {
    let env = Env::new();
    let v = refused(&env, &["issue", "--permanent"], "permanent_keys_disabled");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("XAI_API_KEY_ALLOW_PERMANENT"),
        "{v}"
    );
    assert!(!env.store_exists());
    for no in ["0", "false", "no", "NO"] {
        let out = run(
            &env,
            &["issue", "--permanent"],
            &[("XAI_API_KEY_ALLOW_PERMANENT", no)],
            None,
        );
        assert_exit(&out, 1, &["issue", "--permanent", no]);
        assert_eq!(
            error_json(&stderr_of(&out))["error"],
            "permanent_keys_disabled"
        );
    }
    assert!(!env.store_exists());
    for yes in ["1", "true", "yes", "TRUE", "Yes"] {
        let args = ["issue", "--permanent", "--label", yes];
        let out = run(&env, &args, &[("XAI_API_KEY_ALLOW_PERMANENT", yes)], None);
        let v = ok_json(&out, &args);
        assert_eq!(v["expires_at"], Value::Null, "{yes}: {v}");
        assert_eq!(v["permanent"], true);
        let rec = &env.ok(&["list"])[s(&v, "key_id")];
        assert_eq!(rec["expires_at"], Value::Null);
        assert_eq!(rec["permanent"], true);
        assert_eq!(rec["expired"], false);
    }
}

#[test]
fn invalid_configuration_values_name_the_variable() {
    let env = Env::new();
    for (var, val) in [
        ("XAI_API_KEY_ALLOW_PERMANENT", "maybe"),
        ("XAI_API_KEY_ALLOW_PERMANENT", "2"),
        ("XAI_API_KEY_DEFAULT_TTL_DAYS", "ninety"),
        ("XAI_API_KEY_DEFAULT_TTL_DAYS", "0"),
        ("XAI_API_KEY_MAX_TTL_DAYS", "-5"),
    ] {
        let out = run(&env, &["issue", "--label", "x"], &[(var, val)], None);
        assert_exit(&out, 1, &["issue", var, val]);
        let e = error_json(&stderr_of(&out));
        assert_eq!(e["error"], "invalid_config", "{e}");
        assert!(e["message"].as_str().unwrap().contains(var), "{e}");
    }
    assert!(!env.store_exists());
}

#[test]
fn ttl_is_clamped_by_max_and_defaults_from_the_environment() {
    let env = Env::new();
    let max = [("XAI_API_KEY_MAX_TTL_DAYS", "100")];
    let args = ["issue", "--ttl-days", "200"];
    let out = run(&env, &args, &max, None);
    let v = ok_json(&out, &args);
    assert!(
        close(f(&v, "expires_at") - f(&v, "created"), 100.0 * DAY),
        "{v}"
    );
    assert!(
        stderr_of(&out).contains("XAI_API_KEY_MAX_TTL_DAYS"),
        "{}",
        stderr_of(&out)
    );
    let args = ["issue", "--ttl-days", "50"];
    let out = run(&env, &args, &max, None);
    let v = ok_json(&out, &args);
    assert!(close(f(&v, "expires_at") - f(&v, "created"), 50.0 * DAY));
    assert!(!stderr_of(&out).contains("XAI_API_KEY_MAX_TTL_DAYS"));
    // Without the variable the maximum is 365 days.
    let v = issue_json(&env, &["--ttl-days", "1000"]);
    assert!(close(f(&v, "expires_at") - f(&v, "created"), 365.0 * DAY));
    // The default TTL comes from XAI_API_KEY_DEFAULT_TTL_DAYS.
    let args = ["issue", "--label", "default"];
    let out = run(&env, &args, &[("XAI_API_KEY_DEFAULT_TTL_DAYS", "7")], None);
    let v = ok_json(&out, &args);
    assert!(
        close(f(&v, "expires_at") - f(&v, "created"), 7.0 * DAY),
        "{v}"
    );
}

#[test]
fn plaintext_stdin_persists_only_the_hash_and_refuses_short_or_duplicate_secrets() {
    let env = Env::new();
    let secret = "hsm-generated-secret-0123456789-abcdefXYZ";
    let args = [
        "issue",
        "--plaintext-stdin",
        "--scope",
        "operator",
        "--label",
        "hsm",
    ];
    let out = run(&env, &args, &[], Some(&format!("{secret}\n")));
    let v = ok_json(&out, &args);
    assert_eq!(s(&v, "key_id"), sha256_hex(secret.as_bytes()));
    assert!(v.get("api_key").is_none(), "{v}");
    assert_eq!(v["scope"], "operator");
    assert_eq!(v["label"], "hsm");
    assert!(!stdout_of(&out).contains(secret) && !stderr_of(&out).contains(secret));
    assert!(!env.persisted().contains(secret));
    assert_eq!(
        env.ok(&["list"])[s(&v, "key_id")]["origin"],
        "supplied",
        "origin"
    );

    let before = files(&env);
    // The same secret again: refused, the record is not overwritten.
    let out = run(&env, &args, &[], Some(secret));
    assert_exit(&out, 1, &args);
    assert_eq!(error_json(&stderr_of(&out))["error"], "duplicate");
    assert!(!stderr_of(&out).contains(secret));
    assert_eq!(files(&env), before);
    // Shorter than 32 characters: refused, nothing written.
    let short = "only-31-characters-long-secret!";
    assert_eq!(short.len(), 31);
    let out = run(&env, &args, &[], Some(short));
    assert_exit(&out, 1, &args);
    let e = error_json(&stderr_of(&out));
    assert_eq!(e["error"], "invalid_secret");
    assert!(e["message"].as_str().unwrap().contains("32"), "{e}");
    assert!(!stderr_of(&out).contains(short));
    assert_eq!(files(&env), before);
    // Empty stdin.
    let out = run(&env, &args, &[], Some(""));
    assert_exit(&out, 1, &args);
    assert_eq!(files(&env), before);
}

// ---------------------------------------------------------------------------------------------
// import

#[test]
fn import_registers_by_hash_and_refuses_bad_or_duplicate_ids() {
    let env = Env::new();
    let id = sha256_hex(b"a key that lives in the HSM");
    let upper = id.to_uppercase();
    let args = [
        "import", "--key-id", &upper, "--scope", "auditor", "--label", "hsm",
    ];
    let v = env.ok(&args);
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["imported"], true);
    let rec = &env.ok(&["list"])[&id];
    assert_eq!(rec["scope"], "auditor");
    assert_eq!(rec["label"], "hsm");
    assert_eq!(rec["origin"], "imported");
    assert!(close(f(rec, "expires_at") - f(rec, "created"), 90.0 * DAY));
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(
        (ev["action"].clone(), ev["key_id"].clone()),
        (json!("issue"), json!(id))
    );

    let before = files(&env);
    for bad in [
        "xyz".to_string(),
        id[..63].to_string(),
        format!("{id}0"),
        format!("g{}", &id[1..]),
    ] {
        refused(&env, &["import", "--key-id", &bad], "invalid_key_id");
    }
    refused(&env, &["import", "--key-id", &id], "duplicate");
    let (_, issued) = env.issue("user", "generated");
    let before_dup = files(&env);
    refused(&env, &["import", "--key-id", &issued], "duplicate");
    assert_eq!(files(&env), before_dup);
    assert_ne!(files(&env), before);
    // TTL flags apply to imports too.
    let id2 = sha256_hex(b"second hsm key");
    let v = env.ok(&["import", "--key-id", &id2, "--ttl-days", "3"]);
    assert!(close(f(&v, "expires_at") - f(&v, "created"), 3.0 * DAY));
    env.fails(
        &[
            "import",
            "--key-id",
            &sha256_hex(b"third"),
            "--ttl-days",
            "0",
        ],
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// list

#[test]
fn list_shows_reference_fields_and_filters_by_scope_state_and_expiry_window() {
    let env = Env::new();
    let (_, user) = env.issue("user", "u");
    let admin = s(
        &issue_json(&env, &["--scope", "admin", "--ttl-days", "3"]),
        "key_id",
    )
    .to_string();
    let (_, disabled) = env.issue("operator", "o");
    env.ok(&["disable", &disabled]);
    let expired = s(
        &issue_json(&env, &["--scope", "auditor", "--ttl", "300ms"]),
        "key_id",
    )
    .to_string();
    std::thread::sleep(Duration::from_millis(500));

    let all = env.ok(&["list"]);
    assert_eq!(all.as_object().unwrap().len(), 4);
    for (id, rec) in all.as_object().unwrap() {
        for field in [
            "label",
            "created",
            "scope",
            "expires_at",
            "permanent",
            "expired",
        ] {
            assert!(rec.get(field).is_some(), "{field} missing for {id}: {rec}");
        }
        assert!(rec.get("api_key").is_none());
    }
    assert_eq!(all[&expired]["expired"], true);
    assert_eq!(all[&expired]["state"], "expired");
    assert_eq!(all[&user]["expired"], false);
    assert_eq!(all[&disabled]["state"], "disabled");

    assert_eq!(listed(&env, &["--scope", "admin"]), vec![admin.clone()]);
    assert_eq!(listed(&env, &["--scope", "user"]), vec![user.clone()]);
    assert_eq!(
        listed(&env, &["--state", "active"]),
        sorted(vec![user.clone(), admin.clone()])
    );
    assert_eq!(listed(&env, &["--state", "expired"]), vec![expired.clone()]);
    assert_eq!(
        listed(&env, &["--state", "disabled"]),
        vec![disabled.clone()]
    );
    assert_eq!(
        listed(&env, &["--expiring-within", "7d"]),
        vec![admin.clone()]
    );
    assert_eq!(
        listed(&env, &["--expiring-within", "100d"]),
        sorted(vec![user.clone(), admin.clone()])
    );
    assert!(listed(&env, &["--scope", "admin", "--state", "expired"]).is_empty());

    let before = files(&env);
    env.fails(&["list", "--state", "revoked"], 1);
    env.fails(&["list", "--expiring-within", "soon"], 1);
    assert_eq!(files(&env), before);
    // The table output never shows key material either.
    let out = table(&env, &["list"]);
    assert!(stdout_of(&out).contains(&user[..12]));
    assert!(stdout_of(&out).contains("STATE"));
}

#[test]
fn read_only_commands_on_a_missing_store_print_empty_results_and_create_nothing() {
    let env = Env::new();
    let dir = env.store.parent().unwrap().to_path_buf();
    assert_eq!(env.ok(&["list"]), json!({}));
    assert_eq!(env.ok(&["list", "--state", "active"]), json!({}));
    assert_eq!(env.ok(&["events"]), json!([]));
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    if env.is_etcd() {
        // No key under the prefix, and no file in the state directory either.
        assert!(env.nothing_created(), "a read-only command wrote to etcd");
        let entries: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().collect();
        assert!(entries.is_empty(), "{entries:?}");
        return;
    }
    assert!(
        !dir.exists(),
        "a read-only command created {}",
        dir.display()
    );
    // Not even in an existing directory.
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    env.ok(&["list"]);
    env.ok(&["events", "--limit", "5"]);
    env.verify();
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(entries.is_empty(), "{entries:?}");
}

// ---------------------------------------------------------------------------------------------
// revoke

#[test]
fn revoke_by_full_id_or_prefix_records_metadata_and_reason() {
    let env = Env::new();
    let (_, a) = env.issue("operator", "svc-a");
    let (_, b) = env.issue("admin", "svc-b");
    let v = env.ok(&["revoke", &a, "--reason", "compromised-INC-1234"]);
    assert_eq!(v["revoked"], true);
    assert_eq!(v["key_id"], a.as_str());
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(ev["action"], "revoke");
    assert_eq!(ev["key_id"], a.as_str());
    assert_eq!(ev["label"], "svc-a");
    assert_eq!(ev["scope"], "operator");
    assert_eq!(ev["reason"], "compromised-INC-1234");
    // A 12-character prefix, in upper case.
    let v = env.ok(&["revoke", &b[..12].to_uppercase()]);
    assert_eq!(v["key_id"], b.as_str());
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(
        (ev["key_id"].as_str(), ev["label"].as_str()),
        (Some(b.as_str()), Some("svc-b"))
    );
    assert!(env.ids().is_empty());
    // Already revoked: not found.
    refused(&env, &["revoke", &a], "not_found");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn revoke_refuses_short_unknown_and_ambiguous_ids() {
    let env = Env::new();
    let (_, id) = env.issue("user", "keep");
    let before = files(&env);
    let v = refused(&env, &["revoke", &id[..11]], "invalid_key_id");
    assert!(v["message"].as_str().unwrap().contains("12"), "{v}");
    refused(&env, &["revoke", "not-hex-at-all-zz"], "invalid_key_id");
    let unknown = sha256_hex(b"never issued");
    let v = refused(&env, &["revoke", &unknown], "not_found");
    assert!(v["message"].as_str().unwrap().contains("not_found"), "{v}");
    refused(&env, &["revoke", &unknown[..14]], "not_found");
    assert_eq!(files(&env), before);

    // Two ids sharing a 12-character prefix.
    let prefix = "abcdef012345";
    let x = format!("{prefix}{}", "0".repeat(52));
    let y = format!("{prefix}{}", "1".repeat(52));
    env.ok(&["import", "--key-id", &x, "--label", "x"]);
    env.ok(&["import", "--key-id", &y, "--label", "y"]);
    let before = files(&env);
    let v = refused(&env, &["revoke", prefix], "ambiguous");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(&x) && msg.contains(&y), "{msg}");
    assert_eq!(files(&env), before);
    // One more character disambiguates.
    let v = env.ok(&["revoke", &y[..13]]);
    assert_eq!(v["key_id"], y.as_str());
    assert_eq!(
        sorted(env.ids()),
        sorted(vec![id.clone(), x.clone()]),
        "only y is gone"
    );
}

// ---------------------------------------------------------------------------------------------
// disable / enable

#[test]
fn disable_and_enable_change_state_are_audited_and_block_rotation() {
    let env = Env::new();
    let (_, id) = env.issue("operator", "suspend-me");
    let v = env.ok(&["disable", &id[..12]]);
    assert_eq!(v["disabled"], true);
    assert_eq!(v["state"], "disabled");
    let rec = &env.ok(&["list"])[&id];
    assert_eq!(rec["state"], "disabled");
    assert_eq!(rec["disabled"], true);
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(ev["action"], "disable");
    assert_eq!(ev["key_id"], id.as_str());
    assert_eq!(ev["label"], "suspend-me");
    assert_eq!(ev["scope"], "operator");

    // A disabled key cannot be rotated; nothing is written.
    let before = files(&env);
    let v = refused(&env, &["rotate", &id], "key_state");
    assert!(v["message"].as_str().unwrap().contains("disabled"), "{v}");
    assert_eq!(files(&env), before);
    // Disabling again changes nothing and writes no line.
    env.ok(&["disable", &id]);
    assert_eq!(files(&env).1, before.1);

    let v = env.ok(&["enable", &id]);
    assert_eq!(v["state"], "active");
    assert_eq!(v["disabled"], false);
    assert_eq!(env.ok(&["list"])[&id]["state"], "active");
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(ev["action"], "enable");
    assert_eq!(ev["label"], "suspend-me");
    env.ok(&["rotate", &id]);

    let unknown = sha256_hex(b"unknown");
    refused(&env, &["disable", &unknown], "not_found");
    refused(&env, &["enable", &unknown], "not_found");
    refused(&env, &["disable", &unknown[..8]], "invalid_key_id");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

// ---------------------------------------------------------------------------------------------
// rotate

#[test]
fn rotate_without_grace_revokes_the_old_key_and_inherits_label_scope_and_ttl() {
    let env = Env::new();
    let old = issue_json(
        &env,
        &["--scope", "operator", "--label", "svc", "--ttl-days", "10"],
    );
    let old_id = s(&old, "key_id").to_string();
    let v = env.ok(&["rotate", &old_id[..12]]);
    let new_id = s(&v, "key_id").to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(v["replaced"], old_id.as_str());
    assert!(s(&v, "api_key").starts_with("xai_"));
    assert_eq!(s(&v, "key_id"), sha256_hex(s(&v, "api_key").as_bytes()));
    assert_eq!(v["scope"], "operator");
    assert_eq!(v["label"], "svc");
    assert!(
        close(f(&v, "expires_at") - f(&v, "created"), 10.0 * DAY),
        "{v}"
    );
    assert_eq!(env.ids(), vec![new_id.clone()]);
    assert!(!env.persisted().contains(s(&v, "api_key")));

    let evs = all_events(&env);
    let tail: Vec<(&str, &str)> = evs[evs.len() - 3..]
        .iter()
        .map(|e| (s(e, "action"), s(e, "key_id")))
        .collect();
    assert_eq!(
        tail,
        vec![
            ("issue", new_id.as_str()),
            ("revoke", old_id.as_str()),
            ("rotate", new_id.as_str())
        ]
    );
    let rot = evs.last().unwrap();
    assert_eq!(rot["replaced"], old_id.as_str());
    assert_eq!(evs[evs.len() - 2]["label"], "svc");
    // The old key is gone: rotating it again is not found.
    refused(&env, &["rotate", &old_id], "not_found");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn rotate_with_grace_keeps_the_old_key_until_the_grace_ends() {
    let env = Env::new();
    let (_, old_id) = env.issue("admin", "gw");
    let v = env.ok(&["rotate", &old_id, "--grace", "24h"]);
    let new_id = s(&v, "key_id").to_string();
    let now = f(&v, "created");
    let list = env.ok(&["list"]);
    let old = &list[&old_id];
    assert!(close(f(old, "expires_at"), now + DAY), "{old}");
    assert_eq!(old["replaced_by"], new_id.as_str());
    assert_eq!(old["state"], "active");
    assert_eq!(old["permanent"], false);
    assert_eq!(list[&new_id]["scope"], "admin");
    assert_eq!(list[&new_id]["label"], "gw");

    let evs = all_events(&env);
    let tail: Vec<(&str, &str)> = evs[evs.len() - 3..]
        .iter()
        .map(|e| (s(e, "action"), s(e, "key_id")))
        .collect();
    assert_eq!(
        tail,
        vec![
            ("issue", new_id.as_str()),
            ("expire", old_id.as_str()),
            ("rotate", new_id.as_str())
        ]
    );
    assert!(close(f(&evs[evs.len() - 2], "expires_at"), now + DAY));
    assert_eq!(evs.last().unwrap()["replaced"], old_id.as_str());

    // Rotating the already-rotated key again is refused, nothing written.
    let before = files(&env);
    let e = refused(&env, &["rotate", &old_id], "key_state");
    assert!(
        e["message"].as_str().unwrap().contains("already rotated"),
        "{e}"
    );
    refused(&env, &["rotate", &old_id, "--grace", "1h"], "key_state");
    assert_eq!(files(&env), before);
    // The replacement can be rotated.
    env.ok(&["rotate", &new_id]);
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn rotate_overrides_and_refusals() {
    let env = Env::new();
    let (_, a) = env.issue("user", "before");
    let v = env.ok(&[
        "rotate", &a, "--scope", "auditor", "--label", "after", "--ttl", "36h",
    ]);
    assert_eq!(v["scope"], "auditor");
    assert_eq!(v["label"], "after");
    assert!(close(f(&v, "expires_at") - f(&v, "created"), 36.0 * 3600.0));
    let b = s(&v, "key_id").to_string();

    // A failure to issue the replacement leaves the old key untouched and writes no line.
    let before = files(&env);
    refused(
        &env,
        &["rotate", &b, "--permanent"],
        "permanent_keys_disabled",
    );
    assert_eq!(files(&env), before);
    env.fails(&["rotate", &b, "--ttl-days", "0"], 1);
    env.fails(&["rotate", &b, "--grace", "whenever"], 1);
    assert_eq!(files(&env), before);
    assert_eq!(env.ok(&["list"])[&b]["state"], "active");

    // Unknown and expired keys are refused.
    refused(&env, &["rotate", &sha256_hex(b"nope")], "not_found");
    let exp = s(&issue_json(&env, &["--ttl", "300ms"]), "key_id").to_string();
    std::thread::sleep(Duration::from_millis(500));
    let before = files(&env);
    let e = refused(&env, &["rotate", &exp], "key_state");
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(files(&env), before);

    // Inheriting a permanent key's policy needs the opt-in at rotation time too.
    let allow = [("XAI_API_KEY_ALLOW_PERMANENT", "1")];
    let args = ["issue", "--permanent", "--label", "perm"];
    let perm = ok_json(&run(&env, &args, &allow, None), &args);
    let perm_id = s(&perm, "key_id");
    let before = files(&env);
    refused(&env, &["rotate", perm_id], "permanent_keys_disabled");
    assert_eq!(files(&env), before);
    let args = ["rotate", perm_id];
    let v = ok_json(&run(&env, &args, &allow, None), &args);
    assert_eq!(v["permanent"], true);
    assert_eq!(v["expires_at"], Value::Null);
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

// ---------------------------------------------------------------------------------------------
// events

/// Formats epoch seconds (truncated to milliseconds) as RFC 3339 UTC.
fn rfc3339(epoch: f64) -> String {
    let ms = (epoch * 1000.0).floor() as i64;
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[test]
fn rfc3339_helper_is_right() {
    assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_700_000_000.123_4), "2023-11-14T22:13:20.123Z");
    assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
}

#[test]
fn events_are_oldest_first_with_limit_and_filters() {
    let env = Env::new();
    let (_, a) = env.issue("user", "a");
    std::thread::sleep(Duration::from_millis(30));
    let (_, b) = env.issue("admin", "b");
    env.ok(&["revoke", &a]);
    let v = env.ok(&["rotate", &b]);
    let c = s(&v, "key_id").to_string();
    // issue a, issue b, revoke a, issue c, revoke b, rotate c
    let evs = all_events(&env);
    let got: Vec<(&str, &str)> = evs
        .iter()
        .map(|e| (s(e, "action"), s(e, "key_id")))
        .collect();
    assert_eq!(
        got,
        vec![
            ("issue", a.as_str()),
            ("issue", b.as_str()),
            ("revoke", a.as_str()),
            ("issue", c.as_str()),
            ("revoke", b.as_str()),
            ("rotate", c.as_str()),
        ]
    );
    let ts: Vec<f64> = evs.iter().map(|e| f(e, "timestamp")).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    // Default limit 50 returns them all; --limit N the most recent N, oldest first.
    assert_eq!(env.ok(&["events"]).as_array().unwrap().len(), 6);
    let last2 = env.ok(&["events", "--limit", "2"]);
    assert_eq!(last2.as_array().unwrap().as_slice(), &evs[4..]);
    assert_eq!(
        env.ok(&["events", "--limit", "10000"]),
        Value::Array(evs.clone())
    );
    // --action
    let rev = env.ok(&["events", "--action", "revoke"]);
    let rev: Vec<&str> = rev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "key_id"))
        .collect();
    assert_eq!(rev, vec![a.as_str(), b.as_str()]);
    assert_eq!(
        env.ok(&["events", "--action", "revoke", "--limit", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(env.ok(&["events", "--action", "nothing"]), json!([]));
    // --key-id: full or prefix, and it matches `replaced`.
    let for_a = env.ok(&["events", "--key-id", &a]);
    assert_eq!(for_a.as_array().unwrap().len(), 2);
    let for_b = env.ok(&["events", "--key-id", &b[..12]]);
    let acts: Vec<&str> = for_b
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "action"))
        .collect();
    assert_eq!(acts, vec!["issue", "revoke", "rotate"]);
    // --since: epoch seconds, RFC 3339, a duration ago.
    let t2 = f(&evs[1], "timestamp");
    assert!(t2 - f(&evs[0], "timestamp") > 0.02);
    let since_epoch = env.ok(&["events", "--since", &format!("{t2}")]);
    assert_eq!(since_epoch.as_array().unwrap().as_slice(), &evs[1..]);
    let since_rfc = env.ok(&["events", "--since", &rfc3339(t2)]);
    assert_eq!(since_rfc.as_array().unwrap().as_slice(), &evs[1..]);
    assert_eq!(
        env.ok(&["events", "--since", "2000-01-01T00:00:00Z"]),
        Value::Array(evs.clone())
    );
    assert_eq!(
        env.ok(&["events", "--since", "2999-01-01T00:00:00Z"]),
        json!([])
    );
    assert_eq!(
        env.ok(&["events", "--since", "1h"]),
        Value::Array(evs.clone())
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(env.ok(&["events", "--since", "10ms"]), json!([]));
    let combined = env.ok(&[
        "events",
        "--since",
        &format!("{t2}"),
        "--action",
        "issue",
        "--key-id",
        &c,
    ]);
    assert_eq!(combined.as_array().unwrap().len(), 1);

    // Refusals.
    let before = files(&env);
    for bad in [
        &["events", "--limit", "0"][..],
        &["events", "--limit", "10001"],
    ] {
        let e = refused(&env, bad, "invalid_input");
        assert!(e["message"].as_str().unwrap().contains("10000"), "{e}");
    }
    env.fails(&["events", "--limit", "-1"], 2);
    env.fails(&["events", "--limit", "many"], 2);
    env.fails(&["events", "--since", "yesterday-ish"], 1);
    assert_eq!(files(&env), before);
}

// ---------------------------------------------------------------------------------------------
// watch-events

/// A running `watch-events`, killed on drop so a failing test never leaves it behind.
struct Watcher {
    child: std::process::Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn spawn(env: &Env, args: &[&str]) -> Self {
        let mut c = std::process::Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("XAI_") {
                c.env_remove(k);
            }
        }
        let mut child = c
            .arg("--store")
            .arg(&env.store)
            .arg("watch-events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watcher {
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next NDJSON line (each must be exactly one JSON object), within 10 s.
    fn next(&self, what: &str) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
                assert!(v.is_object(), "{line}");
                v
            }
            Err(e) => panic!(
                "timed out ({e}) waiting for {what}; stderr: {}",
                self.stderr()
            ),
        }
    }

    /// Skips lines until one matches, within 10 s overall.
    fn until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let v = self.next(what);
            if pred(&v) {
                return v;
            }
        }
        panic!("timed out waiting for {what}; stderr: {}", self.stderr())
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let st = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "watch-events did not stop within 5 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_issue_of(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["action"] == "issue" && v["key_id"] == id
}

#[test]
fn watch_events_replays_follows_survives_replacement_and_truncation_and_stops_on_sigterm() {
    let env = Env::new();
    env.issue("user", "a");
    let (_, b) = env.issue("user", "b");
    let (_, c) = env.issue("user", "c");
    let mut w = Watcher::spawn(&env, &["--limit", "2", "--interval", "50ms"]);
    // Replay: the last two, oldest first.
    assert_eq!(w.next("replay 1")["key_id"], b.as_str());
    assert_eq!(w.next("replay 2")["key_id"], c.as_str());
    // Follow: a key issued by another process appears next, exactly once.
    let (_, d) = env.issue("operator", "d");
    let v = w.next("the new issue line");
    assert!(is_issue_of(&d)(&v), "{v}");
    assert_eq!(v["scope"], "operator");
    assert!(v.get("hash").is_some());

    if env.is_etcd() {
        // Replacing or truncating the log file is file mechanics; on etcd just stop.
        let status = w.terminate();
        assert!(status.success(), "exit status {status:?}");
        return;
    }
    // Log replaced (copy + rename): the watcher keeps following the new file.
    let log = env.log();
    let tmp = log.with_extension("log.rotated");
    std::fs::copy(&log, &tmp).unwrap();
    std::fs::rename(&tmp, &log).unwrap();
    let (_, e) = env.issue("user", "e");
    w.until("the issue after replacement", is_issue_of(&e));

    // Log truncated, then appended to: still following.
    let fh = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    fh.set_len(0).unwrap();
    drop(fh);
    let mut fh = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(
        fh,
        "{{\"timestamp\": 1.5, \"action\": \"manual-note\", \"key_id\": null}}"
    )
    .unwrap();
    drop(fh);
    w.until("the line appended after truncation", |v| {
        v["action"] == "manual-note"
    });
    // The emptied log no longer anchors the store: writers refuse until an operator accepts the
    // store (audited), after which the follower sees the new lines too.
    env.fails(&["issue", "--label", "refused"], 1);
    env.ok(&["verify", "--adopt"]);
    w.until("the adopt line", |v| v["action"] == "adopt");
    let (_, g) = env.issue("user", "g");
    w.until("the issue after truncation", is_issue_of(&g));

    let status = w.terminate();
    assert!(status.success(), "exit status {status:?}");
    let err = w.stderr();
    assert!(err.contains("replaced"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn watch_events_on_a_missing_log_creates_nothing_and_follows_the_first_key() {
    let env = Env::new();
    let mut w = Watcher::spawn(&env, &["--limit", "3", "--interval", "50ms"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.stderr().contains("watching") {
        assert!(
            Instant::now() < deadline,
            "no start message: {}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert!(env.nothing_created(), "watch-events created files");
    let (_, id) = env.issue("admin", "first");
    let v = w.next("the first issue line");
    assert!(is_issue_of(&id)(&v), "{v}");
    let status = w.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn watch_events_stops_cleanly_on_sigint_too() {
    let env = Env::new();
    env.issue("user", "only");
    let mut w = Watcher::spawn(&env, &["--limit", "5", "--interval", "50ms", "--pretty"]);
    // --pretty prints multi-line JSON: the first line is just the opening brace.
    let first = w.lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "{");
    let st = std::process::Command::new("kill")
        .arg("-INT")
        .arg(w.child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 5 s of SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// bootstrap-admin

#[test]
fn bootstrap_admin_registers_once_from_stdin_flag_or_env_and_never_echoes_the_secret() {
    let env = Env::new();
    let secret = "pre-provisioned-bootstrap-secret-0123456789";
    let id = sha256_hex(secret.as_bytes());
    let args = ["bootstrap-admin", "--secret-stdin"];
    let out = run(&env, &args, &[], Some(&format!("{secret}\n")));
    let v = ok_json(&out, &args);
    assert_eq!(v["operation"], "bootstrap_admin");
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["fingerprint"], &id[..12]);
    assert_eq!(v["scope"], "admin");
    assert_eq!(v["label"], "bootstrap-admin");
    assert_eq!(v["created"], true);
    assert!(v.get("api_key").is_none());
    for text in [stdout_of(&out), stderr_of(&out), env.persisted()] {
        assert!(!text.contains(secret));
    }
    let rec = &env.ok(&["list"])[&id];
    assert_eq!(rec["scope"], "admin");
    assert_eq!(rec["origin"], "bootstrap");
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(
        (ev["action"].as_str(), ev["key_id"].as_str()),
        (Some("issue"), Some(id.as_str()))
    );
    let before = files(&env);

    // Again with --secret (warned about) and with the environment: the existing key, no line.
    let args = ["bootstrap-admin", "--secret", secret];
    let out = run(&env, &args, &[], None);
    let v = ok_json(&out, &args);
    assert_eq!(
        (v["created"].clone(), v["key_id"].clone()),
        (json!(false), json!(id))
    );
    assert!(stderr_of(&out).contains("warning"), "{}", stderr_of(&out));
    assert!(!stdout_of(&out).contains(secret) && !stderr_of(&out).contains(secret));
    let args = ["bootstrap-admin"];
    let out = run(&env, &args, &[("XAI_BOOTSTRAP_ADMIN_KEY", secret)], None);
    let v = ok_json(&out, &args);
    assert_eq!(v["created"], false);
    assert_eq!(v["fingerprint"], &id[..12]);
    assert!(!stdout_of(&out).contains(secret) && !stderr_of(&out).contains(secret));
    assert_eq!(files(&env), before, "a repeated bootstrap wrote something");
    assert_eq!(env.ids(), vec![id.clone()]);

    // A different secret from the environment registers a second admin key.
    let other = "another-pre-provisioned-secret-abcdefghijkl";
    let out = run(&env, &args, &[("XAI_BOOTSTRAP_ADMIN_KEY", other)], None);
    let v = ok_json(&out, &args);
    assert_eq!(v["created"], true);
    assert_eq!(v["key_id"], sha256_hex(other.as_bytes()).as_str());
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn bootstrap_admin_refuses_missing_short_or_non_admin_secrets() {
    let env = Env::new();
    let v = refused(&env, &["bootstrap-admin"], "missing_secret");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("XAI_BOOTSTRAP_ADMIN_KEY"),
        "{v}"
    );
    let out = run(
        &env,
        &["bootstrap-admin"],
        &[("XAI_BOOTSTRAP_ADMIN_KEY", "  ")],
        None,
    );
    assert_exit(&out, 1, &["bootstrap-admin", "blank env"]);
    assert_eq!(error_json(&stderr_of(&out))["error"], "missing_secret");
    let short = "thirty-one-chars-is-not-enough!";
    assert_eq!(short.len(), 31);
    for (args, vars, stdin) in [
        (
            &["bootstrap-admin", "--secret-stdin"][..],
            &[][..],
            Some(short),
        ),
        (&["bootstrap-admin", "--secret", short][..], &[][..], None),
        (
            &["bootstrap-admin"][..],
            &[("XAI_BOOTSTRAP_ADMIN_KEY", short)][..],
            None,
        ),
    ] {
        let out = run(&env, args, vars, stdin);
        assert_exit(&out, 1, args);
        let e = error_json(&stderr_of(&out));
        assert_eq!(e["error"], "invalid_secret", "{e}");
        assert!(!stdout_of(&out).contains(short) && !stderr_of(&out).contains(short));
    }
    assert!(!env.store_exists());
    // A secret already registered with another scope is not silently promoted.
    let secret = "secret-registered-as-a-user-key-0123456789";
    let args = ["issue", "--plaintext-stdin", "--scope", "user"];
    ok_json(&run(&env, &args, &[], Some(secret)), &args);
    let before = files(&env);
    let out = run(
        &env,
        &["bootstrap-admin", "--secret-stdin"],
        &[],
        Some(secret),
    );
    assert_exit(&out, 1, &["bootstrap-admin", "user secret"]);
    assert_eq!(error_json(&stderr_of(&out))["error"], "key_state");
    assert_eq!(files(&env), before);
}

// ---------------------------------------------------------------------------------------------
// verify

fn check<'a>(rep: &'a Value, name: &str) -> &'a Value {
    rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} check in {rep}"))
}

fn failed_details(rep: &Value) -> String {
    rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| format!("{}: {}", s(c, "name"), s(c, "detail")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn verify_passes_on_a_fresh_store_and_names_an_edited_or_deleted_log_line() {
    let env = Env::new();
    for label in ["label-one", "label-two", "label-three"] {
        env.issue("user", label);
    }
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert_eq!(rep["ok"], true);
    assert_eq!(rep["keys"], 3);
    assert_eq!(rep["log_lines"], 3);
    assert!(failed_details(&rep).is_empty());
    for c in rep["checks"].as_array().unwrap() {
        // The volume check depends on the machine's disks (`hardening.rs` tests it).
        if c["name"] != "encrypted_volume" {
            assert_eq!(c["status"], "ok", "{c}");
        }
    }
    if env.is_etcd() {
        // Editing the log file's lines is file mechanics (`verify_names_an_edited_etcd_log_line`).
        return;
    }

    let log = env.log();
    let good = read(&log);
    // Edited line 2.
    std::fs::write(&log, good.replacen("label-two", "label-2wo", 1)).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(rep["ok"], false);
    let detail = s(check(&rep, "audit chain"), "detail").to_string();
    assert!(
        detail.contains("line 2") && detail.contains("edited"),
        "{detail}"
    );
    // Deleted line 2.
    let lines: Vec<&str> = good.lines().collect();
    std::fs::write(&log, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    let detail = s(check(&rep, "audit chain"), "detail").to_string();
    assert!(
        detail.contains("line 2") && detail.contains("deleted"),
        "{detail}"
    );
    // Reordered.
    std::fs::write(&log, format!("{}\n{}\n{}\n", lines[1], lines[0], lines[2])).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    assert!(s(check(&rep, "audit chain"), "detail").contains("line 1"));
    // Last line deleted: the chain is intact but the store no longer matches it.
    std::fs::write(&log, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(check(&rep, "store matches log")["status"], "fail");
    // Put back: verify passes again; the error message names the way out.
    std::fs::write(&log, &good).unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    std::fs::write(&log, good.replacen("label-one", "label-0ne", 1)).unwrap();
    let err = env.fails(&["verify"], 1);
    assert!(err.contains("restore"), "{err}");
}

/// Replaces `from` with `to` in key `id`'s stored record without going through xai-keys: the
/// store file edited by hand, or the record's etcd key put with etcdctl.
pub fn edit_behind_the_stores_back(env: &Env, id: &str, from: &str, to: &str) {
    match env.etcd_prefix() {
        Some(prefix) => {
            let key = format!("{prefix}/keys/{id}");
            let rec = env.etcdctl(&["get", "--print-value-only", &key]);
            let rec = rec.trim_end_matches('\n');
            assert!(rec.contains(from), "{key} holds {rec}");
            env.etcdctl(&["put", &key, &rec.replace(from, to)]);
        }
        None => {
            let store = read(&env.store);
            assert!(store.contains(from), "{store}");
            std::fs::write(&env.store, store.replace(from, to)).unwrap();
        }
    }
}

#[test]
fn a_hand_edited_store_blocks_mutations_until_verify_adopt() {
    let env = Env::new();
    let (_, id) = env.issue("user", "original-label");
    edit_behind_the_stores_back(&env, &id, "original-label", "edited-by-hand");
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(check(&rep, "store matches log")["status"], "fail");

    let before = files(&env);
    for args in [
        &["issue", "--label", "x"][..],
        &["revoke", &id],
        &["disable", &id],
        &["rotate", &id],
        &["import", "--key-id", &sha256_hex(b"imp")],
    ] {
        let e = refused(&env, args, "store_mismatch");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("verify --adopt") && msg.contains("restore"),
            "{msg}"
        );
        assert_eq!(files(&env), before, "{args:?} wrote something");
    }
    // Reads still work.
    assert_eq!(env.ok(&["list"])[&id]["label"], "edited-by-hand");

    let v = env.ok(&["verify", "--adopt"]);
    assert_eq!(v["ok"], true, "{v}");
    let ev = all_events(&env).pop().unwrap();
    assert_eq!(ev["action"], "adopt");
    assert_eq!(ev["keys"], 1);
    if !env.is_etcd() {
        assert_eq!(
            read(&env.store),
            before.0.map(|b| String::from_utf8(b).unwrap()).unwrap()
        );
    }
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    env.issue("user", "after-adopt");
    assert_eq!(env.ok(&["list"])[&id]["label"], "edited-by-hand");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

// ---------------------------------------------------------------------------------------------
// Corrupt store

fn assert_corrupt_message(msg: &str, env: &Env) {
    let path = env.store.display().to_string();
    assert!(msg.contains(&path), "does not name {path}: {msg}");
    assert!(
        msg.contains("line") && msg.contains("column"),
        "no line/column: {msg}"
    );
    assert!(
        msg.contains("verify") && msg.contains("restore"),
        "no way out: {msg}"
    );
}

fn every_command_refuses_a_corrupt_store(env: &Env, id: &str) {
    let before = files(env);
    let backup_dir = env.dir.path().join("corrupt-backup");
    let backup_dir = backup_dir.to_str().unwrap();
    let secret = "bootstrap-secret-for-the-corrupt-store-test";
    for args in [
        &["list"][..],
        &["list", "--scope", "admin"],
        &["issue", "--label", "x"],
        &["import", "--key-id", &sha256_hex(b"imp")],
        &["revoke", id],
        &["disable", id],
        &["enable", id],
        &["rotate", id],
        &["bootstrap-admin", "--secret", secret],
        &["backup", "--out", backup_dir],
        &["verify", "--adopt"],
    ] {
        let err = env.fails(args, 1);
        let e = error_json(&err);
        assert_eq!(e["error"], "corrupt_store", "{args:?}: {err}");
        assert_corrupt_message(e["message"].as_str().unwrap(), env);
        assert_eq!(files(env), before, "{args:?} changed the store or log");
    }
    assert!(!Path::new(backup_dir).exists());
    // verify reports it (exit 1) with the same detail.
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    let store_check = check(&rep, "store");
    assert_eq!(store_check["status"], "fail");
    assert_corrupt_message(s(store_check, "detail"), env);
    // events reads only the log.
    env.ok(&["events"]);
    assert_eq!(files(env), before);
}

#[test]
fn a_corrupt_store_is_refused_by_every_command_and_left_byte_for_byte() {
    for content in [
        &b"{\n  \"abc\": ,\n}\n"[..],
        b"[1, 2]\n",
        b"{\"x\": 1} trailing",
    ] {
        let Some(env) = Env::file_only() else { return };
        let (_, id) = env.issue("user", "victim");
        std::fs::write(&env.store, content).unwrap();
        every_command_refuses_a_corrupt_store(&env, &id);
    }
}

#[test]
fn an_empty_store_file_is_refused_not_treated_as_no_keys() {
    let Some(env) = Env::file_only() else { return };
    let (_, id) = env.issue("user", "victim");
    std::fs::write(&env.store, b"").unwrap();
    every_command_refuses_a_corrupt_store(&env, &id);
    let err = env.fails(&["list"], 1);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn a_corrupt_store_without_any_log_is_refused_too() {
    let Some(env) = Env::file_only() else { return };
    std::fs::create_dir(env.store.parent().unwrap()).unwrap();
    chmod(env.store.parent().unwrap(), 0o700);
    std::fs::write(&env.store, b"{\n  \"not-a-key-id\": {}\n}\n").unwrap();
    chmod(&env.store, 0o600);
    let before = files(&env);
    for args in [&["list"][..], &["issue", "--label", "x"]] {
        let e = refused(&env, args, "corrupt_store");
        assert_corrupt_message(e["message"].as_str().unwrap(), &env);
    }
    assert_eq!(files(&env), before);
    assert!(!env.log().exists());
}

// ---------------------------------------------------------------------------------------------
// Permissions

#[test]
fn writable_by_others_is_refused_and_readable_by_others_is_warned() {
    let Some(env) = Env::file_only() else { return };
    let (_, id) = env.issue("user", "perm");
    let dir = env.store.parent().unwrap().to_path_buf();
    for (path, m) in [
        (env.store.clone(), 0o666),
        (env.store.clone(), 0o620),
        (env.log(), 0o666),
        (dir.clone(), 0o777),
    ] {
        let mut restore_mode = 0o600;
        if path == dir {
            restore_mode = 0o700;
        }
        chmod(&path, m);
        let before = files(&env);
        for args in [&["issue", "--label", "x"][..], &["revoke", &id]] {
            let e = refused(&env, args, "insecure_permissions");
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.contains("chmod") && msg.contains(&path.display().to_string()),
                "{msg}"
            );
        }
        if path != dir {
            // Readers refuse the file too.
            let cmd: &[&str] = if path == env.log() {
                &["events"]
            } else {
                &["list"]
            };
            let e = refused(&env, cmd, "insecure_permissions");
            assert!(e["message"].as_str().unwrap().contains("chmod"));
        }
        let (code, rep) = env.verify();
        assert_eq!(code, 1, "{rep}");
        assert_eq!(files(&env), before);
        assert_eq!(
            mode(&path),
            m,
            "the mode was changed behind the operator's back"
        );
        chmod(&path, restore_mode);
    }

    // Readable by group/others: works, with a warning.
    chmod(&env.store, 0o644);
    let out = run(&env, &["list"], &[], None);
    ok_json(&out, &["list"]);
    let err = stderr_of(&out);
    assert!(err.contains("warning") && err.contains("readable"), "{err}");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    assert_eq!(check(&rep, "store permissions")["status"], "warn");
    let out = run(&env, &["issue", "--label", "warned"], &[], None);
    ok_json(&out, &["issue"]);
    let err = stderr_of(&out);
    assert!(err.contains("warning") && err.contains("readable"), "{err}");
    chmod(&env.log(), 0o644);
    let out = run(&env, &["events"], &[], None);
    ok_json(&out, &["events"]);
    let out = run(&env, &["revoke", &id], &[], None);
    ok_json(&out, &["revoke"]);
    let err = stderr_of(&out);
    assert!(err.contains("warning") && err.contains("readable"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// backup / restore

#[test]
fn backup_writes_store_log_and_manifest_with_sums_and_never_overwrites() {
    let env = Env::new();
    env.issue("user", "one");
    env.issue("admin", "two");
    let out = env.dir.path().join("backup-1");
    let v = env.ok(&["backup", "--out", out.to_str().unwrap()]);
    let store_b = std::fs::read(out.join("api_keys.json")).unwrap();
    let log_b = std::fs::read(out.join("api_keys.json.log")).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    if !env.is_etcd() {
        assert_eq!(store_b, std::fs::read(&env.store).unwrap());
        assert_eq!(log_b, std::fs::read(env.log()).unwrap());
    }
    assert_eq!(manifest["store_sha256"], sha256_hex(&store_b).as_str());
    assert_eq!(manifest["log_sha256"], sha256_hex(&log_b).as_str());
    assert_eq!(manifest["keys"], 2);
    assert_eq!(manifest["log_lines"], 2);
    assert_eq!(manifest["store_bytes"], store_b.len());
    assert_eq!(v["store_sha256"], manifest["store_sha256"]);
    for name in ["api_keys.json", "api_keys.json.log", "manifest.json"] {
        assert_eq!(mode(&out.join(name)), 0o600, "{name}");
    }
    // Backups never record themselves in the log, and never overwrite a directory.
    assert_eq!(all_events(&env).len(), 2);
    let e = refused(
        &env,
        &["backup", "--out", out.to_str().unwrap()],
        "backup_error",
    );
    assert!(e["message"].as_str().unwrap().contains("exists"), "{e}");
    assert_eq!(std::fs::read(out.join("api_keys.json")).unwrap(), store_b);
    let empty = env.dir.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    refused(
        &env,
        &["backup", "--out", empty.to_str().unwrap()],
        "backup_error",
    );
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none());
    let nowhere = env.dir.path().join("no/such/parent");
    refused(
        &env,
        &["backup", "--out", nowhere.to_str().unwrap()],
        "backup_error",
    );
}

#[test]
fn restore_refuses_a_tampered_or_incomplete_backup() {
    let env = Env::new();
    let (_, id) = env.issue("user", "original");
    let make = |name: &str| {
        let p = env.dir.path().join(name);
        env.ok(&["backup", "--out", p.to_str().unwrap()]);
        p
    };
    let (b1, b2, b3, b4) = (
        make("tampered-store"),
        make("tampered-log"),
        make("no-manifest"),
        make("bad-manifest"),
    );
    env.ok(&["revoke", &id]);
    let before = files(&env);

    let sp = b1.join("api_keys.json");
    std::fs::write(&sp, "{}\n").unwrap();
    let e = refused(&env, &["restore", b1.to_str().unwrap()], "backup_error");
    assert!(e["message"].as_str().unwrap().contains("SHA-256"), "{e}");

    let lp = b2.join("api_keys.json.log");
    let log = read(&lp).replacen("original", "0riginal", 1);
    std::fs::write(&lp, log).unwrap();
    refused(&env, &["restore", b2.to_str().unwrap()], "backup_error");

    std::fs::remove_file(b3.join("manifest.json")).unwrap();
    env.fails(&["restore", b3.to_str().unwrap()], 1);

    std::fs::write(b4.join("manifest.json"), "{\"format\": \"nope\"}").unwrap();
    refused(&env, &["restore", b4.to_str().unwrap()], "backup_error");

    env.fails(
        &["restore", env.dir.path().join("missing").to_str().unwrap()],
        1,
    );
    assert_eq!(files(&env), before);
}

#[test]
fn restore_never_revives_revoked_keys_reports_dropped_ones_and_only_appends_to_the_log() {
    let env = Env::new();
    let (_, a) = env.issue("user", "revoked-later");
    let (_, b) = env.issue("admin", "kept");
    let (_, d) = env.issue("operator", "disabled-later");
    let bk = env.dir.path().join("bk");
    env.ok(&["backup", "--out", bk.to_str().unwrap()]);
    env.ok(&["revoke", &a]);
    env.ok(&["disable", &d]);
    let (_, c) = env.issue("user", "issued-after-backup");
    let log_before = all_events(&env);

    let v = env.ok(&["restore", bk.to_str().unwrap()]);
    assert_eq!(v["restored_keys"], 2, "{v}");
    assert_eq!(v["revoked_since_backup"], json!([a]));
    assert_eq!(v["restricted_since_backup"], json!([d]));
    assert_eq!(v["dropped_keys"], json!([c]));
    let list = env.ok(&["list"]);
    assert_eq!(
        sorted(list.as_object().unwrap().keys().cloned().collect()),
        sorted(vec![b.clone(), d.clone()])
    );
    assert_eq!(list[&d]["state"], "disabled");

    let log_after = all_events(&env);
    assert!(
        log_after.starts_with(&log_before),
        "the live log was rewritten"
    );
    assert!(log_after.len() > log_before.len());
    let last = all_events(&env).pop().unwrap();
    assert_eq!(last["action"], "restore");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
    // Life goes on.
    env.issue("user", "after-restore");
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

/// A restore that rewrites more records than one etcd transaction may carry: on etcd it is
/// committed in audited parts and says so; on a file it is one commit. Same result either way.
#[test]
fn a_restore_bigger_than_one_transaction_is_committed_in_parts_on_etcd() {
    let env = Env::new();
    let (_, kept) = env.issue("user", "kept");
    let bk = env.dir.path().join("bk");
    env.ok(&["backup", "--out", bk.to_str().unwrap()]);
    // Ten keys issued after the backup: the restore drops them (ten record removals).
    let mut dropped: Vec<String> = (0..10)
        .map(|i| env.issue("user", &format!("after-{i}")).1)
        .collect();
    dropped.sort();
    let before = all_events(&env).len();
    // 8 operations per transaction leave room for 4 record changes per part.
    let ops = [("XAI_ETCD_MAX_TXN_OPS", "8")];
    let restore = ["restore", bk.to_str().unwrap()];
    let v = env.ok_with(&ops, &restore);
    assert_eq!(v["dropped_keys"], json!(dropped), "{v}");
    let parts = if env.is_etcd() { 3 } else { 1 };
    assert_eq!(v["transactions"], parts, "{v}");
    assert_eq!(env.ids(), vec![kept.clone()]);
    let evs = all_events(&env);
    let lines = &evs[before..];
    assert_eq!(lines.len(), parts, "one restore line per transaction");
    assert!(lines.iter().all(|e| e["action"] == "restore"));
    if env.is_etcd() {
        let left: Vec<&Value> = lines.iter().map(|e| &e["records_left"]).collect();
        assert_eq!(left, [&json!(6), &json!(2), &json!(0)]);
    }
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");

    // For people, the parts are named when there were several.
    for i in 0..10 {
        env.issue("user", &format!("again-{i}"));
    }
    let out = table_with(&env, &ops, &restore);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.contains("in 3 transactions"), env.is_etcd(), "{text}");
    assert_eq!(env.ids(), vec![kept]);
}

#[test]
fn restore_is_the_way_out_of_a_corrupt_store() {
    let env = Env::new();
    let (_, a) = env.issue("user", "a");
    let bk = env.dir.path().join("bk");
    env.ok(&["backup", "--out", bk.to_str().unwrap()]);
    let log_before = all_events(&env);
    match env.etcd_prefix() {
        Some(prefix) => {
            env.etcdctl(&["put", &format!("{prefix}/keys/{a}"), "{ garbage"]);
        }
        None => std::fs::write(&env.store, b"{ garbage").unwrap(),
    }
    env.fails(&["list"], 1);
    let v = env.ok(&["restore", bk.to_str().unwrap()]);
    assert_eq!(v["restored_keys"], 1);
    assert_eq!(env.ids(), vec![a]);
    assert!(all_events(&env).starts_with(&log_before));
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn restore_into_a_store_whose_log_is_missing_seeds_the_log_from_the_backup() {
    let env = Env::new();
    let (_, a) = env.issue("user", "a");
    let bk = env.dir.path().join("bk");
    env.ok(&["backup", "--out", bk.to_str().unwrap()]);
    let backup_log = all_events(&env);
    match env.etcd_prefix() {
        Some(prefix) => {
            env.etcdctl(&["del", "--prefix", &format!("{prefix}/")]);
        }
        None => {
            std::fs::remove_file(&env.store).unwrap();
            std::fs::remove_file(env.log()).unwrap();
        }
    }
    assert!(env.nothing_created() || !env.is_etcd());
    env.ok(&["restore", bk.to_str().unwrap()]);
    assert_eq!(env.ids(), vec![a]);
    assert!(all_events(&env).starts_with(&backup_log));
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

/// A tampered log whose last line carries a non-hex, non-ASCII `store_sha256` is reported as a
/// mismatch, never a panic (messages shorten such values without splitting a character).
#[test]
fn non_ascii_values_in_a_tampered_log_give_errors_not_panics() {
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    let log = env.log();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["store_sha256"] = serde_json::Value::from(format!("a{}", "é".repeat(40)));
    std::fs::write(&log, format!("{last}\n")).unwrap();
    let err = env.fails(&["issue", "--label", "b"], 1);
    assert!(
        err.contains("store_mismatch") && !err.contains("panicked"),
        "{err}"
    );
    let out = env.cmd().arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Without `--store` or the environment, the CWD-relative default is used and said so; a
/// read-only command still creates nothing there.
#[test]
fn the_default_store_is_announced_and_not_created_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = base_cmd()
        .current_dir(dir.path())
        .args(["-o", "json", "list"])
        .output()
        .unwrap();
    assert_exit(&out, 0, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no --store or XAI_API_KEY_STORE given")
            && err.contains("secure_keys/api_keys.json"),
        "{err}"
    );
    assert!(!dir.path().join("secure_keys").exists());
}

/// A revoked bootstrap key must not come back when the same secret is offered again (from a
/// deploy script, or the variable left in the environment).
#[test]
fn bootstrap_admin_refuses_a_secret_whose_key_was_revoked() {
    let env = Env::new();
    let secret = "pre-provisioned-bootstrap-secret-0123456789";
    let id = sha256_hex(secret.as_bytes());
    let args = ["bootstrap-admin", "--secret-stdin"];
    let out = run(&env, &args, &[], Some(&format!("{secret}\n")));
    assert_eq!(ok_json(&out, &args)["created"], true);
    env.ok(&["revoke", &id]);
    let before = files(&env);
    for (stdin, vars) in [
        (Some(format!("{secret}\n")), vec![]),
        (None, vec![("XAI_BOOTSTRAP_ADMIN_KEY", secret)]),
    ] {
        let a: &[&str] = if stdin.is_some() {
            &args
        } else {
            &["bootstrap-admin"]
        };
        let out = run(&env, a, &vars, stdin.as_deref());
        assert_exit(&out, 1, a);
        let v = error_json(&stderr_of(&out));
        assert_eq!(v["error"], "retired", "{v}");
        assert!(!stderr_of(&out).contains(secret));
    }
    assert_eq!(files(&env), before, "nothing written");
    assert!(env.ok(&["list"]).get(&id).is_none());
}
