//! The OpenAPI 3 document of the gateway's own API (`GET /admin/openapi.json`).
//!
//! Written as data next to the handlers it describes; a test checks that every route the
//! router serves itself is documented and that the document is well-formed, and the
//! integration tests validate real responses against the response schemas.

use serde_json::{Value, json};

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
];

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

fn security() -> Value {
    json!([{"AdminToken": []}, {"ApiKey": []}, {"Bearer": []}])
}

/// The document.
pub fn document() -> Value {
    let key_meta = json!({
        "type": "object",
        "required": ["label", "created", "scope", "expires_at", "permanent", "expired", "state"],
        "properties": {
            "label": {"type": "string"},
            "created": {"type": "number"},
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
    let ttl_props = json!({
        "label": {"type": "string", "maxLength": 256},
        "scope": {"type": "string", "description": "user (default), operator, auditor or admin (case-insensitive)"},
        "permanent": {"type": "boolean"},
        "expires_in_days": {"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]},
        "expires_in_hours": {"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]}
    });
    let rotate_props = with(
        ttl_props.clone(),
        json!({"grace": {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
                         "description": "How long the old key keeps working: seconds or a duration such as 24h (default 0: revoked at once)"}}),
    );
    json!({
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
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
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
                    "security": security(),
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false, "properties": ttl_props
                    }}}},
                    "responses": with(auth_errors(), json!({
                        "201": ok_json("Issued", json!({"$ref": "#/components/schemas/Issued"})),
                        "409": err_response("Conflict"),
                        "413": err_response("Body over XAI_API_MAX_JSON_BYTES"),
                        "415": err_response("Body is not application/json")
                    }))
                }
            },
            "/admin/api-keys/{key_id}": {"delete": {
                "summary": "Revoke a key",
                "security": security(),
                "parameters": [key_id_param(),
                    {"name": "if_idle", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "Refuse (409 recently_used) if the key was used within this duration, e.g. 15m"},
                    {"name": "reason", "in": "query", "required": false, "schema": {"type": "string", "maxLength": 256}}],
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
                "security": security(),
                "parameters": [key_id_param()],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false, "properties": rotate_props
                }}}},
                "responses": with(auth_errors(), json!({
                    "201": ok_json("Rotated", json!({"$ref": "#/components/schemas/Issued"})),
                    "404": err_response("No such key"),
                    "409": err_response("The key cannot be rotated in its state"),
                    "413": err_response("Body too large"),
                    "415": err_response("Body is not application/json")
                }))
            }},
            "/admin/api-keys/{key_id}/disable": {"post": {
                "summary": "Suspend a key (reversible)",
                "security": security(),
                "parameters": [key_id_param()],
                "responses": with(auth_errors(), json!({
                    "200": ok_json("Disabled", json!({"type": "object", "required": ["success", "key_id", "state", "disabled"]})),
                    "404": err_response("No such key")
                }))
            }},
            "/admin/api-keys/{key_id}/enable": {"post": {
                "summary": "Re-enable a suspended key",
                "security": security(),
                "parameters": [key_id_param()],
                "responses": with(auth_errors(), json!({
                    "200": ok_json("Enabled", json!({"type": "object", "required": ["success", "key_id", "state", "disabled"]})),
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
                    {"name": "since", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "RFC 3339 time, epoch seconds, or a duration ago (2h)"}
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
                        "properties": {
                            "ticket": {"type": "string", "minLength": 1, "maxLength": 256},
                            "reason": {"type": "string", "maxLength": 256},
                            "duration": {"type": "string", "description": "30m, 2h, 1d (1 minute to 7 days)"},
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
                        {"name": "reason", "in": "query", "required": false, "schema": {"type": "string", "maxLength": 256}}
                    ],
                    "responses": with(auth_errors(), json!({
                        "200": ok_json("Closed (or none was open)", json!({"type": "object", "required": ["success", "closed", "window"]})),
                        "400": err_response("Invalid reason"),
                        "503": err_response("Store unavailable")
                    }))
                }
            }
        }
    })
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
