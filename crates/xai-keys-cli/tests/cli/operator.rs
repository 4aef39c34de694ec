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
    let Some(env) = Env::file_only() else { return };
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
    let Some(env) = Env::file_only() else { return };
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
    assert!(env.nothing_created());
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
    assert!(fresh.nothing_created());
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
        // The core names the field (the CLI no longer re-checks the reason itself).
        assert!(
            msg.starts_with("invalid reason:") && !msg.contains("label"),
            "{msg}"
        );
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
    assert!(env.nothing_created());
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
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    std::fs::write(env.log(), "").unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    env.fails(&["issue", "--label", "b"], 1);
}

// ---------------------------------------------------------------------------------------------
// Operator experience: ownership, permission fixes, readers' checks, the way out, text rules,
// lock waits.

fn lock_path(env: &Env) -> std::path::PathBuf {
    let mut s = env.store.clone().into_os_string();
    s.push(".lock");
    std::path::PathBuf::from(s)
}

fn uid_gid(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// `id -u nobody`, `id -g nobody`.
fn nobody_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "nobody"])
            .output()
            .unwrap();
        assert!(out.status.success(), "id {flag} nobody failed");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// `setpriv` running `args` as nobody, or `None` when that is not possible here.
fn as_nobody(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    let (uid, gid) = nobody_ids();
    let mut c = std::process::Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    c.output().ok()
}

/// The repro: a store `nobody` owns (chown -R nobody), root runs `xai-keys issue`. The store
/// used to become root-owned 0600 and the service running as nobody got EACCES.
#[test]
fn root_running_issue_leaves_the_store_with_its_owner() {
    if !running_as_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let (uid, gid) = nobody_ids();
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "first");
    let keys_dir = env.store.parent().unwrap();
    chown_tree(keys_dir, uid, gid);
    let (_, id) = env.issue("user", "by root");
    env.ok(&["revoke", &id]);
    for p in [env.store.clone(), env.log(), lock_path(&env)] {
        assert_eq!(
            uid_gid(&p),
            (uid, gid),
            "{} was taken from nobody",
            p.display()
        );
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    // The service (nobody) still reads and writes its store.
    chmod(env.dir.path(), 0o711);
    let store = env.store.as_os_str();
    let probe = as_nobody(&[BIN.as_ref(), "--version".as_ref()]);
    if !probe.is_some_and(|o| o.status.success()) {
        eprintln!("skipped the nobody part: cannot run the binary as nobody here");
        return;
    }
    for args in [
        &["list"][..],
        &["issue", "--label", "by nobody"],
        &["verify"],
    ] {
        let mut full: Vec<&std::ffi::OsStr> = vec![
            BIN.as_ref(),
            "--store".as_ref(),
            store,
            "-o".as_ref(),
            "json".as_ref(),
        ];
        full.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let out = as_nobody(&full).unwrap();
        assert_exit(&out, 0, args);
    }
}

fn running_as_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `chmod 600` on a directory would lock the service out: directories get `chmod 700`.
#[test]
fn an_insecure_directory_is_fixed_with_chmod_700() {
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    let dir = env.store.parent().unwrap();
    chmod(dir, 0o777);
    let v = refused(&env, &["issue", "--label", "x"], "insecure_permissions");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("chmod 700 {}", dir.display())),
        "{msg}"
    );
    assert!(!msg.contains("chmod 600"), "{msg}");
    chmod(dir, 0o700);
    chmod(&env.store, 0o666);
    let v = refused(&env, &["issue", "--label", "x"], "insecure_permissions");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("chmod 600 {}", env.store.display())),
        "{msg}"
    );
    chmod(&env.store, 0o600);
}

/// `list` holds the directory to the writers' rule: refused when others can write to it,
/// warned about when they can read it.
#[test]
fn list_refuses_a_directory_writable_by_others_and_warns_when_readable() {
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    let dir = env.store.parent().unwrap();
    chmod(dir, 0o770);
    let v = refused(&env, &["list"], "insecure_permissions");
    assert!(v["message"].as_str().unwrap().contains("chmod 700"), "{v}");
    refused(&env, &["events"], "insecure_permissions");
    chmod(dir, 0o750);
    let out = run(&env, &["list"], &[], None);
    assert_exit(&out, 0, &["list"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("warning") && err.contains(&format!("chmod 700 {}", dir.display())),
        "{err}"
    );
    chmod(dir, 0o700);
}

/// A corrupt store fails `verify` without the advice to adopt it.
#[test]
fn verify_of_a_corrupt_store_does_not_suggest_adopting_it() {
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    std::fs::write(&env.store, "{\"cut\": ").unwrap();
    let (code, rep) = env.verify();
    assert_eq!(code, 1, "{rep}");
    let text = rep.to_string();
    assert!(!text.contains("--adopt"), "{rep}");
    let out = table_any(&env, &["verify"]);
    assert_exit(&out, 1, &["verify"]);
    assert!(
        !stdout_of(&out).contains("--adopt") && !stderr_of(&out).contains("--adopt"),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(stderr_of(&out).contains("restore"), "{}", stderr_of(&out));
}

/// Refusals say what to do: enable a disabled key first; a used secret is not reused.
#[test]
fn refusals_name_the_way_out() {
    let env = Env::new();
    let (_, id) = env.issue("user", "a");
    env.ok(&["disable", &id]);
    let v = refused(&env, &["rotate", &id], "key_state");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(&format!("xai-keys enable {id}")), "{msg}");

    let secret = "q".repeat(40);
    let args = ["issue", "--plaintext-stdin", "--label", "hsm"];
    assert_exit(&run(&env, &args, &[], Some(&secret)), 0, &args);
    let out = run(&env, &args, &[], Some(&secret));
    assert_exit(&out, 1, &args);
    let v = error_json(&stderr_of(&out));
    assert_eq!(v["error"], "duplicate");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("already registered") && msg.contains("xai-keys list"),
        "{msg}"
    );
    let out = run(
        &env,
        &["bootstrap-admin", "--secret-stdin"],
        &[],
        Some(&secret),
    );
    assert_exit(&out, 1, &["bootstrap-admin"]);
    let v = error_json(&stderr_of(&out));
    assert_eq!(v["error"], "key_state");
    assert!(
        v["message"].as_str().unwrap().contains("different secret"),
        "{v}"
    );
}

/// Unicode bidirectional controls spoof labels in dashboards: refused like control characters.
#[test]
fn bidi_controls_are_refused_in_labels_and_reasons() {
    let env = Env::new();
    let (_, id) = env.issue("user", "a");
    let before = files(&env);
    for c in ['\u{202e}', '\u{2066}', '\u{200f}', '\u{061c}'] {
        let label = format!("admin{c}resu");
        let v = refused(&env, &["issue", "--label", &label], "invalid_label");
        assert!(
            v["message"].as_str().unwrap().contains("bidirectional"),
            "{v}"
        );
        refused(&env, &["rotate", &id, "--label", &label], "invalid_label");
        refused(&env, &["revoke", &id, "--reason", &label], "invalid_reason");
    }
    assert_eq!(files(&env), before);
}

/// Holds `lock` with util-linux `flock` in another process until killed.
fn hold_lock(lock: &Path, secs: u32) -> Option<std::process::Child> {
    let child = std::process::Command::new("flock")
        .arg("-o")
        .arg(lock)
        .args(["sleep", &secs.to_string()])
        .spawn()
        .ok()?;
    let probe = std::fs::OpenOptions::new().read(true).open(lock).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match probe.try_lock() {
            Ok(()) => {
                probe.unlock().unwrap();
                assert!(
                    std::time::Instant::now() < until,
                    "flock never took the lock"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Some(child),
            Err(e) => panic!("probing the lock: {e:?}"),
        }
    }
}

/// A writer waiting for another process's lock says so on stderr instead of sitting silent,
/// and `XAI_API_KEY_LOCK_TIMEOUT_SECS` bounds the wait.
#[test]
fn a_writer_waiting_for_the_lock_says_so_and_honours_the_timeout_variable() {
    let Some(env) = Env::file_only() else { return };
    env.issue("user", "a");
    let lock = lock_path(&env);
    let Some(mut holder) = hold_lock(&lock, 5) else {
        eprintln!("skipped: no `flock` binary");
        return;
    };
    let before = files(&env);
    let started = std::time::Instant::now();
    let out = run(
        &env,
        &["issue", "--label", "b"],
        &[("XAI_API_KEY_LOCK_TIMEOUT_SECS", "2")],
        None,
    );
    let waited = started.elapsed();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_exit(&out, 1, &["issue", "(lock held)"]);
    let err = stderr_of(&out);
    assert_eq!(error_json(&err)["error"], "lock_timeout", "{err}");
    let notice = format!(
        "waiting for the store lock {} (held by another xai-keys process)",
        lock.display()
    );
    assert_eq!(err.matches(&notice).count(), 1, "{err}");
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(files(&env), before);

    // Released while waiting: the writer says so, then goes ahead.
    let Some(mut holder) = hold_lock(&lock, 2) else {
        return;
    };
    let out = run(
        &env,
        &["issue", "--label", "c"],
        &[("XAI_API_KEY_LOCK_TIMEOUT_SECS", "20")],
        None,
    );
    holder.wait().unwrap();
    assert_exit(&out, 0, &["issue", "(lock released)"]);
    assert!(stderr_of(&out).contains(&notice), "{}", stderr_of(&out));

    // Without contention: silent.
    let out = run(&env, &["issue", "--label", "d"], &[], None);
    assert_exit(&out, 0, &["issue"]);
    assert!(!stderr_of(&out).contains("waiting"), "{}", stderr_of(&out));
}

#[test]
fn an_invalid_lock_timeout_is_refused_naming_the_variable() {
    let env = Env::new();
    for bad in ["0", "-5", "1.5", "soon", ""] {
        let out = run(
            &env,
            &["issue", "--label", "x"],
            &[("XAI_API_KEY_LOCK_TIMEOUT_SECS", bad)],
            None,
        );
        assert_exit(&out, 1, &["issue", bad]);
        let v = error_json(&stderr_of(&out));
        assert_eq!(v["error"], "invalid_config", "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("XAI_API_KEY_LOCK_TIMEOUT_SECS"),
            "{v}"
        );
    }
    assert!(env.nothing_created());
}
