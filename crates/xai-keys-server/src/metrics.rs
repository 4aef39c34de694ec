//! Prometheus metrics of the gateway, exposed in the Prometheus text format on `GET /metrics`.
//!
//! Labels take bounded values only (results, scopes, route classes, limiter names), so a caller
//! cannot grow the series count. Store-health series are refreshed from the index's health at
//! scrape time. The security-event families of the telemetry issue build on this registry.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reload::StoreHealth;

type Labels3 = [(&'static str, &'static str); 3];
type Labels1 = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    auth: Family<Labels3, Counter>,
    auth_seconds: Histogram,
    upstream: Family<Labels1, Counter>,
    rate_limited: Family<Labels1, Counter>,
    admin_ops: Family<[(&'static str, &'static str); 2], Counter>,
    store_ok: Gauge,
    store_degraded: Gauge,
    store_unreadable: Gauge,
    index_keys: Gauge,
    store_last_reload: Gauge<f64, std::sync::atomic::AtomicU64>,
    store_reloads: Counter,
    store_reload_failures: Counter,
    usage_flush_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let auth = Family::<Labels3, Counter>::default();
        r.register(
            "xai_api_auth_requests",
            "Authentication decisions by result (allowed or the refusal reason), key scope and route class",
            auth.clone(),
        );
        let auth_seconds = Histogram::new([
            0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.001, 0.01,
        ]);
        r.register(
            "xai_api_auth_decision_seconds",
            "Time to extract credentials and decide a request",
            auth_seconds.clone(),
        );
        let upstream = Family::<Labels1, Counter>::default();
        r.register(
            "xai_gateway_upstream_requests",
            "Proxied requests by outcome (ok, connect_error, timeout, body_too_large, no_upstream)",
            upstream.clone(),
        );
        let rate_limited = Family::<Labels1, Counter>::default();
        r.register(
            "xai_api_rate_limited",
            "Requests refused with 429 by limiter (admin, auth_failures)",
            rate_limited.clone(),
        );
        let admin_ops = Family::default();
        r.register(
            "xai_admin_api_operations",
            "Admin key API operations by operation and result",
            admin_ops.clone(),
        );
        let store_ok = Gauge::default();
        r.register(
            "xai_keys_store_ok",
            "1 when the key store is readable and matches its audit log",
            store_ok.clone(),
        );
        let store_degraded = Gauge::default();
        r.register(
            "xai_keys_store_degraded",
            "1 when the store does not match its audit log (restrictions only applied)",
            store_degraded.clone(),
        );
        let store_unreadable = Gauge::default();
        r.register(
            "xai_keys_store_unreadable",
            "1 when the store cannot be read (last good index served)",
            store_unreadable.clone(),
        );
        let index_keys = Gauge::default();
        r.register(
            "xai_keys_index_keys",
            "Keys in the gateway's in-memory index",
            index_keys.clone(),
        );
        let store_last_reload = Gauge::<f64, AtomicU64>::default();
        r.register(
            "xai_keys_store_last_reload_timestamp_seconds",
            "Unix time of the last successful store reload",
            store_last_reload.clone(),
        );
        let store_reloads = Counter::default();
        r.register(
            "xai_keys_store_reloads",
            "Successful store reloads",
            store_reloads.clone(),
        );
        let store_reload_failures = Counter::default();
        r.register(
            "xai_keys_store_reload_failures",
            "Failed store reloads",
            store_reload_failures.clone(),
        );
        let usage_flush_failures = Counter::default();
        r.register(
            "xai_keys_usage_flush_failures",
            "Failed writes of the last-use sidecar (usage kept for the next flush)",
            usage_flush_failures.clone(),
        );
        Metrics {
            registry: r,
            auth,
            auth_seconds,
            upstream,
            rate_limited,
            admin_ops,
            store_ok,
            store_degraded,
            store_unreadable,
            index_keys,
            store_last_reload,
            store_reloads,
            store_reload_failures,
            usage_flush_failures,
        }
    }

    pub fn auth(
        &self,
        result: &'static str,
        scope: &'static str,
        route_class: &'static str,
        secs: f64,
    ) {
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

    /// Renders the registry after refreshing the store-health series.
    pub fn render(&self, h: &StoreHealth) -> String {
        let flag = |b: bool| i64::from(b);
        self.store_ok.set(flag(h.status == "ok"));
        self.store_degraded.set(flag(h.status == "degraded"));
        self.store_unreadable.set(flag(h.status == "unreadable"));
        self.index_keys
            .set(i64::try_from(h.keys).unwrap_or(i64::MAX));
        self.store_last_reload.set(h.last_reload.unwrap_or(0.0));
        self.store_reloads
            .inner()
            .store(h.reloads, Ordering::Relaxed);
        self.store_reload_failures
            .inner()
            .store(h.failed_reloads, Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
