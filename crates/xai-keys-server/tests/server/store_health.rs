//! Store problems while running: an unreadable store keeps the last good index serving and
//! refuses changes; a store edited outside xai-keys applies restrictions only; a gateway does
//! not start on a store that does not match its log.

use serde_json::{Value, json};
use xai_keys_core::PlainToken;
use xai_keys_server::Gateway;

use crate::common::*;

async fn wait_health(h: &Harness, status: u16, store_status: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (s, v) = h.health().await;
        if s == status && v["store"]["status"] == store_status {
            return v;
        }
        assert!(
            started.elapsed() < WAIT,
            "/health never became {status} with store {store_status}: {s} {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn metric(h: &Harness, name: &str) -> String {
    let text = h.send(get("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len() + 1..].trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_keeps_the_last_good_index_and_refuses_changes() {
    let h = Harness::new();
    let (_, v) = h.health().await;
    assert_eq!(v["store"]["status"], "ok");
    assert_eq!(v["status"], "ok");
    assert_eq!(metric(&h, "xai_keys_store_ok").await, "1");
    let original = std::fs::read(&h.path).unwrap();

    std::fs::write(&h.path, b"\x00\x01 this is not JSON {{{").unwrap();
    let v = wait_health(&h, 503, "unreadable").await;
    assert_eq!(v["success"], false);
    assert!(
        v["store"]["problem"]
            .as_str()
            .unwrap()
            .contains("last good index"),
        "{v}"
    );
    assert_eq!(metric(&h, "xai_keys_store_unreadable").await, "1");
    assert_eq!(metric(&h, "xai_keys_store_ok").await, "0");

    // Authentication keeps working on the last good index.
    h.send(post("/send").key(&h.keys.user))
        .await
        .passed_to_upstream();
    h.send(post("/send").h("x-api-key", "unknown-key-value-000"))
        .await
        .denied(401, "unknown_key");
    // Every change is refused while the store cannot be read.
    for resp in admin_writes_refused(&h).await {
        let msg = resp.err(503, "store_unavailable");
        assert!(msg.contains("unreadable"), "{msg}");
        assert!(resp.header("retry-after").is_some());
    }
    let a = &h.keys.admin;
    // Reads that need the store say so.
    h.send(get("/admin/api-keys").admin(a))
        .await
        .err(503, "store_unavailable");

    // Fixed: back to ok, and changes work again.
    std::fs::write(&h.path, &original).unwrap();
    let v = wait_health(&h, 200, "ok").await;
    assert_eq!(v["status"], "ok");
    assert!(v["store"]["problem"].is_null(), "{v}");
    assert!(v["store"]["failed_reloads"].as_u64().unwrap() >= 1);
    let k = h.issue_http(json!({"label": "after the fix"})).await;
    h.send(post("/send").key(&k)).await.passed_to_upstream();
    assert_eq!(metric(&h, "xai_keys_store_ok").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_band_edit_applies_removals_only() {
    let h = Harness::new();
    let text = std::fs::read_to_string(&h.path).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let m = v.as_object_mut().unwrap();
    // Remove the user key; add a forged admin key; re-enable nothing; extend nothing.
    assert!(m.remove(&h.keys.user.id).is_some());
    let forged = PlainToken::generate().unwrap();
    h.secrets.add(forged.expose());
    let mut rec = m[&h.keys.admin.id].clone();
    rec["label"] = json!("forged");
    m.insert(forged.key_id().to_string(), rec);
    // Widen the operator key to admin (a restriction-only reader must not take it).
    m.get_mut(&h.keys.operator.id).unwrap()["scope"] = json!("admin");
    std::fs::write(&h.path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let v = wait_health(&h, 503, "degraded").await;
    assert_eq!(v["store"]["integrity"], "mismatch", "{v}");
    assert!(
        v["store"]["problem"]
            .as_str()
            .unwrap()
            .contains("xai-keys verify"),
        "{v}"
    );
    assert_eq!(metric(&h, "xai_keys_store_degraded").await, "1");
    // The removal takes effect…
    h.send(post("/send").key(&h.keys.user))
        .await
        .denied(401, "unknown_key");
    // …the addition does not…
    let forged_key = Key {
        secret: forged.expose().to_string(),
        id: forged.key_id().to_string(),
    };
    h.send(get("/admin/api-keys").key(&forged_key))
        .await
        .denied(401, "unknown_key");
    // The listing shows the edited file, and says per key what the gateway enforces.
    let listed = h
        .send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(
        listed["store"][forged.key_id().as_str()]["accepted_by_gateway"],
        false,
        "{listed}"
    );
    assert_eq!(
        listed["store"][h.keys.admin.id.as_str()]["accepted_by_gateway"],
        true
    );
    // …and neither does the widened scope (a re-scoped key is dropped, not trusted).
    let r = h.send(get("/admin/anything").key(&h.keys.operator)).await;
    assert!(
        matches!(r.status.as_u16(), 401 | 403),
        "a widened scope is not honoured: {}",
        r.text()
    );
    // Untouched keys keep working; changes are refused.
    h.send(post("/send").key(&h.keys.auditor))
        .await
        .denied(403, "insufficient_scope");
    h.send(get("/wallet/x").key(&h.keys.auditor))
        .await
        .passed_to_upstream();
    h.send(post("/admin/api-keys").admin(&h.keys.admin))
        .await
        .err(503, "store_unavailable");
}

#[test]
fn startup_refuses_a_store_that_does_not_match_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = open_store(&path);
    let keys = Keys::issue(store.as_ref(), T0);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove(&keys.user.id);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let clock = TestClock::new(T0);
    let err = match Gateway::start(test_config(), open_store(&path), clock.clock()) {
        Ok(_) => panic!("a gateway started on a store that does not match its log"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot be trusted"), "{err}");
    assert!(err.contains("xai-keys verify"), "{err}");

    // An unreadable store does not start either.
    std::fs::write(&path, b"garbage").unwrap();
    let err = match Gateway::start(test_config(), open_store(&path), clock.clock()) {
        Ok(_) => panic!("a gateway started on an unreadable store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot load the key store"), "{err}");

    // A brand-new (missing) store starts empty.
    let fresh = store_path(&dir.path().join("new"));
    let gw = Gateway::start(test_config(), open_store(&fresh), clock.clock()).unwrap();
    assert_eq!(gw.state().index.load().len(), 0);
}
