//! Proxying over real sockets: what reaches the node, streaming, limits and upstream failures.

use std::time::{Duration, Instant};

use crate::common::*;

async fn with_upstream(
    f: impl FnOnce(&mut xai_keys_server::ServerConfig),
) -> (TestUpstream, NetHarness) {
    let up = TestUpstream::start().await;
    let url = up.url();
    let h = NetHarness::start(|c| {
        c.upstream_url = Some(url);
        f(c);
    })
    .await;
    (up, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_intact_without_credentials() {
    let (up, h) = with_upstream(|_| {}).await;
    let u = &h.keys.user;
    let r = h
        .send(
            post("/wallet/abc/transfer?x=1&y=two%20words&x=3")
                .key(u)
                .h("x-admin-token", "an-invalid-admin-token-000")
                .h("x-xai-key-id", "forged-key-id")
                .h("x-xai-scope", "admin")
                .h("x-forwarded-for", "6.6.6.6")
                .h("x-real-ip", "6.6.6.6")
                .h("x-custom", "kept")
                .raw(Some("application/json"), b"{\"amount\": 5}"),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    assert_eq!(r.header("x-upstream").as_deref(), Some("echo"));
    let v = r.json();
    assert_eq!(v["method"], "POST");
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/wallet/abc/transfer");
    assert_eq!(seen.query.as_deref(), Some("x=1&y=two%20words&x=3"));
    assert_eq!(&seen.body[..], b"{\"amount\": 5}");
    let hd = &seen.headers;
    for gone in ["x-api-key", "x-admin-token", "authorization"] {
        assert!(hd.get(gone).is_none(), "{gone} must not reach the node");
    }
    assert_eq!(hd["x-xai-key-id"].to_str().unwrap(), u.id);
    assert_eq!(hd["x-xai-scope"].to_str().unwrap(), "user");
    assert_eq!(hd["x-forwarded-for"].to_str().unwrap(), "127.0.0.1");
    assert_eq!(hd["x-real-ip"].to_str().unwrap(), "127.0.0.1");
    assert_eq!(hd["x-custom"].to_str().unwrap(), "kept");
    assert_eq!(hd["content-type"].to_str().unwrap(), "application/json");

    // Bearer credentials are stripped too; other methods are kept.
    let r = h
        .send(
            req(axum::http::Method::DELETE, "/admin/mempool-entry/1")
                .h("authorization", &format!("Bearer {}", h.keys.admin.secret)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.method, "DELETE");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-xai-scope"].to_str().unwrap(), "admin");
    assert_eq!(
        seen.headers["x-xai-key-id"].to_str().unwrap(),
        h.keys.admin.id
    );

    // Version-prefixed paths go to the node as sent.
    h.send(get("/api/v2/blocks?page=2")).await;
    assert_eq!(up.last().path, "/api/v2/blocks");

    // Anonymous (public) requests carry no identity, and forged identity headers are removed.
    let r = h
        .send(
            get("/blocks/latest")
                .h("x-xai-key-id", "forged")
                .h("x-xai-scope", "admin"),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202);
    let seen = up.last();
    assert!(seen.headers.get("x-xai-key-id").is_none());
    assert!(seen.headers.get("x-xai-scope").is_none());
    assert_eq!(seen.query, None);

    // Refused requests never reach the node.
    let n = up.count();
    h.send(post("/send"))
        .await
        .denied(401, "missing_credentials");
    h.send(post("/send").key(&h.keys.auditor))
        .await
        .denied(403, "insufficient_scope");
    assert_eq!(up.count(), n);
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_keys_are_stripped_before_forwarding() {
    let (up, h) = with_upstream(|c| c.allow_query_key = true).await;
    let u = &h.keys.user;
    let r = h
        .send(get(&format!("/wallet/abc?a=1&api_key={}&b=2", u.secret)))
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.query.as_deref(), Some("a=1&b=2"));
    assert_eq!(seen.headers["x-xai-key-id"].to_str().unwrap(), u.id);
    let r = h
        .send(get(&format!("/wallet/abc?api_key={}", u.secret)))
        .await;
    assert_eq!(r.status.as_u16(), 202);
    let seen = up.last();
    assert!(
        seen.query.as_deref().unwrap_or("").is_empty(),
        "{:?}",
        seen.query
    );
    // An encoded parameter name is stripped too.
    h.send(get(&format!("/wallet/abc?api%5Fkey={}&c=3", u.secret)))
        .await;
    assert_eq!(up.last().query.as_deref(), Some("c=3"));
    for s in up.seen.lock().unwrap().iter() {
        assert!(
            !format!("{s:?}").contains(&u.secret),
            "the key reached the node"
        );
    }
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let (up, h) = with_upstream(|_| {}).await;
    let u = &h.keys.user;
    let body = pattern(5 << 20);
    let digest = sha256(&body);
    // With a Content-Length.
    let r = h
        .send(
            post("/wallet/upload")
                .key(u)
                .raw(Some("application/octet-stream"), &body),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    assert_eq!(r.json()["sha256"].as_str(), Some(digest.as_str()));
    assert_eq!(up.last().body_len, body.len());
    // Chunked.
    let r = h
        .send_body(
            post("/wallet/upload").key(u),
            chunked(body.clone(), 256 * 1024),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    assert_eq!(r.json()["sha256"].as_str(), Some(digest.as_str()));
    // A large response streams back.
    let r = h.send(get("/big")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.header("x-upstream").as_deref(), Some("big"));
    assert_eq!(r.body.len(), BIG);
    assert_eq!(sha256(&r.body), sha256(&pattern(BIG)));
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_proxy_limit_are_413() {
    let (up, h) = with_upstream(|c| c.max_proxy_body_bytes = 1 << 20).await;
    let u = &h.keys.user;
    let body = pattern(2 << 20);
    let r = h
        .send(
            post("/wallet/upload")
                .key(u)
                .raw(Some("application/octet-stream"), &body),
        )
        .await;
    let msg = r.err(413, "payload_too_large");
    assert!(msg.contains("1048576"), "{msg}");
    assert_eq!(up.count(), 0, "refused before the node");
    // Without a Content-Length the limit is enforced while streaming.
    let r = h
        .send_body(post("/wallet/upload").key(u), chunked(body, 64 * 1024))
        .await;
    r.err(413, "payload_too_large");
    // At the limit is fine.
    let ok = pattern(1 << 20);
    let r = h
        .send(
            post("/wallet/upload")
                .key(u)
                .raw(Some("application/octet-stream"), &ok),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    assert_eq!(up.last().body_len, 1 << 20);
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_quick_502() {
    let dead = closed_port().await;
    let h = NetHarness::start(|c| c.upstream_url = Some(format!("http://{dead}"))).await;
    let started = Instant::now();
    let r = h.send(post("/send").key(&h.keys.user)).await;
    let msg = r.err(502, "upstream_unavailable");
    assert!(msg.contains(&dead.to_string()), "{msg}");
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The gateway's own routes are unaffected.
    h.send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504() {
    let (up, h) = with_upstream(|c| c.upstream_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = h.send(get("/slow")).await;
    let msg = r.err(504, "upstream_timeout");
    assert!(msg.contains("XAI_UPSTREAM_TIMEOUT_SECS"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.last().path, "/slow");
    // The next request is served normally.
    let r = h.send(get("/blocks")).await;
    assert_eq!(r.status.as_u16(), 202);
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upstream_proxied_routes_are_503_and_own_routes_work() {
    let h = NetHarness::start(|_| {}).await;
    let msg = h
        .send(post("/send").key(&h.keys.user))
        .await
        .err(503, "no_upstream");
    assert!(msg.contains("XAI_UPSTREAM_URL"), "{msg}");
    h.send(get("/blocks")).await.err(503, "no_upstream");
    let r = h.send(get("/health")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], serde_json::Value::Null);
    let r = h.send(get("/metrics")).await;
    assert_eq!(r.status.as_u16(), 200);
    h.send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_path_prefix_is_prepended_and_head_works() {
    let up = TestUpstream::start().await;
    let url = format!("{}/node/", up.url());
    let h = NetHarness::start(|c| c.upstream_url = Some(url)).await;
    let r = h.send(post("/send?fee=1").key(&h.keys.user)).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.path, "/node/send");
    assert_eq!(seen.query.as_deref(), Some("fee=1"));
    // HEAD follows GET: public here, and an auditor may HEAD a user route.
    let r = h.send(req(axum::http::Method::HEAD, "/health")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.body.is_empty());
    let r = h
        .send(req(axum::http::Method::HEAD, "/wallet/x").key(&h.keys.auditor))
        .await;
    assert_eq!(r.status.as_u16(), 202);
    assert_eq!(up.last().method, "HEAD");
    assert_eq!(up.last().path, "/node/wallet/x");
    h.gw.shutdown().await;
}
