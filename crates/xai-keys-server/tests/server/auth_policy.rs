//! Credentials and status codes, scopes on every route class, `auth_required = false`, and
//! path tricks that must not dodge the policy.

use axum::http::Method;
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;

use crate::common::*;

// ---- credentials and status codes ----

#[tokio::test]
async fn api_key_sources_authenticate_in_the_reference_order() {
    let h = Harness::new();
    let u = &h.keys.user;
    h.send(post("/send").key(u)).await.passed_to_upstream();
    h.send(post("/send").h("authorization", &format!("Bearer {}", u.secret)))
        .await
        .passed_to_upstream();
    h.send(post("/send").h("authorization", &format!("bearer   {}  ", u.secret)))
        .await
        .passed_to_upstream();
    h.send(post("/send").h("x-api-key", &format!("  {}  ", u.secret)))
        .await
        .passed_to_upstream();
    // A present X-API-Key ends the search even when empty: no fall-through to Bearer.
    h.send(
        post("/send")
            .h("x-api-key", "")
            .h("authorization", &format!("Bearer {}", u.secret)),
    )
    .await
    .denied(401, "unknown_key");
}

#[tokio::test]
async fn admin_credentials_come_from_every_admin_source() {
    let h = Harness::new();
    let a = &h.keys.admin;
    for r in [
        get("/admin/api-keys").admin(a),
        get("/admin/api-keys").h("authorization", &format!("Admin {}", a.secret)),
        get("/admin/api-keys").h("authorization", &format!("ADMIN {}", a.secret)),
        get("/admin/api-keys").key(a),
        get("/admin/api-keys").h("authorization", &format!("Bearer {}", a.secret)),
    ] {
        h.send(r).await.ok(200);
    }
    // An invalid admin token does not hide a valid admin X-API-Key.
    h.send(
        get("/admin/api-keys")
            .h("x-admin-token", "not-a-valid-admin-token-at-all")
            .key(a),
    )
    .await
    .ok(200);
    // A non-admin key presented as an admin token: valid key, but admin tokens must be admin keys.
    let r = h.send(get("/admin/peers").admin(&h.keys.operator)).await;
    r.denied(403, "insufficient_scope");
    assert!(
        r.error().contains("admin tokens must be admin keys"),
        "{}",
        r.text()
    );
    // The same operator key in X-API-Key is fine on an auditor route.
    h.send(get("/admin/peers").key(&h.keys.operator))
        .await
        .passed_to_upstream();
    // Unknown admin token alone: 401 on admin routes (code admin_unauthorized).
    let r = h
        .send(get("/admin/api-keys").h("x-admin-token", "not-a-valid-admin-token-at-all"))
        .await;
    r.denied(401, "unknown_key");
    assert_eq!(r.code(), "admin_unauthorized");
}

#[tokio::test]
async fn query_keys_are_refused_unless_enabled() {
    let h = Harness::new();
    let u = &h.keys.user;
    let r = h
        .send(get(&format!("/wallet/abc?x=1&api_key={}", u.secret)))
        .await;
    r.denied(401, "query_key_disabled");
    assert!(r.error().contains("X-API-Key"), "{}", r.text());
    // The refusal counts as no credential, so a header key still works beside it.
    h.send(get(&format!("/wallet/abc?api_key={}", u.secret)).key(u))
        .await
        .passed_to_upstream();

    let h = Harness::with(|c| c.allow_query_key = true);
    let u = &h.keys.user;
    h.send(get(&format!("/wallet/abc?x=1&api_key={}", u.secret)))
        .await
        .passed_to_upstream();
    // Admin API: the api_key parameter is not an unknown filter.
    h.send(get(&format!(
        "/admin/api-key-events?limit=5&api_key={}",
        h.keys.admin.secret
    )))
    .await
    .ok(200);
}

#[tokio::test]
async fn ambiguous_credentials_are_400() {
    let h = Harness::new();
    let u = &h.keys.user;
    for r in [
        post("/send").key(u).key(u),
        post("/send")
            .key(u)
            .h("x-api-key", "other-credential-value"),
        post("/send")
            .h("authorization", &format!("Bearer {}", u.secret))
            .h("authorization", "Bearer second-credential"),
        get("/admin/api-keys")
            .admin(&h.keys.admin)
            .admin(&h.keys.admin),
    ] {
        let msg = h.send(r).await.err(400, "invalid_credentials");
        assert!(msg.contains("more than once"), "{msg}");
    }
}

#[tokio::test]
async fn refusals_have_typed_reasons_and_statuses() {
    let h = Harness::new();
    // Missing.
    let r = h.send(post("/send")).await;
    r.denied(401, "missing_credentials");
    assert_eq!(r.code(), "unauthorized");
    let r = h.send(get("/admin/api-keys")).await;
    r.denied(401, "missing_credentials");
    assert_eq!(r.code(), "admin_unauthorized");
    // Unknown (never issued, a legacy-looking value, an xai_-shaped but valid-checksum stranger).
    let stranger = xai_keys_core::PlainToken::generate().unwrap();
    for k in [
        "definitely-not-a-key-0123456789",
        &"ab".repeat(32),
        stranger.expose(),
    ] {
        h.send(post("/send").h("x-api-key", k))
            .await
            .denied(401, "unknown_key");
    }
    // Our prefix with a bad checksum: refused before any lookup.
    let mut bad = h.keys.user.secret.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let r = h.send(post("/send").h("x-api-key", &bad)).await;
    r.denied(401, "malformed_key");
    assert!(r.error().contains("checksum"), "{}", r.text());
    let mut truncated = h.keys.user.secret.clone();
    truncated.truncate(20);
    h.send(post("/send").h("x-api-key", &truncated))
        .await
        .denied(401, "malformed_key");
    // Expired.
    let short = h.issue_direct(Scope::User, TtlRequest::Seconds(60.0)).await;
    h.send(post("/send").key(&short)).await.passed_to_upstream();
    h.clock.advance(61.0);
    let r = h.send(post("/send").key(&short)).await;
    r.denied(403, "expired");
    assert!(
        r.error().contains(&short.id[..12]),
        "names the key by fingerprint"
    );
    // Disabled.
    h.send(post(&format!("/admin/api-keys/{}/disable", h.keys.user.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    h.send(post("/send").key(&h.keys.user))
        .await
        .denied(403, "disabled");
    // Insufficient scope.
    let r = h.send(post("/send").key(&h.keys.auditor)).await;
    r.denied(403, "insufficient_scope");
    assert!(r.error().contains("auditor"), "{}", r.text());
    h.send(get("/admin/api-keys").key(&h.keys.operator))
        .await
        .denied(403, "insufficient_scope");
}

#[tokio::test]
async fn no_response_ever_echoes_a_key() {
    // The harness checks every response of every test; this one sends keys everywhere a key
    // can go, including refused, malformed and duplicated ones, and error paths.
    let h = Harness::with(|c| c.allow_query_key = true);
    let mut bad = h.keys.admin.secret.clone();
    bad.pop();
    bad.push('0');
    let keys = [
        h.keys.user.secret.clone(),
        h.keys.admin.secret.clone(),
        bad,
        "a-long-unknown-secret-value-0001".to_string(),
    ];
    for k in &keys {
        for r in [
            post("/send").h("x-api-key", k),
            get("/admin/api-keys").h("x-admin-token", k),
            get("/admin/api-keys").h("authorization", &format!("Admin {k}")),
            delete("/admin/api-keys/zz").h("authorization", &format!("Bearer {k}")),
            get(&format!("/admin/anything?api_key={k}")),
            post("/send").h("x-api-key", k).h("x-api-key", k),
            get(&format!("/admin/api-key-events?limit=0&api_key={k}")),
            get("/metrics").h("x-api-key", k),
            get("/health").h("x-api-key", k),
            // A key pasted where its id belongs.
            delete(&format!("/admin/api-keys/{k}")).admin(&h.keys.admin),
            post(&format!("/admin/api-keys/{k}/rotate")).admin(&h.keys.admin),
            post(&format!("/admin/api-keys/{k}/disable")).admin(&h.keys.admin),
            req(Method::PUT, &format!("/admin/api-keys/{k}")).admin(&h.keys.admin),
            get(&format!("/admin/api-keys/{k}/rotate")).admin(&h.keys.admin),
        ] {
            let _ = h.send(r).await;
        }
    }
    let body = h.send(get("/metrics")).await.text();
    for k in &keys {
        assert!(!body.contains(k.as_str()));
    }
}

// ---- scopes on every route class ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Passed authentication (the proxied route's 503 no_upstream, or the own handler).
    Allow,
    /// 403 insufficient_scope.
    Scope,
    /// 401 missing_credentials.
    Missing,
}

async fn check(h: &Harness, who: Option<&Key>, method: Method, path: &str, want: Want) {
    let mut r = req(method.clone(), path);
    if let Some(k) = who {
        r = r.key(k);
    }
    let resp = h.send(r).await;
    let label = format!(
        "{method} {path} as {}",
        who.map_or("nobody", |k| k.id.as_str())
    );
    match want {
        Want::Allow => assert!(
            !matches!(resp.status.as_u16(), 400 | 401 | 403 | 429),
            "{label}: expected to pass, got {} {}",
            resp.status,
            resp.text()
        ),
        Want::Scope => {
            assert_eq!(resp.status.as_u16(), 403, "{label}: {}", resp.text());
            assert_eq!(resp.reason(), "insufficient_scope", "{label}");
        }
        Want::Missing => {
            assert_eq!(resp.status.as_u16(), 401, "{label}: {}", resp.text());
            assert_eq!(resp.reason(), "missing_credentials", "{label}");
        }
    }
}

#[tokio::test]
async fn scopes_are_enforced_on_every_route_class() {
    use Want::*;
    let h = Harness::new();
    let k = h.keys.clone();
    let (ad, op, au, us) = (&k.admin, &k.operator, &k.auditor, &k.user);
    let zero = "0".repeat(64);
    let own_delete = format!("/admin/api-keys/{zero}");
    let own_disable = format!("/admin/api-keys/{zero}/disable");
    // (method, path, [admin, operator, auditor, user, nobody])
    let table: Vec<(Method, &str, [Want; 5])> = vec![
        // user routes
        (Method::POST, "/send", [Allow, Allow, Scope, Allow, Missing]),
        (
            Method::GET,
            "/wallet/abc",
            [Allow, Allow, Allow, Allow, Missing],
        ),
        (
            Method::POST,
            "/wallet/abc/transfer",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        (
            Method::POST,
            "/peers/add",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        (
            Method::POST,
            "/contracts/call",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        // peer routes
        (
            Method::POST,
            "/transaction/receive",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        (
            Method::POST,
            "/block/receive",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        (Method::POST, "/sync", [Allow, Allow, Scope, Allow, Missing]),
        (
            Method::POST,
            "/finality/vote",
            [Allow, Allow, Scope, Allow, Missing],
        ),
        // auditor admin routes
        (
            Method::GET,
            "/admin/peers",
            [Allow, Allow, Allow, Scope, Missing],
        ),
        (
            Method::GET,
            "/admin/emergency/status",
            [Allow, Allow, Allow, Scope, Missing],
        ),
        (
            Method::POST,
            "/admin/peers",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        // operator routes
        (
            Method::POST,
            "/admin/emergency/pause",
            [Allow, Allow, Scope, Scope, Missing],
        ),
        (
            Method::POST,
            "/admin/peers/ban",
            [Allow, Allow, Scope, Scope, Missing],
        ),
        (
            Method::GET,
            "/admin/profiling/status",
            [Allow, Allow, Scope, Scope, Missing],
        ),
        // admin routes
        (
            Method::GET,
            "/admin/anything",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::POST,
            "/admin/config/reload",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::DELETE,
            "/mempool/abc",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        // public
        (Method::GET, "/blocks", [Allow, Allow, Allow, Allow, Allow]),
        (Method::GET, "/peers", [Allow, Allow, Allow, Allow, Allow]),
        (
            Method::GET,
            "/mempool/abc",
            [Allow, Allow, Allow, Allow, Allow],
        ),
        (Method::GET, "/health", [Allow, Allow, Allow, Allow, Allow]),
        (Method::GET, "/metrics", [Allow, Allow, Allow, Allow, Allow]),
        (
            Method::GET,
            "/admin/openapi.json",
            [Allow, Allow, Allow, Allow, Allow],
        ),
        // the gateway's own key API
        (
            Method::GET,
            "/admin/api-keys",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::POST,
            "/admin/api-keys",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::DELETE,
            &own_delete,
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::POST,
            &own_disable,
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::GET,
            "/admin/api-key-events",
            [Allow, Allow, Allow, Scope, Missing],
        ),
        (
            Method::POST,
            "/admin/api-key-events",
            [Allow, Scope, Scope, Scope, Missing],
        ),
        (
            Method::DELETE,
            "/admin/api-key-events",
            [Allow, Scope, Scope, Scope, Missing],
        ),
    ];
    for (method, path, wants) in &table {
        for (who, want) in [Some(ad), Some(op), Some(au), Some(us), None]
            .into_iter()
            .zip(wants.iter())
        {
            check(&h, who, method.clone(), path, *want).await;
        }
    }
}

#[tokio::test]
async fn auditors_read_but_never_write() {
    let h = Harness::new();
    let au = &h.keys.auditor;
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        for p in [
            "/send",
            "/wallet/x",
            "/admin/peers",
            "/transaction/receive",
            "/x/y",
        ] {
            let r = h.send(req(m.clone(), p).key(au)).await;
            r.denied(403, "insufficient_scope");
        }
    }
    for p in [
        "/wallet/x",
        "/admin/peers",
        "/admin/api-key-events",
        "/blocks",
    ] {
        let r = h.send(get(p).key(au)).await;
        assert!(
            !matches!(r.status.as_u16(), 401 | 403),
            "GET {p}: {}",
            r.text()
        );
    }
    h.send(get("/admin/api-keys").key(au))
        .await
        .denied(403, "insufficient_scope");
}

// ---- auth_required = false ----

#[tokio::test]
async fn auth_off_opens_user_routes_only() {
    let h = Harness::with(|c| c.auth_required = false);
    // User routes are open without a key (and with a bad one).
    h.send(post("/send")).await.passed_to_upstream();
    h.send(get("/wallet/abc")).await.passed_to_upstream();
    h.send(post("/send").h("x-api-key", "garbage-credential-123"))
        .await
        .passed_to_upstream();
    // Everything else still needs credentials: the reference's worst defect stays fixed.
    for (m, p) in [
        (Method::GET, "/admin/api-keys"),
        (Method::POST, "/admin/api-keys"),
        (Method::GET, "/admin/api-key-events"),
        (Method::DELETE, "/admin/api-keys/0123456789abcdef"),
        (Method::POST, "/admin/api-keys/0123456789abcdef/rotate"),
        (Method::GET, "/api/v2/admin/api-keys"),
        (Method::GET, "/admin/anything"),
        (Method::GET, "/admin/peers"),
        (Method::POST, "/admin/emergency/pause"),
        (Method::DELETE, "/mempool/abc"),
        (Method::POST, "/transaction/receive"),
        (Method::POST, "/block/receive"),
        (Method::POST, "/sync"),
        (Method::POST, "/finality/vote"),
    ] {
        let r = h.send(req(m.clone(), p)).await;
        assert_eq!(r.status.as_u16(), 401, "{m} {p}: {}", r.text());
        assert_eq!(r.reason(), "missing_credentials", "{m} {p}");
    }
    // A method spelled in lower case is another method to `http` but the same one to the
    // node: it must not slip past method-scoped rules (DELETE /mempool/{txid} is admin).
    for m in ["delete", "Delete", "dElEtE", "BREW"] {
        let r = h
            .send(req(
                Method::from_bytes(m.as_bytes()).unwrap(),
                "/mempool/abc",
            ))
            .await;
        assert_eq!(r.status.as_u16(), 405, "{m}: {}", r.text());
        assert_eq!(r.code(), "method_not_allowed");
    }
    // And scopes still apply to a presented key.
    h.send(get("/admin/api-keys").key(&h.keys.user))
        .await
        .denied(403, "insufficient_scope");
    h.send(post("/admin/emergency/pause").key(&h.keys.user))
        .await
        .denied(403, "insufficient_scope");
    h.send(get("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(200);
    let (_, health) = h.health().await;
    assert_eq!(health["auth_required"], false);
}

// ---- path tricks ----

#[tokio::test]
async fn version_prefixes_reach_the_gateways_own_admin_api() {
    let h = Harness::new();
    for p in [
        "/api/v2/admin/api-keys",
        "/v1/admin/api-keys",
        "/admin/api-keys/",
        "/%61dmin/api-keys",
        "/admin/api%2Dkeys",
    ] {
        h.send(get(p).key(&h.keys.user))
            .await
            .denied(403, "insufficient_scope");
        h.send(get(p)).await.denied(401, "missing_credentials");
        // Served by the gateway itself (a listing), never proxied (that would be 503 here).
        let v = h.send(get(p).admin(&h.keys.admin)).await.ok(200);
        assert!(v["store"].is_object(), "{p}: {v}");
    }
    let v = h
        .send(post("/api/v1/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(201);
    assert!(v["api_key"].is_string());
    h.send(
        delete(&format!(
            "/v2/admin/api-keys/{}",
            v["key_id"].as_str().unwrap()
        ))
        .admin(&h.keys.admin),
    )
    .await
    .ok(200);
    h.send(get("/api/v9/admin/api-key-events").key(&h.keys.auditor))
        .await
        .ok(200);
    // The key API's namespace is the gateway's: paths no handler serves are a 404 here, never
    // forwarded to the node (without an upstream that would be a 503).
    let id = &h.keys.user.id;
    for (m, p) in [
        (Method::POST, format!("/admin/api-keys/{id}/bogus")),
        (Method::DELETE, format!("/admin/api-keys/{id}/extra")),
        (Method::GET, format!("/v1/admin/api-keys/{id}/rotate/x")),
    ] {
        h.send(req(m.clone(), &p).key(&h.keys.user))
            .await
            .denied(403, "insufficient_scope");
        let msg = h
            .send(req(m.clone(), &p).admin(&h.keys.admin))
            .await
            .err(404, "not_found");
        assert!(msg.contains("openapi"), "{m} {p}: {msg}");
    }
    // A prefixed path is routed exactly as the unprefixed one, whatever its escapes: a key id
    // with an escaped space is refused as a key id (it was a 404 while the rewritten path could
    // not be parsed back).
    let p = "/api/v1/admin/api-keys/%20abc";
    h.send(delete(p).key(&h.keys.user))
        .await
        .denied(403, "insufficient_scope");
    h.send(delete(p).admin(&h.keys.admin))
        .await
        .err(400, "invalid_key_id");
}

#[tokio::test]
async fn encoded_and_dotted_paths_cannot_dodge_the_policy() {
    let h = Harness::new();
    for p in ["/%61dmin/x", "/%41dmin/x", "/api/v1/admin/x", "/admin/x/"] {
        let r = h.send(get(p).key(&h.keys.user)).await;
        if p == "/%41dmin/x" {
            // "/Admin/x" is not an admin path (paths are case-sensitive): public read.
            r.passed_to_upstream();
            continue;
        }
        r.denied(403, "insufficient_scope");
        h.send(get(p).key(&h.keys.admin)).await.passed_to_upstream();
    }
    h.send(post("/%73end"))
        .await
        .denied(401, "missing_credentials");
    for p in [
        "/admin/../send",
        "/send/../admin/x",
        "/admin/./x",
        "//admin/x",
        "/admin//x",
        "/admin%2fx",
        "/admin%2Fapi-keys",
        "/admin%5capi-keys",
        "/admin/%2e%2e/send",
        "/a%zz",
        "/a%00b",
        "/%ff",
    ] {
        let r = h.send(get(p).admin(&h.keys.admin)).await;
        let msg = r.err(400, "invalid_path");
        assert!(!msg.is_empty(), "{p}");
        let r = h.send(post(p)).await;
        r.err(400, "invalid_path");
    }
}
