//! Security events: one vocabulary for everything a SOC is told, and the mapping from audit
//! lines to events.
//!
//! The audit log is the single source of truth for key lifecycle actions, whichever process
//! wrote them (the CLI, the gateway's admin API, another gateway). A reader turns each line
//! into exactly one [`SecurityEvent`] with [`from_audit_line`]; its `event_id` is derived from
//! the line itself (the line's chain hash, or a digest of its canonical JSON for legacy lines),
//! so a line read twice yields the same id and receivers can deduplicate on it.
//!
//! Severity rules (issue 4): `revoke`, `disable`, `rotate` are WARNING; `issue`, `enable` INFO;
//! an admin-scope issue is CRITICAL, and so is any lifecycle action taken while change windows
//! are required and none was open. Details never carry key material: audit lines hold only
//! SHA-256 key ids, and the fields copied are chosen by name.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, canonical_json, str_field};

/// How urgent an event is. Ordered: `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The upper-case name used in payloads (`INFO`, `WARNING`, `CRITICAL`), as the reference.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }

    /// Parses a severity name; accepts the reference's aliases `WARN` and `ERROR`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "INFO" => Some(Severity::Info),
            "WARNING" | "WARN" => Some(Severity::Warning),
            "CRITICAL" | "ERROR" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event type of every audit-log line (the reference's name, kept for its alert rules).
pub const API_KEY_AUDIT: &str = "api_key_audit";

/// Audit actions that change which keys are valid: the ones a change window covers.
pub const LIFECYCLE_ACTIONS: &[&str] = &[
    "issue", "revoke", "rotate", "disable", "enable", "restore", "adopt",
];

/// Every action xai-keys writes to the audit log (metrics label values; others map to `other`).
pub const AUDIT_ACTIONS: &[&str] = &[
    "issue",
    "revoke",
    "rotate",
    "disable",
    "enable",
    "expire",
    "restore",
    "adopt",
    "recover",
    "window_open",
    "window_close",
    "lockdown_on",
    "lockdown_off",
];

/// One security event.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvent {
    /// Stable identifier receivers deduplicate on.
    pub event_id: String,
    pub event_type: &'static str,
    pub severity: Severity,
    /// Epoch seconds (the audit line's own time for lifecycle events).
    pub timestamp: f64,
    pub details: Map<String, Value>,
}

impl SecurityEvent {
    /// A new event with a random id (`evt-` + 32 hex digits).
    pub fn new(
        event_type: &'static str,
        severity: Severity,
        timestamp: f64,
        details: Map<String, Value>,
    ) -> crate::Result<Self> {
        let mut r = [0u8; 16];
        getrandom::fill(&mut r).map_err(|e| crate::Error::Random(e.to_string()))?;
        Ok(SecurityEvent {
            event_id: format!("evt-{}", hex(&r)),
            event_type,
            severity,
            timestamp,
            details,
        })
    }

    /// The audit action for `api_key_audit` events (`None` otherwise).
    pub fn action(&self) -> Option<&str> {
        if self.event_type == API_KEY_AUDIT {
            self.details.get("action").and_then(Value::as_str)
        } else {
            None
        }
    }

    /// The payload: the reference's `{event_type, severity, timestamp, details}` plus
    /// `event_id`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("event_id".into(), self.event_id.clone().into());
        m.insert("event_type".into(), self.event_type.into());
        m.insert("severity".into(), self.severity.as_str().into());
        m.insert("timestamp".into(), self.timestamp.into());
        m.insert("details".into(), Value::Object(self.details.clone()));
        Value::Object(m)
    }

    /// Reads an event back from [`SecurityEvent::to_json`] (the event type must be known).
    pub fn from_json(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        let t = o.get("event_type")?.as_str()?;
        Some(SecurityEvent {
            event_id: o.get("event_id")?.as_str()?.to_string(),
            event_type: EVENT_TYPES.iter().find(|k| **k == t).copied()?,
            severity: Severity::parse(o.get("severity")?.as_str()?)?,
            timestamp: o.get("timestamp")?.as_f64()?,
            details: o.get("details")?.as_object()?.clone(),
        })
    }
}

/// Every event type this project emits (bounded: they are metrics label values).
pub const EVENT_TYPES: &[&str] = &[
    API_KEY_AUDIT,
    "api_auth_failure",
    "api_key_expired_attempt",
    "api_admin_auth_failure",
    "api_admin_network_refused",
    "api_rate_limited",
    "peer_auth_failure",
    "store_unreadable",
    "store_degraded",
    "store_stale",
    "store_stale_refusing",
    "store_recovered",
    "audit_chain_broken",
    "webhook_delivery_failure",
    "webhook_dead_lettered",
];

/// Fields of an audit line copied into an event's details (nothing else is: a line written
/// by another tool may carry fields we do not know to be safe).
const AUDIT_DETAIL_FIELDS: &[&str] = &[
    "action",
    "key_id",
    "scope",
    "label",
    "actor",
    "expires_at",
    "permanent",
    "replaced",
    "grace_seconds",
    "reason",
    "origin",
    "ticket",
    "change_window",
    "duration_seconds",
    "opened_at",
    "scheduled_end",
    "restored_keys",
    "revoked_since_backup",
    "dropped_keys",
    "part",
    "records_changed",
    "records_left",
    "detail",
    "keys",
    "admin_networks",
    "since",
    "replaces_previous",
];

/// Deepest nesting of a detail value copied from an audit line.
pub const MAX_DETAIL_DEPTH: usize = 8;
/// Largest detail value copied from an audit line (bytes of compact JSON).
pub const MAX_DETAIL_BYTES: usize = 16 * 1024;

/// A detail value as copied into an event: values nested deeper than [`MAX_DETAIL_DEPTH`] or
/// larger than [`MAX_DETAIL_BYTES`] (a line another tool wrote) are replaced by a note, so that
/// one odd line cannot make an event that a queue, a webhook or a log shipper refuses.
pub fn bounded(v: &Value) -> Value {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth(v) > MAX_DETAIL_DEPTH {
        return Value::String(format!(
            "(omitted: nested deeper than {MAX_DETAIL_DEPTH} levels; see the audit log)"
        ));
    }
    if matches!(v, Value::Array(_) | Value::Object(_) | Value::String(_))
        && v.to_string().len() > MAX_DETAIL_BYTES
    {
        return Value::String(format!(
            "(omitted: larger than {MAX_DETAIL_BYTES} bytes; see the audit log)"
        ));
    }
    v.clone()
}

/// The event id of an audit line: from its chain hash, else from its canonical JSON.
pub fn audit_event_id(line: &AuditEvent) -> String {
    // Only a hash as xai-keys writes them (hex) is used as is: a line written by another tool
    // may hold anything there, and slicing it could cut a character in two.
    if let Some(h) = str_field(line, "hash")
        .and_then(|h| h.get(..32))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return format!("audit-{h}");
    }
    let mut s = String::new();
    canonical_json(&Value::Object(line.clone()), &mut s);
    let d = Sha256::digest(s.as_bytes());
    format!("audit-{}", &hex(&d)[..32])
}

/// Whether an audit action is a lifecycle action (covered by change windows).
pub fn is_lifecycle(action: &str) -> bool {
    LIFECYCLE_ACTIONS.contains(&action)
}

/// Turns one audit line into its security event.
///
/// `window_required` is the reader's `XAI_REQUIRE_CHANGE_WINDOW`: a lifecycle line without a
/// `change_window` ticket is then CRITICAL. Every lifecycle event's details say
/// `in_change_window` (`"true"` / `"false"`, strings as in the alert labels).
pub fn from_audit_line(line: &AuditEvent, window_required: bool) -> SecurityEvent {
    let action = str_field(line, "action").unwrap_or("");
    let scope = str_field(line, "scope").unwrap_or("unknown");
    let mut details = Map::new();
    for f in AUDIT_DETAIL_FIELDS {
        if let Some(v) = line.get(*f) {
            details.insert((*f).to_string(), bounded(v));
        }
    }
    details.insert(
        "timestamp".into(),
        line.get("timestamp").cloned().unwrap_or(Value::Null),
    );
    let lifecycle = is_lifecycle(action);
    let in_window = line.get("change_window").is_some_and(|v| !v.is_null());
    if lifecycle {
        details.insert("in_change_window".into(), in_window.to_string().into());
    }
    let mut severity = match action {
        "revoke" | "disable" | "rotate" | "restore" | "adopt" | "recover" => Severity::Warning,
        _ => Severity::Info,
    };
    if action == "issue" && scope == "admin" {
        severity = Severity::Critical;
    }
    // An emergency lockdown pages; lifting it is worth a look.
    match action {
        "lockdown_on" => severity = Severity::Critical,
        "lockdown_off" => severity = Severity::Warning,
        _ => {}
    }
    if lifecycle && window_required && !in_window {
        severity = Severity::Critical;
    }
    SecurityEvent {
        event_id: audit_event_id(line),
        event_type: API_KEY_AUDIT,
        severity,
        timestamp: line.get("timestamp").and_then(Value::as_f64).unwrap_or(0.0),
        details,
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> AuditEvent {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn fuzz_regression_an_odd_hash_never_panics_the_event_id() {
        // Found by the audit_line fuzz target in CI: a multi-byte character across byte 32.
        let odd = format!("{}é{}", "a".repeat(31), "b".repeat(40));
        let id = audit_event_id(&line(json!({"action": "issue", "hash": odd})));
        assert!(id.starts_with("audit-") && id.len() == 38, "{id}");
        // Not hex: the canonical-JSON digest is used instead of the field.
        let id = audit_event_id(&line(json!({"hash": "z".repeat(64)})));
        assert_ne!(id, format!("audit-{}", "z".repeat(32)));
        // A real hash is used as is.
        let h = "0123456789abcdef".repeat(4);
        assert_eq!(
            audit_event_id(&line(json!({"hash": h}))),
            format!("audit-{}", &h[..32])
        );
    }

    #[test]
    fn severities_follow_the_rules() {
        let sev = |v: Value, req: bool| from_audit_line(&line(v), req).severity;
        assert_eq!(
            sev(json!({"action":"lockdown_on","reason":"incident"}), false),
            Severity::Critical
        );
        assert_eq!(
            sev(json!({"action":"lockdown_off","reason":"over"}), true),
            Severity::Warning
        );
        assert_eq!(
            sev(json!({"action":"issue","scope":"user"}), false),
            Severity::Info
        );
        assert_eq!(
            sev(json!({"action":"enable","scope":"user"}), false),
            Severity::Info
        );
        assert_eq!(
            sev(json!({"action":"revoke","scope":"user"}), false),
            Severity::Warning
        );
        assert_eq!(
            sev(json!({"action":"disable","scope":"user"}), false),
            Severity::Warning
        );
        assert_eq!(
            sev(json!({"action":"rotate","scope":"user"}), false),
            Severity::Warning
        );
        assert_eq!(
            sev(json!({"action":"issue","scope":"admin"}), false),
            Severity::Critical
        );
        // Outside a required window: critical; inside: the usual severity.
        assert_eq!(
            sev(json!({"action":"issue","scope":"user"}), true),
            Severity::Critical
        );
        assert_eq!(
            sev(
                json!({"action":"revoke","scope":"user","change_window":"CHG-1"}),
                true
            ),
            Severity::Warning
        );
        // Opening a window is not itself a lifecycle action.
        assert_eq!(
            sev(json!({"action":"window_open","ticket":"CHG-1"}), true),
            Severity::Info
        );
    }

    #[test]
    fn details_are_chosen_and_say_the_window() {
        let e = from_audit_line(
            &line(
                json!({"timestamp": 5.0, "action":"revoke","key_id":"ab","scope":"user","label":"x",
                         "api_key":"xai_secret", "hash":"0123456789abcdef0123456789abcdef99"}),
            ),
            false,
        );
        assert_eq!(e.event_id, "audit-0123456789abcdef0123456789abcdef");
        assert_eq!(e.timestamp, 5.0);
        assert!(!e.details.contains_key("api_key"));
        assert_eq!(e.details["in_change_window"], "false");
        assert_eq!(e.action(), Some("revoke"));
        let back = SecurityEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn deep_or_huge_details_are_replaced_by_a_note() {
        let mut deep = json!(1);
        for _ in 0..70 {
            deep = json!([deep]);
        }
        let e = from_audit_line(
            &line(
                json!({"action":"restore","detail": deep, "dropped_keys": ["a".repeat(20_000)], "keys": 3}),
            ),
            false,
        );
        assert!(
            e.details["detail"]
                .as_str()
                .unwrap()
                .contains("nested deeper")
        );
        assert!(
            e.details["dropped_keys"]
                .as_str()
                .unwrap()
                .contains("larger than")
        );
        assert_eq!(e.details["keys"], 3);
    }

    #[test]
    fn legacy_lines_get_stable_ids() {
        let l = line(json!({"timestamp": 1.0, "action":"issue","key_id":"ab"}));
        assert_eq!(audit_event_id(&l), audit_event_id(&l.clone()));
        let other = line(json!({"timestamp": 2.0, "action":"issue","key_id":"ab"}));
        assert_ne!(audit_event_id(&l), audit_event_id(&other));
    }

    #[test]
    fn severity_names() {
        assert_eq!(Severity::parse("warn"), Some(Severity::Warning));
        assert_eq!(Severity::parse("ERROR"), Some(Severity::Critical));
        assert_eq!(Severity::parse("loud"), None);
        assert!(Severity::Info < Severity::Critical);
    }
}
