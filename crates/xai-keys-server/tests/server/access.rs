//! The admin network allow-list (IPv4, IPv6, through a trusted proxy, file reloads) and the
//! emergency lockdown seen by a running gateway within a second, with its CRITICAL event.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use xai_keys_core::lockdown::{self, EngageLockdown};
use xai_keys_server::access::AdminNetworksSource;
use xai_keys_server::telemetry::EventLog;

use crate::common::*;

const FOLLOW: Duration = Duration::from_millis(20);

fn nets(list: &str) -> AdminNetworksSource {
    AdminNetworksSource::from_value(Some(list)).unwrap()
}

/// A harness whose security events go to `<tmp>/events.jsonl`.
fn with_events(f: impl FnOnce(&mut xai_keys_server::ServerConfig)) -> (Harness, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let events = t.path().join("events.jsonl");
    let h = Harness::with(|c| {
        c.telemetry.follow_interval = FOLLOW;
        c.telemetry.event_log = EventLog::File(events);
        f(c);
    });
    (h, t)
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_event(dir: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(what, || {
        found = events(dir).into_iter().find(|e| pred(e));
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    found.unwrap()
}

#[tokio::test]
async fn the_allow_list_fences_admin_routes_by_ipv4_ipv6_and_through_trusted_proxies() {
    let (h, ev) = with_events(|c| {
        c.admin_networks = nets("10.8.0.0/16,fd00:8::/48");
        c.trusted_proxies = vec!["192.0.2.10/32".parse().unwrap()];
    });
    let admin = h.keys.admin.clone();
    let list = || get("/admin/api-keys").admin(&admin);

    h.send_from(peer("10.8.1.1:4000"), list()).await.ok(200);
    h.send_from(peer("[fd00:8::5]:4000"), list()).await.ok(200);
    // An IPv4 client on an IPv6 socket (mapped address) is judged as IPv4.
    h.send_from(peer("[::ffff:10.8.9.9]:4000"), list())
        .await
        .ok(200);

    let outside = h.send_from(peer("203.0.113.5:4000"), list()).await;
    let msg = outside.err(403, "admin_network_refused");
    assert!(msg.contains("203.0.113.5"), "{msg}");
    h.send_from(peer("[fd00:9::5]:4000"), list())
        .await
        .err(403, "admin_network_refused");
    // Refused before credentials are looked at: no key, a wrong key, same answer.
    h.send_from(peer("203.0.113.5:4000"), get("/admin/api-keys"))
        .await
        .err(403, "admin_network_refused");
    // The whole of /admin, its spec included; not the node's routes or /health.
    h.send_from(peer("203.0.113.5:4000"), get("/admin/openapi.json"))
        .await
        .err(403, "admin_network_refused");
    h.send_from(peer("203.0.113.5:4000"), get("/health"))
        .await
        .ok(200);
    let user = h
        .send_from(peer("203.0.113.5:4000"), post("/send").key(&h.keys.user))
        .await;
    assert_ne!(user.status.as_u16(), 403, "{}", user.text());

    // Through the trusted proxy the forwarded client decides; a spoofed header from anyone
    // else changes nothing.
    let via = |xff: &str| list().h("x-forwarded-for", xff);
    h.send_from(peer("192.0.2.10:5000"), via("10.8.2.2"))
        .await
        .ok(200);
    h.send_from(peer("192.0.2.10:5000"), via("10.8.2.2, 203.0.113.9"))
        .await
        .err(403, "admin_network_refused");
    h.send_from(peer("203.0.113.7:5000"), via("10.8.2.2"))
        .await
        .err(403, "admin_network_refused");

    // Counted and reported (one event per client network a minute).
    assert_eq!(
        scrape_value(&h, "xai_admin_network_refusals_total{by=\"allow_list\"}").await,
        6.0
    );
    let e = wait_event(ev.path(), "an api_admin_network_refused event", |e| {
        e["event_type"] == "api_admin_network_refused" && e["details"]["client"] == "203.0.113.5"
    })
    .await;
    assert_eq!(e["severity"], "WARNING");
    assert_eq!(e["details"]["by"], "allow_list");
}

#[tokio::test]
async fn an_allow_list_file_is_reread_without_a_restart_and_a_bad_one_keeps_the_last() {
    let t = tempfile::tempdir().unwrap();
    let file: PathBuf = t.path().join("admin-networks");
    std::fs::write(&file, "10.8.0.0/16\n").unwrap();
    let h = Harness::with(|c| c.admin_networks = nets(file.to_str().unwrap()));
    let admin = h.keys.admin.clone();
    let from = |ip: &str| peer(&format!("{ip}:4000"));
    h.send_from(from("10.8.0.1"), get("/admin/api-keys").admin(&admin))
        .await
        .ok(200);
    h.send_from(from("10.9.0.1"), get("/admin/api-keys").admin(&admin))
        .await
        .err(403, "admin_network_refused");

    // The poller notices the change (SIGHUP does the same at once).
    std::fs::write(&file, "# moved the VPN\n10.9.0.0/16\n").unwrap();
    let st = h.gateway.state();
    wait_until("the new allow-list", || {
        let ok = st
            .access
            .check_admin_client("10.9.0.1".parse().unwrap())
            .is_ok();
        async move { ok }
    })
    .await;
    h.send_from(from("10.8.0.1"), get("/admin/api-keys").admin(&admin))
        .await
        .err(403, "admin_network_refused");
    assert_eq!(h.gateway.reload_admin_networks(), Ok(true));

    // Half-written: refused, the previous list stays, /admin/lockdown says why.
    std::fs::write(&file, "10.9.0.0/").unwrap();
    assert!(h.gateway.reload_admin_networks().is_err());
    let v = h
        .send_from(from("10.9.0.1"), get("/admin/lockdown").admin(&admin))
        .await
        .ok(200);
    assert!(v["admin_allow_list"]["problem"].is_string(), "{v}");
    assert_eq!(v["admin_allow_list"]["networks"], json!(["10.9.0.0/16"]));
}

#[tokio::test]
async fn a_lockdown_from_the_cli_reaches_a_running_gateway_within_a_second() {
    let (h, ev) = with_events(|c| c.auth_required = false);
    let admin = h.keys.admin.clone();
    // Before: auth is off for user routes (the request reaches the missing upstream).
    let r = h.send(post("/send")).await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    assert_eq!(scrape_value(&h, "xai_lockdown_active").await, 0.0);

    // The CLI's operation, on the store the gateway serves (another process would do the same).
    lockdown::engage(
        h.store.as_ref(),
        &EngageLockdown {
            reason: "suspected admin key leak".into(),
            ticket: "INC-9".into(),
            admin_networks: vec!["10.8.0.0/16".into()],
        },
        &cli_actor(),
        h.clock.now(),
    )
    .unwrap();
    let took = wait_until("keys required everywhere", || {
        let h = &h;
        async move { h.send(post("/send")).await.status.as_u16() == 401 }
    })
    .await;
    assert!(took < Duration::from_secs(1), "lockdown took {took:?}");

    // /admin/* only from the lockdown networks: loopback is not implied when networks are given.
    let r = h.send(get("/admin/api-keys").admin(&admin)).await;
    assert!(r.err(403, "admin_network_refused").contains("lockdown"));
    h.send_from(peer("10.8.4.4:4000"), get("/admin/api-keys").admin(&admin))
        .await
        .ok(200);
    let (_, health) = h.health().await;
    assert_eq!(health["lockdown"], true);
    assert_eq!(health["auth_required"], true);
    assert!(health.get("admin_networks").is_none(), "{health}");
    assert_eq!(scrape_value(&h, "xai_lockdown_active").await, 1.0);
    assert_eq!(
        scrape_value(&h, "xai_admin_network_refusals_total{by=\"lockdown\"}").await,
        1.0
    );

    // The CRITICAL event, from the audit line, whoever wrote it.
    let e = wait_event(ev.path(), "the lockdown_on event", |e| {
        e["details"]["action"] == "lockdown_on"
    })
    .await;
    assert_eq!(e["severity"], "CRITICAL");
    assert_eq!(e["details"]["ticket"], "INC-9");
    assert_eq!(e["details"]["admin_networks"], json!(["10.8.0.0/16"]));

    // Off: audited too, and the configured rules are back within a second.
    lockdown::release(h.store.as_ref(), "contained", &cli_actor(), h.clock.now()).unwrap();
    let took = wait_until("the lockdown lifted", || {
        let h = &h;
        async move { h.send(post("/send")).await.status.as_u16() == 503 }
    })
    .await;
    assert!(took < Duration::from_secs(1), "release took {took:?}");
    h.send(get("/admin/api-keys").admin(&admin)).await.ok(200);
    let e = wait_event(ev.path(), "the lockdown_off event", |e| {
        e["details"]["action"] == "lockdown_off"
    })
    .await;
    assert_eq!(e["severity"], "WARNING");
}

#[tokio::test]
async fn the_admin_api_turns_lockdown_on_and_off_and_refuses_bad_bodies() {
    let h = Harness::new();
    let admin = h.keys.admin.clone();
    let v = h
        .send(get("/admin/lockdown").key(&h.keys.auditor))
        .await
        .ok(200);
    assert_eq!(v["lockdown"]["active"], false);
    assert_eq!(v["admin_allow_list"]["restricted"], false);

    for (body, needle) in [
        (json!({}), "reason"),
        (
            json!({"reason": "x", "admin_networks": "10.0.0.0/8"}),
            "list",
        ),
        (
            json!({"reason": "x", "admin_networks": ["10.0.0.0/99"]}),
            "10.0.0.0/99",
        ),
        (json!({"reason": "x", "bogus": 1}), "bogus"),
    ] {
        let r = h
            .send(post("/admin/lockdown").admin(&admin).json(&body))
            .await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", r.text());
        assert!(r.error().contains(needle), "{body}: {}", r.text());
    }
    // Only admins turn it on; auditors may look.
    h.send(
        post("/admin/lockdown")
            .key(&h.keys.auditor)
            .json(&json!({"reason": "x"})),
    )
    .await
    .denied(403, "insufficient_scope");

    // On from loopback with no networks: loopback keeps /admin/*, at once on this gateway.
    let v = h
        .send(
            post("/admin/lockdown")
                .admin(&admin)
                .json(&json!({"reason": "drill", "ticket": "INC-1"})),
        )
        .await
        .ok(201);
    assert_eq!(
        v["lockdown"]["admin_networks"],
        json!(["127.0.0.0/8", "::1/128"])
    );
    assert!(h.gateway.state().access.lockdown_active());
    h.send(get("/admin/lockdown").admin(&admin)).await.ok(200);
    h.send_from(peer("10.1.1.1:80"), get("/admin/lockdown").admin(&admin))
        .await
        .err(403, "admin_network_refused");
    let log = std::fs::read_to_string(format!("{}.log", h.path.display())).unwrap();
    assert!(
        log.lines().last().unwrap().contains("\"lockdown_on\""),
        "{log}"
    );

    let v = h
        .send(delete("/admin/lockdown?reason=drill%20over").admin(&admin))
        .await
        .ok(200);
    assert_eq!(v["released"], true);
    assert!(!h.gateway.state().access.lockdown_active());
    let v = h
        .send(delete("/admin/lockdown").admin(&admin))
        .await
        .ok(200);
    assert_eq!(v["released"], false);
    h.send_from(peer("10.1.1.1:80"), get("/admin/lockdown").admin(&admin))
        .await
        .ok(200);
}

#[tokio::test]
async fn a_damaged_lockdown_file_fails_closed_to_loopback() {
    let h = Harness::with(|c| c.auth_required = false);
    let admin = h.keys.admin.clone();
    std::fs::write(format!("{}.lockdown", h.path.display()), b"{ half").unwrap();
    wait_until("the damaged file to count as a lockdown", || {
        let h = &h;
        async move { h.send(post("/send")).await.status.as_u16() == 401 }
    })
    .await;
    h.send(get("/admin/api-keys").admin(&admin)).await.ok(200);
    h.send_from(peer("10.8.0.1:4000"), get("/admin/api-keys").admin(&admin))
        .await
        .err(403, "admin_network_refused");
    let v = h.send(get("/admin/lockdown").admin(&admin)).await.ok(200);
    assert!(
        v["lockdown"]["problem"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{v}"
    );
    // Turning it off clears it.
    h.send(delete("/admin/lockdown?reason=cleanup").admin(&admin))
        .await
        .ok(200);
    assert!(!h.gateway.state().access.lockdown_active());
}
