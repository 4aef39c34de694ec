//! Peer routes with a peer key configured: signed gossip accepted, every refusal with its
//! reason, replays (also concurrent), skew both ways, legacy on and off, user keys refused on
//! peer routes and the peer key refused on user routes, keyring reload, what reaches the node.

use std::time::Duration;

use axum::http::Method;
use xai_keys_core::peer::{KeyRing, PeerKey, RequestParts, sign_peer_request};
use xai_keys_server::Gateway;

use crate::common::*;

fn ring_of(current: &PeerKey, next: Option<&PeerKey>) -> KeyRing {
    KeyRing {
        current: Some(current.clone()),
        next: next.cloned(),
        previous: None,
    }
}

/// A request signed with `key` as `node` at `now`.
fn signed(key: &PeerKey, node: &str, method: Method, path: &str, body: &[u8], now: f64) -> Req {
    let h = sign_peer_request(
        key,
        node,
        &RequestParts {
            method: method.as_str(),
            path_and_query: path,
            body,
        },
        now,
    )
    .unwrap();
    let mut r = req(method, path).raw(Some("application/json"), body);
    for (k, v) in h {
        r = r.h(k, &v);
    }
    r
}

fn harness(ring: KeyRing, legacy: bool) -> Harness {
    Harness::with(|c| {
        c.peer.ring = ring;
        c.peer.accept_legacy = legacy;
    })
}

async fn peer_metric(h: &Harness, result: &str, key: &str) -> f64 {
    let text = h.send(get("/metrics")).await.text();
    text.lines()
        .filter(|l| l.starts_with("xai_peer_auth_total{"))
        .filter(|l| {
            l.contains(&format!("result=\"{result}\"")) && l.contains(&format!("key=\"{key}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn signed_gossip_passes_and_each_refusal_has_its_reason() {
    let k = PeerKey::generate().unwrap();
    let h = harness(ring_of(&k, None), false);
    h.secrets.add(k.expose());
    let now = h.clock.now();
    let body = br#"{"block":1}"#;
    h.send(signed(
        &k,
        "node-a",
        Method::POST,
        "/block/receive",
        body,
        now,
    ))
    .await
    .passed_to_upstream();
    assert_eq!(peer_metric(&h, "signed", k.fingerprint()).await, 1.0);

    // Replay of the very same request.
    let once = signed(&k, "node-a", Method::POST, "/block/receive", body, now);
    h.send(once.clone()).await.passed_to_upstream();
    h.send(once).await.err(401, "peer_replay");
    // Another body than the one signed.
    let mut r = signed(&k, "node-a", Method::POST, "/block/receive", body, now);
    r.body = br#"{"block":2}"#.to_vec();
    h.send(r).await.err(401, "peer_body_mismatch");
    // Skew both ways.
    for t in [now - 61.0, now + 61.0] {
        h.send(signed(
            &k,
            "node-a",
            Method::POST,
            "/block/receive",
            body,
            t,
        ))
        .await
        .err(401, "peer_skew");
    }
    // A key the node does not hold.
    let stranger = PeerKey::generate().unwrap();
    h.secrets.add(stranger.expose());
    h.send(signed(
        &stranger,
        "node-x",
        Method::POST,
        "/block/receive",
        body,
        now,
    ))
    .await
    .err(401, "peer_unknown_key");
    // Signed for another path.
    let mut r = signed(&k, "node-a", Method::POST, "/sync", body, now);
    r.uri = "/block/receive".into();
    h.send(r).await.err(401, "peer_bad_signature");
    // An unknown key is refused before the body is read: even one claiming to be larger
    // than the gateway accepts gets the authentication answer, not 413.
    let mut big = signed(
        &stranger,
        "node-x",
        Method::POST,
        "/block/receive",
        body,
        now,
    );
    big.body = vec![b' '; 17 << 20];
    h.send(big).await.err(401, "peer_unknown_key");
    // A header missing.
    let mut r = signed(&k, "node-a", Method::POST, "/block/receive", body, now);
    r.headers.retain(|(n, _)| n != "x-xai-peer-nonce");
    let msg = h.send(r).await.err(400, "peer_malformed");
    assert!(msg.contains("x-xai-peer-nonce"), "{msg}");
    // No signature: a user key is not enough on a peer route once a peer key exists.
    h.send(post("/transaction/receive").key(&h.keys.user))
        .await
        .err(401, "peer_signature_required");
    h.send(post("/transaction/receive"))
        .await
        .err(401, "peer_signature_required");
    // The peer key in X-API-Key: legacy mode is off.
    h.send(post("/transaction/receive").h("x-api-key", k.expose()))
        .await
        .err(401, "peer_legacy_disabled");
    // The peer key is no user key.
    h.send(post("/send").h("x-api-key", k.expose()))
        .await
        .denied(401, "unknown_key");
    assert_eq!(peer_metric(&h, "peer_unknown_key", "unknown").await, 2.0);
    assert_eq!(
        peer_metric(&h, "peer_legacy_disabled", k.fingerprint()).await,
        1.0
    );
    // User routes still take user keys.
    h.send(post("/send").key(&h.keys.user))
        .await
        .passed_to_upstream();
}

#[tokio::test]
async fn legacy_peer_keys_are_accepted_only_when_enabled_and_counted() {
    let k = PeerKey::generate().unwrap();
    let h = harness(ring_of(&k, None), true);
    h.secrets.add(k.expose());
    h.send(post("/transaction/receive").h("x-api-key", k.expose()))
        .await
        .passed_to_upstream();
    assert_eq!(peer_metric(&h, "legacy", k.fingerprint()).await, 1.0);
    // Still not a user key, and user keys still not peer credentials.
    h.send(post("/send").h("x-api-key", k.expose()))
        .await
        .denied(401, "unknown_key");
    h.send(post("/transaction/receive").key(&h.keys.admin))
        .await
        .err(401, "peer_signature_required");
}

#[tokio::test]
async fn without_a_peer_key_peer_routes_keep_taking_user_keys() {
    let h = Harness::new();
    h.send(post("/transaction/receive").key(&h.keys.user))
        .await
        .passed_to_upstream();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_one_request_exactly_one_passes() {
    let k = PeerKey::generate().unwrap();
    let h = std::sync::Arc::new(harness(ring_of(&k, None), false));
    h.secrets.add(k.expose());
    let r = signed(
        &k,
        "node-a",
        Method::POST,
        "/finality/vote",
        b"{}",
        h.clock.now(),
    );
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (h, r) = (h.clone(), r.clone());
        tasks.push(tokio::spawn(async move { h.send(r).await.status.as_u16() }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 15, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_the_keyring_file_needs_no_restart() {
    let old = PeerKey::generate().unwrap();
    let new = PeerKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peer-keyring");
    // Replaced atomically, as a Vault agent does (write_ring).
    let write = |cur: &PeerKey, next: Option<&PeerKey>, prev: Option<&PeerKey>| {
        write_ring(&file, cur, next, prev)
    };
    write(&old, None, None);
    let f2 = file.clone();
    let h = Harness::with(move |c| {
        c.peer = xai_keys_server::peer::PeerConfig::from_lookup(&|k| {
            (k == "XAI_PEER_KEYRING_FILE").then(|| f2.display().to_string())
        })
        .unwrap();
    });
    h.secrets.add(old.expose());
    h.secrets.add(new.expose());
    let send = |k: &PeerKey| signed(k, "node-b", Method::POST, "/sync", b"", h.clock.now());
    h.send(send(&old)).await.passed_to_upstream();
    h.send(send(&new)).await.err(401, "peer_unknown_key");
    // Phase 1: the new key is added as next; both are accepted.
    write(&old, Some(&new), None);
    wait_until("the ring to pick up the next key", || async {
        h.send(send(&new)).await.status.as_u16() == 503
    })
    .await;
    h.send(send(&old)).await.passed_to_upstream();
    // Phase 2: signing switches to the new key, the old one stays accepted as previous.
    write(&new, None, Some(&old));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.send(send(&old)).await.passed_to_upstream();
    // Phase 3: the old key is dropped and refused.
    write(&new, None, None);
    wait_until("the old key to be dropped", || async {
        h.send(send(&old)).await.status.as_u16() == 401
    })
    .await;
    h.send(send(&new)).await.passed_to_upstream();
    // A broken file keeps the ring in force; so does an empty one (a template rendered
    // without its secret), which must never read as "no peer key" and open peer routes to
    // user keys.
    for bad in ["XAI_PEER_API_KEY=short\n", "", "# nothing rendered\n"] {
        std::fs::write(&file, bad).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        h.send(send(&new)).await.passed_to_upstream();
        assert!(h.gateway.reload_peer_keys().is_err(), "{bad:?}");
        h.send(post("/sync").key(&h.keys.user))
            .await
            .err(401, "peer_signature_required");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sees_the_sender_and_the_body_but_no_signature_headers() {
    let k = PeerKey::generate().unwrap();
    let up = TestUpstream::start().await;
    let url = up.url();
    let ring = ring_of(&k, None);
    let h = NetHarness::start(|c| {
        c.upstream_url = Some(url);
        c.peer.ring = ring;
    })
    .await;
    h.net.secrets.add(k.expose());
    let body = pattern(100_000);
    let r = h
        .send(signed(
            &k,
            "node-c",
            Method::POST,
            "/block/receive?height=7",
            &body,
            h.clock.now(),
        ))
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.body_sha256, sha256(&body));
    assert_eq!(seen.query.as_deref(), Some("height=7"));
    assert_eq!(seen.headers["x-xai-peer-node"], "node-c");
    // The signature headers stay at the gateway (x-xai-peer-node is set again, verified).
    for hdr in xai_keys_core::peer::HEADERS
        .into_iter()
        .filter(|h| *h != xai_keys_core::peer::H_NODE)
    {
        assert!(seen.headers.get(hdr).is_none(), "{hdr} reached the node");
    }
    // A client cannot claim to be a peer on a user route.
    let r = h
        .send(
            post("/send")
                .key(&h.keys.user)
                .h("x-xai-peer-node", "forged"),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202);
    assert!(up.last().headers.get("x-xai-peer-node").is_none());
}

/// One validator of the multi-node test: a test node behind a gateway with an egress proxy,
/// its keyring in a file.
struct Validator {
    name: String,
    ring_file: std::path::PathBuf,
    state: xai_keys_server::AppState,
    gw: Running,
    egress: std::net::SocketAddr,
    _node: TestUpstream,
    _store: tempfile::TempDir,
}

fn write_ring(
    file: &std::path::Path,
    cur: &PeerKey,
    next: Option<&PeerKey>,
    prev: Option<&PeerKey>,
) {
    let mut t = format!("XAI_PEER_API_KEY={}\n", cur.expose());
    if let Some(n) = next {
        t.push_str(&format!("XAI_PEER_API_KEY_NEXT={}\n", n.expose()));
    }
    if let Some(p) = prev {
        t.push_str(&format!("XAI_PEER_API_KEY_PREVIOUS={}\n", p.expose()));
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, t).unwrap();
    chmod600(&tmp);
    std::fs::rename(&tmp, file).unwrap();
}

impl Validator {
    async fn start(name: &str, key: &PeerKey, allow: &str) -> Self {
        let store = tempfile::tempdir().unwrap();
        let ring_file = store.path().join("peer-keyring");
        write_ring(&ring_file, key, None, None);
        let node = TestUpstream::start().await;
        let (url, rf, allow, id) = (
            node.url(),
            ring_file.clone(),
            allow.to_string(),
            name.to_string(),
        );
        let mut cfg = test_config();
        cfg.upstream_url = Some(url);
        let lookup = move |k: &str| match k {
            "XAI_PEER_KEYRING_FILE" => Some(rf.display().to_string()),
            "XAI_PEER_ALLOWLIST" => Some(allow.clone()),
            "XAI_PEER_NODE_ID" => Some(id.clone()),
            _ => None,
        };
        cfg.peer = xai_keys_server::peer::PeerConfig::from_lookup(&lookup).unwrap();
        cfg.egress = xai_keys_server::egress::EgressConfig::from_lookup(&lookup).unwrap();
        let path = store_path(store.path());
        let st = open_store(&path);
        let mut gateway = Gateway::start(cfg, st, xai_keys_server::system_clock()).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let egress = l.local_addr().unwrap();
        gateway.set_egress_listener(l);
        let state = gateway.state();
        let gw = Running::start(gateway).await;
        Validator {
            name: name.into(),
            ring_file,
            state,
            gw,
            egress,
            _node: node,
            _store: store,
        }
    }

    /// Waits (bounded) until this gateway's ring has exactly these fingerprints as current.
    async fn wait_ring(&self, current: &PeerKey, accepted: &[&PeerKey]) {
        let st = self.state.clone();
        let want: std::collections::BTreeSet<String> = accepted
            .iter()
            .map(|k| k.fingerprint().to_string())
            .collect();
        let cur = current.fingerprint().to_string();
        wait_until(&format!("{}'s ring to reload", self.name), || {
            let r = st.peers.ring();
            let have: std::collections::BTreeSet<String> =
                r.keys().map(|(_, k)| k.fingerprint().to_string()).collect();
            let ok =
                have == want && r.current.as_ref().map(|k| k.fingerprint()) == Some(cur.as_str());
            async move { ok }
        })
        .await;
    }
}

/// Three validators gossip to each other through their egress proxies, continuously, while
/// the peer key is rotated in the three phases with the nodes switching at different moments:
/// no gossip request fails, and at the end the old key is refused by every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phased_rotation_across_three_validators_fails_no_gossip() {
    let old = PeerKey::generate().unwrap();
    let new = PeerKey::generate().unwrap();
    // The gateways' ports are in the allow-list by address: all on loopback.
    let mut vals = Vec::new();
    for n in ["val-a", "val-b", "val-c"] {
        vals.push(Validator::start(n, &old, "127.0.0.0/8").await);
    }
    let vals = std::sync::Arc::new(vals);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut gossipers = Vec::new();
    for i in 0..3 {
        let (vals, stop) = (vals.clone(), stop.clone());
        gossipers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .proxy(reqwest::Proxy::http(format!("http://{}", vals[i].egress)).unwrap())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for j in (0..3).filter(|j| *j != i) {
                    n += 1;
                    let url = format!("http://{}/block/receive?n={n}", vals[j].gw.addr);
                    // The reference sends its peer key in clear: the egress drops it and signs.
                    let r = client
                        .post(&url)
                        .header("x-api-key", "the-reference-sends-its-key-here-0000")
                        .body(format!("{{\"from\":{i},\"n\":{n}}}"))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => ok += 1,
                        Ok(r) => failed.push(format!(
                            "{i}->{j}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failed.push(format!("{i}->{j}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (ok, failed)
        }));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    // Phase 1: every node adds the new key as next, one after another.
    for v in vals.iter() {
        write_ring(&v.ring_file, &old, Some(&new), None);
        pause().await;
    }
    for v in vals.iter() {
        v.wait_ring(&old, &[&old, &new]).await;
    }
    // Phase 2: nodes switch signing to the new key one by one (the old one stays accepted).
    for v in [&vals[1], &vals[0], &vals[2]] {
        write_ring(&v.ring_file, &new, None, Some(&old));
        v.wait_ring(&new, &[&new, &old]).await;
        pause().await;
    }
    // Phase 3: the old key is dropped everywhere.
    for v in vals.iter() {
        write_ring(&v.ring_file, &new, None, None);
        pause().await;
    }
    for v in vals.iter() {
        v.wait_ring(&new, &[&new]).await;
    }
    pause().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for g in gossipers {
        let (ok, failed) = g.await.unwrap();
        assert!(failed.is_empty(), "failed gossip: {failed:#?}");
        total += ok;
    }
    assert!(total > 100, "too little gossip to mean anything: {total}");
    // The old key is refused by every gateway now.
    let client = reqwest::Client::new();
    for v in vals.iter() {
        let path = "/block/receive";
        let h = sign_peer_request(
            &old,
            "val-x",
            &RequestParts {
                method: "POST",
                path_and_query: path,
                body: b"{}",
            },
            xai_keys_core::now_epoch(),
        )
        .unwrap();
        let mut rb = client
            .post(format!("http://{}{path}", v.gw.addr))
            .body("{}");
        for (k, val) in h {
            rb = rb.header(k, val);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.text().await.unwrap().contains("peer_unknown_key"));
        // And the egress counted what it signed.
        let m = v.state.metrics.encode();
        assert!(
            m.lines()
                .any(|l| l.starts_with("xai_peer_egress_requests_total{result=\"signed\"}")),
            "{m}"
        );
    }
}

#[tokio::test]
async fn peer_usage_records_which_node_used_which_key_for_peer_status() {
    let k = PeerKey::generate().unwrap();
    let h = harness(ring_of(&k, None), true);
    h.secrets.add(k.expose());
    let now = h.clock.now();
    for node in ["val-1", "val-2", "val-1"] {
        h.send(signed(&k, node, Method::POST, "/sync", b"", now))
            .await
            .passed_to_upstream();
    }
    h.send(post("/sync").h("x-api-key", k.expose()))
        .await
        .passed_to_upstream();
    h.gateway.state().flush_usage();
    let path = std::path::PathBuf::from(format!("{}.peer-usage", h.path.display()));
    let u = xai_keys_server::peer::PeerUsage::read(&path)
        .unwrap()
        .unwrap();
    let m = &u.keys[k.fingerprint()];
    assert_eq!(m["val-1"].count, 2);
    assert_eq!(m["val-2"].count, 1);
    assert_eq!(m["legacy"].count, 1);
    assert_eq!(m["val-1"].last_used, now);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A restart starts from it.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(k.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_refuses_tunnels_and_foreign_destinations_and_signs_only_peer_routes() {
    let k = PeerKey::generate().unwrap();
    let node = TestUpstream::start().await;
    let url = node.url();
    let mut cfg = test_config();
    cfg.upstream_url = Some(url);
    cfg.peer.ring = ring_of(&k, None);
    cfg.egress.allowlist = xai_keys_server::egress::parse_allowlist("127.0.0.1/32").unwrap();
    cfg.egress.node_id = "val-e".into();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&store_path(dir.path()));
    let mut gw = Gateway::start(cfg, store, xai_keys_server::system_clock()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let egress = l.local_addr().unwrap();
    gw.set_egress_listener(l);
    let run = Running::start(gw).await;
    let via = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{egress}")).unwrap())
        .build()
        .unwrap();
    // A peer route: signed, accepted by the gateway (its own), seen by the node as val-e.
    let r = via
        .post(format!("http://{}/block/receive", run.addr))
        .header("x-api-key", k.expose())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(node.last().headers["x-xai-peer-node"], "val-e");
    // Credentials in the destination are refused (and not echoed).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(egress).await.unwrap();
        let req = format!(
            "GET http://user:secret-pass@{0}/blocks HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
            run.addr
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(!text.contains("secret-pass"), "{text}");
    }
    // A destination outside the allow-list.
    let r = via.get("http://127.0.0.2:9/blocks").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("egress_destination_refused")
    );
    // A plain request (not in proxy form).
    let r = reqwest::get(format!("http://{egress}/blocks"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("egress_not_a_proxy_request")
    );
    // CONNECT (an HTTPS tunnel) cannot be signed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(egress).await.unwrap();
    s.write_all(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // A public read goes through unsigned.
    let r = via
        .get(format!("http://{}/blocks", run.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(node.last().headers.get("x-xai-peer-signature").is_none());
    run.shutdown().await;
}

fn chmod600(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}
