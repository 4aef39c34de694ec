//! The OpenAPI 3 document of the gateway's own API (`GET /admin/openapi.json`).
//!
//! Written as data next to the handlers it describes; a test checks that every route the
//! router serves itself is documented and that the document is well-formed, and the
//! integration tests validate real responses against the response schemas.

use serde_json::{Value, json};

use crate::admin::{
    GRACE_PATTERN, IF_IDLE_PATTERN, IPV4_CIDR_PATTERN, IPV6_CIDR_PATTERN, MAX_TTL_NUMBER,
    MIN_TTL_DAYS, MIN_TTL_HOURS, SINCE_AGO_PATTERN, SINCE_EPOCH_PATTERN, TTL_STRING_PATTERN,
    WINDOW_DURATION_PATTERN,
};

/// What `str::trim` removes (Unicode White_Space), as the body of a regex character class.
const TRIMMED: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// The characters free text may not carry (`xai_keys_core::ops::is_unsafe_text_char`): C0 and
/// C1 controls and the Unicode bidirectional controls, as the body of a character class.
const UNSAFE: &str = r"\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069";

/// Free text (labels, reasons): at most 256 characters, none of them unsafe.
fn text_schema(nullable: bool) -> Value {
    json!({"type": if nullable { json!(["string", "null"]) } else { json!("string") },
           "maxLength": 256, "pattern": format!("^[^{UNSAFE}]*$")})
}

/// `scope`: one of the scopes, any ASCII case, surrounding white space allowed; blank means
/// the default.
fn scope_input() -> Value {
    let ci = |w: &str| -> String {
        w.chars()
            .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c))
            .collect()
    };
    let names: Vec<String> = ["user", "operator", "auditor", "admin"]
        .iter()
        .map(|w| ci(w))
        .collect();
    json!({"type": ["string", "null"],
           "pattern": format!("^[{TRIMMED}]*(?:{})?[{TRIMMED}]*$", names.join("|")),
           "description": "user (default), operator, auditor or admin (case-insensitive; blank means the default)"})
}

/// `expires_in_days` / `expires_in_hours`: at least one second; a number or a decimal string.
fn ttl_input(min: f64) -> Value {
    json!({"oneOf": [
        {"type": "number", "minimum": min, "maximum": MAX_TTL_NUMBER},
        {"type": "string", "pattern": TTL_STRING_PATTERN},
        {"type": "null"}
    ]})
}

/// The routes the gateway serves itself, as (method, OpenAPI path).
pub const OWN_ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/admin/openapi.json"),
    ("get", "/admin/api-keys"),
    ("post", "/admin/api-keys"),
    ("delete", "/admin/api-keys/{key_id}"),
    ("post", "/admin/api-keys/{key_id}/rotate"),
    ("post", "/admin/api-keys/{key_id}/disable"),
    ("post", "/admin/api-keys/{key_id}/enable"),
    ("get", "/admin/api-key-events"),
    ("get", "/admin/change-window"),
    ("post", "/admin/change-window"),
    ("delete", "/admin/change-window"),
    ("get", "/admin/lockdown"),
    ("post", "/admin/lockdown"),
    ("delete", "/admin/lockdown"),
];

/// The `Allow` header for a request path (normalised) that is one of the gateway's own
/// routes: its documented methods (HEAD with GET), as the router's own 405s list them.
pub fn allowed_methods(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut methods: Vec<&str> = Vec::new();
    for (m, template) in OWN_ROUTES {
        let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
        let matches = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
        if matches {
            methods.push(match *m {
                "get" => "GET,HEAD",
                "post" => "POST",
                "delete" => "DELETE",
                _ => continue,
            });
        }
    }
    (!methods.is_empty()).then(|| methods.join(","))
}

fn err_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn auth_errors() -> Value {
    json!({
        "400": err_response("Invalid request (path, credentials header, query or body)"),
        "401": err_response("Missing, unknown or malformed credentials"),
        "403": err_response("Expired or disabled key, or insufficient scope"),
        "429": err_response("Rate limited; see Retry-After"),
        "503": err_response("Store unavailable (unreadable or not matching its audit log)"),
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
    base
}

fn key_id_param() -> Value {
    json!({"name": "key_id", "in": "path", "required": true,
           "description": "Full key id (64 hex) or a unique prefix of at least 12 hex characters",
           "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{12,64}$"}})
}

/// Links from a response naming a key (`key_id` in its body) to the operations on that key,
/// for stateful testing: issue → rotate, disable, enable, revoke.
fn key_links(desc: &str, schema: Value) -> Value {
    let mut r = ok_json(desc, schema);
    let to =
        |op: &str| json!({"operationId": op, "parameters": {"key_id": "$response.body#/key_id"}});
    if let Some(o) = r.as_object_mut() {
        o.insert(
            "links".into(),
            json!({
                "RotateKey": to("rotateKey"),
                "DisableKey": to("disableKey"),
                "EnableKey": to("enableKey"),
                "RevokeKey": to("revokeKey"),
            }),
        );
    }
    r
}

fn security() -> Value {
    json!([{"AdminToken": []}, {"ApiKey": []}, {"Bearer": []}])
}

/// The document, for a gateway with its default TTL policy.
pub fn document() -> Value {
    document_for(false)
}

/// The document; `allow_permanent` is `XAI_API_KEY_ALLOW_PERMANENT` (without it `permanent:
/// true` is refused, and the document says so).
pub fn document_for(allow_permanent: bool) -> Value {
    let key_meta = json!({
        "type": "object",
        "required": ["label", "created", "scope", "expires_at", "permanent", "expired", "state"],
        "properties": {
            "label": {"type": "string"},
            "created": {"type": ["number", "null"], "description": "null for keys from the environment"},
            "scope": {"$ref": "#/components/schemas/Scope"},
            "expires_at": {"type": ["number", "null"]},
            "permanent": {"type": "boolean"},
            "expired": {"type": "boolean"},
            "state": {"type": "string", "enum": ["active", "expired", "disabled"]},
            "disabled": {"type": "boolean"},
            "origin": {"type": ["string", "null"]},
            "replaced_by": {"type": ["string", "null"]},
            "fingerprint": {"type": "string"},
            "last_used": {"type": ["number", "null"]},
            "use_count": {"type": "integer", "minimum": 0},
            "last_client": {"type": ["string", "null"]},
            "last_route": {"type": ["string", "null"]},
            "source": {"const": "env", "description": "Only on keys configured in this gateway's environment (XAI_API_KEYS, XAI_API_ADMIN_KEYS, XAI_API_ADMIN_TOKEN): they never expire and cannot be revoked here"},
            "variable": {"type": "string"},
            "accepted_by_gateway": {"type": "boolean", "description": "Only while the store does not match its audit log: whether this gateway currently accepts the key"}
        }
    });
    let issued = json!({
        "type": "object",
        "required": ["success", "api_key", "key_id", "scope", "expires_at", "permanent"],
        "properties": {
            "success": {"const": true},
            "api_key": {"type": "string", "description": "The plaintext key, shown once"},
            "key_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "scope": {"$ref": "#/components/schemas/Scope"},
            "label": {"type": "string"},
            "expires_at": {"type": ["number", "null"]},
            "permanent": {"type": "boolean"},
            "fingerprint": {"type": "string"},
            "ttl_clamped": {"type": "boolean"},
            "old_key_id": {"type": "string"},
            "old_expires_at": {"type": "number"},
            "grace_seconds": {"type": "number"}
        }
    });
    let permanent = if allow_permanent {
        json!({"type": ["boolean", "null"], "description": "A key that never expires (not together with expires_in_days or expires_in_hours)"})
    } else {
        json!({"enum": [false, null], "description": "true is refused (400 permanent_keys_disabled): this gateway runs without XAI_API_KEY_ALLOW_PERMANENT"})
    };
    let ttl_props = json!({
        "label": text_schema(true),
        "scope": scope_input(),
        "permanent": permanent,
        "expires_in_days": ttl_input(MIN_TTL_DAYS),
        "expires_in_hours": ttl_input(MIN_TTL_HOURS)
    });
    let rotate_props = with(
        ttl_props.clone(),
        json!({"grace": {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": GRACE_PATTERN}, {"type": "null"}],
                         "description": "How long the old key keeps working: seconds, or a whole number with a unit (s, m, h, d, w) such as 24h (default 0: revoked at once)"}}),
    );
    // `permanent: true` with a lifetime is contradictory (400).
    let ttl_body = |props: Value| {
        let mut body =
            json!({"type": "object", "additionalProperties": false, "properties": props});
        if allow_permanent && let Some(o) = body.as_object_mut() {
            o.insert(
                "if".into(),
                json!({"required": ["permanent"], "properties": {"permanent": {"const": true}}}),
            );
            o.insert("then".into(), json!({"properties": {"expires_in_days": {"type": "null"}, "expires_in_hours": {"type": "null"}}}));
        }
        body
    };
    let lockdown_path = json!({
        "get": {
            "summary": "The emergency lockdown as this gateway applies it, and the admin network allow-list (admin, operator, auditor)",
            "operationId": "lockdownStatus",
            "security": security(),
            "responses": with(auth_errors(), json!({
                "200": ok_json("Lockdown and allow-list", json!({"type": "object", "required": ["success", "lockdown", "admin_allow_list"],
                    "properties": {"success": {"const": true},
                                   "lockdown": {"type": "object", "required": ["active"]},
                                   "admin_allow_list": {"type": "object", "required": ["restricted"]}}}))
            }))
        },
        "post": {
            "summary": "Turn the emergency lockdown on (or replace it) on every gateway of the store (admin); audited as lockdown_on, a CRITICAL event",
            "operationId": "lockdownOn",
            "security": security(),
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["reason"],
                "properties": {
                    "reason": {"type": "string", "maxLength": 256,
                               "pattern": format!("^[^{UNSAFE}]*[^{UNSAFE}{TRIMMED}][^{UNSAFE}]*$"),
                               "description": "What the incident is"},
                    "ticket": text_schema(true),
                    "admin_networks": {"type": ["array", "null"], "maxItems": 64,
                        "description": "Client networks that keep /admin/* (default: loopback only)",
                        "items": {"type": "string", "anyOf": [
                            {"format": "ipv4"}, {"format": "ipv6"},
                            {"pattern": IPV4_CIDR_PATTERN}, {"pattern": IPV6_CIDR_PATTERN}]}}
                }
            }}}},
            "responses": with(auth_errors(), json!({
                "201": ok_json("On", json!({"type": "object", "required": ["success", "lockdown"]})),
                "400": err_response("Invalid body"),
                "413": err_response("Body too large"),
                "415": err_response("Body is not JSON"),
                "503": err_response("Store unavailable")
            }))
        },
        "delete": {
            "summary": "Turn the emergency lockdown off (admin); audited as lockdown_off",
            "operationId": "lockdownOff",
            "security": security(),
            "parameters": [
                {"name": "reason", "in": "query", "required": false, "schema": text_schema(false)}
            ],
            "responses": with(auth_errors(), json!({
                "200": ok_json("Off (or none was on)", json!({"type": "object", "required": ["success", "released", "lockdown"]})),
                "400": err_response("Invalid reason"),
                "503": err_response("Store unavailable")
            }))
        }
    });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "xai-keys gateway admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Key lifecycle for XAI nodes. Every other path is authenticated by the route policy and forwarded to the node."
        },
        "components": {
            "securitySchemes": {
                "AdminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Scope": {"type": "string", "enum": ["user", "operator", "auditor", "admin"]},
                "Error": {
                    "type": "object",
                    "required": ["success", "error", "code"],
                    "properties": {
                        "success": {"const": false},
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "reason": {"type": "string"},
                        "retry_after": {"type": "integer"}
                    }
                },
                "KeyMeta": key_meta,
                "Issued": issued
            }
        },
        "paths": {
            "/health": {"get": {
                "summary": "Gateway and store health",
                "responses": {
                    "200": ok_json("Healthy", json!({"type": "object", "required": ["success", "status", "store"]})),
                    "503": ok_json("Store unreadable or not matching its audit log", json!({"type": "object", "required": ["success", "status", "store"]}))
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "404": err_response("Metrics are disabled on this gateway (XAI_METRICS=0)")}
            }},
            "/admin/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": ok_json("OpenAPI document", json!({"type": "object"}))}
            }},
            "/admin/api-keys": {
                "get": {
                    "summary": "List keys (metadata only; expiry computed now; last use)",
                    "security": security(),
                    "responses": with(auth_errors(), json!({"200": ok_json("Keys", json!({
                        "type": "object",
                        "required": ["success", "manual_keys", "manual_admin_keys", "store"],
                        "properties": {
                            "success": {"const": true},
                            "manual_keys": {"type": "integer"},
                            "manual_admin_keys": {"type": "integer"},
                            "store": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/KeyMeta"}},
                            "store_status": {"type": "object"},
                            "warnings": {"type": "array", "items": {"type": "string"}}
                        }
                    }))}))
                },
                "post": {
                    "summary": "Issue a key (the plaintext is returned once)",
                    "operationId": "issueKey",
                    "security": security(),
                    "requestBody": {"required": false, "content": {"application/json": {"schema": ttl_body(ttl_props)}}},
                    "responses": with(auth_errors(), json!({
                        "201": key_links("Issued", json!({"$ref": "#/components/schemas/Issued"})),
                        "409": err_response("Conflict"),
                        "413": err_response("Body over XAI_API_MAX_JSON_BYTES"),
                        "415": err_response("Body is not application/json")
                    }))
                }
            },
            "/admin/api-keys/{key_id}": {"delete": {
                "summary": "Revoke a key",
                "operationId": "revokeKey",
                "security": security(),
                "parameters": [key_id_param(),
                    {"name": "if_idle", "in": "query", "required": false, "schema": {"type": "string", "pattern": IF_IDLE_PATTERN},
                     "description": "Refuse (409 recently_used) if the key was used within this duration: whole seconds, or a whole number with a unit (s, m, h, d, w) such as 15m"},
                    {"name": "reason", "in": "query", "required": false, "schema": text_schema(false)}],
                "responses": with(auth_errors(), json!({
                    "200": ok_json("Revoked", json!({"type": "object", "required": ["success", "revoked", "key_id"],
                        "properties": {"success": {"const": true}, "revoked": {"const": true}, "key_id": {"type": "string"},
                                       "scope": {"type": "string"}, "label": {"type": "string"}}})),
                    "404": err_response("No such key"),
                    "409": err_response("Used within if_idle, or ambiguous")
                }))
            }},
            "/admin/api-keys/{key_id}/rotate": {"post": {
                "summary": "Issue a replacement (inheriting label, scope and lifetime unless given), then revoke the old key or let it expire after the grace period",
                "operationId": "rotateKey",
                "security": security(),
                "parameters": [key_id_param()],
                "requestBody": {"required": false, "content": {"application/json": {"schema": ttl_body(rotate_props)}}},
                "responses": with(auth_errors(), json!({
                    "201": key_links("Rotated", json!({"$ref": "#/components/schemas/Issued"})),
                    "404": err_response("No such key"),
                    "409": err_response("The key cannot be rotated in its state"),
                    "413": err_response("Body too large"),
                    "415": err_response("Body is not application/json")
                }))
            }},
            "/admin/api-keys/{key_id}/disable": {"post": {
                "summary": "Suspend a key (reversible)",
                "operationId": "disableKey",
                "security": security(),
                "parameters": [key_id_param()],
                "responses": with(auth_errors(), json!({
                    "200": key_links("Disabled", json!({"type": "object", "required": ["success", "key_id", "state", "disabled"]})),
                    "404": err_response("No such key")
                }))
            }},
            "/admin/api-keys/{key_id}/enable": {"post": {
                "summary": "Re-enable a suspended key",
                "operationId": "enableKey",
                "security": security(),
                "parameters": [key_id_param()],
                "responses": with(auth_errors(), json!({
                    "200": key_links("Enabled", json!({"type": "object", "required": ["success", "key_id", "state", "disabled"]})),
                    "404": err_response("No such key")
                }))
            }},
            "/admin/api-key-events": {"get": {
                "summary": "Recent audit events, oldest first (admin, operator, auditor)",
                "security": security(),
                "parameters": [
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "action", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "key_id", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "required": false,
                     "schema": {"type": "string", "anyOf": [
                         {"pattern": SINCE_EPOCH_PATTERN}, {"pattern": SINCE_AGO_PATTERN}, {"format": "date-time"}]},
                     "description": "RFC 3339 time, epoch seconds, or a duration ago: a whole number with a unit (s, m, h, d, w) such as 2h"}
                ],
                "responses": with(auth_errors(), json!({
                    "200": ok_json("Events", json!({"type": "object", "required": ["success", "events"],
                        "properties": {"success": {"const": true}, "events": {"type": "array", "items": {"type": "object"}}}}))
                }))
            }},
            "/admin/change-window": {
                "get": {
                    "summary": "The change window: open or not, ticket, end (admin, operator, auditor)",
                    "security": security(),
                    "responses": with(auth_errors(), json!({
                        "200": ok_json("Window", json!({"type": "object", "required": ["success", "window"],
                            "properties": {"success": {"const": true}, "window": {"type": "object", "required": ["open"]}}}))
                    }))
                },
                "post": {
                    "summary": "Open a change window for a fixed time (admin); audited as window_open",
                    "security": security(),
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["ticket"],
                        "oneOf": [{"required": ["duration"]}, {"required": ["duration_seconds"]}],
                        "properties": {
                            "ticket": {"type": "string", "maxLength": 256,
                                       "pattern": format!("^[^{UNSAFE}]*[^{UNSAFE}{TRIMMED}][^{UNSAFE}]*$")},
                            "reason": text_schema(true),
                            "duration": {"type": "string", "pattern": WINDOW_DURATION_PATTERN,
                                         "description": "Whole minutes, hours or days such as 30m, 2h, 1d (1 minute to 7 days)"},
                            "duration_seconds": {"type": "number", "minimum": 60, "maximum": 604800}
                        }
                    }}}},
                    "responses": with(auth_errors(), json!({
                        "201": ok_json("Opened", json!({"type": "object", "required": ["success", "window"]})),
                        "400": err_response("Invalid body"),
                        "409": err_response("A window is open already"),
                        "413": err_response("Body too large"),
                        "415": err_response("Body is not JSON"),
                        "503": err_response("Store unavailable")
                    }))
                },
                "delete": {
                    "summary": "Close the open change window early (admin); audited as window_close",
                    "security": security(),
                    "parameters": [
                        {"name": "reason", "in": "query", "required": false, "schema": text_schema(false)}
                    ],
                    "responses": with(auth_errors(), json!({
                        "200": ok_json("Closed (or none was open)", json!({"type": "object", "required": ["success", "closed", "window"]})),
                        "400": err_response("Invalid reason"),
                        "503": err_response("Store unavailable")
                    }))
                }
            }
        }
    });
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.insert("/admin/lockdown".into(), lockdown_path);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_own_route_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = Vec::new();
        for (p, ops) in paths {
            for m in ops.as_object().unwrap().keys() {
                documented.push((m.clone(), p.clone()));
            }
        }
        documented.sort();
        let mut own: Vec<(String, String)> = OWN_ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        own.sort();
        assert_eq!(documented, own);
    }

    #[test]
    fn allow_lists_the_documented_methods_of_own_routes_only() {
        assert_eq!(allowed_methods("/health").as_deref(), Some("GET,HEAD"));
        assert_eq!(
            allowed_methods("/admin/change-window").as_deref(),
            Some("GET,HEAD,POST,DELETE")
        );
        assert_eq!(
            allowed_methods("/admin/api-keys/0123456789ab/enable").as_deref(),
            Some("POST")
        );
        assert_eq!(allowed_methods("/admin/api-keys/a/b/c"), None);
        assert_eq!(allowed_methods("/send"), None);
    }

    /// The patterns the document publishes are the handlers' grammars, not copies of them.
    #[test]
    fn inputs_publish_the_handlers_grammars() {
        let doc = document();
        let p = &doc["paths"];
        let rotate = &p["/admin/api-keys/{key_id}/rotate"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"];
        assert_eq!(rotate["grace"]["oneOf"][1]["pattern"], GRACE_PATTERN);
        assert_eq!(
            rotate["expires_in_days"]["oneOf"][0]["minimum"].as_f64(),
            Some(MIN_TTL_DAYS)
        );
        assert_eq!(
            rotate["expires_in_hours"]["oneOf"][0]["minimum"].as_f64(),
            Some(MIN_TTL_HOURS)
        );
        assert_eq!(
            rotate["expires_in_days"]["oneOf"][1]["pattern"],
            TTL_STRING_PATTERN
        );
        let revoke = &p["/admin/api-keys/{key_id}"]["delete"]["parameters"];
        assert_eq!(revoke[1]["schema"]["pattern"], IF_IDLE_PATTERN);
        let window = &p["/admin/change-window"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            window["properties"]["duration"]["pattern"],
            WINDOW_DURATION_PATTERN
        );
        assert!(window["oneOf"].is_array());
        // Free text excludes exactly the core's unsafe characters (C0, C1, bidi controls).
        let text = rotate["label"]["pattern"].as_str().unwrap().to_string();
        for c in [
            '\u{0}', '\u{1f}', '\u{7f}', '\u{9f}', '\u{61c}', '\u{200e}', '\u{202e}', '\u{2069}',
        ] {
            assert!(xai_keys_core::ops::is_unsafe_text_char(c), "{c:?}");
            assert!(
                text.contains(&format!("{:04x}", c as u32)),
                "{c:?} in {text}"
            );
        }
        // Every link names an operation that exists.
        let ids: Vec<String> = p
            .as_object()
            .unwrap()
            .values()
            .flat_map(|ops| ops.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str().map(String::from))
            .collect();
        for l in doc.to_string().split("\"operationId\":\"").skip(1) {
            let id = l.split('"').next().unwrap();
            assert!(ids.iter().any(|i| i == id), "link to {id}");
        }
    }

    #[test]
    fn refs_resolve() {
        let doc = document();
        let text = doc.to_string();
        for name in ["Scope", "Error", "KeyMeta", "Issued"] {
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
    }
}
