//! The admin key API served by the gateway: issue, list, revoke, rotate, disable/enable,
//! events and the OpenAPI document.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn issued_key_works_on_the_next_request_and_revoked_key_is_refused_on_the_next() {
    let h = Harness::new();
    let r = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"label": "ci runner", "scope": "user", "expires_in_days": 2})),
        )
        .await;
    let v = r.ok(201);
    let secret = v["api_key"].as_str().unwrap().to_string();
    let id = v["key_id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("xai_"), "{v}");
    assert_eq!(id.len(), 64);
    assert_eq!(v["scope"], "user");
    assert_eq!(v["permanent"], false);
    assert_eq!(v["expires_at"].as_f64(), Some(T0 + 2.0 * DAY));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let k = Key { secret, id };

    // The very next request with the new key is authenticated.
    h.send(post("/send").key(&k)).await.passed_to_upstream();

    let list = h.listing().await;
    let e = &list[&k.id];
    assert_eq!(e["label"], "ci runner");
    assert_eq!(e["scope"], "user");
    assert_eq!(e["expired"], false);
    assert_eq!(e["state"], "active");

    let r = h
        .send(delete(&format!("/admin/api-keys/{}", k.id)).admin(&h.keys.admin))
        .await;
    let v = r.ok(200);
    assert_eq!(v["revoked"], true);
    assert_eq!(v["key_id"].as_str(), Some(k.id.as_str()));

    // The very next request with the revoked key is refused.
    h.send(post("/send").key(&k))
        .await
        .denied(401, "unknown_key");
    assert!(!h.listing().await.contains_key(&k.id));

    // Revoking it again: 404 not_found.
    h.send(delete(&format!("/admin/api-keys/{}", k.id)).admin(&h.keys.admin))
        .await
        .err(404, "not_found");
    // A prefix resolves like the CLI; an unknown id is 404 too, without repeating the path
    // (a secret pasted where its id belongs is never echoed).
    let msg = h
        .send(delete("/admin/api-keys/0123456789abcdef0123").admin(&h.keys.admin))
        .await
        .err(404, "not_found");
    assert!(!msg.contains("0123456789abcdef0123"), "{msg}");
}

#[tokio::test]
async fn listing_computes_expiry_at_request_time() {
    let h = Harness::new();
    let k = h
        .issue_http(json!({"label": "short", "expires_in_hours": 1}))
        .await;
    let e = h.listing().await[&k.id].clone();
    assert_eq!(e["expired"], false);
    assert_eq!(e["expires_at"].as_f64(), Some(T0 + HOUR));
    h.send(get("/wallet/abc").key(&k))
        .await
        .passed_to_upstream();

    // No reload happens: the clock alone makes the key expired, in the listing and at the door.
    h.clock.advance(2.0 * HOUR);
    let e = h.listing().await[&k.id].clone();
    assert_eq!(e["expired"], true, "{e}");
    assert_eq!(e["state"], "expired", "{e}");
    h.send(get("/wallet/abc").key(&k))
        .await
        .denied(403, "expired");
    // Last-use fields are part of the listing.
    assert_eq!(e["use_count"], 1, "{e}");
    assert_eq!(e["last_used"].as_f64(), Some(T0), "{e}");
    assert_eq!(e["last_route"], "/wallet/*", "{e}");
    let admin = h.listing().await[&h.keys.admin.id].clone();
    assert!(admin["use_count"].as_u64().unwrap() >= 3, "{admin}");
    assert_eq!(admin["last_route"], "/admin/api-keys", "{admin}");
}

#[tokio::test]
async fn rotate_without_grace_replaces_the_key_at_once() {
    let h = Harness::new();
    let old = h.keys.user.clone();
    // An empty label is "not given" (inherited); a lifetime over the maximum is clamped and said so.
    let r = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", old.id))
                .admin(&h.keys.admin)
                .json(&json!({"label": "", "expires_in_days": 100000})),
        )
        .await;
    let v = r.ok(201);
    assert_eq!(v["ttl_clamped"], true, "{v}");
    assert_eq!(v["old_key_id"].as_str(), Some(old.id.as_str()));
    assert_eq!(v["grace_seconds"].as_f64(), Some(0.0));
    assert_eq!(v["scope"], "user", "scope is inherited");
    assert_eq!(v["label"], "user", "label is inherited");
    let new = Key {
        secret: v["api_key"].as_str().unwrap().into(),
        id: v["key_id"].as_str().unwrap().into(),
    };
    h.send(post("/send").key(&old))
        .await
        .denied(401, "unknown_key");
    h.send(post("/send").key(&new)).await.passed_to_upstream();
    // Rotating a key that no longer exists: 404.
    h.send(post(&format!("/admin/api-keys/{}/rotate", old.id)).admin(&h.keys.admin))
        .await
        .err(404, "not_found");
}

#[tokio::test]
async fn rotate_with_grace_keeps_the_old_key_until_the_grace_ends() {
    let h = Harness::new();
    let old = h.keys.operator.clone();
    let r = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", old.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": "1h", "label": "operator v2"})),
        )
        .await;
    let v = r.ok(201);
    assert_eq!(v["grace_seconds"].as_f64(), Some(HOUR));
    assert_eq!(v["old_expires_at"].as_f64(), Some(T0 + HOUR));
    assert_eq!(v["scope"], "operator");
    assert_eq!(v["label"], "operator v2");
    let new = Key {
        secret: v["api_key"].as_str().unwrap().into(),
        id: v["key_id"].as_str().unwrap().into(),
    };
    let route = "/admin/emergency/pause";
    h.send(post(route).key(&old)).await.passed_to_upstream();
    h.send(post(route).key(&new)).await.passed_to_upstream();
    h.clock.advance(HOUR - 1.0);
    h.send(post(route).key(&old)).await.passed_to_upstream();
    h.clock.advance(2.0);
    h.send(post(route).key(&old)).await.denied(403, "expired");
    h.send(post(route).key(&new)).await.passed_to_upstream();
    let list = h.listing().await;
    assert_eq!(list[&old.id]["replaced_by"].as_str(), Some(new.id.as_str()));
    assert_eq!(list[&old.id]["expired"], true);

    // A numeric grace (seconds) works too; a bad one is a 400.
    let r = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", new.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": "soon"})),
        )
        .await;
    let msg = r.err(400, "invalid_payload");
    assert!(msg.contains("grace"), "{msg}");
    let v = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", new.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": 30})),
        )
        .await
        .ok(201);
    assert_eq!(v["grace_seconds"].as_f64(), Some(30.0));
}

#[tokio::test]
async fn disable_and_enable_take_effect_on_the_next_request() {
    let h = Harness::new();
    let k = h.keys.user.clone();
    let v = h
        .send(post(&format!("/admin/api-keys/{}/disable", k.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(v["state"], "disabled");
    assert_eq!(v["disabled"], true);
    h.send(post("/send").key(&k)).await.denied(403, "disabled");
    assert_eq!(h.listing().await[&k.id]["state"], "disabled");
    // Idempotent.
    h.send(post(&format!("/admin/api-keys/{}/disable", &k.id[..16])).admin(&h.keys.admin))
        .await
        .ok(200);
    let v = h
        .send(post(&format!("/admin/api-keys/{}/enable", k.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(v["state"], "active");
    h.send(post("/send").key(&k)).await.passed_to_upstream();
    h.send(post(&format!("/admin/api-keys/{}/enable", "ab".repeat(32))).admin(&h.keys.admin))
        .await
        .err(404, "not_found");
    // Other methods on the key API's paths: a JSON 405 (after admin authentication).
    let msg = h
        .send(req(axum::http::Method::PUT, "/admin/api-keys").admin(&h.keys.admin))
        .await
        .err(405, "method_not_allowed");
    assert!(
        msg.contains("PUT") && msg.contains("/admin/api-keys"),
        "{msg}"
    );
    let msg = h
        .send(
            req(
                axum::http::Method::GET,
                &format!("/admin/api-keys/{}", k.id),
            )
            .admin(&h.keys.admin),
        )
        .await
        .err(405, "method_not_allowed");
    assert!(msg.contains("/admin/api-keys/{key_id}"), "{msg}");
    h.send(req(axum::http::Method::PUT, "/admin/api-keys"))
        .await
        .denied(401, "missing_credentials");
}

#[tokio::test]
async fn events_are_bounded_and_filtered() {
    let h = Harness::new();
    let k = h.issue_http(json!({"label": "to-revoke"})).await;
    h.send(delete(&format!("/admin/api-keys/{}", k.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    h.send(post(&format!("/admin/api-keys/{}/disable", h.keys.user.id)).admin(&h.keys.admin))
        .await
        .ok(200);
    let events = |q: &str| {
        let q = q.to_string();
        let h = &h;
        async move {
            h.send(get(&format!("/admin/api-key-events{q}")).admin(&h.keys.admin))
                .await
        }
    };

    for bad in ["0", "1001", "-1", "abc", "1.5", ""] {
        let msg = events(&format!("?limit={bad}"))
            .await
            .err(400, "invalid_query");
        assert!(msg.contains("1 to 1000"), "{msg}");
    }
    events("?lmit=5").await.err(400, "invalid_query");
    events("?limit=1&limit=2").await.err(400, "invalid_query");
    events("?since=yesterday-ish")
        .await
        .err(400, "invalid_query");

    let all = events("?limit=1000").await.ok(200);
    let all = all["events"].as_array().unwrap().clone();
    // 4 CLI issues, 1 HTTP issue, 1 revoke, 1 disable.
    assert_eq!(all.len(), 7, "{all:?}");
    let one = events("?limit=1").await.ok(200);
    let one = one["events"].as_array().unwrap().clone();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["action"], "disable", "most recent last: {one:?}");
    let default = events("").await.ok(200);
    assert_eq!(default["events"].as_array().unwrap().len(), 7);

    // Every admin action is audited with the admin key's id and the client address.
    let issued = all
        .iter()
        .find(|e| e["key_id"].as_str() == Some(k.id.as_str()) && e["action"] == "issue")
        .unwrap();
    let actor = issued["actor"].as_str().unwrap();
    assert!(actor.starts_with("http:"), "{actor}");
    assert!(actor.contains(&h.keys.admin.id), "{actor}");
    assert!(actor.contains("127.0.0.1"), "{actor}");

    let revokes = events("?action=revoke").await.ok(200);
    let revokes = revokes["events"].as_array().unwrap().clone();
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["key_id"].as_str(), Some(k.id.as_str()));

    let by_key = events(&format!("?key_id={}", &k.id[..16])).await.ok(200);
    let by_key = by_key["events"].as_array().unwrap().clone();
    assert_eq!(by_key.len(), 2, "issue and revoke: {by_key:?}");
    assert!(by_key.iter().all(|e| e["key_id"].as_str() == Some(&k.id)));

    let later = events(&format!("?since={}", T0 + 10.0)).await.ok(200);
    assert!(later["events"].as_array().unwrap().is_empty());
    h.clock.advance(HOUR);
    let recent = events("?since=2h").await.ok(200);
    assert_eq!(recent["events"].as_array().unwrap().len(), 7);
    let none = events("?since=30m").await.ok(200);
    assert!(none["events"].as_array().unwrap().is_empty());
    let rfc = events("?since=2020-01-01T00:00:00Z&action=issue")
        .await
        .ok(200);
    assert_eq!(rfc["events"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn openapi_document_is_public_json_and_has_every_own_route() {
    let h = Harness::new();
    let r = h.send(get("/admin/openapi.json")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for (method, path) in xai_keys_server::openapi::OWN_ROUTES {
        assert!(
            doc["paths"][*path][*method].is_object(),
            "{method} {path} is documented"
        );
    }
    for path in [
        "/admin/api-keys",
        "/admin/api-keys/{key_id}",
        "/admin/api-keys/{key_id}/rotate",
        "/admin/api-keys/{key_id}/disable",
        "/admin/api-keys/{key_id}/enable",
        "/admin/api-key-events",
        "/admin/openapi.json",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test]
async fn responses_follow_the_documented_shapes() {
    let h = Harness::new();
    let doc = h.send(get("/admin/openapi.json")).await.json();
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> Vec<String> {
        schemas[name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    };
    // A real error carries the Error schema's required fields.
    let e = h.send(get("/admin/api-keys")).await.json();
    for f in required("Error") {
        assert!(e.get(&f).is_some(), "{f} in {e}");
    }
    // Each listed key carries the KeyMeta fields.
    let list = h.listing().await;
    assert_eq!(list.len(), 4);
    for entry in list.values() {
        for f in required("KeyMeta") {
            assert!(entry.get(&f).is_some(), "{f} in {entry}");
        }
    }
    // Issue and rotate answers carry the Issued fields.
    let issued = h
        .send(post("/admin/api-keys").admin(&h.keys.admin))
        .await
        .ok(201);
    let rotated = h
        .send(post(&format!("/admin/api-keys/{}/rotate", h.keys.user.id)).admin(&h.keys.admin))
        .await
        .ok(201);
    for v in [&issued, &rotated] {
        for f in required("Issued") {
            assert!(v.get(&f).is_some(), "{f} in {v}");
        }
    }
    // Default issue: a user key with the default 90-day lifetime.
    assert_eq!(issued["scope"], "user");
    assert_eq!(issued["expires_at"].as_f64(), Some(T0 + 90.0 * DAY));
}
