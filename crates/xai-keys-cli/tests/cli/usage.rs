//! Last-use statistics end to end: written through the core (as the gateway does), read by
//! `list` and `events --key-id`, and guarding `revoke --if-idle`.

use serde_json::Value;
use xai_keys_core::store::{FileStore, FileStoreOptions, KeyStore};
use xai_keys_core::usage::{KeyUsage, UsageMap};

use crate::commands::table;
use crate::common::*;

/// Records one use of `id` at `last_used` through the core API, as the gateway's flush does.
fn record(env: &Env, id: &str, last_used: f64, count: u64) {
    let store = FileStore::new(&env.store, FileStoreOptions::default()).unwrap();
    let deltas = UsageMap::from([(
        id.to_string(),
        KeyUsage {
            last_used,
            count,
            last_client: "10.9.8.7".into(),
            last_route: "/api/v1/balance".into(),
        },
    )]);
    store
        .record_usage(&deltas, &|_: &str| true, xai_keys_core::now_epoch())
        .unwrap();
}

fn usage_path(env: &Env) -> std::path::PathBuf {
    let mut s = env.store.clone().into_os_string();
    s.push(".usage");
    s.into()
}

#[test]
fn list_shows_last_use_in_json_and_table() {
    // Usage is recorded through the core's FileStore (`record`): files only.
    let Some(env) = Env::file_only() else { return };
    let (_, used) = env.issue("user", "used-svc");
    let (_, idle) = env.issue("user", "idle-svc");
    let t = xai_keys_core::now_epoch() - 60.0;
    record(&env, &used, t, 7);
    assert_eq!(mode(&usage_path(&env)), 0o600);

    let v = env.ok(&["list"]);
    let u = &v[&used];
    assert_eq!(u["last_used"].as_f64(), Some(t));
    assert_eq!(u["use_count"], 7);
    assert_eq!(u["last_client"], "10.9.8.7");
    assert_eq!(u["last_route"], "/api/v1/balance");
    // The reference's fields are all still there.
    for f in [
        "label",
        "created",
        "scope",
        "expires_at",
        "permanent",
        "expired",
    ] {
        assert!(u.get(f).is_some(), "{f} missing: {u}");
    }
    let i = &v[&idle];
    assert_eq!(i["last_used"], Value::Null);
    assert_eq!(i["use_count"], 0);
    assert_eq!(i["last_client"], Value::Null);
    assert_eq!(i["last_route"], Value::Null);

    let out = table(&env, &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    assert!(header.contains("LAST USED"), "{text}");
    let row = |label: &str| {
        text.lines()
            .find(|l| l.contains(label))
            .unwrap()
            .to_string()
    };
    assert!(row("used-svc").contains("1m ago"), "{text}");
    assert!(row("idle-svc").contains("never"), "{text}");
}

#[test]
fn list_works_with_an_unreadable_usage_file() {
    // Usage is recorded through the core's FileStore (`record`): files only.
    let Some(env) = Env::file_only() else { return };
    let (_, id) = env.issue("user", "svc");
    std::fs::write(usage_path(&env), b"{ torn").unwrap();
    let out = env.cmd().arg("list").output().unwrap();
    assert_exit(&out, 0, &["list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[&id]["last_used"], Value::Null);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("deleted safely"),
        "{err}"
    );
}

#[test]
fn revoke_if_idle_refuses_a_recent_key_and_allows_an_idle_one() {
    // Usage is recorded through the core's FileStore (`record`): files only.
    let Some(env) = Env::file_only() else { return };
    let (_, id) = env.issue("user", "svc");
    record(&env, &id, xai_keys_core::now_epoch() - 60.0, 3);

    // Used a minute ago: a 15-minute guard refuses, exit 1, code recently_used.
    let out = env
        .cmd()
        .args(["revoke", &id[..12], "--if-idle", "15m"])
        .output()
        .unwrap();
    assert_exit(&out, 1, &["revoke", "--if-idle", "15m"]);
    let e: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(e["error"], "recently_used", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("10.9.8.7") && msg.contains("/api/v1/balance"),
        "{msg}"
    );
    assert_eq!(env.ids(), vec![id.clone()]);

    // A zero window is a usage mistake, named by its flag.
    let err = env.fails(&["revoke", &id, "--if-idle", "0s"], 1);
    assert!(err.contains("--if-idle"), "{err}");
    assert!(err.contains("invalid_input"), "{err}");
    assert_eq!(env.ids(), vec![id.clone()]);

    // Idle for 30 s: allowed.
    let v = env.ok(&["revoke", &id, "--if-idle", "30s", "--reason", "switched"]);
    assert_eq!(v["revoked"], true);
    assert!(env.ids().is_empty());
    let (code, rep) = env.verify();
    assert_eq!(code, 0, "{rep}");
}

#[test]
fn events_for_a_key_end_with_its_last_use() {
    // Usage is recorded through the core's FileStore (`record`): files only.
    let Some(env) = Env::file_only() else { return };
    let (_, id) = env.issue("user", "svc");
    let (_, other) = env.issue("user", "other");
    record(&env, &id, xai_keys_core::now_epoch() - 120.0, 4);
    let out = table(&env, &["events", "--key-id", &id[..16]]);
    let err = String::from_utf8_lossy(&out.stderr);
    let footer = err
        .lines()
        .find(|l| l.starts_with("last use of"))
        .unwrap_or_else(|| panic!("no footer: {err}"));
    assert!(footer.contains(&id[..12]), "{footer}");
    assert!(footer.contains("2m ago"), "{footer}");
    assert!(
        footer.contains("10.9.8.7") && footer.contains("/api/v1/balance"),
        "{footer}"
    );
    assert!(footer.contains("4 use(s)"), "{footer}");
    // A key with no recorded use gets no footer.
    let out = table(&env, &["events", "--key-id", &other]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("last use of"), "{err}");
}
