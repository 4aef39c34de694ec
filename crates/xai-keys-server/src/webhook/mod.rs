//! Webhook forwarding of security events to SOC tooling.
//!
//! Events are accepted into a durable on-disk queue ([`queue`]) by the telemetry pipeline and
//! delivered by one async worker per sink, so a slow or dead sink delays only itself. Each
//! worker delivers its sink's events in order, at least once: an event is acknowledged in the
//! queue only after a 2xx answer. Failures are retried with capped exponential backoff and
//! full jitter for as long as the event is younger than `XAI_SECURITY_WEBHOOK_MAX_AGE`; after
//! that it goes to the dead-letter file (counted in metrics, never silently dropped).
//!
//! Payloads are the reference's `{event_type, severity, timestamp, details}` plus `event_id`
//! (receivers deduplicate on it: delivery is at least once), or a Slack-compatible
//! `{"text": …}` message. Sinks are named in logs and metrics by a short id derived from the
//! URL and by their host, never by the URL itself (a Slack webhook's path is its secret).

pub mod queue;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xai_keys_core::events::Severity;

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::relock;
use queue::Queue;

/// Payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{event_id, event_type, severity, timestamp, details}` (the reference's plus `event_id`).
    Reference,
    /// `{"text": "…"}` for Slack-compatible incoming webhooks, with `event_id` beside it.
    Slack,
}

/// One configured sink.
#[derive(Clone)]
pub struct SinkConfig {
    /// `sha256(url)` shortened: stable across restarts, reveals nothing of the URL.
    pub id: String,
    pub url: reqwest::Url,
    /// The URL's host (and port, when not the default), for logs and metrics.
    pub host: String,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("id", &self.id)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A bearer token, redacted from `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

impl Token {
    /// The `Authorization` value: `Bearer <token>`, or the token as given when it already
    /// starts with `Bearer ` (as the reference).
    fn header(&self) -> String {
        if self.0.to_ascii_lowercase().starts_with("bearer ") {
            self.0.clone()
        } else {
            format!("Bearer {}", self.0)
        }
    }
}

/// Webhook settings (`XAI_SECURITY_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub sinks: Vec<SinkConfig>,
    pub token: Option<Token>,
    pub timeout: Duration,
    pub min_severity: Severity,
    pub format: Format,
    /// Events older than this are dead-lettered instead of retried.
    pub max_age: Duration,
    /// First retry delay and cap of the exponential backoff.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            sinks: Vec::new(),
            token: None,
            timeout: Duration::from_secs(5),
            min_severity: Severity::Info,
            format: Format::Reference,
            max_age: Duration::from_secs(72 * 3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// Parses `XAI_SECURITY_WEBHOOK_URL`: comma-separated `http(s)://` URLs.
pub fn parse_sinks(raw: &str) -> Result<Vec<SinkConfig>, ConfigError> {
    let mut out: Vec<SinkConfig> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // The URL is never echoed: its path or query may be the credential.
        let url = reqwest::Url::parse(part).map_err(|e| {
            ConfigError(format!(
                "XAI_SECURITY_WEBHOOK_URL: entry {} is not a URL ({e}); give comma-separated http:// or https:// URLs",
                out.len() + 1
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError(format!(
                "XAI_SECURITY_WEBHOOK_URL: entry {} must be an http:// or https:// URL with a host",
                out.len() + 1
            )));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let d = Sha256::digest(url.as_str().as_bytes());
        let id: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
        if out.iter().any(|s| s.id == id) {
            return Err(ConfigError(format!(
                "XAI_SECURITY_WEBHOOK_URL: entry {} repeats an earlier URL",
                out.len() + 1
            )));
        }
        out.push(SinkConfig { id, url, host });
    }
    Ok(out)
}

impl WebhookConfig {
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = WebhookConfig::default();
        let get = |k: &str| crate::config::var(lookup, k);
        let dur =
            |k: &str, default: Duration, min: f64, max: f64| -> Result<Duration, ConfigError> {
                let Some(raw) = get(k) else {
                    return Ok(default);
                };
                // Plain numbers are seconds (the reference's TIMEOUT); otherwise `30s`, `72h`.
                let secs = match raw.parse::<f64>() {
                    Ok(s) => s,
                    Err(_) => humantime::parse_duration(&raw)
                        .map_err(|_| {
                            ConfigError(format!(
                                "{k}={raw:?}: expected seconds or a duration such as 30s, 5m, 72h"
                            ))
                        })?
                        .as_secs_f64(),
                };
                if !secs.is_finite() || secs < min || secs > max {
                    return Err(ConfigError(format!(
                        "{k}={raw:?}: must be from {min} s to {max} s"
                    )));
                }
                Ok(Duration::from_secs_f64(secs))
            };
        let min_severity = match get("XAI_SECURITY_WEBHOOK_MIN_SEVERITY") {
            None => d.min_severity,
            Some(raw) => Severity::parse(&raw).ok_or_else(|| {
                ConfigError(format!(
                    "XAI_SECURITY_WEBHOOK_MIN_SEVERITY={raw:?}: expected INFO, WARNING or CRITICAL"
                ))
            })?,
        };
        let format = match get("XAI_SECURITY_WEBHOOK_FORMAT").map(|s| s.to_ascii_lowercase()) {
            None => d.format,
            Some(f) if f == "reference" || f == "json" => Format::Reference,
            Some(f) if f == "slack" => Format::Slack,
            Some(f) => {
                return Err(ConfigError(format!(
                    "XAI_SECURITY_WEBHOOK_FORMAT={f:?}: expected json (the reference payload) or slack"
                )));
            }
        };
        let retry_min = dur("XAI_SECURITY_WEBHOOK_RETRY_MIN", d.retry_min, 0.01, 3600.0)?;
        let retry_max = dur(
            "XAI_SECURITY_WEBHOOK_RETRY_MAX",
            d.retry_max,
            0.01,
            86_400.0,
        )?;
        if retry_max < retry_min {
            return Err(ConfigError(
                "XAI_SECURITY_WEBHOOK_RETRY_MAX must not be shorter than XAI_SECURITY_WEBHOOK_RETRY_MIN".into(),
            ));
        }
        Ok(WebhookConfig {
            sinks: match get("XAI_SECURITY_WEBHOOK_URL") {
                Some(raw) => parse_sinks(&raw)?,
                None => Vec::new(),
            },
            token: match get("XAI_SECURITY_WEBHOOK_TOKEN") {
                None => None,
                Some(t) => {
                    let t = Token(t);
                    // Checked here so that a token that cannot be sent (a newline, say) stops
                    // the start instead of failing every delivery; the value is not echoed.
                    if reqwest::header::HeaderValue::from_str(&t.header()).is_err() {
                        return Err(ConfigError(
                            "XAI_SECURITY_WEBHOOK_TOKEN cannot be sent in an Authorization header (it contains control characters or non-ASCII text): check how the secret was written into the environment".into(),
                        ));
                    }
                    Some(t)
                }
            },
            timeout: dur("XAI_SECURITY_WEBHOOK_TIMEOUT", d.timeout, 0.1, 300.0)?,
            min_severity,
            format,
            max_age: dur(
                "XAI_SECURITY_WEBHOOK_MAX_AGE",
                d.max_age,
                1.0,
                365.0 * 86_400.0,
            )?,
            retry_min,
            retry_max,
        })
    }
}

/// The body sent for one event.
pub fn payload(format: Format, event: &Value) -> Value {
    match format {
        Format::Reference => event.clone(),
        Format::Slack => {
            let s = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or("");
            let d = event.get("details").cloned().unwrap_or(Value::Null);
            let ds = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
            let mut text = format!("[{}] {}", s("severity"), s("event_type"));
            for k in [
                "action", "scope", "key_id", "reason", "actor", "client", "route",
            ] {
                let v = ds(k);
                if !v.is_empty() {
                    let v = if k == "key_id" {
                        v.get(..12).unwrap_or(v)
                    } else {
                        v
                    };
                    text.push_str(&format!(" {k}={v}"));
                }
            }
            if let Some(w) = d.get("in_change_window").and_then(Value::as_str) {
                text.push_str(&format!(" in_change_window={w}"));
            }
            json!({"text": text, "event_id": s("event_id")})
        }
    }
}

/// Live state of one sink (shared by its worker, the pipeline and the scrape).
pub struct Sink {
    pub cfg: SinkConfig,
    /// Woken when events are queued.
    pub notify: tokio::sync::Notify,
    depth: AtomicU64,
    /// f64 bits of the oldest queued event's acceptance time (NaN: none).
    oldest_at: AtomicU64,
    failing: AtomicBool,
}

impl Sink {
    pub fn new(cfg: SinkConfig) -> Self {
        Sink {
            cfg,
            notify: tokio::sync::Notify::new(),
            depth: AtomicU64::new(0),
            oldest_at: AtomicU64::new(f64::NAN.to_bits()),
            failing: AtomicBool::new(false),
        }
    }

    /// Copies the queue's view of this sink into the atomics the scrape reads.
    pub fn refresh(&self, q: &Queue) {
        self.depth
            .store(q.depth(&self.cfg.id) as u64, Ordering::Relaxed);
        self.oldest_at.store(
            q.oldest_accepted_at(&self.cfg.id)
                .unwrap_or(f64::NAN)
                .to_bits(),
            Ordering::Relaxed,
        );
    }

    pub fn view(&self) -> crate::metrics::SinkView {
        let oldest = f64::from_bits(self.oldest_at.load(Ordering::Relaxed));
        crate::metrics::SinkView {
            id: self.cfg.id.clone(),
            host: self.cfg.host.clone(),
            depth: self.depth.load(Ordering::Relaxed) as usize,
            oldest_at: (!oldest.is_nan()).then_some(oldest),
        }
    }
}

/// What a delivery worker needs.
pub struct Worker {
    pub sink: Arc<Sink>,
    pub queue: Arc<Mutex<Queue>>,
    pub cfg: WebhookConfig,
    pub client: reqwest::Client,
    pub metrics: Arc<Metrics>,
    pub clock: crate::Clock,
    /// Reports webhook trouble as security events (once per outage, not per attempt).
    pub emit: crate::telemetry::Emitter,
}

/// Whether an event is a notice about webhook delivery itself.
fn is_webhook_notice(event: &Value) -> bool {
    matches!(
        event.get("event_type").and_then(Value::as_str),
        Some("webhook_delivery_failure" | "webhook_dead_lettered")
    )
}

/// Builds the HTTP client shared by the workers (rustls, no redirects: a webhook answering
/// with a redirect is misconfigured, and following it would send the token elsewhere).
pub fn client(cfg: &WebhookConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("xai-keys/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

/// Delay before retry `attempt` (1-based): full jitter over `min·2^(attempt-1)`, capped.
pub fn backoff(cfg: &WebhookConfig, attempt: u32) -> Duration {
    let step = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let exp = (cfg.retry_min.as_secs_f64() * step).min(cfg.retry_max.as_secs_f64());
    let mut r = [0u8; 4];
    let jitter = match getrandom::fill(&mut r) {
        Ok(()) => f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    // At least half the step, so a burst of failures cannot retry in a tight loop.
    Duration::from_secs_f64(exp * (0.5 + 0.5 * jitter))
}

/// Attempts a sink gets for an event it refuses as invalid (HTTP 400, 404, 405, 410, 411,
/// 413, 414, 415, 422) before the event is dead-lettered with reason `rejected`, so that one
/// event a receiver will never accept does not hold up every later one until it expires.
pub const MAX_REJECTIONS: u32 = 5;

/// Expired events dead-lettered in one write at most.
pub const DEAD_LETTER_BATCH: usize = 1000;

/// Why one delivery attempt failed.
#[derive(Debug)]
struct Failure {
    /// The `result` label of `xai_security_webhook_deliveries_total`.
    result: &'static str,
    problem: String,
    /// The receiver refused this event as such (retrying the same bytes cannot help).
    rejected: bool,
    /// The receiver's `Retry-After` (seconds form), if it sent one.
    retry_after: Option<Duration>,
}

/// Whether an HTTP status refuses the event itself rather than saying "not now" (408, 429,
/// 5xx) or "not you" (401, 403: a token to fix, after which the event is welcome).
fn refuses_event(status: u16) -> bool {
    matches!(status, 400 | 404 | 405 | 410 | 411 | 413 | 414 | 415 | 422)
}

impl Worker {
    /// Delivers this sink's events until `stop` turns true.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let id = self.sink.cfg.id.clone();
        let mut attempt: u32 = 0;
        let mut rejections: u32 = 0;
        // Delivered but not yet recorded in the queue (the disk refused the ack): not sent
        // again while the ack is retried; a restart before it succeeds sends them again.
        let mut unacked: Vec<u64> = Vec::new();
        loop {
            if *stop.borrow() {
                return;
            }
            if !unacked.is_empty() && self.ack(&unacked).await {
                unacked.clear();
            }
            let notified = self.sink.notify.notified();
            // The queue's mutex is also held across fsyncs: never wait for it on the runtime.
            let after = unacked.last().copied();
            let next = {
                let q = self.queue.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || relock(&q).next_for(&id, after))
                    .await
                    .ok()
                    .flatten()
            };
            let Some(ev) = next else {
                let wait = if unacked.is_empty() {
                    Duration::from_secs(5)
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    () = notified => {}
                    _ = stop.changed() => {}
                    // A fallback in case a notification is missed, and the ack retry.
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            };
            let now = (self.clock)();
            // Notices about webhook trouble are delivered like any event (after an outage the
            // sink learns of it), but one that expires makes no further notice: a dead sink
            // would otherwise keep producing notices about its own dead letters.
            let about_webhooks = is_webhook_notice(&ev.event);
            if now - ev.accepted_at > self.cfg.max_age.as_secs_f64() {
                self.dead_letter_expired(now).await;
                attempt = 0;
                rejections = 0;
                continue;
            }
            match self.deliver(&ev.event).await {
                Ok(()) => {
                    self.metrics.webhook_delivery(&id, "success");
                    if !self.ack(&[ev.seq]).await {
                        unacked.push(ev.seq);
                    }
                    let was_failing = self.sink.failing.swap(false, Ordering::Relaxed);
                    if attempt > 0 || was_failing {
                        tracing::info!(sink = %id, host = %self.sink.cfg.host, "webhook sink delivering again");
                    }
                    attempt = 0;
                    rejections = 0;
                }
                Err(f) => {
                    self.metrics.webhook_delivery(&id, f.result);
                    attempt = attempt.saturating_add(1);
                    if f.rejected {
                        rejections += 1;
                        if rejections >= MAX_REJECTIONS {
                            tracing::error!(sink = %id, host = %self.sink.cfg.host, problem = %f.problem, seq = ev.seq, "the webhook receiver refuses this event; moved to the dead-letter file");
                            self.dead_letter(ev.seq, now, "rejected", about_webhooks)
                                .await;
                            rejections = 0;
                            continue;
                        }
                    }
                    if !self.sink.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(sink = %id, host = %self.sink.cfg.host, problem = %f.problem, "webhook delivery failing; retrying with backoff");
                        self.emit.emit_event(
                            "webhook_delivery_failure",
                            Severity::Warning,
                            now,
                            json!({"sink": id, "host": self.sink.cfg.host, "result": f.result, "problem": f.problem}),
                        );
                    }
                    let mut wait = backoff(&self.cfg, attempt);
                    if let Some(ra) = f.retry_after {
                        wait = wait.max(ra).min(self.cfg.retry_max.max(wait));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Records deliveries in the queue; false when the queue could not be written.
    async fn ack(&self, seqs: &[u64]) -> bool {
        let q = self.queue.clone();
        let sink = self.sink.clone();
        let seqs = seqs.to_vec();
        let acked = tokio::task::spawn_blocking(move || {
            let mut g = relock(&q);
            let r = g.ack(&sink.cfg.id, &seqs);
            sink.refresh(&g);
            if let Some(e) = g.take_compaction_error() {
                tracing::warn!(error = %e, "webhook queue compaction failed; retried later");
            }
            r
        })
        .await;
        let id = &self.sink.cfg.id;
        match acked {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(sink = %id, error = %e, "cannot record a webhook delivery in the queue; retrying (the event is not sent again meanwhile)");
                false
            }
            Err(e) => {
                tracing::error!(sink = %id, error = %e, "webhook ack task failed");
                false
            }
        }
    }

    /// Moves an event to the dead-letter file. A notice goes to the sinks, at most one a
    /// minute per sink (the next one counts the rest), and never for a notice that was itself
    /// about webhook trouble (two dead sinks would otherwise feed each other).
    async fn dead_letter(&self, seq: u64, now: f64, reason: &'static str, about_webhooks: bool) {
        let q = self.queue.clone();
        let sink = self.sink.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut g = relock(&q);
            let r = g.dead_letter(&sink.cfg.id, &[seq], reason, now);
            sink.refresh(&g);
            r.map(|()| g.dead_letter_path())
        })
        .await;
        self.report_dead_letters(r, 1, reason, about_webhooks, now)
            .await;
    }

    /// Dead-letters every event of this sink that has outlived `max_age`, oldest first, up to
    /// [`DEAD_LETTER_BATCH`] at a time (one write, one log line: a sink down for days does not
    /// cost one fsync and one log line per event).
    async fn dead_letter_expired(&self, now: f64) {
        let q = self.queue.clone();
        let sink = self.sink.clone();
        let max_age = self.cfg.max_age.as_secs_f64();
        let r = tokio::task::spawn_blocking(move || {
            let mut g = relock(&q);
            let mut seqs = Vec::new();
            // A batch made only of webhook notices makes no further notice.
            let mut only_notices = true;
            let mut after = None;
            while seqs.len() < DEAD_LETTER_BATCH {
                match g.next_for(&sink.cfg.id, after) {
                    Some(e) if now - e.accepted_at > max_age => {
                        only_notices &= is_webhook_notice(&e.event);
                        after = Some(e.seq);
                        seqs.push(e.seq);
                    }
                    _ => break,
                }
            }
            let r = g.dead_letter(&sink.cfg.id, &seqs, "max_age", now);
            sink.refresh(&g);
            r.map(|()| (g.dead_letter_path(), seqs.len(), only_notices))
        })
        .await;
        let (r, n, only_notices) = match r {
            Ok(Ok((path, n, only))) => (Ok(Ok(path)), n, only),
            Ok(Err(e)) => (Ok(Err(e)), 0, true),
            Err(e) => (Err(e), 0, true),
        };
        self.report_dead_letters(r, n, "max_age", only_notices, now)
            .await;
    }

    async fn report_dead_letters(
        &self,
        r: Result<Result<std::path::PathBuf, queue::QueueError>, tokio::task::JoinError>,
        n: usize,
        reason: &'static str,
        about_webhooks: bool,
        now: f64,
    ) {
        let id = &self.sink.cfg.id;
        match r {
            Ok(Ok(_)) if n == 0 => {}
            Ok(Ok(path)) => {
                self.metrics.webhook_dead_lettered(id, reason, n as u64);
                tracing::error!(sink = %id, events = n, reason, file = %path.display(), "webhook events moved to the dead-letter file (`xai-keys dead-letters` prints them)");
                if !about_webhooks {
                    self.emit.emit_throttled(
                        &format!("webhook_dead_lettered|{id}|{reason}"),
                        "webhook_dead_lettered",
                        Severity::Warning,
                        now,
                        json!({"sink": id, "host": self.sink.cfg.host, "reason": reason, "max_age_seconds": self.cfg.max_age.as_secs_f64()}),
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(sink = %id, error = %e, "cannot dead-letter a webhook event; it stays queued");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => tracing::error!(sink = %id, error = %e, "dead-letter task failed"),
        }
    }

    /// One POST; anything but a 2xx answer is a [`Failure`].
    async fn deliver(&self, event: &Value) -> Result<(), Failure> {
        let mut req = self
            .client
            .post(self.sink.cfg.url.clone())
            .header("content-type", "application/json")
            .body(payload(self.cfg.format, event).to_string());
        if let Some(t) = &self.cfg.token {
            req = req.header("authorization", t.header());
        }
        if let Some(id) = event.get("event_id").and_then(Value::as_str) {
            req = req.header("idempotency-key", id);
        }
        let fail = |result, problem: &str| Failure {
            result,
            problem: problem.to_string(),
            rejected: false,
            retry_after: None,
        };
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err(Failure {
                    result: "http_error",
                    problem: format!("HTTP {status}"),
                    rejected: refuses_event(status),
                    retry_after,
                })
            }
            Err(e) if e.is_timeout() => Err(fail("timeout", "timed out")),
            Err(e) if e.is_connect() => Err(fail("connect_error", "connection failed")),
            // reqwest's Display may include the URL; keep only the kind.
            Err(e) if e.is_request() => Err(fail("connect_error", "request failed")),
            Err(_) => Err(fail("connect_error", "transport error")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_parsed_and_named_without_their_url() {
        let s = parse_sinks("https://hooks.slack.com/services/T/B/SECRET, http://127.0.0.1:9/x")
            .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].host, "hooks.slack.com");
        assert_eq!(s[1].host, "127.0.0.1:9");
        assert_eq!(s[0].id.len(), 12);
        assert!(!format!("{:?}", s[0]).contains("SECRET"));
        for bad in ["ftp://x/y", "not a url", "https://a/x,https://a/x"] {
            let e = parse_sinks(bad).unwrap_err().0;
            assert!(e.contains("XAI_SECURITY_WEBHOOK_URL"), "{e}");
            assert!(!e.contains("a/x"), "{e}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = WebhookConfig {
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..Default::default()
        };
        for attempt in 1..40 {
            let d = backoff(&cfg, attempt).as_secs_f64();
            let step = (2f64.powi(attempt as i32 - 1)).min(60.0);
            assert!(d >= step * 0.5 - 1e-9 && d <= step + 1e-9, "{attempt}: {d}");
        }
    }

    #[test]
    fn token_header_and_slack_payload() {
        assert_eq!(Token("abc".into()).header(), "Bearer abc");
        assert_eq!(Token("Bearer abc".into()).header(), "Bearer abc");
        assert_eq!(format!("{:?}", Token("abc".into())), "Token(redacted)");
        let ev = json!({"event_id":"e1","event_type":"api_key_audit","severity":"WARNING","timestamp":1.0,
                        "details":{"action":"revoke","key_id":"0123456789abcdef","scope":"user","in_change_window":"false"}});
        let p = payload(Format::Slack, &ev);
        let t = p["text"].as_str().unwrap();
        assert!(
            t.starts_with("[WARNING] api_key_audit action=revoke scope=user key_id=0123456789ab"),
            "{t}"
        );
        assert!(t.contains("in_change_window=false"));
        assert_eq!(payload(Format::Reference, &ev), ev);
    }
}
