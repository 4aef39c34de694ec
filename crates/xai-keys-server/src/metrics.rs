//! Prometheus metrics of the gateway, exposed in the Prometheus text format on `GET /metrics`.
//!
//! Labels take bounded values only (results, scopes, route classes, limiter names, event types
//! from [`xai_keys_core::events::EVENT_TYPES`], audit actions, configured webhook sinks), so a
//! caller cannot grow the series count. Counters move on the hot path and in the telemetry
//! pipeline; gauges that describe state (store health, inventory, change window, webhook
//! queues) are refreshed at scrape time from their owners.
//!
//! Each security event is counted exactly once (reference defect Q): in
//! `xai_security_events_total`, and in `_warning_total` or `_critical_total` by severity, all
//! labelled by `event_type` (and `action` for `api_key_audit`), so that the reference's alert
//! `increase(xai_security_events_warning_total{event_type="api_key_audit"}[5m]) > 0` works as
//! written (defect P).

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use xai_keys_core::events::{AUDIT_ACTIONS, SecurityEvent, Severity};
use xai_keys_core::record::KeyState;
use xai_keys_core::scope::Scope;

use crate::index::KeyIndex;
use crate::reload::StoreHealth;

type Labels3 = [(&'static str, &'static str); 3];
type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];
/// Event labels: `event_type`, plus `action` for audit events.
type EventLabels = Vec<(&'static str, &'static str)>;
/// Labels whose values come from configuration (webhook sink ids and hosts).
type OwnedLabels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

const SCOPES: [Scope; 4] = [Scope::User, Scope::Operator, Scope::Auditor, Scope::Admin];
const STATES: [KeyState; 3] = [KeyState::Active, KeyState::Expired, KeyState::Disabled];
/// "Expiring soon" horizon of `xai_api_keys_expiring_7d`.
pub const EXPIRING_SOON_SECS: f64 = 7.0 * 86_400.0;

/// Key counts of an index at one instant, for the inventory gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// `[scope][state]` in the order of `SCOPES` and `STATES`.
    pub counts: [[i64; 3]; 4],
    pub expiring_soon: [i64; 4],
    /// Keys served from the environment (`XAI_API_KEYS` …), by scope (also in `counts`).
    pub env: [i64; 4],
    /// Epoch seconds of the next expiry of an active key.
    pub next_expiry: Option<f64>,
}

impl Inventory {
    pub fn of(idx: &KeyIndex, now: f64) -> Self {
        let mut inv = Inventory::default();
        for e in idx.entries() {
            let si = SCOPES.iter().position(|s| *s == e.scope).unwrap_or(0);
            let state = e.state(now);
            let ti = STATES.iter().position(|s| *s == state).unwrap_or(0);
            inv.counts[si][ti] += 1;
            if e.env_var.is_some() {
                inv.env[si] += 1;
            }
            if state == KeyState::Active
                && let Some(x) = e.expires_at
            {
                if x - now <= EXPIRING_SOON_SECS {
                    inv.expiring_soon[si] += 1;
                }
                inv.next_expiry = Some(inv.next_expiry.map_or(x, |n: f64| n.min(x)));
            }
        }
        inv
    }
}

/// One webhook sink's queue, for the webhook gauges.
#[derive(Debug, Clone)]
pub struct SinkView {
    pub id: String,
    pub host: String,
    pub depth: usize,
    /// When the oldest queued event was accepted (epoch seconds).
    pub oldest_at: Option<f64>,
}

/// State the scrape refreshes gauges from.
pub struct ScrapeInputs<'a> {
    pub health: &'a StoreHealth,
    pub inventory: &'a Inventory,
    pub sinks: &'a [SinkView],
    /// `(open, expiry)` of the change window, `None` when unknown.
    pub window: Option<(bool, f64)>,
    pub window_required: bool,
    pub audit_chain_ok: bool,
    /// Events read but not yet queued.
    pub uncommitted: usize,
    /// The peer key ring in force: (role, fingerprint).
    pub peer_keys: &'a [(&'static str, String)],
    pub now: f64,
}

/// The `action` label value of an audit action (bounded: unknown actions are `other`).
pub fn action_label(action: &str) -> &'static str {
    AUDIT_ACTIONS
        .iter()
        .find(|a| **a == action)
        .copied()
        .unwrap_or("other")
}

/// The `scope` label value of a scope name (`unknown` for anything else).
pub fn scope_label(scope: &str) -> &'static str {
    SCOPES
        .iter()
        .map(|s| s.as_str())
        .find(|s| *s == scope)
        .unwrap_or("unknown")
}

pub struct Metrics {
    registry: Registry,
    auth: Family<Labels3, Counter>,
    auth_seconds: Histogram,
    upstream: Family<Labels1, Counter>,
    rate_limited: Family<Labels1, Counter>,
    admin_ops: Family<Labels2, Counter>,
    store_ok: Gauge,
    store_degraded: Gauge,
    store_unreadable: Gauge,
    store_warnings: Gauge,
    store_stale: Gauge,
    store_stale_refusing: Gauge,
    store_staleness: Gauge<f64, AtomicU64>,
    index_keys: Gauge,
    store_last_reload: Gauge<f64, std::sync::atomic::AtomicU64>,
    store_reloads: Counter,
    store_reload_failures: Counter,
    usage_flush_failures: Counter,
    enabled: bool,
    events: Family<EventLabels, Counter>,
    events_warning: Family<EventLabels, Counter>,
    events_critical: Family<EventLabels, Counter>,
    lifecycle: Family<Labels3, Counter>,
    events_dropped: Family<Labels1, Counter>,
    window_open: Gauge,
    window_required: Gauge,
    window_expiry: FloatGauge,
    audit_chain_ok: Gauge,
    keys: Family<Labels2, Gauge>,
    expiring_soon: Family<Labels1, Gauge>,
    next_expiry: Family<EventLabels, FloatGauge>,
    webhook_depth: Family<OwnedLabels, Gauge>,
    webhook_oldest_age: Family<OwnedLabels, FloatGauge>,
    webhook_deliveries: Family<OwnedLabels, Counter>,
    webhook_dead: Family<OwnedLabels, Counter>,
    webhook_info: Family<OwnedLabels, Gauge>,
    queue_write_failures: Counter,
    uncommitted: Gauge,
    peer_auth: Family<OwnedLabels, Counter>,
    egress: Family<Labels1, Counter>,
    peer_keys: Family<OwnedLabels, Gauge>,
    keyring_reload_failures: Counter,
    lockdown_active: Gauge,
    admin_network_refusals: Family<Labels1, Counter>,
    env_keys: Family<Labels1, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A new metric of type `M`, registered under `name` with `help`.
fn reg<M: prometheus_client::registry::Metric + Clone + Default>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_enabled(true)
    }

    /// `enabled: false` (`XAI_METRICS=0`) makes the per-request counters no-ops; `/metrics`
    /// then answers 404.
    pub fn with_enabled(enabled: bool) -> Self {
        let mut r = Registry::default();
        let auth: Family<Labels3, Counter> = reg(
            &mut r,
            "xai_api_auth_requests",
            "Authentication decisions by result (allowed or the refusal reason), key scope and route class",
        );
        let auth_seconds = Histogram::new([
            0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.001, 0.01,
        ]);
        r.register(
            "xai_api_auth_decision_seconds",
            "Time to extract credentials and decide a request",
            auth_seconds.clone(),
        );
        let upstream: Family<Labels1, Counter> = reg(
            &mut r,
            "xai_gateway_upstream_requests",
            "Proxied requests by outcome (ok, connect_error, timeout, body_too_large, no_upstream)",
        );
        let rate_limited: Family<Labels1, Counter> = reg(
            &mut r,
            "xai_api_rate_limited",
            "Requests refused with 429 by limiter (admin, auth_failures)",
        );
        let admin_ops: Family<Labels2, Counter> = reg(
            &mut r,
            "xai_admin_api_operations",
            "Admin key API operations by operation and result",
        );
        let store_ok: Gauge = reg(
            &mut r,
            "xai_keys_store_ok",
            "1 when the key store is readable and matches its audit log",
        );
        let store_degraded: Gauge = reg(
            &mut r,
            "xai_keys_store_degraded",
            "1 when the store does not match its audit log (restrictions only applied)",
        );
        let store_unreadable: Gauge = reg(
            &mut r,
            "xai_keys_store_unreadable",
            "1 when the store cannot be read (last good index served)",
        );
        let store_stale: Gauge = reg(
            &mut r,
            "xai_keys_store_stale",
            "1 when a networked store (etcd) has not confirmed the index lately (last good index served)",
        );
        let store_stale_refusing: Gauge = reg(
            &mut r,
            "xai_keys_store_stale_refusing",
            "1 when the store went unconfirmed past XAI_STORE_MAX_STALENESS and every key is refused",
        );
        let store_staleness: Gauge<f64, AtomicU64> = reg(
            &mut r,
            "xai_keys_store_staleness_seconds",
            "Seconds since a networked store last confirmed the index (0 when confirmed, or a file store)",
        );
        let store_warnings: Gauge = reg(
            &mut r,
            "xai_keys_store_warnings",
            "Warnings of the last store load (such as files readable by group or others), listed in /health",
        );
        let index_keys: Gauge = reg(
            &mut r,
            "xai_keys_index_keys",
            "Keys in the gateway's in-memory index",
        );
        let store_last_reload: Gauge<f64, AtomicU64> = reg(
            &mut r,
            "xai_keys_store_last_reload_timestamp_seconds",
            "Unix time of the last successful store reload",
        );
        let store_reloads: Counter =
            reg(&mut r, "xai_keys_store_reloads", "Successful store reloads");
        let store_reload_failures: Counter = reg(
            &mut r,
            "xai_keys_store_reload_failures",
            "Failed store reloads",
        );
        let usage_flush_failures: Counter = reg(
            &mut r,
            "xai_keys_usage_flush_failures",
            "Failed writes of the last-use sidecar (usage kept for the next flush)",
        );
        let events: Family<EventLabels, Counter> = reg(
            &mut r,
            "xai_security_events",
            "Security events by event_type (and action for api_key_audit), each counted once",
        );
        let events_warning: Family<EventLabels, Counter> = reg(
            &mut r,
            "xai_security_events_warning",
            "Security events of severity WARNING",
        );
        let events_critical: Family<EventLabels, Counter> = reg(
            &mut r,
            "xai_security_events_critical",
            "Security events of severity CRITICAL",
        );
        let lifecycle: Family<Labels3, Counter> = reg(
            &mut r,
            "xai_key_lifecycle_actions",
            "Key lifecycle actions from the audit log (CLI and API alike) by action, scope and whether a change window was open",
        );
        let events_dropped: Family<Labels1, Counter> = reg(
            &mut r,
            "xai_security_events_dropped",
            "Gateway-side security events that could not be queued (pipeline full)",
        );
        let window_open: Gauge = reg(
            &mut r,
            "xai_change_window_open",
            "1 while a change window is open",
        );
        let window_required: Gauge = reg(
            &mut r,
            "xai_change_window_required",
            "1 when lifecycle actions must happen inside a change window (XAI_REQUIRE_CHANGE_WINDOW)",
        );
        let window_expiry: FloatGauge = reg(
            &mut r,
            "xai_change_window_expiry_timestamp_seconds",
            "Unix time the open change window ends (0 when none is open)",
        );
        let audit_chain_ok: Gauge = reg(
            &mut r,
            "xai_keys_audit_chain_ok",
            "1 while the audit log's hash chain checks out, 0 once a break was seen",
        );
        let keys: Family<Labels2, Gauge> = reg(
            &mut r,
            "xai_api_keys",
            "Keys in the gateway's index by scope and state",
        );
        let expiring_soon: Family<Labels1, Gauge> = reg(
            &mut r,
            "xai_api_keys_expiring_7d",
            "Active keys that expire within 7 days, by scope",
        );
        let next_expiry: Family<EventLabels, FloatGauge> = reg(
            &mut r,
            "xai_api_key_next_expiry_seconds",
            "Seconds until the next active key expires (absent when no active key expires)",
        );
        let webhook_depth: Family<OwnedLabels, Gauge> = reg(
            &mut r,
            "xai_security_webhook_queue_depth",
            "Events queued for a webhook sink",
        );
        let webhook_oldest_age: Family<OwnedLabels, FloatGauge> = reg(
            &mut r,
            "xai_security_webhook_oldest_event_age_seconds",
            "Age of the oldest event queued for a webhook sink (0 when empty)",
        );
        let webhook_deliveries: Family<OwnedLabels, Counter> = reg(
            &mut r,
            "xai_security_webhook_deliveries",
            "Webhook delivery attempts by sink and result (success, http_error, timeout, connect_error)",
        );
        let webhook_dead: Family<OwnedLabels, Counter> = reg(
            &mut r,
            "xai_security_webhook_dead_lettered",
            "Events moved to the dead-letter file, by sink and reason (max_age, queue_full, sink_removed)",
        );
        let webhook_info: Family<OwnedLabels, Gauge> = reg(
            &mut r,
            "xai_security_webhook_sink_info",
            "Configured webhook sinks: id and host (the URL's path is never exported)",
        );
        let queue_write_failures: Counter = reg(
            &mut r,
            "xai_security_event_queue_write_failures",
            "Failed appends to the security event queue (disk full, read-only): events are held in memory, not counted or logged, until one succeeds",
        );
        let uncommitted: Gauge = reg(
            &mut r,
            "xai_security_events_uncommitted",
            "Security events read but not yet in the queue (non-zero only while the queue cannot be written)",
        );
        let peer_auth: Family<OwnedLabels, Counter> = reg(
            &mut r,
            "xai_peer_auth",
            "Requests on peer routes by result (signed, legacy, or the refusal reason) and key fingerprint (unknown for keys outside the ring)",
        );
        let egress: Family<Labels1, Counter> = reg(
            &mut r,
            "xai_peer_egress_requests",
            "Requests through the peer egress proxy by result (signed, unsigned, or the refusal)",
        );
        let peer_keys: Family<OwnedLabels, Gauge> = reg(
            &mut r,
            "xai_peer_key_info",
            "The peer key ring in force: one series per key, by role (current, next, previous) and fingerprint",
        );
        let keyring_reload_failures: Counter = reg(
            &mut r,
            "xai_peer_keyring_reload_failures",
            "Keyring file changes (or SIGHUPs) that could not be used: the previous ring stayed in force",
        );
        let lockdown_active: Gauge = reg(
            &mut r,
            "xai_lockdown_active",
            "1 while an emergency lockdown is in force (`xai-keys lockdown on`; an unreadable lockdown file counts as on)",
        );
        let admin_network_refusals: Family<Labels1, Counter> = reg(
            &mut r,
            "xai_admin_network_refusals",
            "Requests to /admin/* refused because of the client's network, by what refused them (allow_list, lockdown)",
        );
        let env_keys: Family<Labels1, Gauge> = reg(
            &mut r,
            "xai_api_env_keys",
            "Keys served from the environment (XAI_API_KEYS, XAI_API_ADMIN_KEYS, XAI_API_ADMIN_TOKEN) by scope: they never expire and cannot be revoked (`xai-keys import-env`)",
        );
        let _ = admin_network_refusals.get_or_create(&[("by", "allow_list")]);
        let _ = admin_network_refusals.get_or_create(&[("by", "lockdown")]);
        // Series exist from the start at zero: `increase()` in an alert rule cannot see the
        // first event of a series that appears with it.
        for t in xai_keys_core::events::EVENT_TYPES {
            if *t == xai_keys_core::events::API_KEY_AUDIT {
                for a in AUDIT_ACTIONS.iter().chain(["other"].iter()) {
                    let l: EventLabels = vec![("event_type", t), ("action", a)];
                    let _ = events.get_or_create(&l);
                    let _ = events_warning.get_or_create(&l);
                    let _ = events_critical.get_or_create(&l);
                }
            } else {
                let l: EventLabels = vec![("event_type", t)];
                let _ = events.get_or_create(&l);
                let _ = events_warning.get_or_create(&l);
                let _ = events_critical.get_or_create(&l);
            }
        }
        for a in xai_keys_core::events::LIFECYCLE_ACTIONS {
            for sc in SCOPES.iter().map(|s| s.as_str()).chain(["unknown"]) {
                for w in ["true", "false"] {
                    let _ = lifecycle.get_or_create(&[
                        ("action", *a),
                        ("scope", sc),
                        ("in_change_window", w),
                    ]);
                }
            }
        }
        let _ = events_dropped.get_or_create(&[("reason", "backpressure")]);
        let _ = events_dropped.get_or_create(&[("reason", "invalid")]);
        audit_chain_ok.set(1);
        Metrics {
            env_keys,
            lockdown_active,
            admin_network_refusals,
            peer_keys,
            keyring_reload_failures,
            egress,
            peer_auth,
            queue_write_failures,
            uncommitted,
            enabled,
            events,
            events_warning,
            events_critical,
            lifecycle,
            events_dropped,
            window_open,
            window_required,
            window_expiry,
            audit_chain_ok,
            keys,
            expiring_soon,
            next_expiry,
            webhook_depth,
            webhook_oldest_age,
            webhook_deliveries,
            webhook_dead,
            webhook_info,
            registry: r,
            auth,
            auth_seconds,
            upstream,
            rate_limited,
            admin_ops,
            store_ok,
            store_degraded,
            store_unreadable,
            store_warnings,
            store_stale,
            store_stale_refusing,
            store_staleness,
            index_keys,
            store_last_reload,
            store_reloads,
            store_reload_failures,
            usage_flush_failures,
        }
    }

    /// Whether a lockdown is in force (set by the lockdown poller, whatever `XAI_METRICS` says).
    pub fn set_lockdown(&self, active: bool) {
        self.lockdown_active.set(i64::from(active));
    }

    /// A request to `/admin/*` refused by the allow-list or the lockdown.
    pub fn admin_network_refused(&self, by: &'static str) {
        self.admin_network_refusals
            .get_or_create(&[("by", by)])
            .inc();
    }

    /// An authentication result decided outside `auth::decide` (peer routes): counted, not timed.
    pub fn auth_count(&self, result: &'static str, scope: &'static str, route_class: &'static str) {
        if self.enabled {
            self.auth
                .get_or_create(&[
                    ("result", result),
                    ("scope", scope),
                    ("route_class", route_class),
                ])
                .inc();
        }
    }

    pub fn auth(
        &self,
        result: &'static str,
        scope: &'static str,
        route_class: &'static str,
        secs: f64,
    ) {
        if !self.enabled {
            return;
        }
        self.auth
            .get_or_create(&[
                ("result", result),
                ("scope", scope),
                ("route_class", route_class),
            ])
            .inc();
        self.auth_seconds.observe(secs);
    }

    pub fn upstream(&self, outcome: &'static str) {
        self.upstream.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn rate_limited(&self, limiter: &'static str) {
        self.rate_limited
            .get_or_create(&[("limiter", limiter)])
            .inc();
    }

    pub fn admin_op(&self, op: &'static str, result: &'static str) {
        self.admin_ops
            .get_or_create(&[("operation", op), ("result", result)])
            .inc();
    }

    pub fn usage_flush_failed(&self) {
        self.usage_flush_failures.inc();
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts one security event once, by type and severity; lifecycle audit events also by
    /// action, scope and change window.
    pub fn security_event(&self, ev: &SecurityEvent) {
        let mut labels: EventLabels = vec![("event_type", ev.event_type)];
        if let Some(a) = ev.action() {
            labels.push(("action", action_label(a)));
        }
        self.events.get_or_create(&labels).inc();
        match ev.severity {
            Severity::Warning => {
                self.events_warning.get_or_create(&labels).inc();
            }
            Severity::Critical => {
                self.events_critical.get_or_create(&labels).inc();
            }
            Severity::Info => {}
        }
        if let Some(a) = ev
            .action()
            .filter(|a| xai_keys_core::events::is_lifecycle(a))
        {
            let scope = ev
                .details
                .get("scope")
                .and_then(serde_json::Value::as_str)
                .map_or("unknown", scope_label);
            let in_window = ev
                .details
                .get("in_change_window")
                .and_then(serde_json::Value::as_str)
                == Some("true");
            self.lifecycle
                .get_or_create(&[
                    ("action", action_label(a)),
                    ("scope", scope),
                    ("in_change_window", if in_window { "true" } else { "false" }),
                ])
                .inc();
        }
    }

    /// A request on a peer route: `result` is `signed`, `legacy` or a refusal code; `key` a
    /// fingerprint of the ring or `unknown`.
    pub fn peer_auth(&self, result: &'static str, key: &str) {
        self.peer_auth
            .get_or_create(&vec![
                ("result", result.to_string()),
                ("key", key.to_string()),
            ])
            .inc();
    }

    pub fn keyring_reload_failed(&self) {
        self.keyring_reload_failures.inc();
    }

    pub fn egress(&self, result: &'static str) {
        self.egress.get_or_create(&[("result", result)]).inc();
    }

    /// An append to the event queue failed.
    pub fn event_queue_write_failed(&self) {
        self.queue_write_failures.inc();
    }

    /// A gateway-side event that could not be queued.
    pub fn event_dropped(&self, reason: &'static str) {
        self.events_dropped
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn webhook_delivery(&self, sink: &str, result: &'static str) {
        self.webhook_deliveries
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn webhook_dead_lettered(&self, sink: &str, reason: &str, n: u64) {
        self.webhook_dead
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc_by(n);
    }

    /// Renders the registry after refreshing the state gauges.
    pub fn render(&self, inp: &ScrapeInputs<'_>) -> String {
        let h = inp.health;
        let flag = |b: bool| i64::from(b);
        for (si, scope) in SCOPES.iter().enumerate() {
            for (ti, state) in STATES.iter().enumerate() {
                self.keys
                    .get_or_create(&[("scope", scope.as_str()), ("state", state.as_str())])
                    .set(inp.inventory.counts[si][ti]);
            }
            self.expiring_soon
                .get_or_create(&[("scope", scope.as_str())])
                .set(inp.inventory.expiring_soon[si]);
            self.env_keys
                .get_or_create(&[("scope", scope.as_str())])
                .set(inp.inventory.env[si]);
        }
        self.next_expiry.clear();
        if let Some(x) = inp.inventory.next_expiry {
            self.next_expiry
                .get_or_create(&Vec::new())
                .set((x - inp.now).max(0.0));
        }
        self.window_required.set(flag(inp.window_required));
        if let Some((open, expiry)) = inp.window {
            self.window_open.set(flag(open));
            self.window_expiry.set(if open { expiry } else { 0.0 });
        }
        self.audit_chain_ok.set(flag(inp.audit_chain_ok));
        self.peer_keys.clear();
        for (role, fp) in inp.peer_keys {
            self.peer_keys
                .get_or_create(&vec![
                    ("role", (*role).to_string()),
                    ("fingerprint", fp.clone()),
                ])
                .set(1);
        }
        self.uncommitted
            .set(i64::try_from(inp.uncommitted).unwrap_or(i64::MAX));
        for s in inp.sinks {
            let l = vec![("sink", s.id.clone())];
            self.webhook_depth
                .get_or_create(&l)
                .set(i64::try_from(s.depth).unwrap_or(i64::MAX));
            self.webhook_oldest_age
                .get_or_create(&l)
                .set(s.oldest_at.map_or(0.0, |t| (inp.now - t).max(0.0)));
            self.webhook_info
                .get_or_create(&vec![("sink", s.id.clone()), ("host", s.host.clone())])
                .set(1);
            for result in ["success", "http_error", "timeout", "connect_error"] {
                let _ = self.webhook_deliveries.get_or_create(&vec![
                    ("sink", s.id.clone()),
                    ("result", result.to_string()),
                ]);
            }
            for reason in ["max_age", "queue_full", "sink_removed", "rejected"] {
                let _ = self.webhook_dead.get_or_create(&vec![
                    ("sink", s.id.clone()),
                    ("reason", reason.to_string()),
                ]);
            }
        }
        self.store_ok.set(flag(h.status == "ok"));
        self.store_degraded.set(flag(h.status == "degraded"));
        self.store_unreadable.set(flag(h.status == "unreadable"));
        self.store_stale.set(flag(h.status.starts_with("stale")));
        self.store_stale_refusing
            .set(flag(h.status == "stale_refusing"));
        self.store_staleness.set(h.stale_for_secs.unwrap_or(0.0));
        self.store_warnings
            .set(i64::try_from(h.warnings.len()).unwrap_or(i64::MAX));
        self.index_keys
            .set(i64::try_from(h.keys).unwrap_or(i64::MAX));
        self.store_last_reload.set(h.last_reload.unwrap_or(0.0));
        self.store_reloads
            .inner()
            .store(h.reloads, Ordering::Relaxed);
        self.store_reload_failures
            .inner()
            .store(h.failed_reloads, Ordering::Relaxed);
        self.encode()
    }

    /// The registry as it stands, without refreshing the state gauges (counters are always
    /// current): for code that only reads counters.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
