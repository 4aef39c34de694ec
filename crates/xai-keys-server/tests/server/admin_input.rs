//! Every malformed `POST /admin/api-keys` body is refused with a precise 400 (or 413/415), and
//! none of them writes anything.

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
