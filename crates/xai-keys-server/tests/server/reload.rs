//! Changes made by "another process" (a second `FileStore` on the same path, as the CLI) reach a
//! running gateway within a second, and the gateway never writes a stale view back.

use std::time::{Duration, Instant};

use serde_json::json;
use xai_keys_core::ops::{KeyManager, RotateRequest};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;
use xai_keys_core::store::KeyStore;

use crate::common::*;

/// The propagation bound the issue sets.
const WITHIN: Duration = Duration::from_secs(1);

/// Polls `GET /wallet/x` (a user route every scope may read) with `k` until its status is
/// `want` (503 `no_upstream` = authenticated); returns how long that took.
async fn until_status(h: &NetHarness, k: &Key, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let r = h.send(get("/wallet/x").key(k)).await;
        if r.status.as_u16() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "gave up waiting for {want}: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_a_running_gateway_within_a_second() {
    let h = NetHarness::start(|_| {}).await;
    let cli_store = open_store(&h.path);
    let cli = KeyManager::new(cli_store.as_ref(), policy());
    let now = h.clock.now();
    let (user, op) = (h.keys.user.clone(), h.keys.operator.clone());
    // 503 no_upstream = authenticated.
    h.send(post("/send").key(&user))
        .await
        .err(503, "no_upstream");

    // Revoke.
    let t = Instant::now();
    cli.revoke(&user.id, Some("rotated out"), &cli_actor(), now)
        .unwrap();
    until_status(&h, &user, 401).await;
    let took = t.elapsed();
    assert!(took < WITHIN, "revocation took {took:?}");

    // Disable, then enable.
    let t = Instant::now();
    cli.set_disabled(&op.id, true, &cli_actor(), now).unwrap();
    until_status(&h, &op, 403).await;
    assert!(t.elapsed() < WITHIN, "disable took {:?}", t.elapsed());
    let r = h.send(post("/send").key(&op)).await;
    r.denied(403, "disabled");
    let t = Instant::now();
    cli.set_disabled(&op.id, false, &cli_actor(), now).unwrap();
    until_status(&h, &op, 503).await;
    assert!(t.elapsed() < WITHIN, "enable took {:?}", t.elapsed());

    // Issue.
    let t = Instant::now();
    let k = issue(
        cli_store.as_ref(),
        Scope::User,
        "from the cli",
        TtlRequest::Default,
        now,
    );
    h.net.secrets.add(&k.secret);
    until_status(&h, &k, 503).await;
    assert!(t.elapsed() < WITHIN, "issue took {:?}", t.elapsed());

    // The gateway's listing and events read the store: the CLI's changes are there.
    let list = h
        .send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    assert!(list["store"].get(&k.id).is_some());
    assert!(list["store"].get(&user.id).is_none());
    let ev = h
        .send(get("/admin/api-key-events?action=revoke").admin(&h.keys.admin))
        .await
        .ok(200);
    let ev = ev["events"].as_array().unwrap().clone();
    assert_eq!(ev.len(), 1);
    assert!(ev[0]["actor"].as_str().unwrap().starts_with("cli:"));
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_rotation_with_grace_reaches_a_running_gateway() {
    let h = NetHarness::start(|_| {}).await;
    let cli_store = open_store(&h.path);
    let cli = KeyManager::new(cli_store.as_ref(), policy());
    let old = h.keys.user.clone();
    let t = Instant::now();
    let rot = cli
        .rotate(
            &old.id,
            RotateRequest {
                grace_secs: HOUR,
                ..Default::default()
            },
            &cli_actor(),
            h.clock.now(),
        )
        .unwrap();
    let new = Key {
        secret: rot.new.plaintext.expose().to_string(),
        id: rot.new.info.key_id.to_string(),
    };
    h.net.secrets.add(&new.secret);
    until_status(&h, &new, 503).await;
    assert!(t.elapsed() < WITHIN, "rotation took {:?}", t.elapsed());
    // During the grace period both keys work.
    until_status(&h, &old, 503).await;
    h.clock.advance(HOUR + 1.0);
    h.send(post("/send").key(&old)).await.denied(403, "expired");
    until_status(&h, &new, 503).await;
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_cli_issues_interleave_without_losing_keys() {
    let h = NetHarness::start(|_| {}).await;
    let path = h.path.clone();
    let now = h.clock.now();
    // The CLI issues from its own thread while the gateway issues over HTTP.
    let cli = std::thread::spawn(move || {
        let store = open_store(&path);
        (0..12)
            .map(|i| {
                issue(
                    store.as_ref(),
                    Scope::User,
                    &format!("cli-{i}"),
                    TtlRequest::Default,
                    now,
                )
            })
            .collect::<Vec<_>>()
    });
    let mut gw_keys = Vec::new();
    for i in 0..12 {
        let v = h
            .send(
                post("/admin/api-keys")
                    .admin(&h.keys.admin)
                    .json(&json!({"label": format!("gw-{i}")})),
            )
            .await
            .ok(201);
        gw_keys.push(Key {
            secret: v["api_key"].as_str().unwrap().into(),
            id: v["key_id"].as_str().unwrap().into(),
        });
    }
    let cli_keys = tokio::task::spawn_blocking(move || cli.join().unwrap())
        .await
        .unwrap();
    for k in &cli_keys {
        h.net.secrets.add(&k.secret);
    }
    // Strictly alternating, too.
    let cli_store = open_store(&h.path);
    let mut alternating = Vec::new();
    for i in 0..5 {
        alternating.push(issue(
            cli_store.as_ref(),
            Scope::User,
            &format!("alt-cli-{i}"),
            TtlRequest::Default,
            now,
        ));
        let v = h
            .send(post("/admin/api-keys").admin(&h.keys.admin))
            .await
            .ok(201);
        alternating.push(Key {
            secret: v["api_key"].as_str().unwrap().into(),
            id: v["key_id"].as_str().unwrap().into(),
        });
    }
    for k in &alternating {
        h.net.secrets.add(&k.secret);
    }
    let all: Vec<&Key> = gw_keys
        .iter()
        .chain(&cli_keys)
        .chain(&alternating)
        .chain(h.keys.all())
        .collect();
    let fresh = open_store(&h.path);
    let snap = fresh.load(now).unwrap();
    assert!(snap.integrity.is_consistent(), "{:?}", snap.integrity);
    assert_eq!(snap.keys.len(), all.len());
    for k in &all {
        assert!(snap.keys.contains_key(&k.key_id()), "key {} lost", k.id);
    }
    // Each was audited exactly once.
    let ev = fresh
        .events(&xai_keys_core::audit::EventQuery {
            limit: 1000,
            action: Some("issue".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ev.events.len(), all.len());
    // And every one of them authenticates at the gateway.
    for k in &all {
        until_status(&h, k, 503).await;
    }
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_usage_and_stops_serving() {
    let h = NetHarness::start(|c| c.usage_flush = Duration::from_secs(3600)).await;
    let u = h.keys.user.clone();
    for _ in 0..4 {
        h.send(post("/send").key(&u)).await.err(503, "no_upstream");
    }
    assert!(!h.store.usage().unwrap().contains_key(&u.id));
    let addr = h.gw.addr;
    let NetHarness { gw, store, .. } = h;
    gw.shutdown().await;
    let usage = store.usage().unwrap();
    assert_eq!(usage[&u.id].count, 4);
    assert_eq!(usage[&u.id].last_route, "/send");
    assert_eq!(usage[&u.id].last_client, "127.0.0.1");
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_flushed_periodically_while_running() {
    let h = NetHarness::start(|c| c.usage_flush = Duration::from_millis(100)).await;
    let u = h.keys.user.clone();
    h.send(post("/send").key(&u)).await.err(503, "no_upstream");
    let store = h.store.clone();
    wait_until("a periodic usage flush", || {
        let seen = store
            .usage()
            .ok()
            .and_then(|m| m.get(&u.id).map(|e| e.count));
        async move { seen == Some(1) }
    })
    .await;
    h.gw.shutdown().await;
}
