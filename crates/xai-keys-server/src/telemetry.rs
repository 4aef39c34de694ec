//! The security-event pipeline: one stream of events from the audit log and the gateway,
//! each counted once, logged once as a JSON line and queued durably for the webhooks.
//!
//! A dedicated thread (the core is synchronous) runs the pipeline:
//!
//! 1. It follows the audit log with [`xai_keys_core::audit::LogFollower`] every
//!    `XAI_AUDIT_FOLLOW_MS` (200 ms): every line, whichever process wrote it (the CLI, this
//!    gateway, another gateway on the same store), becomes one event
//!    ([`xai_keys_core::events::from_audit_line`]). Lines of an unfinished commit are not read
//!    until the commit completes. A chained line whose `prev_hash` is not the hash of the line
//!    before it raises `audit_chain_broken`.
//! 2. It drains the gateway-side events that request handlers and webhook workers hand to an
//!    [`Emitter`] (a bounded channel: a full pipeline counts the event as dropped in
//!    `xai_security_events_dropped_total` rather than slowing requests), and turns store-health
//!    changes into `store_unreadable` / `store_degraded` / `store_recovered`.
//! 3. It appends the batch to the webhook queue together with the log position reached (one
//!    fsynced record: [`crate::webhook::queue`]). Only then are the events counted in metrics
//!    and written as JSON lines, and the sink workers woken. A restart resumes from the
//!    recorded position, so no audit line is emitted twice or skipped; a crash between the
//!    append and the JSON line loses at most that line's log output, never the queued event.
//!
//! Repeated gateway-side events (one client failing authentication over and over) are
//! throttled per (type, client, reason): at most one per `THROTTLE_SECS`, the next one saying
//! how many were suppressed. Metrics still count every request in `xai_api_auth_requests_total`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use xai_keys_core::audit::{FollowFrom, LogFollower, is_chained, str_field};
use xai_keys_core::events::{EVENT_TYPES, SecurityEvent, Severity, from_audit_line};
use xai_keys_core::store::KeyStore;

use crate::Clock;
use crate::config::ConfigError;
use crate::metrics::{Metrics, SinkView};
use crate::reload::IndexHandle;
use crate::relock;
use crate::webhook::queue::{Queue, QueueError, QueueKey, QueueOptions};
use crate::webhook::{Sink, WebhookConfig, Worker};

/// Gateway-side events waiting for the pipeline, at most.
pub const CHANNEL_CAPACITY: usize = 65_536;
/// Repeats of one gateway-side event (same type, client, reason) within this many seconds
/// are folded into the next one.
pub const THROTTLE_SECS: f64 = 60.0;
/// Throttle entries kept at most (older ones are forgotten first).
const THROTTLE_ENTRIES: usize = 10_000;
/// Events held in memory while the queue cannot be written, at most; beyond it the pipeline
/// stops reading the log (it catches up once the queue is writable) and the channel fills.
const MAX_PENDING: usize = 50_000;
/// On a queue's first start, audit lines this recent are emitted; older ones are history.
pub const FRESH_START_LOOKBACK_SECS: f64 = 60.0;

/// Where each security event's JSON line goes (`XAI_SECURITY_EVENT_LOG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventLog {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

/// Telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `XAI_SECURITY_EVENT_LOG`: `stdout` (the default of `serve`), `stderr`, `off` or a file.
    pub event_log: EventLog,
    /// `XAI_REQUIRE_CHANGE_WINDOW`: lifecycle actions outside a window are CRITICAL.
    pub require_change_window: bool,
    /// `XAI_AUDIT_FOLLOW_MS` (200): how often the audit log is read.
    pub follow_interval: Duration,
    /// `XAI_SECURITY_WEBHOOK_QUEUE` (default `<store>.webhook-queue`).
    pub queue_path: Option<PathBuf>,
    /// `XAI_SECURITY_WEBHOOK_QUEUE_KEY`: encrypts the queue at rest.
    pub queue_key: Option<Arc<QueueKey>>,
    /// `XAI_SECURITY_WEBHOOK_QUEUE_MAX_EVENTS` (100000).
    pub queue_max_events: usize,
    pub webhooks: WebhookConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            event_log: EventLog::Off,
            require_change_window: false,
            follow_interval: Duration::from_millis(200),
            queue_path: None,
            queue_key: None,
            queue_max_events: 100_000,
            webhooks: WebhookConfig::default(),
        }
    }
}

impl TelemetryConfig {
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = TelemetryConfig::default();
        let get = |k: &str| crate::config::var(lookup, k);
        let event_log = match get("XAI_SECURITY_EVENT_LOG").as_deref() {
            None | Some("stdout") | Some("-") => EventLog::Stdout,
            Some("stderr") => EventLog::Stderr,
            Some("off") | Some("0") | Some("none") => EventLog::Off,
            Some(p) => EventLog::File(PathBuf::from(p)),
        };
        let require_change_window =
            crate::config::flag(lookup, "XAI_REQUIRE_CHANGE_WINDOW", d.require_change_window)?;
        // At most a second: events must reach the SOC within one.
        let follow_ms = crate::config::num(lookup, "XAI_AUDIT_FOLLOW_MS", 200u64, 10, 1000)?;
        let queue_key = match get("XAI_SECURITY_WEBHOOK_QUEUE_KEY") {
            Some(v) => Some(Arc::new(
                QueueKey::parse(&v).map_err(|e| ConfigError(e.to_string()))?,
            )),
            None => None,
        };
        let queue_max_events = crate::config::num(
            lookup,
            "XAI_SECURITY_WEBHOOK_QUEUE_MAX_EVENTS",
            d.queue_max_events,
            100,
            10_000_000,
        )?;
        Ok(TelemetryConfig {
            event_log,
            require_change_window,
            follow_interval: Duration::from_millis(follow_ms),
            queue_path: get("XAI_SECURITY_WEBHOOK_QUEUE").map(PathBuf::from),
            queue_key,
            queue_max_events,
            webhooks: WebhookConfig::from_lookup(lookup)?,
        })
    }
}

/// Per-key throttle of repeated gateway-side events.
#[derive(Default)]
struct Throttle {
    /// key → (time of the last emitted event, repeats suppressed since).
    seen: HashMap<String, (f64, u64)>,
}

impl Throttle {
    /// `Some(suppressed)` when an event with this key may be emitted now.
    fn admit(&mut self, key: &str, now: f64) -> Option<u64> {
        if let Some((at, n)) = self.seen.get_mut(key) {
            if now - *at < THROTTLE_SECS && now >= *at {
                *n += 1;
                return None;
            }
            let suppressed = *n;
            *at = now;
            *n = 0;
            return Some(suppressed);
        }
        if self.seen.len() >= THROTTLE_ENTRIES {
            self.seen.retain(|_, (at, _)| now - *at < THROTTLE_SECS);
            if self.seen.len() >= THROTTLE_ENTRIES {
                self.seen.clear();
            }
        }
        self.seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

/// Hands gateway-side events to the pipeline without blocking. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    tx: SyncSender<SecurityEvent>,
    metrics: Arc<Metrics>,
    throttle: Arc<Mutex<Throttle>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Emitter {
    /// Queues an event for the pipeline; a full pipeline counts it as dropped.
    pub fn emit(&self, ev: SecurityEvent) {
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                self.metrics.event_dropped("backpressure");
                // Logged at the first drop and then every 1000th, not per event.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        event_type = ev.event_type,
                        dropped = n + 1,
                        "security event pipeline full; events dropped (counted in xai_security_events_dropped_total)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Builds and queues an event with a fresh id. `details` must be a JSON object.
    pub fn emit_event(
        &self,
        event_type: &'static str,
        severity: Severity,
        now: f64,
        details: Value,
    ) {
        let details = match details {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        match SecurityEvent::new(event_type, severity, now, details) {
            Ok(ev) => self.emit(ev),
            Err(e) => tracing::error!(error = %e, event_type, "cannot create a security event id"),
        }
    }

    /// As [`Emitter::emit_event`], at most once per `THROTTLE_SECS` for one `key`; the event
    /// that passes says in `suppressed_repeats` how many were folded into it.
    pub fn emit_throttled(
        &self,
        key: &str,
        event_type: &'static str,
        severity: Severity,
        now: f64,
        mut details: Value,
    ) {
        let Some(suppressed) = relock(&self.throttle).admit(key, now) else {
            return;
        };
        if suppressed > 0
            && let Some(o) = details.as_object_mut()
        {
            o.insert("suppressed_repeats".into(), suppressed.into());
        }
        self.emit_event(event_type, severity, now, details);
    }
}

/// State the pipeline shares with the scrape.
struct Status {
    window: Mutex<Option<(bool, f64)>>,
    chain_ok: AtomicBool,
    /// Events read but not yet queued (the queue cannot be written).
    uncommitted: std::sync::atomic::AtomicUsize,
}

/// The running telemetry: pipeline thread, queue and sinks.
pub struct Telemetry {
    pub emitter: Emitter,
    pub sinks: Vec<Arc<Sink>>,
    pub queue: Arc<Mutex<Queue>>,
    cfg: TelemetryConfig,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The queue path used when `XAI_SECURITY_WEBHOOK_QUEUE` is not set: beside a file store.
pub fn default_queue_path(store_location: &str) -> Option<PathBuf> {
    (!store_location.contains("://"))
        .then(|| PathBuf::from(format!("{store_location}.webhook-queue")))
}

impl Telemetry {
    /// Opens the queue, resumes from its recorded log position and starts the pipeline.
    pub fn start(
        cfg: TelemetryConfig,
        store: Arc<dyn KeyStore>,
        index: Arc<IndexHandle>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Arc<Self>, String> {
        let path = cfg
            .queue_path
            .clone()
            .or_else(|| default_queue_path(&store.location()))
            .ok_or_else(|| {
                "set XAI_SECURITY_WEBHOOK_QUEUE: this store has no directory to keep the event queue in".to_string()
            })?;
        let now = clock();
        let sink_ids: Vec<String> = cfg.webhooks.sinks.iter().map(|s| s.id.clone()).collect();
        let (queue, rec) = Queue::open(
            &path,
            QueueOptions {
                key: cfg.queue_key.as_deref().cloned(),
                sinks: sink_ids,
                max_events: cfg.queue_max_events,
                sync: true,
            },
            now,
        )
        .map_err(|e| format!("security event queue: {e}"))?;
        if rec.torn_bytes > 0 {
            tracing::warn!(queue = %path.display(), bytes = rec.torn_bytes, "removed an interrupted append from the event queue (crash recovery)");
        }
        if rec.dead_lettered_sink_removed > 0 {
            metrics.webhook_dead_lettered(
                "removed",
                "sink_removed",
                rec.dead_lettered_sink_removed as u64,
            );
            tracing::warn!(events = rec.dead_lettered_sink_removed, file = %queue.dead_letter_path().display(), "events queued for webhook sinks that are no longer configured moved to the dead-letter file");
        }
        // A new queue has no position: read the log from its start, emitting only lines of
        // the last minute (such as the admin key `serve` bootstrapped just before starting)
        // and passing over older history.
        let skip_history = match rec.cursor {
            Some(_) => None,
            None => {
                let end = store
                    .log_follower(None)
                    .map_err(|e| format!("cannot follow the audit log: {e}"))?
                    .offset();
                Some(History {
                    before: now - FRESH_START_LOOKBACK_SECS,
                    until_offset: end,
                    skipped: 0,
                })
            }
        };
        let chain_broken = rec
            .cursor
            .as_ref()
            .and_then(|c| c.get("chain_broken"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let follower = follower_from(store.as_ref(), rec.cursor.as_ref())
            .map_err(|e| format!("cannot follow the audit log: {e}"))?;
        tracing::info!(
            queue = %path.display(),
            encrypted = cfg.queue_key.is_some(),
            sinks = ?cfg.webhooks.sinks.iter().map(|s| format!("{} ({})", s.id, s.host)).collect::<Vec<_>>(),
            min_severity = %cfg.webhooks.min_severity,
            pending = rec.pending,
            resumed = rec.cursor.is_some(),
            "security telemetry started"
        );
        let last_hash = rec
            .cursor
            .as_ref()
            .and_then(|c| c.get("last_hash"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let sinks: Vec<Arc<Sink>> = cfg
            .webhooks
            .sinks
            .iter()
            .map(|s| Arc::new(Sink::new(s.clone())))
            .collect();
        for s in &sinks {
            s.refresh(&queue);
        }
        let queue_dead_letter_path = queue.dead_letter_path();
        let queue = Arc::new(Mutex::new(queue));
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let emitter = Emitter {
            tx,
            metrics: metrics.clone(),
            throttle: Arc::new(Mutex::new(Throttle::default())),
            dropped: Arc::default(),
        };
        let status = Arc::new(Status {
            window: Mutex::new(None),
            chain_ok: AtomicBool::new(!chain_broken),
            uncommitted: std::sync::atomic::AtomicUsize::new(0),
        });
        if rec.dead_lettered_sink_removed > 0 {
            // The configuration dropped a sink with events still queued for it (a rotated
            // webhook URL counts as a new sink): the other sinks and the SOC hear of it.
            emitter.emit_event(
                "webhook_dead_lettered",
                Severity::Warning,
                now,
                json!({
                    "reason": "sink_removed",
                    "count": rec.dead_lettered_sink_removed,
                    "file": queue_dead_letter_path.display().to_string(),
                    "remedy": "`xai-keys dead-letters` prints them",
                }),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let out = open_event_log(&cfg.event_log)
            .map_err(|e| format!("XAI_SECURITY_EVENT_LOG: cannot open the event log: {e}"))?;
        let pipeline = Pipeline {
            rx,
            follower,
            last_hash,
            store,
            index,
            metrics: metrics.clone(),
            clock: clock.clone(),
            queue: queue.clone(),
            sinks: sinks.clone(),
            status: status.clone(),
            require_window: cfg.require_change_window,
            min_severity: cfg.webhooks.min_severity,
            interval: cfg.follow_interval,
            stop: stop.clone(),
            out,
            pending: Vec::new(),
            last_health: "ok",
            last_window_check: None,
            last_cursor: None,
            last_error_log: None,
            skip_history,
        };
        let thread = std::thread::Builder::new()
            .name("xai-keys-telemetry".into())
            .spawn(move || pipeline.run())
            .map_err(|e| format!("cannot start the telemetry thread: {e}"))?;
        Ok(Arc::new(Telemetry {
            emitter,
            sinks,
            queue,
            cfg,
            status,
            metrics,
            clock,
            stop,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Starts one delivery worker per sink on the current tokio runtime.
    pub fn spawn_workers(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        if self.sinks.is_empty() {
            return Ok(Vec::new());
        }
        let client = crate::webhook::client(&self.cfg.webhooks)?;
        Ok(self
            .sinks
            .iter()
            .map(|s| {
                let w = Worker {
                    sink: s.clone(),
                    queue: self.queue.clone(),
                    cfg: self.cfg.webhooks.clone(),
                    client: client.clone(),
                    metrics: self.metrics.clone(),
                    clock: self.clock.clone(),
                    emit: self.emitter.clone(),
                };
                tokio::spawn(w.run(stop.clone()))
            })
            .collect())
    }

    pub fn sink_views(&self) -> Vec<SinkView> {
        self.sinks.iter().map(|s| s.view()).collect()
    }

    /// `(open, expiry)` of the change window as last read (within a second).
    pub fn window(&self) -> Option<(bool, f64)> {
        *relock(&self.status.window)
    }

    pub fn window_required(&self) -> bool {
        self.cfg.require_change_window
    }

    pub fn audit_chain_ok(&self) -> bool {
        self.status.chain_ok.load(Ordering::Relaxed)
    }

    /// Events read but not yet in the queue (non-zero only while the queue cannot be written).
    pub fn uncommitted(&self) -> usize {
        self.status.uncommitted.load(Ordering::Relaxed)
    }

    /// Stops the pipeline after a final pass (blocking): events handed over before the call
    /// are queued and logged.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = relock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn follower_from(
    store: &dyn KeyStore,
    cursor: Option<&Value>,
) -> xai_keys_core::Result<LogFollower> {
    let pos = cursor.and_then(|c| {
        let offset = c.get("offset")?.as_u64()?;
        let file_id = c.get("file_id").and_then(|f| {
            let a = f.as_array()?;
            Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))
        });
        let last_hash = c
            .get("last_hash")
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(FollowFrom {
            offset,
            file_id,
            last_hash,
        })
    });
    // No position: from the start (see `FRESH_START_LOOKBACK_SECS`).
    store.log_follower(Some(pos.unwrap_or(FollowFrom {
        offset: 0,
        file_id: None,
        last_hash: None,
    })))
}

fn open_event_log(cfg: &EventLog) -> std::io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match cfg {
        EventLog::Off => None,
        EventLog::Stdout => Some(Box::new(std::io::stdout())),
        EventLog::Stderr => Some(Box::new(std::io::stderr())),
        EventLog::File(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?,
            ))
        }
    })
}

struct Pipeline {
    rx: Receiver<SecurityEvent>,
    follower: LogFollower,
    last_hash: Option<String>,
    store: Arc<dyn KeyStore>,
    index: Arc<IndexHandle>,
    metrics: Arc<Metrics>,
    clock: Clock,
    queue: Arc<Mutex<Queue>>,
    sinks: Vec<Arc<Sink>>,
    status: Arc<Status>,
    require_window: bool,
    min_severity: Severity,
    interval: Duration,
    stop: Arc<AtomicBool>,
    out: Option<Box<dyn Write + Send>>,
    /// Events read but not yet in the queue (kept while the queue cannot be written).
    pending: Vec<SecurityEvent>,
    last_health: &'static str,
    last_window_check: Option<Instant>,
    last_cursor: Option<Value>,
    last_error_log: Option<Instant>,
    /// On a queue's first start: the history to pass over.
    skip_history: Option<History>,
}

/// Audit lines a new queue passes over: those before the log's end at start that are older
/// than the lookback.
struct History {
    before: f64,
    until_offset: u64,
    skipped: u64,
}

impl Pipeline {
    fn run(mut self) {
        // A break seen by an earlier run is kept until the log's whole chain checks out again
        // (the log restored from a backup, say); a still-broken log keeps the gauge at 0.
        if !self.status.chain_ok.load(Ordering::Relaxed) {
            match self.store.check_log_chain() {
                Ok(None) => {
                    tracing::info!("the audit log's hash chain checks out again");
                    self.status.chain_ok.store(true, Ordering::Relaxed);
                }
                Ok(Some((line, problem))) => tracing::error!(
                    line,
                    problem,
                    "the audit log's hash chain is still broken; run `xai-keys verify`"
                ),
                Err(e) => self.log_error("cannot check the audit log's chain", &e.to_string()),
            }
        }
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping {
                match self.rx.recv_timeout(self.interval) {
                    Ok(ev) => self.pending.push(ev),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(self.interval),
                }
            }
            self.gather();
            self.commit();
            if stopping {
                return;
            }
        }
    }

    /// Collects what happened since the last pass.
    fn gather(&mut self) {
        while self.pending.len() < MAX_PENDING {
            match self.rx.try_recv() {
                Ok(ev) => self.pending.push(ev),
                Err(_) => break,
            }
        }
        let now = (self.clock)();
        self.check_health(now);
        if self.pending.len() < MAX_PENDING {
            self.follow(now);
        }
        if self
            .last_window_check
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_window_check = Some(Instant::now());
            match self.store.change_window() {
                Ok(w) => {
                    *relock(&self.status.window) =
                        Some(w.map_or((false, 0.0), |w| (w.is_open(now), w.expires_at)));
                }
                Err(e) => self.log_error("cannot read the change window", &e.to_string()),
            }
        }
    }

    fn follow(&mut self, now: f64) {
        let history = self
            .skip_history
            .as_ref()
            .filter(|h| self.follower.offset() < h.until_offset)
            .map(|h| h.before);
        let batch = match self.follower.poll() {
            Ok(b) => b,
            Err(e) => {
                self.log_error("cannot read the audit log", &e.to_string());
                return;
            }
        };
        if let Some(why) = batch.reset {
            // Truncated or replaced: xai-keys never does either (restore appends), so it is
            // reported; the gauge then says whether the new log's chain holds.
            let holds = matches!(self.store.check_log_chain(), Ok(None));
            self.status.chain_ok.store(holds, Ordering::Relaxed);
            self.last_hash = None;
            self.pending.push(self.gateway_event(
                "audit_chain_broken",
                Severity::Critical,
                now,
                json!({"problem": why, "remedy": "run `xai-keys verify`; events are re-read from the start of the new log"}),
            ));
        }
        for off in batch.skipped {
            tracing::warn!(
                offset = off,
                "skipped an audit log line that is not valid JSON"
            );
        }
        for line in batch.events {
            if is_chained(&line) {
                let prev = str_field(&line, "prev_hash");
                if let (Some(expected), Some(prev)) = (self.last_hash.as_deref(), prev)
                    && expected != prev
                {
                    self.status.chain_ok.store(false, Ordering::Relaxed);
                    self.pending.push(self.gateway_event(
                        "audit_chain_broken",
                        Severity::Critical,
                        now,
                        json!({
                            "problem": "an audit line does not follow the line before it (lines removed, inserted or edited)",
                            "at_timestamp": line.get("timestamp").cloned().unwrap_or(Value::Null),
                            "remedy": "run `xai-keys verify` and compare with your backups",
                        }),
                    ));
                }
                self.last_hash = str_field(&line, "hash").map(str::to_string);
            } else {
                self.last_hash = None;
            }
            if let (Some(t), Some(h)) = (history, self.skip_history.as_mut())
                && line
                    .get("timestamp")
                    .and_then(Value::as_f64)
                    .is_some_and(|ts| ts < t)
            {
                h.skipped += 1;
                continue;
            }
            self.pending
                .push(from_audit_line(&line, self.require_window));
        }
        if let Some(h) = self
            .skip_history
            .take_if(|h| self.follower.offset() >= h.until_offset)
            && h.skipped > 0
        {
            tracing::warn!(
                lines = h.skipped,
                "new event queue: audit lines older than a minute were passed over as history, not emitted (see `xai-keys events` for them)"
            );
        }
    }

    fn check_health(&mut self, now: f64) {
        let h = self.index.health();
        if h.status == self.last_health {
            return;
        }
        let (t, sev) = match h.status {
            "unreadable" => ("store_unreadable", Severity::Critical),
            "degraded" => ("store_degraded", Severity::Critical),
            "stale" => ("store_stale", Severity::Warning),
            "stale_refusing" => ("store_stale_refusing", Severity::Critical),
            _ => ("store_recovered", Severity::Info),
        };
        let ev = self.gateway_event(
            t,
            sev,
            now,
            json!({
                "store": self.store.location(),
                "status": h.status,
                "previous_status": self.last_health,
                "problem": h.problem,
                "integrity": h.integrity,
                "stale_for_secs": h.stale_for_secs,
            }),
        );
        self.pending.push(ev);
        self.last_health = h.status;
    }

    fn gateway_event(
        &self,
        t: &'static str,
        sev: Severity,
        now: f64,
        details: Value,
    ) -> SecurityEvent {
        let details = details.as_object().cloned().unwrap_or_default();
        SecurityEvent::new(t, sev, now, details.clone()).unwrap_or_else(|_| SecurityEvent {
            // Without randomness, an id from the time and type still deduplicates sensibly.
            event_id: format!("evt-{t}-{}", (now * 1e6) as u64),
            event_type: t,
            severity: sev,
            timestamp: now,
            details,
        })
    }

    fn cursor(&self) -> Value {
        json!({
            "offset": self.follower.offset(),
            "file_id": self.follower.file_id().map(|(d, i)| vec![d, i]),
            "last_hash": self.last_hash,
            "chain_broken": !self.status.chain_ok.load(Ordering::Relaxed),
        })
    }

    /// Queues the pending events with the log position, then counts, logs and wakes sinks.
    fn commit(&mut self) {
        let cursor = self.cursor();
        if self.pending.is_empty() && self.last_cursor.as_ref() == Some(&cursor) {
            return;
        }
        let for_sinks: Vec<Value> = self
            .pending
            .iter()
            .filter(|e| e.severity >= self.min_severity)
            .map(SecurityEvent::to_json)
            .collect();
        let queued = !for_sinks.is_empty() && !self.sinks.is_empty();
        let now = (self.clock)();
        let appended = if self.sinks.is_empty() {
            0
        } else {
            for_sinks.len()
        };
        let res = {
            let mut q = relock(&self.queue);
            let before: Vec<usize> = self.sinks.iter().map(|s| q.depth(&s.cfg.id)).collect();
            let n = for_sinks.len();
            let r = match q.append(for_sinks, Some(cursor.clone()), now) {
                // An event the queue refuses (cannot happen with events built here: details
                // are bounded) must not stall the pipeline for ever: the batch still counts
                // and is logged, the position still advances, the webhooks miss it (counted).
                Err(QueueError::InvalidEvent { detail, .. }) => {
                    tracing::error!(problem = %detail, events = n, "events refused by the webhook queue; not forwarded");
                    for _ in 0..n {
                        self.metrics.event_dropped("invalid");
                    }
                    q.append(Vec::new(), Some(cursor.clone()), now)
                }
                r => r,
            };
            if let Some(e) = q.take_compaction_error() {
                tracing::warn!(error = %e, "webhook queue compaction failed; retried later (the journal keeps growing meanwhile)");
            }
            // What each sink lost to the capacity limit: its depth did not grow by what was
            // appended (the queue evicts the oldest events, whichever sinks still wanted them).
            let lost: Vec<usize> = self
                .sinks
                .iter()
                .zip(&before)
                .map(|(s, b)| (b + appended).saturating_sub(q.depth(&s.cfg.id)))
                .collect();
            if r.is_ok() {
                for s in &self.sinks {
                    s.refresh(&q);
                }
            }
            r.map(|o| (o, lost))
        };
        match res {
            Ok((outcome, lost)) => {
                if outcome.dead_lettered > 0 {
                    for (s, n) in self.sinks.iter().zip(lost) {
                        if n > 0 {
                            self.metrics
                                .webhook_dead_lettered(&s.cfg.id, "queue_full", n as u64);
                        }
                    }
                    tracing::error!(
                        events = outcome.dead_lettered,
                        "webhook queue full (XAI_SECURITY_WEBHOOK_QUEUE_MAX_EVENTS): oldest events moved to the dead-letter file"
                    );
                }
                self.last_cursor = Some(cursor);
                self.status.uncommitted.store(0, Ordering::Relaxed);
                for ev in std::mem::take(&mut self.pending) {
                    debug_assert!(EVENT_TYPES.contains(&ev.event_type));
                    self.metrics.security_event(&ev);
                    self.write_line(&ev);
                }
                if queued {
                    for s in &self.sinks {
                        s.notify.notify_one();
                    }
                }
            }
            Err(e) => {
                self.metrics.event_queue_write_failed();
                self.status
                    .uncommitted
                    .store(self.pending.len(), Ordering::Relaxed);
                self.log_error(
                    "cannot write the security event queue; events kept in memory and retried (nothing is counted or logged until they are queued)",
                    &e.to_string(),
                );
            }
        }
    }

    fn write_line(&mut self, ev: &SecurityEvent) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let mut line = ev.to_json().to_string();
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            let msg = e.to_string();
            self.log_error("cannot write a security event line", &msg);
        }
    }

    /// Logs a recurring problem at most every 10 s.
    fn log_error(&mut self, what: &str, problem: &str) {
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_error_log = Some(Instant::now());
            tracing::error!(problem, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_folds_repeats_per_key() {
        let mut t = Throttle::default();
        assert_eq!(t.admit("a", 0.0), Some(0));
        assert_eq!(t.admit("a", 1.0), None);
        assert_eq!(t.admit("a", 2.0), None);
        assert_eq!(t.admit("b", 2.0), Some(0));
        assert_eq!(t.admit("a", 61.0), Some(2));
        assert_eq!(t.admit("a", 62.0), None);
        // A clock that goes backwards does not silence a key for ever.
        assert_eq!(t.admit("a", 10.0), Some(1));
    }

    #[test]
    fn config_names_variables() {
        let m: HashMap<&str, &str> = [("XAI_AUDIT_FOLLOW_MS", "5000")].into();
        let e = TelemetryConfig::from_lookup(&|k| m.get(k).map(|s| s.to_string()))
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(e.contains("XAI_AUDIT_FOLLOW_MS"), "{e}");
        let c = TelemetryConfig::from_lookup(&|_| None).unwrap();
        assert_eq!(c.event_log, EventLog::Stdout);
        assert_eq!(c.webhooks.min_severity, Severity::Info);
    }
}
