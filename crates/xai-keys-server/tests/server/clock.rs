//! Time, injected: key expiry, rotation grace periods, change windows, the peer skew window and
//! the nonce memory, each tested exactly at its boundary (half-open intervals: a key is
//! refused from its expiry on, a window is closed from its end on, a peer timestamp exactly
//! `skew` seconds away passes) and across clock jumps, backward above all: a revoked key never
//! comes back, a replayed gossip request is refused even after the clock was stepped back
//! past the nonce memory, and the rate limiters and webhook workers neither panic nor block.
//!
//! Every test drives the gateway's clock ([`TestClock`]); none sleeps for the time it tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use xai_keys_core::audit::EventQuery;
use xai_keys_core::ops::KeyManager;
use xai_keys_core::peer::{KeyRing, PeerKey, RequestParts, VerifyPolicy, sign_peer_request};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;
use xai_keys_core::store::KeyStore;
use xai_keys_core::window::{self, OpenWindow};
use xai_keys_server::ServerConfig;
use xai_keys_server::ratelimit::Limit;

use crate::common::*;

/// The largest `f64` below `t` (for positive `t`): the last instant before a boundary.
fn just_before(t: f64) -> f64 {
    f64::from_bits(t.to_bits() - 1)
}

/// `POST /send` (a user route) with `k` at clock time `t`.
async fn use_at(h: &Harness, k: &Key, t: f64) -> Resp {
    h.clock.set(t);
    h.send(post("/send").key(k)).await
}

// ---------------------------------------------------------------------------------------------
// Expiry and grace periods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_works_until_just_before_its_expiry_and_is_refused_from_it_on() {
    let h = Harness::new();
    let k = h.issue_direct(Scope::User, TtlRequest::Seconds(HOUR)).await;
    let e = h.store.load(h.clock.now()).unwrap().keys[&k.key_id()]
        .expires_at
        .unwrap();
    assert_eq!(e, T0 + HOUR);
    use_at(&h, &k, just_before(e)).await.passed_to_upstream();
    use_at(&h, &k, e).await.denied(403, "expired");
    use_at(&h, &k, e + 0.001).await.denied(403, "expired");
    use_at(&h, &k, e + DAY).await.denied(403, "expired");
    // Expiry is judged against the clock at every request: stepped back an hour, the key (still
    // in the store, never revoked) is inside its lifetime again, and refused again once the
    // clock passes its expiry. Decisions follow the clock both ways, with no memory of an
    // earlier refusal.
    use_at(&h, &k, e - HOUR / 2.0).await.passed_to_upstream();
    use_at(&h, &k, e).await.denied(403, "expired");
    use_at(&h, &k, just_before(e)).await.passed_to_upstream();

    // A revoked key is gone from the store: no clock, forward or back, brings it back.
    h.clock.set(e - HOUR / 2.0);
    h.send(delete(&format!("/admin/api-keys/{}", k.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    for t in [just_before(e), e, T0, T0 - DAY, e + DAY, e - 1.0] {
        use_at(&h, &k, t).await.denied(401, "unknown_key");
    }
}

#[tokio::test]
async fn a_rotated_key_works_until_its_grace_period_ends_and_the_new_key_throughout() {
    let h = Harness::new();
    let old = h.keys.user.clone();
    let t_rot = T0 + 100.0;
    h.clock.set(t_rot);
    let v = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", old.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": 600})),
        )
        .await
        .ok(201);
    let new = Key {
        secret: v["api_key"].as_str().unwrap().to_string(),
        id: v["key_id"].as_str().unwrap().to_string(),
    };
    let grace_end = v["old_expires_at"].as_f64().unwrap();
    assert_eq!(grace_end, t_rot + 600.0, "{v}");
    for t in [t_rot, just_before(grace_end)] {
        use_at(&h, &old, t).await.passed_to_upstream();
        use_at(&h, &new, t).await.passed_to_upstream();
    }
    for t in [grace_end, grace_end + 1.0, grace_end + DAY] {
        use_at(&h, &old, t).await.denied(403, "expired");
        use_at(&h, &new, t).await.passed_to_upstream();
    }
    // Stepped back inside the grace period, the old key (still in the store until its grace
    // ends, by design) follows the clock; past the end it is refused again.
    use_at(&h, &old, grace_end - 10.0)
        .await
        .passed_to_upstream();
    use_at(&h, &old, grace_end).await.denied(403, "expired");

    // A rotation without grace revokes the old key: no backward jump revives it.
    let old2 = new.clone();
    h.clock.set(grace_end + 10.0);
    let v = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", old2.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": 0})),
        )
        .await
        .ok(201);
    let new2 = Key {
        secret: v["api_key"].as_str().unwrap().to_string(),
        id: v["key_id"].as_str().unwrap().to_string(),
    };
    for t in [grace_end + 10.0, t_rot, T0 - HOUR, grace_end + DAY] {
        use_at(&h, &old2, t).await.denied(401, "unknown_key");
        use_at(&h, &new2, t).await.passed_to_upstream();
    }
}

// ---------------------------------------------------------------------------------------------
// Change windows
// ---------------------------------------------------------------------------------------------

/// The `change_window` of the latest audit line of `action` (`None` when it has none).
fn window_of_last(store: &dyn KeyStore, action: &str) -> Option<String> {
    let page = store
        .events(&EventQuery {
            limit: 1,
            action: Some(action.into()),
            ..Default::default()
        })
        .unwrap();
    let ev = page.events.last().unwrap().clone();
    ev.get("change_window")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[tokio::test]
async fn actions_inside_a_change_window_carry_its_ticket_and_from_its_end_on_do_not() {
    let h = Harness::new();
    let opened = T0 + 50.0;
    h.clock.set(opened);
    let v = h
        .send(
            post("/admin/change-window")
                .admin(&h.keys.admin)
                .json(&json!({"ticket": "CHG-7", "duration_seconds": 3600})),
        )
        .await
        .ok(201);
    let end = v["window"]["expires_at"].as_f64().unwrap();
    assert_eq!(end, opened + 3600.0, "{v}");
    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    let issue_at = |t: f64| {
        m.issue(
            xai_keys_core::ops::IssueRequest {
                scope: Scope::User,
                label: "windowed".into(),
                ttl: TtlRequest::Default,
                secret: None,
            },
            &cli_actor(),
            t,
        )
        .unwrap()
    };
    // Inside, from its first instant to its last.
    for t in [opened, opened + 1.0, just_before(end)] {
        issue_at(t);
        assert_eq!(
            window_of_last(cli.as_ref(), "issue").as_deref(),
            Some("CHG-7"),
            "at {t}"
        );
        assert_eq!(
            window::current(cli.as_ref(), t).unwrap().unwrap().ticket,
            "CHG-7"
        );
    }
    // From its end on, and before it opened (a clock stepped back): outside.
    for t in [
        end,
        end + 1.0,
        end + DAY,
        just_before(opened),
        opened - HOUR,
    ] {
        issue_at(t);
        assert_eq!(window_of_last(cli.as_ref(), "issue"), None, "at {t}");
        assert!(
            window::current(cli.as_ref(), t).unwrap().is_none(),
            "at {t}"
        );
    }
    // The same through the gateway: a revocation at the last instant is planned, one at the
    // end is not.
    h.clock.set(just_before(end));
    h.send(delete(&format!("/admin/api-keys/{}", h.keys.operator.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(
        window_of_last(cli.as_ref(), "revoke").as_deref(),
        Some("CHG-7")
    );
    h.clock.set(end);
    h.send(delete(&format!("/admin/api-keys/{}", h.keys.auditor.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(window_of_last(cli.as_ref(), "revoke"), None);
    // A window can be opened again once the clock is past the end (the last one is closed).
    let w = window::open(
        cli.as_ref(),
        &OpenWindow {
            ticket: "CHG-8".into(),
            reason: String::new(),
            duration_secs: 600.0,
        },
        &cli_actor(),
        end,
    )
    .unwrap();
    assert_eq!(w.opened_at, end);
}

// ---------------------------------------------------------------------------------------------
// Peer skew and nonces
// ---------------------------------------------------------------------------------------------

/// A request to a peer route signed with `key` as `node` with timestamp `ts`.
fn signed(key: &PeerKey, node: &str, ts: f64) -> Req {
    let h = sign_peer_request(
        key,
        node,
        &RequestParts {
            method: "POST",
            path_and_query: "/block/receive",
            body: b"{}",
        },
        ts,
    )
    .unwrap();
    let mut r = req(Method::POST, "/block/receive").raw(Some("application/json"), b"{}");
    for (k, v) in h {
        r = r.h(k, &v);
    }
    r
}

fn peer_harness(k: &PeerKey, f: impl FnOnce(&mut ServerConfig)) -> Harness {
    let ring = KeyRing {
        current: Some(k.clone()),
        next: None,
        previous: None,
    };
    let h = Harness::with(|c| {
        c.peer.ring = ring;
        f(c);
    });
    h.secrets.add(k.expose());
    h
}

#[tokio::test]
async fn peer_timestamps_exactly_at_the_skew_pass_and_one_second_beyond_do_not_both_ways() {
    let k = PeerKey::generate().unwrap();
    let h = peer_harness(&k, |_| {});
    // The default skew is 60 s, on whole seconds of this node's clock.
    for now in [T0, T0 + 0.5, T0 + 0.999] {
        h.clock.set(now);
        let base = now.floor();
        for ts in [base, base + 60.0, base - 60.0] {
            h.send(signed(&k, "node-a", ts)).await.passed_to_upstream();
        }
        for ts in [base + 61.0, base - 61.0, base + HOUR, base - HOUR] {
            let msg = h.send(signed(&k, "node-a", ts)).await.err(401, "peer_skew");
            assert!(msg.contains("NTP"), "{msg}");
        }
    }
}

#[tokio::test]
async fn a_replayed_nonce_is_refused_for_as_long_as_its_timestamp_passes_the_skew() {
    let k = PeerKey::generate().unwrap();
    let h = peer_harness(&k, |_| {});
    let captured = signed(&k, "node-a", T0);
    h.clock.set(T0);
    h.send(captured.clone()).await.passed_to_upstream();
    for dt in [0.0, 1.0, 30.0, 60.0, 60.999] {
        h.clock.set(T0 + dt);
        h.send(captured.clone()).await.err(401, "peer_replay");
    }
    // From then on the timestamp fails first (the nonce is no longer needed to refuse it).
    for dt in [61.0, 299.0, 301.0, DAY] {
        h.clock.set(T0 + dt);
        h.send(captured.clone()).await.err(401, "peer_skew");
    }
}

#[tokio::test]
async fn the_nonce_memory_stays_bounded_as_time_advances() {
    let k = PeerKey::generate().unwrap();
    // The smallest memory allowed (1,000 nonces, about 63 per shard), nonces remembered for
    // 2 s (twice a 1 s skew): 1,500 signed requests over 150 simulated seconds are all
    // accepted, so nonces leave the memory as time passes instead of filling it.
    let h = peer_harness(&k, |c| {
        c.peer.nonce_capacity = 1000;
        c.peer.policy = VerifyPolicy {
            max_skew_secs: 1,
            nonce_ttl_secs: 1,
        };
    });
    let mut last = None;
    for i in 0..1500u32 {
        let t = T0 + f64::from(i / 10);
        h.clock.set(t);
        let r = signed(&k, "node-a", t);
        h.send(r.clone()).await.passed_to_upstream();
        last = Some(r);
    }
    // The most recent nonce is still remembered.
    h.send(last.unwrap()).await.err(401, "peer_replay");
}

/// Sends signed requests at the current clock until every shard of the nonce memory has seen
/// one (and so dropped its expired nonces): 200 random nonces miss one of the 16 shards with
/// a probability below 1e-4.
async fn touch_every_shard(h: &Harness, k: &PeerKey) {
    let now = h.clock.now();
    for _ in 0..200 {
        h.send(signed(k, "node-b", now)).await.passed_to_upstream();
    }
}

/// The dangerous case of a clock stepped back: the nonce memory drops a nonce once its
/// timestamp can no longer pass the skew check, but a backward step makes that timestamp pass
/// again. Such a request must still be refused (regression: it was accepted).
#[tokio::test]
async fn a_backward_clock_jump_does_not_let_a_forgotten_nonce_be_replayed() {
    let k = PeerKey::generate().unwrap();
    let h = peer_harness(&k, |_| {});
    let captured = signed(&k, "node-a", T0);
    h.clock.set(T0);
    h.send(captured.clone()).await.passed_to_upstream();
    // Later than the nonce's memory (300 s): it is dropped, and the skew refuses the replay.
    h.clock.set(T0 + 400.0);
    touch_every_shard(&h, &k).await;
    h.send(captured.clone()).await.err(401, "peer_skew");
    // The clock is stepped back (an NTP step, a VM restored from a snapshot): the captured
    // request's timestamp is within the skew again. It is refused as a possible replay.
    for back in [T0 + 10.0, T0 - 59.0, T0 + 60.0] {
        h.clock.set(back);
        let msg = h.send(captured.clone()).await.err(401, "peer_replay");
        assert!(msg.contains("clock"), "{msg}");
    }
    // The same with an hour's step back: requests captured an hour ago.
    let old = signed(&k, "node-a", T0 + 1000.0);
    h.clock.set(T0 + 1000.0);
    h.send(old.clone()).await.passed_to_upstream();
    h.clock.set(T0 + 1000.0 + HOUR);
    touch_every_shard(&h, &k).await;
    h.clock.set(T0 + 1000.0 + 5.0);
    h.send(old).await.err(401, "peer_replay");
    // Fresh gossip signed later than anything forgotten is accepted right away, and the
    // nonces recorded after the step are remembered as usual.
    h.clock.set(T0 + 1000.0 + HOUR - 250.0);
    let fresh = signed(&k, "node-c", h.clock.now());
    h.send(fresh.clone()).await.passed_to_upstream();
    h.send(fresh).await.err(401, "peer_replay");
}

// ---------------------------------------------------------------------------------------------
// Rate limits and webhooks across jumps
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_windows_neither_panic_nor_block_for_long_when_the_clock_jumps() {
    let h = Harness::with(|c| {
        c.auth_failure_limit = Limit {
            max: 3,
            window_secs: 60.0,
        };
        c.admin_limit = Limit {
            max: 2,
            window_secs: 60.0,
        };
    });
    let bad = || post("/send").h("x-api-key", "no-such-key-0000000000");
    // Admin requests from another client, so that the failure throttle does not hide the
    // admin limiter.
    let other = peer("127.0.0.2:40000");
    let admin = || get("/admin/api-keys").admin(&h.keys.admin);
    // Forward and back by days, and down to a clock near the epoch (no subtraction can wrap).
    for start in [T0, T0 + DAY, T0 - DAY, 0.5] {
        h.clock.set(start);
        for _ in 0..3 {
            h.send(bad()).await.denied(401, "unknown_key");
        }
        let r = h.send(bad()).await;
        r.err(429, "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
        // The admin limiter: two per minute per client and route.
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(h.send_from(other, admin()).await.status.as_u16());
        }
        assert_eq!(codes, [200, 200, 429], "at {start}");
        // Stepped back by an hour: a new window, not a block that lasts an hour.
        h.clock.set(start - HOUR);
        h.send(bad()).await.denied(401, "unknown_key");
        h.send_from(other, admin()).await.ok(200);
        h.send(post("/send").key(&h.keys.user))
            .await
            .passed_to_upstream();
    }
}

/// A webhook receiver that answers every POST with a settable status and records the bodies.
struct Sink {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

type SinkState = (Arc<AtomicU16>, Arc<Mutex<Vec<Value>>>);

async fn sink_handler(State((status, got)): State<SinkState>, body: Bytes) -> StatusCode {
    let code = status.load(Ordering::SeqCst);
    if code == 200 {
        got.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    }
    StatusCode::from_u16(code).unwrap()
}

impl Sink {
    async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st: SinkState = (Arc::new(AtomicU16::new(status)), Arc::default());
        let app = Router::new().fallback(sink_handler).with_state(st.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink {
            addr,
            status: st.0,
            got: st.1,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn delivered(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.got.lock().unwrap().iter().filter(|v| pred(v)).count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sum of a metric's samples whose labels include every `labels` pair.
async fn metric_sum(h: &NetHarness, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = h.send(get("/metrics")).await.text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn is_action(v: &Value, action: &str, key: &Key) -> bool {
    v["details"]["action"] == action && v["details"]["key_id"] == key.id.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivery_survives_a_backward_jump_and_expires_events_on_a_forward_one() {
    let sink = Sink::start(500).await;
    let sinks = xai_keys_server::webhook::parse_sinks(&sink.url()).unwrap();
    let h = NetHarness::start(|c| {
        c.telemetry.follow_interval = Duration::from_millis(20);
        c.telemetry.webhooks.sinks = sinks;
        c.telemetry.webhooks.retry_min = Duration::from_millis(20);
        c.telemetry.webhooks.retry_max = Duration::from_millis(100);
        c.telemetry.webhooks.timeout = Duration::from_secs(2);
    })
    .await;
    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    m.revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    // Failing deliveries, retried with backoff (monotonic time, not the wall clock).
    wait_until("failed deliveries", || async {
        metric_sum(&h, "xai_security_webhook_deliveries_total", &[]).await
            - metric_sum(
                &h,
                "xai_security_webhook_deliveries_total",
                &[("result", "success")],
            )
            .await
            >= 2.0
    })
    .await;
    // An hour back: the event looks an hour younger than it is; nothing panics, nothing is
    // dead-lettered, and it is delivered once the receiver is back.
    h.clock.set(T0 - HOUR);
    sink.status.store(200, Ordering::SeqCst);
    let user = h.keys.user.clone();
    wait_until("the revocation to be delivered", || async {
        sink.delivered(|v| is_action(v, "revoke", &user)) >= 1
    })
    .await;
    assert_eq!(
        metric_sum(
            &h,
            "xai_security_webhook_dead_lettered_total",
            &[("reason", "max_age")]
        )
        .await,
        0.0
    );
    // Everything queued before is delivered first (the notice about the failed deliveries
    // above, accepted at T0, would be exactly 72 h old after the jump below: not expired, it
    // would stay at the head of the queue and the disable event behind it would never be
    // looked at; a race this test lost about once in 60 runs).
    wait_until("the queue to drain", || async {
        metric_sum(&h, "xai_security_webhook_queue_depth", &[]).await == 0.0
    })
    .await;
    // A forward jump past XAI_SECURITY_WEBHOOK_MAX_AGE (72 h) while the receiver fails: the
    // event is dead-lettered as too old (the defined outcome), not retried for ever.
    sink.status.store(500, Ordering::SeqCst);
    let op = h.keys.operator.clone();
    m.set_disabled(&op.id, true, &cli_actor(), h.clock.now())
        .unwrap();
    // Queued (counted after its queue record is written) with the clock of that moment.
    wait_until("the disable event to be queued", || async {
        metric_sum(
            &h,
            "xai_key_lifecycle_actions_total",
            &[("action", "disable")],
        )
        .await
            >= 1.0
    })
    .await;
    h.clock.set(T0 - HOUR + 73.0 * HOUR);
    wait_until("the old event to be dead-lettered", || async {
        metric_sum(
            &h,
            "xai_security_webhook_dead_lettered_total",
            &[("reason", "max_age")],
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(sink.delivered(|v| is_action(v, "disable", &op)), 0);
    // And the gateway still serves.
    h.send(post("/send").key(&h.keys.admin))
        .await
        .err(503, "no_upstream");
    h.gw.shutdown().await;
}
