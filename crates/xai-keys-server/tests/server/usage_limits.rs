//! Rate limits (admin routes, failed authentications, trusted proxies) and last-use tracking.

use serde_json::json;
use xai_keys_core::store::KeyStore;
use xai_keys_server::ratelimit::Limit;

use crate::common::*;

fn limit(max: u32) -> Limit {
    Limit {
        max,
        window_secs: 60.0,
    }
}

#[track_caller]
fn rate_limited(r: &Resp) -> u64 {
    let msg = r.err(429, "rate_limited");
    assert!(msg.contains("try again in"), "{msg}");
    let secs: u64 = r
        .header("retry-after")
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(r.json()["retry_after"].as_u64(), Some(secs));
    secs
}

#[tokio::test]
async fn admin_routes_are_limited_per_client_and_route() {
    let h = Harness::with(|c| c.admin_limit = limit(3));
    let a = &h.keys.admin;
    for _ in 0..3 {
        h.send(get("/admin/api-keys").admin(a)).await.ok(200);
    }
    let r = h.send(get("/admin/api-keys").admin(a)).await;
    let wait = rate_limited(&r);
    assert_eq!(wait, 60);
    // Another route of the same client has its own budget…
    h.send(get("/admin/api-key-events").admin(a)).await.ok(200);
    // …and so does another client on the same route.
    h.send_from(peer("192.0.2.10:5000"), get("/admin/api-keys").admin(a))
        .await
        .ok(200);
    // Proxied admin routes are limited the same way.
    for _ in 0..3 {
        h.send(get("/admin/peers").admin(a))
            .await
            .passed_to_upstream();
    }
    rate_limited(&h.send(get("/admin/peers").admin(a)).await);
    // Anonymous traffic does not spend the admin's budget (refused before the limiter).
    for _ in 0..5 {
        h.send(get("/admin/api-key-events"))
            .await
            .denied(401, "missing_credentials");
    }
    h.send(get("/admin/api-key-events").admin(a)).await.ok(200);
    // The window passes.
    h.clock.advance(30.0);
    assert_eq!(
        rate_limited(&h.send(get("/admin/api-keys").admin(a)).await),
        30
    );
    h.clock.advance(31.0);
    h.send(get("/admin/api-keys").admin(a)).await.ok(200);
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client() {
    let h = Harness::with(|c| c.auth_failure_limit = limit(3));
    let u = &h.keys.user;
    // Scope refusals and missing credentials are not guesses.
    for _ in 0..5 {
        h.send(post("/send"))
            .await
            .denied(401, "missing_credentials");
        h.send(post("/admin/emergency/pause").key(u))
            .await
            .denied(403, "insufficient_scope");
    }
    h.send(post("/send").key(u)).await.passed_to_upstream();
    // Three guesses…
    let mut bad = u.secret.clone();
    bad.pop();
    bad.push('!');
    h.send(post("/send").h("x-api-key", "guess-number-one-0000"))
        .await
        .denied(401, "unknown_key");
    h.send(post("/send").h("x-api-key", &bad))
        .await
        .denied(401, "malformed_key");
    h.send(get("/admin/api-keys").h("x-admin-token", "guess-number-three-00"))
        .await
        .denied(401, "unknown_key");
    // …and even a then-valid key from that client is refused until the window passes.
    rate_limited(&h.send(post("/send").key(u)).await);
    rate_limited(&h.send(get("/admin/api-keys").admin(&h.keys.admin)).await);
    // Public routes stay open; other clients are unaffected.
    assert_eq!(h.send(get("/health")).await.status.as_u16(), 200);
    h.send_from(peer("192.0.2.20:1"), post("/send").key(u))
        .await
        .passed_to_upstream();
    h.clock.advance(59.0);
    rate_limited(&h.send(post("/send").key(u)).await);
    h.clock.advance(2.0);
    h.send(post("/send").key(u)).await.passed_to_upstream();
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let h = Harness::with(|c| {
        c.admin_limit = limit(1);
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    });
    let a = &h.keys.admin;
    let proxy = peer("10.0.0.5:4000");
    let direct = peer("198.51.100.7:4000");
    let via = |ip: &str| get("/admin/api-keys").admin(a).h("x-forwarded-for", ip);
    // Behind the trusted proxy, each forwarded client has its own budget.
    h.send_from(proxy, via("203.0.113.1")).await.ok(200);
    h.send_from(proxy, via("203.0.113.2")).await.ok(200);
    rate_limited(&h.send_from(proxy, via("203.0.113.1")).await);
    // Right to left, skipping trusted hops.
    rate_limited(&h.send_from(proxy, via("203.0.113.2, 10.1.2.3")).await);
    // A direct client cannot choose its identity with the header.
    h.send_from(direct, via("203.0.113.3")).await.ok(200);
    rate_limited(&h.send_from(direct, via("203.0.113.4")).await);
    rate_limited(&h.send_from(direct, get("/admin/api-keys").admin(a)).await);
    // The forwarded address is the one recorded as the key's last client.
    let r = h
        .send_from(
            proxy,
            get("/admin/api-key-events")
                .admin(a)
                .h("x-forwarded-for", "203.0.113.9"),
        )
        .await;
    r.ok(200);
    let st = h.gateway.state();
    let usage = st.usage.snapshot();
    assert_eq!(usage[&a.id].last_client, "203.0.113.9");
    // A malformed chain is not believed: the proxy itself is the client.
    h.send_from(proxy, via("not-an-ip")).await.ok(200);
    rate_limited(&h.send_from(proxy, via("also, not an ip")).await);
}

#[tokio::test]
async fn requests_record_last_use_shown_in_the_listing() {
    let h = Harness::new();
    let u = &h.keys.user;
    let before = h.listing().await[&u.id].clone();
    assert_eq!(before["use_count"], 0);
    assert!(before["last_used"].is_null());
    assert!(before["last_client"].is_null());
    h.send(post("/send").key(u)).await.passed_to_upstream();
    h.clock.advance(5.0);
    h.send_from(peer("192.0.2.33:1234"), get("/wallet/abc").key(u))
        .await
        .passed_to_upstream();
    // A refused request is not a use.
    h.send(post("/admin/emergency/pause").key(u))
        .await
        .denied(403, "insufficient_scope");
    let e = h.listing().await[&u.id].clone();
    assert_eq!(e["use_count"], 2, "{e}");
    assert_eq!(e["last_used"].as_f64(), Some(T0 + 5.0), "{e}");
    assert_eq!(e["last_client"], "192.0.2.33", "{e}");
    assert_eq!(e["last_route"], "/wallet/*", "{e}");
    h.send(post("/send").key(u)).await.passed_to_upstream();
    let e = h.listing().await[&u.id].clone();
    assert_eq!(e["last_client"], "127.0.0.1", "{e}");
    assert_eq!(e["last_route"], "/send", "{e}");
}

#[tokio::test]
async fn revoke_if_idle_refuses_a_recently_used_key_and_names_its_client() {
    let h = Harness::new();
    let u = &h.keys.user;
    h.send_from(peer("192.0.2.44:999"), post("/send").key(u))
        .await
        .passed_to_upstream();
    h.clock.advance(60.0);
    let r = h
        .send(delete(&format!("/admin/api-keys/{}?if_idle=15m", u.id)).admin(&h.keys.admin))
        .await;
    let msg = r.err(409, "recently_used");
    assert!(msg.contains("192.0.2.44"), "{msg}");
    assert!(msg.contains("/send"), "{msg}");
    // Still there and working.
    h.send(post("/send").key(u)).await.passed_to_upstream();
    // A key never used is revoked under the same guard.
    let v = h
        .send(
            delete(&format!(
                "/admin/api-keys/{}?if_idle=15m&reason=ticket-42",
                h.keys.operator.id
            ))
            .admin(&h.keys.admin),
        )
        .await
        .ok(200);
    assert_eq!(v["revoked"], true);
    // Bad guards.
    for q in ["if_idle=soon", "if_idle=0", "if_idle=-5", "idle=15m"] {
        let r = h
            .send(delete(&format!("/admin/api-keys/{}?{q}", u.id)).admin(&h.keys.admin))
            .await;
        assert_eq!(r.status.as_u16(), 400, "{q}: {}", r.text());
    }
    // Once the key has been idle long enough, the guarded revoke goes through.
    h.clock.advance(16.0 * 60.0);
    h.send(delete(&format!("/admin/api-keys/{}?if_idle=15m", u.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    h.send(post("/send").key(u))
        .await
        .denied(401, "unknown_key");
    // The reason was audited.
    let ev = h
        .send(get("/admin/api-key-events?action=revoke").admin(&h.keys.admin))
        .await
        .ok(200);
    let ev = ev["events"].as_array().unwrap().clone();
    assert!(ev.iter().any(|e| e["reason"] == "ticket-42"), "{ev:?}");
}

#[tokio::test]
async fn stop_background_flushes_usage_to_the_sidecar() {
    let mut h = Harness::new();
    let u = h.keys.user.clone();
    for _ in 0..3 {
        h.send(post("/send").key(&u)).await.passed_to_upstream();
    }
    assert!(
        !h.store.usage().unwrap().contains_key(&u.id),
        "not flushed yet"
    );
    // A key issued and then revoked by the gateway is dropped from the sidecar.
    let gone = h.issue_http(json!({"label": "gone"})).await;
    h.send(post("/send").key(&gone)).await.passed_to_upstream();
    h.send(delete(&format!("/admin/api-keys/{}", gone.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    h.gateway.stop_background();
    let usage = h.store.usage().unwrap();
    let e = &usage[&u.id];
    assert_eq!(e.count, 3);
    assert_eq!(e.last_used, T0);
    assert_eq!(e.last_client, "127.0.0.1");
    assert_eq!(e.last_route, "/send");
    assert!(!usage.contains_key(&gone.id), "revoked keys are not kept");
    // Another process sees it (the CLI's `list`).
    let other = open_store(&h.path);
    assert_eq!(other.usage().unwrap()[&u.id].count, 3);
}

#[tokio::test]
async fn a_corrupt_usage_sidecar_loses_no_counts_and_blocks_only_guarded_revokes() {
    let h = Harness::new();
    let u = h.keys.user.clone();
    h.send(post("/send").key(&u)).await.passed_to_upstream();
    let usage_path = h.store.usage_path().to_path_buf();
    std::fs::write(&usage_path, b"{ not a usage file").unwrap();
    // The listing still answers, with this process's counts and a warning.
    let v = h
        .send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(v["store"][&u.id]["use_count"], 1, "{v}");
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("usage"), "{warnings}");
    // A guarded revoke cannot check its guard: refused, naming the file.
    let r = h
        .send(
            delete(&format!(
                "/admin/api-keys/{}?if_idle=1m",
                h.keys.operator.id
            ))
            .admin(&h.keys.admin),
        )
        .await;
    assert!(!r.status.is_success(), "{}", r.text());
    assert!(r.error().contains("usage file"), "{}", r.text());
    // A flush that fails keeps the counts; once the file is gone, the next flush writes them.
    h.send(post("/send").key(&u)).await.passed_to_upstream();
    let st = h.gateway.state();
    tokio::task::spawn_blocking({
        let st = st.clone();
        move || st.flush_usage()
    })
    .await
    .unwrap();
    if std::fs::read(&usage_path).unwrap() == b"{ not a usage file" {
        std::fs::remove_file(&usage_path).unwrap();
        tokio::task::spawn_blocking(move || st.flush_usage())
            .await
            .unwrap();
    }
    assert_eq!(
        h.store.usage().unwrap()[&u.id].count,
        2,
        "no use was dropped"
    );
    // Unguarded revokes never needed the statistics.
    h.send(delete(&format!("/admin/api-keys/{}", h.keys.operator.id)).admin(&h.keys.admin))
        .await
        .ok(200);
}

#[tokio::test]
async fn rate_limits_can_be_turned_off() {
    let h = Harness::with(|c| {
        c.rate_limit_enabled = false;
        c.admin_limit = limit(1);
        c.auth_failure_limit = limit(1);
    });
    for _ in 0..3 {
        h.send(get("/admin/api-keys").admin(&h.keys.admin))
            .await
            .ok(200);
        h.send(post("/send").h("x-api-key", "wrong-key-value-0000"))
            .await
            .denied(401, "unknown_key");
    }
    h.send(post("/send").key(&h.keys.user))
        .await
        .passed_to_upstream();
}

/// A use on its way to disk (the flush is writing) still counts for `?if_idle=`: it is in
/// neither the pending map nor the file at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_being_flushed_still_guards_revoke_if_idle() {
    let h = Harness::new();
    let u = h.keys.user.clone();
    h.send(post("/send").key(&u)).await.passed_to_upstream();
    // Hold the usage lock, as another gateway's flush would: our flush waits inside the write.
    let lock_path = {
        let mut p = h.store.usage_path().as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    let st = h.gateway.state();
    let flush = tokio::task::spawn_blocking(move || st.flush_usage());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!flush.is_finished(), "the flush waits for the lock");
    let r = h
        .send(delete(&format!("/admin/api-keys/{}?if_idle=15m", u.id)).admin(&h.keys.admin))
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text());
    assert_eq!(r.code(), "recently_used");
    lock.unlock().unwrap();
    flush.await.unwrap();
    assert_eq!(h.store.usage().unwrap()[&u.id].count, 1);
}

/// While the index is not the store's recorded state (here: the store file moved away), a flush
/// must not drop the history of keys that are only not served right now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_while_the_store_is_missing_keeps_every_key_history() {
    let h = Harness::new();
    let u = h.keys.user.clone();
    h.send(post("/send").key(&u)).await.passed_to_upstream();
    let st = h.gateway.state();
    let flush =
        |st: xai_keys_server::AppState| tokio::task::spawn_blocking(move || st.flush_usage());
    flush(st.clone()).await.unwrap();
    assert_eq!(h.store.usage().unwrap()[&u.id].count, 1);
    // One more use, then the store goes away before the next flush.
    h.send(post("/send").key(&h.keys.admin))
        .await
        .passed_to_upstream();
    let aside = h.dir.path().join("aside.json");
    std::fs::rename(&h.path, &aside).unwrap();
    let started = std::time::Instant::now();
    while h.gateway.state().index.health().is_ok() {
        assert!(
            started.elapsed() < WAIT,
            "the gateway noticed the missing store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    flush(st.clone()).await.unwrap();
    let usage = h.store.usage().unwrap();
    assert_eq!(usage[&u.id].count, 1, "history kept: {usage:?}");
    assert_eq!(
        usage[&h.keys.admin.id].count, 1,
        "new use written: {usage:?}"
    );
    std::fs::rename(&aside, &h.path).unwrap();
}
