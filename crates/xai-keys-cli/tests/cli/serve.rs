//! `xai-keys serve` end to end: the real binary on 127.0.0.1 (always port 0), driven over plain
//! HTTP/1.1 and by other `xai-keys` processes on the same store. Covers the first-start admin
//! key, CLI changes reaching a running gateway, HTTP changes reaching the CLI, last-use data
//! flushed on SIGTERM, configuration errors, the default policy, auth-off, and upstream errors.
//!
//! Every wait is bounded (see the limits in `common.rs`); no test talks to anything but loopback.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use xai_keys_server::bootstrap::AUTO_LABEL;

use crate::commands::{all_events, chmod, error_json, stderr_of};
use crate::common::*;

/// A gateway route every auditor, operator and admin key may read (and no user key may).
const PROBE: &str = "/admin/api-key-events?limit=1";
/// A user route of the built-in policy (proxied: needs an upstream).
const USER_ROUTE: &str = "/wallet/balance";
/// How long a CLI change may take to reach a running gateway (the issue's bound).
const PROPAGATION: Duration = Duration::from_secs(1);
/// A failing `serve` must exit well within this (assert_cmd kills it after it).
const FAIL_FAST: Duration = Duration::from_secs(10);

fn probe(gw: &Gateway, key: &str) -> Reply {
    gw.get(PROBE, &[("X-API-Key", key)])
}

/// Polls the probe with `key` until it answers `want`, for at most [`PROPAGATION`]; returns
/// how long that took. At most ~100 requests.
fn until_status(gw: &Gateway, key: &str, want: u16, what: &str) -> Duration {
    let started = Instant::now();
    let mut last = 0;
    let hit = poll(PROPAGATION, || {
        last = probe(gw, key).status;
        (last == want).then(|| started.elapsed())
    });
    hit.unwrap_or_else(|| {
        panic!(
            "{what}: the gateway still answered {last} (want {want}) {PROPAGATION:?} after the CLI finished; stderr:\n{}",
            gw.stderr()
        )
    })
}

/// Plaintext keys printed on their own line (the first-start notice's only form).
fn printed_keys(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("xai_"))
        .map(str::to_string)
        .collect()
}

fn events_for<'a>(events: &'a [Value], action: &str, id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["action"] == action && e["key_id"] == id)
        .collect()
}

/// `xai-keys --store … -o json serve --listen 127.0.0.1:0 ARGS` run to completion (bounded);
/// ARGS may bring their own `--listen`.
fn serve_once(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> (std::process::Output, Duration) {
    let mut c = env.cmd();
    c.arg("serve");
    if !args.contains(&"--listen") {
        c.args(["--listen", "127.0.0.1:0"]);
    }
    c.args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    let started = Instant::now();
    let out = c.timeout(FAIL_FAST).output().unwrap();
    (out, started.elapsed())
}

/// Asserts that `serve` refused to start: exit 1 quickly, never listened, printed no key.
/// Returns the JSON error's message.
fn refused_to_start(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> String {
    let (out, took) = serve_once(env, args, vars);
    let what = format!("serve {args:?} {vars:?}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} (killed after {FAIL_FAST:?} if no code)\nstderr: {}",
        stderr_of(&out)
    );
    assert!(took < Duration::from_secs(5), "{what} took {took:?}");
    let err = stderr_of(&out);
    assert!(
        !json_lines(&err).iter().any(|v| v["message"] == "listening"),
        "{what}: {err}"
    );
    assert!(!err.contains("FIRST ADMIN KEY"), "{what}: {err}");
    error_json(&err)["message"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// First start: the admin key

#[test]
fn first_start_prints_a_working_admin_key_once_audits_it_and_a_restart_prints_none() {
    let env = Env::new();
    let mut gw = env.serve(&[], &[]);
    let err = gw.stderr();
    assert!(err.contains("FIRST ADMIN KEY"), "{err}");
    let keys = printed_keys(&err);
    assert_eq!(keys.len(), 1, "{err}");
    let admin = keys[0].clone();
    assert!(admin.starts_with("xai_"), "{admin}");

    let r = gw.get("/admin/api-keys", &[("X-Admin-Token", &admin)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true, "{v}");
    let listed = v["store"].as_object().unwrap();
    assert_eq!(listed.len(), 1, "{v}");
    let (id, rec) = listed.iter().next().unwrap();
    assert_eq!(rec["scope"], "admin", "{rec}");
    assert_eq!(rec["label"], AUTO_LABEL, "{rec}");
    assert!(!r.text().contains(&admin), "the listing echoes the key");
    // Without it the admin API is closed.
    let r = gw.get("/admin/api-keys", &[]);
    assert_eq!(r.status, 401, "{}", r.text());

    let (status, _) = gw.terminate();
    assert!(status.success(), "{status:?}");
    // Shown once: no log line repeats it, and it is on disk only as a hash.
    assert_eq!(gw.stderr().matches(admin.as_str()).count(), 1);
    assert!(!env.persisted().contains(&admin));

    // The bootstrap is audited, by the tool itself.
    let events = all_events(&env);
    let issued = events_for(&events, "issue", id);
    assert_eq!(issued.len(), 1, "{events:?}");
    assert_eq!(issued[0]["actor"], "system:xai-keys");
    assert_eq!(issued[0]["scope"], "admin");
    assert_eq!(issued[0]["label"], AUTO_LABEL);

    // A second start on the same store prints nothing and writes nothing; the key still works.
    let gw = env.serve(&[], &[]);
    let err = gw.stderr();
    assert!(!err.contains("FIRST ADMIN KEY"), "{err}");
    assert!(printed_keys(&err).is_empty(), "{err}");
    let r = gw.get("/admin/api-keys", &[("X-Admin-Token", &admin)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["store"].as_object().unwrap().len(), 1);
    assert_eq!(all_events(&env).len(), events.len());
}

#[test]
fn no_auto_bootstrap_prints_no_key_and_warns() {
    let env = Env::new();
    let gw = env.serve(&["--no-auto-bootstrap"], &[]);
    let err = gw.stderr();
    assert!(!err.contains("FIRST ADMIN KEY"), "{err}");
    assert!(printed_keys(&err).is_empty(), "{err}");
    gw.wait_for_log("the auto-bootstrap-off warning", |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("auto-bootstrap is off"))
    });
    let r = gw.get("/admin/api-keys", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(env.ids().is_empty());
    assert!(all_events(&env).is_empty());
}

#[test]
fn bootstrap_secret_from_the_environment_is_the_admin_token_and_is_never_printed() {
    let env = Env::new();
    let secret = "env-bootstrap-secret-0123456789abcdefXYZ";
    let vars = [("XAI_BOOTSTRAP_ADMIN_KEY", secret)];
    let mut gw = env.serve(&[], &vars);
    let err = gw.stderr();
    assert!(!err.contains("FIRST ADMIN KEY"), "{err}");
    assert!(printed_keys(&err).is_empty(), "{err}");
    let registered = gw.wait_for_log("the bootstrap line", |v| {
        v["message"] == "admin key from XAI_BOOTSTRAP_ADMIN_KEY registered"
    });
    assert_eq!(registered["created"], true, "{registered}");

    for header in [
        ("X-Admin-Token", secret.to_string()),
        ("Authorization", format!("Admin {secret}")),
    ] {
        let r = gw.get("/admin/api-keys", &[(header.0, &header.1)]);
        assert_eq!(r.status, 200, "{}: {}", header.0, r.text());
        let v = r.json();
        let listed = v["store"].as_object().unwrap();
        assert_eq!(listed.len(), 1, "{v}");
        assert_eq!(listed.values().next().unwrap()["scope"], "admin");
    }
    let (status, _) = gw.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!gw.stderr().contains(secret), "the secret was logged");
    assert!(!env.persisted().contains(secret));
    assert_eq!(all_events(&env).len(), 1);

    // Idempotent: a restart with the same secret registers nothing new.
    let gw = env.serve(&[], &vars);
    let again = gw.wait_for_log("the bootstrap line", |v| {
        v["message"] == "admin key from XAI_BOOTSTRAP_ADMIN_KEY registered"
    });
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(all_events(&env).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// CLI changes reach a running gateway

#[test]
fn cli_revoke_is_refused_by_a_running_gateway_within_a_second() {
    let env = Env::new();
    let (key, id) = env.issue("auditor", "monitor");
    let (other, _) = env.issue("auditor", "other");
    let gw = env.serve(&[], &[]);
    assert_eq!(probe(&gw, &key).status, 200);

    env.ok(&["revoke", &id, "--reason", "test"]);
    let took = until_status(&gw, &key, 401, "revoke");
    eprintln!("revoke reached the gateway in {took:?}");
    let v = probe(&gw, &key).json();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["reason"], "unknown_key", "{v}");
    assert!(!v.to_string().contains(&key), "the refusal echoes the key");
    // Only that key: the gateway itself is fine.
    assert_eq!(probe(&gw, &other).status, 200);
}

#[test]
fn cli_disable_is_refused_and_enable_accepted_by_a_running_gateway_within_a_second() {
    let env = Env::new();
    let (key, id) = env.issue("auditor", "monitor");
    let gw = env.serve(&[], &[]);
    assert_eq!(probe(&gw, &key).status, 200);

    env.ok(&["disable", &id]);
    until_status(&gw, &key, 403, "disable");
    let v = probe(&gw, &key).json();
    assert_eq!(v["reason"], "disabled", "{v}");

    env.ok(&["enable", &id]);
    until_status(&gw, &key, 200, "enable");
}

#[test]
fn cli_issued_key_is_accepted_by_a_running_gateway_within_a_second() {
    let env = Env::new();
    env.issue("admin", "first");
    let gw = env.serve(&[], &[]);

    let (auditor, _) = env.issue("auditor", "new-monitor");
    until_status(&gw, &auditor, 200, "issue auditor");
    let (admin, admin_id) = env.issue("admin", "new-admin");
    let r = poll(PROPAGATION, || {
        let r = gw.get("/admin/api-keys", &[("X-Admin-Token", &admin)]);
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("new admin key refused; stderr:\n{}", gw.stderr()));
    assert!(r.json()["store"].get(&admin_id).is_some());
}

#[test]
fn cli_rotate_with_grace_keeps_old_and_new_keys_working() {
    let env = Env::new();
    let (old, id) = env.issue("auditor", "monitor");
    let gw = env.serve(&[], &[]);
    assert_eq!(probe(&gw, &old).status, 200);

    let v = env.ok(&["rotate", &id, "--grace", "1h"]);
    let new = v["api_key"].as_str().unwrap().to_string();
    let new_id = v["key_id"].as_str().unwrap().to_string();
    until_status(&gw, &new, 200, "rotate (new key)");
    assert_eq!(probe(&gw, &old).status, 200, "the old key lost its grace");

    // Without grace the replaced key stops at once.
    let v = env.ok(&["rotate", &new_id]);
    let newest = v["api_key"].as_str().unwrap().to_string();
    until_status(&gw, &newest, 200, "rotate (newest key)");
    until_status(&gw, &new, 401, "rotate without grace (replaced key)");
    assert_eq!(probe(&gw, &old).status, 200, "unrelated grace key");
}

// ---------------------------------------------------------------------------------------------
// HTTP changes reach the CLI

#[test]
fn keys_issued_and_revoked_over_http_show_in_the_cli_with_the_http_actor() {
    let env = Env::new();
    let (admin, admin_id) = env.issue("admin", "ops");
    let gw = env.serve(&[], &[]);
    let auth = [("X-Admin-Token", admin.as_str())];

    let r = gw.request(
        "POST",
        "/admin/api-keys",
        &auth,
        Some(r#"{"label": "via-http", "scope": "operator", "expires_in_days": 3}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let key = v["api_key"].as_str().unwrap().to_string();
    let id = v["key_id"].as_str().unwrap().to_string();
    assert_eq!(v["scope"], "operator", "{v}");
    // Usable at once through this gateway.
    assert_eq!(probe(&gw, &key).status, 200);

    let listed = env.ok(&["list"]);
    assert_eq!(listed[&id]["label"], "via-http", "{listed}");
    assert_eq!(listed[&id]["scope"], "operator", "{listed}");
    assert_eq!(listed[&id]["state"], "active", "{listed}");
    let actor = format!("http:{admin_id}@127.0.0.1");
    let events = all_events(&env);
    let issued = events_for(&events, "issue", &id);
    assert_eq!(issued.len(), 1, "{events:?}");
    assert_eq!(issued[0]["actor"], actor.as_str());
    assert!(!env.persisted().contains(&key));

    let r = gw.request("DELETE", &format!("/admin/api-keys/{id}"), &auth, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], true);
    assert!(!env.ids().contains(&id));
    assert!(env.ids().contains(&admin_id));
    let events = all_events(&env);
    let revoked = events_for(&events, "revoke", &id);
    assert_eq!(revoked.len(), 1, "{events:?}");
    assert_eq!(revoked[0]["actor"], actor.as_str());
    assert_eq!(probe(&gw, &key).status, 401);
    // A second revoke over HTTP: 404, nothing audited.
    let r = gw.request("DELETE", &format!("/admin/api-keys/{id}"), &auth, None);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["code"], "not_found");
    assert_eq!(all_events(&env).len(), events.len());
}

// ---------------------------------------------------------------------------------------------
// Last use

#[test]
fn last_use_is_flushed_on_sigterm_and_guards_revoke_if_idle() {
    let env = Env::new();
    let (key, id) = env.issue("auditor", "monitor");
    let (_, idle) = env.issue("auditor", "idle");
    // No periodic flush during the test: what `list` shows was written on shutdown.
    let mut gw = env.serve(&[], &[("XAI_USAGE_FLUSH_SECS", "3600")]);
    let before = xai_keys_core::now_epoch();
    for _ in 0..3 {
        assert_eq!(probe(&gw, &key).status, 200);
    }
    let after = xai_keys_core::now_epoch();

    // `terminate` fails the test if the exit takes longer than GATEWAY_STOP (5 s).
    let (status, took) = gw.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?} after {took:?}; stderr:\n{}",
        gw.stderr()
    );

    let listed = env.ok(&["list"]);
    let u = &listed[&id];
    let last = u["last_used"].as_f64().unwrap_or_else(|| panic!("{u}"));
    assert!(
        last >= before - 1.0 && last <= after + 1.0,
        "{last} not in [{before}, {after}]"
    );
    assert_eq!(u["use_count"], 3, "{u}");
    assert_eq!(u["last_client"], "127.0.0.1", "{u}");
    assert_eq!(u["last_route"], "/admin/api-key-events", "{u}");
    assert_eq!(listed[&idle]["use_count"], 0, "{listed}");
    assert_eq!(listed[&idle]["last_used"], Value::Null, "{listed}");

    let err = env.fails(&["revoke", &id, "--if-idle", "15m"], 1);
    let e = error_json(&err);
    assert_eq!(e["error"], "recently_used", "{e}");
    assert!(e["message"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    assert!(env.ids().contains(&id));

    let idle_for = xai_keys_core::now_epoch() - last;
    if idle_for < 1.2 {
        std::thread::sleep(Duration::from_secs_f64(1.2 - idle_for));
    }
    let v = env.ok(&["revoke", &id, "--if-idle", "1s"]);
    assert_eq!(v["revoked"], true, "{v}");
    assert!(!env.ids().contains(&id));
}

// ---------------------------------------------------------------------------------------------
// Configuration errors

/// serve ARGS, environment, parts the error message must contain.
type ConfigCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn configuration_errors_fail_fast_with_exit_1_naming_the_problem() {
    let policies = tempfile::tempdir().unwrap();
    let bad_policy = policies.path().join("bad-policy.toml");
    std::fs::write(
        &bad_policy,
        "default_read = \"public\"\ndefault_write = \"user\"\n\n[[route]]\npath = \"/send\"\naccess = \"superuser\"\n",
    )
    .unwrap();
    let bad_policy = bad_policy.to_str().unwrap();
    let cases: &[ConfigCase] = &[
        (&["--listen", "nonsense"], &[], &["--listen", "nonsense"]),
        (
            &[],
            &[("XAI_API_AUTH_REQUIRED", "maybe")],
            &["XAI_API_AUTH_REQUIRED", "maybe"],
        ),
        (
            &[],
            &[("XAI_UPSTREAM_URL", "https://x")],
            &["https://x", "scheme \"https\" is not supported"],
        ),
        (
            &["--upstream", "https://x"],
            &[],
            &["https://x", "not supported"],
        ),
        (
            &["--policy", "/nonexistent.toml"],
            &[],
            &["/nonexistent.toml"],
        ),
        (
            &["--policy", bad_policy],
            &[],
            &[bad_policy, "unknown access \"superuser\""],
        ),
        (
            &[],
            &[("XAI_STORE_POLL_MS", "0")],
            &["XAI_STORE_POLL_MS", "\"0\""],
        ),
        (
            &[],
            &[("XAI_LOG", "xai_keys=verbose")],
            &["XAI_LOG", "not a log filter"],
        ),
    ];
    for (args, vars, expect) in cases {
        // A brand-new store each time: a refused start must not bootstrap or write anything.
        let env = Env::new();
        let message = refused_to_start(&env, args, vars);
        for part in *expect {
            assert!(
                message.contains(part),
                "serve {args:?} {vars:?}: message lacks {part:?}: {message}"
            );
        }
        assert!(
            env.nothing_created(),
            "serve {args:?} {vars:?} failed but wrote the store: {message}"
        );
    }
}

#[test]
fn a_listen_address_in_use_is_refused_before_any_bootstrap() {
    let env = Env::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let message = refused_to_start(&env, &["--listen", &addr], &[]);
    assert!(message.contains(&addr), "{message}");
    // Nothing generated for a start that failed: the next good start still bootstraps.
    assert!(env.nothing_created(), "{message}");
    drop(taken);
    let gw = env.serve(&[], &[]);
    assert_eq!(printed_keys(&gw.stderr()).len(), 1, "{}", gw.stderr());
}

#[test]
fn a_store_with_invalid_json_is_refused_and_left_untouched() {
    let Some(env) = Env::file_only() else { return };
    let dir = env.store.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o700);
    let torn: &[u8] = b"{\"0123\": {\"label\": \"half";
    std::fs::write(&env.store, torn).unwrap();
    chmod(&env.store, 0o600);
    let location = env.store.display().to_string();
    for args in [&[][..], &["--no-auto-bootstrap"]] {
        let message = refused_to_start(&env, args, &[]);
        assert!(message.contains(&location), "{args:?}: {message}");
        assert_eq!(std::fs::read(&env.store).unwrap(), torn, "{args:?}");
    }
    let message = refused_to_start(
        &env,
        &[],
        &[(
            "XAI_BOOTSTRAP_ADMIN_KEY",
            "env-bootstrap-secret-0123456789abcdefXYZ",
        )],
    );
    assert!(message.contains(&location), "{message}");
    assert_eq!(std::fs::read(&env.store).unwrap(), torn);
    assert!(!env.log().exists(), "a refused start wrote an audit log");
}

// ---------------------------------------------------------------------------------------------
// Policy, auth-off, upstream errors

#[test]
fn print_default_policy_output_is_a_policy_serve_accepts() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["serve", "--print-default-policy"])
        .timeout(FAIL_FAST)
        .output()
        .unwrap();
    assert_exit(&out, 0, &["serve", "--print-default-policy"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[[route]]"), "{text}");
    assert!(env.nothing_created(), "printing wrote a store");

    let file = env.dir.path().join("policy.toml");
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();
    let gw = env.serve(&["--policy", file, "--no-auto-bootstrap"], &[]);
    let start = gw.wait_for_log("the starting line", |v| v["message"] == "starting gateway");
    assert_eq!(start["policy"], file, "{start}");
    assert!(start["rules"].as_u64().unwrap() > 0, "{start}");
    let r = gw.get("/health", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // Same decisions as the built-in policy: a user route needs a key.
    let r = gw.get(USER_ROUTE, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn auth_off_warns_at_startup_and_the_admin_api_still_needs_credentials() {
    let env = Env::new();
    env.issue("admin", "ops");
    let gw = env.serve(&[], &[("XAI_API_AUTH_REQUIRED", "0")]);
    let warning = gw.wait_for_log("the auth-off warning", |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("XAI_API_AUTH_REQUIRED=0"))
    });
    assert!(
        warning["message"].as_str().unwrap().contains("OPEN"),
        "{warning}"
    );

    for (method, path, body) in [
        ("GET", "/admin/api-keys", None),
        ("POST", "/admin/api-keys", Some(r#"{"label": "sneaky"}"#)),
        ("GET", "/admin/api-key-events", None),
        ("GET", "/api/v2/admin/api-keys", None),
    ] {
        let r = gw.request(method, path, &[], body);
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["code"], "admin_unauthorized", "{v}");
    }
    assert_eq!(env.ids().len(), 1, "a key was issued without credentials");
    // What the flag does open: user routes pass authentication (then: no upstream).
    let r = gw.get(USER_ROUTE, &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "no_upstream");
}

#[test]
fn unreachable_upstream_is_a_quick_502_upstream_unavailable() {
    let env = Env::new();
    let (key, _) = env.issue("user", "wallet");
    // A port nothing listens on: bound, then released.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = env.serve(&["--upstream", &upstream], &[]);

    let started = Instant::now();
    let r = gw.get(USER_ROUTE, &[("X-API-Key", &key)]);
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(took < Duration::from_secs(3), "502 took {took:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], "upstream_unavailable", "{v}");
    assert!(!r.text().contains(&key));
    // Authentication still comes first.
    let r = gw.get(USER_ROUTE, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    // The gateway's own routes do not need the node.
    let r = gw.get("/health", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], upstream.as_str());
}

#[test]
fn no_upstream_is_a_503_no_upstream() {
    let env = Env::new();
    let (key, _) = env.issue("user", "wallet");
    let gw = env.serve(&[], &[]);
    let r = gw.get(USER_ROUTE, &[("X-API-Key", &key)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], "no_upstream", "{v}");
    let r = gw.request("POST", "/send", &[("X-API-Key", &key)], Some("{}"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "no_upstream");
}
