//! Every malformed `POST /admin/api-keys` body is refused with a precise 400 (or 413/415), and
//! none of them writes anything.

use axum::http::Method;
use serde_json::{Value, json};

use crate::common::*;

/// Sends `body` (raw bytes, JSON content type) and returns the refusal's message after
/// checking status and code; also checks that nothing was issued.
async fn refused(h: &Harness, body: &[u8], status: u16, code: &str) -> String {
    let before = h.listing().await.len();
    let r = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .raw(Some("application/json"), body),
        )
        .await;
    let msg = r.err(status, code);
    assert_eq!(h.listing().await.len(), before, "nothing issued");
    msg
}

async fn refused_json(h: &Harness, body: Value, code: &str) -> String {
    refused(h, body.to_string().as_bytes(), 400, code).await
}

#[tokio::test]
async fn bodies_that_are_not_objects_are_400() {
    let h = Harness::new();
    for (body, kind) in [
        ("[]", "an array"),
        ("[{\"label\": \"x\"}]", "an array"),
        ("\"label\"", "a string"),
        ("42", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let msg = refused(&h, body.as_bytes(), 400, "invalid_payload").await;
        assert!(msg.contains("JSON object"), "{body}: {msg}");
        assert!(msg.contains(kind), "{body}: {msg}");
    }
    for body in ["{", "{\"label\": }", "{'label': 'x'}", "label=x"] {
        let msg = refused(&h, body.as_bytes(), 400, "invalid_json").await;
        assert!(msg.contains("not valid JSON"), "{body}: {msg}");
    }
}

#[tokio::test]
async fn fields_of_the_wrong_type_are_400_naming_the_field() {
    let h = Harness::new();
    for (body, field) in [
        (json!({"label": 5}), "label"),
        (json!({"label": ["a"]}), "label"),
        (json!({"scope": 1}), "scope"),
        (json!({"scope": {"name": "admin"}}), "scope"),
        (json!({"permanent": 1}), "permanent"),
        (json!({"permanent": "true"}), "permanent"),
        (json!({"expires_in_days": true}), "expires_in_days"),
        (json!({"expires_in_days": [1]}), "expires_in_days"),
        (json!({"expires_in_hours": {"h": 1}}), "expires_in_hours"),
    ] {
        let msg = refused_json(&h, body.clone(), "invalid_payload").await;
        assert!(msg.contains(field), "{body}: {msg}");
    }
}

#[tokio::test]
async fn permanent_must_be_a_json_boolean() {
    let h = Harness::new();
    // "false" is a string, not false (the reference took its truthiness: a permanent key).
    let msg = refused_json(&h, json!({"permanent": "false"}), "invalid_payload").await;
    assert!(
        msg.contains("permanent") && msg.contains("boolean"),
        "{msg}"
    );
    let msg = refused_json(&h, json!({"permanent": 0}), "invalid_payload").await;
    assert!(msg.contains("boolean"), "{msg}");
    // A real false issues an expiring key.
    let k = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"permanent": false})),
        )
        .await
        .ok(201);
    assert_eq!(k["permanent"], false);
    assert!(k["expires_at"].is_number());
}

#[tokio::test]
async fn lifetimes_must_be_finite_and_positive() {
    let h = Harness::new();
    for (v, needle) in [
        (json!("inf"), "finite"),
        (json!("Infinity"), "finite"),
        (json!("-inf"), "finite"),
        (json!("nan"), "finite"),
        (json!("NaN"), "finite"),
        (json!("soon"), "finite"),
        (json!(""), "finite"),
        (json!(0), "positive"),
        (json!(-1), "positive"),
        (json!("-1"), "positive"),
        (json!(0.0), "positive"),
    ] {
        for field in ["expires_in_days", "expires_in_hours"] {
            let msg = refused_json(&h, json!({ field: v.clone() }), "invalid_payload").await;
            assert!(msg.contains(field), "{field}={v}: {msg}");
            assert!(msg.contains(needle), "{field}={v}: {msg}");
        }
    }
    // A number JSON cannot hold is not JSON the gateway accepts.
    for raw in [
        "{\"expires_in_days\": 1e999}",
        "{\"expires_in_hours\": -1e999}",
    ] {
        let msg = refused(&h, raw.as_bytes(), 400, "invalid_json").await;
        assert!(msg.contains("not valid JSON"), "{msg}");
    }
    // Huge but finite lifetimes are clamped to the maximum, not stored as permanent.
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"expires_in_days": 1e300})),
        )
        .await;
    let body = v.ok(201);
    assert_eq!(body["ttl_clamped"], true, "{body}");
    assert_eq!(
        body["expires_at"].as_f64(),
        Some(T0 + 365.0 * DAY),
        "{body}"
    );
    // One whose seconds overflow to infinity is refused, not stored as permanent.
    let msg = refused_json(&h, json!({"expires_in_days": 1e305}), "invalid_ttl").await;
    assert!(msg.contains("TTL"), "{msg}");
    // Numeric strings are accepted (as the reference), days preferred over hours.
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"expires_in_days": "1.5", "expires_in_hours": 1})),
        )
        .await
        .ok(201);
    assert_eq!(v["expires_at"].as_f64(), Some(T0 + 1.5 * DAY));
    // Permanent together with a lifetime is contradictory.
    let msg = refused_json(
        &h,
        json!({"permanent": true, "expires_in_days": 1}),
        "invalid_payload",
    )
    .await;
    assert!(msg.contains("permanent"), "{msg}");
}

#[tokio::test]
async fn labels_are_bounded_and_free_of_control_characters() {
    let h = Harness::new();
    let long = "x".repeat(257);
    let msg = refused(
        &h,
        json!({ "label": long }).to_string().as_bytes(),
        400,
        "invalid_label",
    )
    .await;
    assert!(msg.contains("label") && msg.contains("256"), "{msg}");
    for bad in [
        "line\nbreak",
        "tab\there",
        "esc\u{1b}[31m",
        "bidi\u{202e}txt",
    ] {
        let msg = refused(
            &h,
            json!({ "label": bad }).to_string().as_bytes(),
            400,
            "invalid_label",
        )
        .await;
        assert!(msg.contains("label") && msg.contains("control"), "{msg}");
    }
    // Exactly 256 characters (multi-byte ones count once) is fine.
    let ok = "é".repeat(256);
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({ "label": ok })),
        )
        .await
        .ok(201);
    assert_eq!(v["label"].as_str().unwrap().chars().count(), 256);
}

#[tokio::test]
async fn unknown_scopes_and_fields_are_400() {
    let h = Harness::new();
    for s in ["root", "Admin!", "users", "peer"] {
        let msg = refused_json(&h, json!({ "scope": s }), "invalid_payload").await;
        assert!(msg.contains("scope") && msg.contains(s), "{msg}");
        assert!(msg.contains("user, operator, auditor, admin"), "{msg}");
    }
    for f in ["lable", "expires_in_seconds", "api_key", "key_id"] {
        let msg = refused_json(&h, json!({ f: "x" }), "invalid_payload").await;
        assert!(msg.contains("unknown field") && msg.contains(f), "{msg}");
    }
    // Scope is trimmed and case-insensitive, as the reference.
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"scope": " Auditor "})),
        )
        .await
        .ok(201);
    assert_eq!(v["scope"], "auditor");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let h = Harness::with(|c| c.max_json_bytes = 100);
    let big = json!({ "label": "y".repeat(200) }).to_string();
    // With a Content-Length…
    let r = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .h("content-length", &big.len().to_string())
                .raw(Some("application/json"), big.as_bytes()),
        )
        .await;
    let msg = r.err(413, "payload_too_large");
    assert!(msg.contains("100"), "{msg}");
    // …and without one (the body is counted as it is read).
    refused(&h, big.as_bytes(), 413, "payload_too_large").await;
    // Under the limit is fine.
    h.send(
        post("/admin/api-keys")
            .admin(&h.keys.admin)
            .json(&json!({"label": "ok"})),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn bodies_that_are_not_json_media_are_415() {
    let h = Harness::new();
    let body = json!({"label": "x"}).to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let r = h
            .send(
                post("/admin/api-keys")
                    .admin(&h.keys.admin)
                    .raw(ct, body.as_bytes()),
            )
            .await;
        let msg = r.err(415, "unsupported_media_type");
        assert!(msg.contains("application/json"), "{msg}");
    }
    // Parameters and +json types are fine.
    for ct in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        h.send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .raw(Some(ct), body.as_bytes()),
        )
        .await
        .ok(201);
    }
}

#[tokio::test]
async fn permanent_keys_are_refused_unless_allowed() {
    let h = Harness::new();
    let msg = refused_json(&h, json!({"permanent": true}), "permanent_keys_disabled").await;
    assert!(msg.contains("XAI_API_KEY_ALLOW_PERMANENT"), "{msg}");

    let h = Harness::with(|c| c.ttl.allow_permanent = true);
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"permanent": true, "scope": "operator"})),
        )
        .await
        .ok(201);
    assert_eq!(v["permanent"], true);
    assert_eq!(v["expires_at"], Value::Null);
}

// ---- Found by schemathesis (.ci/schemathesis): each input below is one the published document
// describes exactly, accepted when the document says it is valid and refused with a 400 and the
// stable error shape when it is not. ----

/// Lifetimes as strings: a decimal of at least 1, nothing else (`TTL_STRING_PATTERN`); as
/// numbers: from one second up to 1e300 (`MIN_TTL_*`, `MAX_TTL_NUMBER`); `null` is "not given".
#[tokio::test]
async fn lifetimes_follow_the_published_schema() {
    let h = Harness::new();
    for v in ["", " 2", "2 ", "+2", "1e3", "0.5", "02", "1.", ".5", "0x10"] {
        for field in ["expires_in_days", "expires_in_hours"] {
            let msg = refused_json(&h, json!({ field: v }), "invalid_payload").await;
            assert!(msg.contains(field), "{field}={v:?}: {msg}");
        }
    }
    for (field, min) in [
        ("expires_in_days", xai_keys_server::admin::MIN_TTL_DAYS),
        ("expires_in_hours", xai_keys_server::admin::MIN_TTL_HOURS),
    ] {
        let msg = refused_json(&h, json!({ field: min / 2.0 }), "invalid_payload").await;
        assert!(msg.contains("1 second"), "{msg}");
        let k = h.issue_http(json!({ field: min })).await;
        assert_eq!(
            h.listing().await[&k.id]["expires_at"].as_f64(),
            Some(T0 + 1.0)
        );
        let msg = refused_json(&h, json!({ field: 2e300 }), "invalid_ttl").await;
        assert!(msg.contains("1e300"), "{msg}");
    }
    let v = h
        .send(
            post("/admin/api-keys")
                .admin(&h.keys.admin)
                .json(&json!({"expires_in_days": null, "expires_in_hours": null, "label": null, "scope": null, "permanent": null})),
        )
        .await
        .ok(201);
    assert_eq!(v["expires_at"].as_f64(), Some(T0 + 90.0 * DAY), "{v}");
}

/// Free text is checked as sent: the core trims before it checks, so a trailing newline used to
/// slip through while the document says no control characters at all.
#[tokio::test]
async fn text_fields_are_checked_as_sent() {
    let h = Harness::new();
    for bad in ["label\n", "\tlabel", "label\u{85}", "label\u{2066}"] {
        let msg = refused_json(&h, json!({ "label": bad }), "invalid_label").await;
        assert!(msg.contains("control"), "{bad:?}: {msg}");
    }
    // Over 256 characters counts the padding too.
    let padded = format!(" {} ", "x".repeat(255));
    refused_json(&h, json!({ "label": padded }), "invalid_label").await;
    let u = h.issue_http(json!({"label": "to rotate"})).await;
    let r = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", u.id))
                .admin(&h.keys.admin)
                .json(&json!({"label": "next\n"})),
        )
        .await;
    r.err(400, "invalid_label");
    // Revocation reasons (query) and window reasons and tickets (body, query).
    let r = h
        .send(delete(&format!("/admin/api-keys/{}?reason=CHG-1%0A", u.id)).admin(&h.keys.admin))
        .await;
    r.err(400, "invalid_reason");
    let r = h
        .send(delete("/admin/change-window?reason=y%C2%87").admin(&h.keys.admin))
        .await;
    r.err(400, "invalid_reason");
    let r = h
        .send(delete("/admin/change-window?reason=done%0A").admin(&h.keys.admin))
        .await;
    r.err(400, "invalid_reason");
    for (body, code) in [
        (
            json!({"ticket": "CHG-1\n", "duration": "1h"}),
            "invalid_ticket",
        ),
        (
            json!({"ticket": "CHG-1", "duration": "1h", "reason": "why\r"}),
            "invalid_reason",
        ),
    ] {
        let r = h
            .send(
                post("/admin/change-window")
                    .admin(&h.keys.admin)
                    .json(&body),
            )
            .await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", r.text());
        assert_eq!(r.code(), code, "{body}: {}", r.text());
    }
    // Nothing was revoked or opened.
    assert!(h.listing().await.contains_key(&u.id));
    let w = h
        .send(get("/admin/change-window").admin(&h.keys.admin))
        .await
        .ok(200);
    assert_eq!(w["window"]["open"], false);
}

/// Durations (`grace`, `if_idle`, a window's `duration`) are whole numbers with one unit, and
/// nothing the document does not describe (no empty value, spaces, fractions or compounds).
#[tokio::test]
async fn durations_follow_the_published_schema() {
    let h = Harness::new();
    let u = h.issue_http(json!({"label": "u"})).await;
    for g in ["", " 1h", "1h30m", "1.5h", "01h", "1 h", "1hour", "-1"] {
        let r = h
            .send(
                post(&format!("/admin/api-keys/{}/rotate", u.id))
                    .admin(&h.keys.admin)
                    .json(&json!({ "grace": g })),
            )
            .await;
        let msg = r.err(400, "invalid_payload");
        assert!(msg.contains("grace"), "{g:?}: {msg}");
    }
    for q in [
        "if_idle=",
        "if_idle=%2015m",
        "if_idle=1h30m",
        "if_idle=0m",
        "if_idle=1.5",
    ] {
        let r = h
            .send(delete(&format!("/admin/api-keys/{}?{q}", u.id)).admin(&h.keys.admin))
            .await;
        let msg = r.err(400, "invalid_payload");
        assert!(msg.contains("if_idle"), "{q}: {msg}");
    }
    for d in ["", "1h30m", "90 m", "1.5h", "01h", "2w", "59s", "10081m"] {
        let r = h
            .send(
                post("/admin/change-window")
                    .admin(&h.keys.admin)
                    .json(&json!({"ticket": "CHG-1", "duration": d})),
            )
            .await;
        assert_eq!(r.status.as_u16(), 400, "{d:?}: {}", r.text());
        assert_eq!(r.json()["success"], false);
    }
    // Both forms at once stays refused (the document says one of them).
    let r = h
        .send(
            post("/admin/change-window")
                .admin(&h.keys.admin)
                .json(&json!({"ticket": "CHG-1", "duration": "", "duration_seconds": 60.0})),
        )
        .await;
    r.err(400, "invalid_payload");
    // What the document describes works.
    let w = h
        .send(
            post("/admin/change-window")
                .admin(&h.keys.admin)
                .json(&json!({"ticket": "CHG-1", "duration": "604800s"})),
        )
        .await
        .ok(201);
    assert_eq!(
        w["window"]["expires_at"].as_f64(),
        Some(T0 + 7.0 * DAY),
        "{w}"
    );
    let rot = h
        .send(
            post(&format!("/admin/api-keys/{}/rotate", u.id))
                .admin(&h.keys.admin)
                .json(&json!({"grace": "1w"})),
        )
        .await
        .ok(201);
    assert_eq!(rot["grace_seconds"].as_f64(), Some(7.0 * DAY), "{rot}");
    h.send(
        delete(&format!(
            "/admin/api-keys/{}?if_idle=1",
            rot["key_id"].as_str().unwrap()
        ))
        .admin(&h.keys.admin),
    )
    .await
    .ok(200);
}

/// `since`: epoch seconds, a duration ago or an RFC 3339 time; an empty or other value is a 400.
#[tokio::test]
async fn since_follows_the_published_schema() {
    let h = Harness::new();
    for q in [
        "",
        "%202h",
        "2%20hours",
        "1.5h",
        "1h30m",
        "-5",
        "1e9",
        "2020-01-01",
    ] {
        let r = h
            .send(get(&format!("/admin/api-key-events?since={q}")).admin(&h.keys.admin))
            .await;
        let msg = r.err(400, "invalid_query");
        assert!(msg.contains("since"), "{q}: {msg}");
    }
    for q in [
        "2h",
        "0s",
        "1760000000",
        "1760000000.5",
        "2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00.5%2B02:00",
    ] {
        h.send(get(&format!("/admin/api-key-events?since={q}")).admin(&h.keys.admin))
            .await
            .ok(200);
    }
}

/// The `{key_id}` path parameter is not trimmed: the document's pattern has no room for spaces.
#[tokio::test]
async fn key_ids_in_paths_are_not_trimmed() {
    let h = Harness::new();
    let u = h.issue_http(json!({"label": "u"})).await;
    let r = h
        .send(post(&format!("/admin/api-keys/%20{}/disable", &u.id[..12])).admin(&h.keys.admin))
        .await;
    r.err(400, "invalid_key_id");
    h.send(post(&format!("/admin/api-keys/{}/disable", &u.id[..12])).admin(&h.keys.admin))
        .await
        .ok(200);
}

/// A percent-escape in the `{key_id}` segment is decoded once and stays inside that segment:
/// an encoded `#` or `?` does not end the path (schemathesis found `/{key_id}/rotate` answered
/// as a 405 of `/{key_id}`), and an encoded `%` is not decoded a second time.
#[tokio::test]
async fn escapes_in_key_id_segments_stay_in_the_segment() {
    let h = Harness::new();
    let u = h.issue_http(json!({"label": "u"})).await;
    for bad in [
        "%C2%B3%C3%9A%23%C2%BA",
        "ab%23cd",
        "ab%3Fcd",
        "%23",
        "%3F",
        "ab%2561",
    ] {
        for (m, tail) in [
            (Method::POST, "/rotate"),
            (Method::POST, "/disable"),
            (Method::POST, "/enable"),
            (Method::DELETE, ""),
        ] {
            let r = h
                .send(req(m.clone(), &format!("/admin/api-keys/{bad}{tail}")).admin(&h.keys.admin))
                .await;
            r.err(400, "invalid_key_id");
        }
    }
    // An escaped hex digit is still the key's id prefix, decoded once.
    let escaped = format!("%{:02X}{}", u.id.as_bytes()[0], &u.id[1..12]);
    h.send(post(&format!("/admin/api-keys/{escaped}/disable")).admin(&h.keys.admin))
        .await
        .ok(200);
}

/// A 405 for a method the gateway never accepts (TRACE) lists what the resource supports, as
/// RFC 9110 asks (the router's own 405s always did).
#[tokio::test]
async fn non_standard_methods_get_an_allow_header() {
    let h = Harness::new();
    for (path, allow) in [
        ("/health", "GET,HEAD"),
        ("/admin/api-keys", "GET,HEAD,POST"),
        ("/admin/api-keys/0123456789ab", "DELETE"),
        ("/admin/api-keys/0123456789ab/rotate", "POST"),
        ("/admin/change-window", "GET,HEAD,POST,DELETE"),
        ("/api/v2/admin/api-keys", "GET,HEAD,POST"),
        ("/send", "GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS"),
    ] {
        let r = h.send(req(Method::TRACE, path).admin(&h.keys.admin)).await;
        r.err(405, "method_not_allowed");
        assert_eq!(r.header("allow").as_deref(), Some(allow), "{path}");
    }
}

/// The document follows the gateway's TTL policy: without `XAI_API_KEY_ALLOW_PERMANENT` it
/// says `permanent: true` is refused; with it, that `permanent` excludes a lifetime.
#[tokio::test]
async fn the_document_follows_the_permanent_key_policy() {
    let path = |doc: &Value| {
        doc["paths"]["/admin/api-keys"]["post"]["requestBody"]["content"]["application/json"]["schema"].clone()
    };
    let h = Harness::new();
    let doc = h.send(get("/admin/openapi.json")).await.json();
    let body = path(&doc);
    assert_eq!(
        body["properties"]["permanent"]["enum"],
        json!([false, null]),
        "{body}"
    );
    assert!(body.get("if").is_none());
    let h = Harness::with(|c| c.ttl.allow_permanent = true);
    let doc = h.send(get("/admin/openapi.json")).await.json();
    let body = path(&doc);
    assert!(
        body["properties"]["permanent"].get("enum").is_none(),
        "{body}"
    );
    assert_eq!(
        body["if"]["properties"]["permanent"]["const"], true,
        "{body}"
    );
}

/// With `XAI_METRICS=0`, `GET /metrics` is a 404 in the error shape, and the document says so.
#[tokio::test]
async fn disabled_metrics_are_a_documented_404() {
    let h = Harness::with(|c| c.metrics_enabled = false);
    let msg = h.send(get("/metrics")).await.err(404, "metrics_disabled");
    assert!(msg.contains("XAI_METRICS"), "{msg}");
    let doc = h.send(get("/admin/openapi.json")).await.json();
    let r = &doc["paths"]["/metrics"]["get"]["responses"]["404"];
    assert_eq!(
        r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
        "{r}"
    );
}
