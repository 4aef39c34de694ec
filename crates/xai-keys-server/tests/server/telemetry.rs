//! Security telemetry end to end: audit lines written by any process and gateway-side refusals
//! become security events, counted once in `/metrics`, written once to the event log and
//! delivered to webhook sinks (real local HTTP servers) at least once, in order, surviving a
//! sink outage and a gateway restart; change windows set the severity of lifecycle actions.
//!
//! Every wait is bounded ([`WAIT`]); the pipeline follows the log every [`FOLLOW`] and failed
//! deliveries are retried after 20–100 ms, so each test takes well under a second or two.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use xai_keys_core::audit::{AuditEvent, line_hash};
use xai_keys_core::ops::{KeyManager, RotateRequest};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;
use xai_keys_core::store::FileStore;
use xai_keys_server::telemetry::EventLog;
use xai_keys_server::webhook::queue::{QueueKey, read_dead_letters};
use xai_keys_server::webhook::{WebhookConfig, parse_sinks};
use xai_keys_server::{Gateway, ServerConfig};

use crate::common::*;

/// How often the pipeline reads the audit log in these tests.
const FOLLOW: Duration = Duration::from_millis(20);
/// The propagation bound the issue sets for lifecycle actions.
const WITHIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Where a test's gateway writes its security-event JSON lines.
fn event_log(dir: &Path) -> PathBuf {
    dir.join("security-events.jsonl")
}

/// The default queue of a file store: `<store>.webhook-queue`.
fn queue_path(store: &Path) -> PathBuf {
    PathBuf::from(format!("{}.webhook-queue", store.display()))
}

/// The test configuration with fast telemetry: the log followed every [`FOLLOW`], events
/// written to `events`, retries after 20–100 ms; then `f`.
fn tel_config(events: &Path, f: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let mut c = test_config();
    c.telemetry.follow_interval = FOLLOW;
    c.telemetry.event_log = EventLog::File(events.to_path_buf());
    c.telemetry.webhooks.retry_min = Duration::from_millis(20);
    c.telemetry.webhooks.retry_max = Duration::from_millis(100);
    c.telemetry.webhooks.timeout = Duration::from_secs(2);
    f(&mut c);
    c
}

/// A store with the four scopes' keys (issued at [`T0`]), before any gateway starts.
struct Setup {
    dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<FileStore>,
    clock: TestClock,
    keys: Keys,
    secrets: Secrets,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path());
    let store = open_store(&path);
    let clock = TestClock::new(T0);
    let keys = Keys::issue(store.as_ref(), T0);
    let secrets = Secrets::default();
    for k in keys.all() {
        secrets.add(&k.secret);
    }
    Setup {
        dir,
        path,
        store,
        clock,
        keys,
        secrets,
    }
}

impl Setup {
    fn start(&self, f: impl FnOnce(&mut ServerConfig)) -> Gateway {
        let cfg = tel_config(&event_log(self.dir.path()), f);
        Gateway::start(cfg, self.store.clone(), self.clock.clock()).unwrap()
    }

    /// An in-process gateway (pipeline running, no webhook workers).
    fn harness(self, f: impl FnOnce(&mut ServerConfig)) -> Harness {
        let gateway = self.start(f);
        Harness {
            dir: self.dir,
            path: self.path,
            store: self.store,
            clock: self.clock,
            gateway,
            keys: self.keys,
            secrets: self.secrets,
        }
    }

    /// A gateway served on a real socket (webhook workers running).
    async fn net(self, f: impl FnOnce(&mut ServerConfig)) -> NetHarness {
        let gateway = self.start(f);
        let gw = Running::start(gateway).await;
        NetHarness {
            dir: self.dir,
            path: self.path,
            store: self.store,
            clock: self.clock,
            keys: self.keys,
            gw,
            net: Net::new(self.secrets),
        }
    }
}

/// The JSON lines of an event log (none while the file does not exist).
fn read_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("event log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits (bounded) until the event log satisfies `pred`; returns its events.
async fn wait_log(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let evs = read_log(path);
        if pred(&evs) {
            return evs;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; event log: {:#?}",
            evs
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn detail<'a>(ev: &'a Value, k: &str) -> &'a Value {
    &ev["details"][k]
}

/// Events of `event_type`.
fn of_type<'a>(evs: &'a [Value], t: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event_type"] == t).collect()
}

/// `api_key_audit` events of `action` about `key_id`.
fn audit<'a>(evs: &'a [Value], action: &str, key_id: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["event_type"] == "api_key_audit"
                && detail(e, "action") == action
                && detail(e, "key_id") == key_id
        })
        .collect()
}

/// The one `api_key_audit` event of `action` about `key_id` (panics unless exactly one).
#[track_caller]
fn one_audit<'a>(evs: &'a [Value], action: &str, key_id: &str) -> &'a Value {
    let found = audit(evs, action, key_id);
    assert_eq!(
        found.len(),
        1,
        "{action} {key_id}: expected one event in {evs:#?}"
    );
    found[0]
}

fn ids(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

fn id_set(evs: &[Value]) -> BTreeSet<String> {
    ids(evs).into_iter().collect()
}

/// Panics if any secret the test used appears in `text` (an event log, webhook bodies).
fn assert_no_secrets(secrets: &Secrets, what: &str, text: &str) {
    secrets.check(
        what,
        &Resp {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(text.to_string()),
        },
    );
}

/// One Prometheus sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses `name{k="v",…} value`; `None` for anything else.
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => value.parse::<f64>().ok()?,
    };
    let (name, mut rest) = match series.split_once('{') {
        None => (series, ""),
        Some((n, r)) => (n, r.strip_suffix('}')?),
    };
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return None;
    }
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"")?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let mut val = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in r.char_indices() {
            if escaped {
                val.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                val.push(c);
            }
        }
        let end = end?;
        labels.insert(k.to_string(), val);
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some((name.to_string(), labels, v))
}

/// The value of the series `name` with exactly `labels`, if exported.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

/// `GET /metrics` of an in-process or real-socket gateway.
trait Scrape {
    async fn scrape(&self) -> String;
}

impl Scrape for Harness {
    async fn scrape(&self) -> String {
        let r = self.send(get("/metrics")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        r.text()
    }
}

impl Scrape for NetHarness {
    async fn scrape(&self) -> String {
        let r = self.send(get("/metrics")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        r.text()
    }
}

async fn metric(g: &impl Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&g.scrape().await, name, labels)
}

/// Waits (bounded) until the series satisfies `pred` (absent series read as `None`).
async fn wait_metric(
    g: &impl Scrape,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(Option<f64>) -> bool,
) -> Option<f64> {
    let start = Instant::now();
    loop {
        let v = metric(g, name, labels).await;
        if pred(v) {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting on {name}{labels:?}: last value {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The metric labels of a security event by type (and audit action).
fn audit_labels(action: &str) -> [(&str, &str); 2] {
    [("event_type", "api_key_audit"), ("action", action)]
}

// ---- a webhook sink ----

/// What a webhook sink received in one request, and how it answered.
#[derive(Clone, Debug)]
struct Hit {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct HookState {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
}

async fn hook(State(s): State<HookState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = s.status.load(Ordering::SeqCst);
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    s.hits.lock().unwrap().push(Hit {
        status,
        headers,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

/// A webhook receiver on 127.0.0.1 that records every request and answers with the status
/// set by [`HookServer::set_status`] (200 at first).
struct HookServer {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl HookServer {
    async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let st = HookState {
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let app = Router::new().fallback(hook).with_state(st.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HookServer {
            addr,
            hits: st.hits,
            status: st.status,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook/secret-path-0001", self.addr)
    }

    fn set_status(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }

    fn attempts(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    /// The requests it accepted (answered 2xx).
    fn delivered(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| (200..300).contains(&h.status))
            .cloned()
            .collect()
    }

    fn delivered_bodies(&self) -> Vec<Value> {
        self.delivered().into_iter().map(|h| h.body).collect()
    }

    /// Waits (bounded) until the accepted bodies satisfy `pred`; returns them.
    async fn wait(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let b = self.delivered_bodies();
            if pred(&b) {
                return b;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for the sink to receive {what}; received {b:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The id a sink URL gets in metrics (`sink="…"`).
fn sink_id(url: &str) -> String {
    parse_sinks(url).unwrap()[0].id.clone()
}

/// Sorted, with repeats: for comparing multisets of ids.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// 1. Audit lines from another process
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_revocation_reaches_metrics_and_the_event_log_once_within_a_second() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    // A new queue emits the audit lines of the last minute: the harness's four issues.
    wait_log(&log, "the four initial issues", |e| {
        of_type(e, "api_key_audit").len() == 4
    })
    .await;
    assert_eq!(
        metric(
            &h,
            "xai_security_events_warning_total",
            &audit_labels("revoke")
        )
        .await,
        Some(0.0),
        "the series exists at zero before the first revocation"
    );

    let cli = open_store(&h.path);
    let user = h.keys.user.clone();
    let t = Instant::now();
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&user.id, Some("left the team"), &cli_actor(), h.clock.now())
        .unwrap();
    let evs = wait_log(&log, "the revocation", |e| {
        !audit(e, "revoke", &user.id).is_empty()
    })
    .await;
    let text = h.scrape().await;
    let took = t.elapsed();
    assert!(
        took < WITHIN,
        "the revocation took {took:?} to reach the event log and metrics"
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_warning_total",
            &audit_labels("revoke")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "xai_security_events_total", &audit_labels("revoke")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_critical_total",
            &audit_labels("revoke")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_key_lifecycle_actions_total",
            &[
                ("action", "revoke"),
                ("scope", "user"),
                ("in_change_window", "false")
            ]
        ),
        Some(1.0),
        "{text}"
    );

    // The event: its id derives from the audit line's chain hash.
    let ev = one_audit(&evs, "revoke", &user.id);
    assert_eq!(ev["severity"], "WARNING");
    assert_eq!(detail(ev, "scope"), "user");
    assert_eq!(detail(ev, "reason"), "left the team");
    assert_eq!(detail(ev, "in_change_window"), "false");
    assert!(
        detail(ev, "actor")
            .as_str()
            .unwrap()
            .starts_with("cli:tester@"),
        "{ev}"
    );
    let log_text = std::fs::read_to_string(h.store.log_path()).unwrap();
    let line: AuditEvent = serde_json::from_str(log_text.lines().last().unwrap()).unwrap();
    assert_eq!(line["action"], "revoke");
    let hash = line["hash"].as_str().unwrap();
    assert_eq!(ev["event_id"], format!("audit-{}", &hash[..32]));
    assert_eq!(ev["timestamp"].as_f64(), line["timestamp"].as_f64());

    // Exactly once, even after many more passes of the pipeline.
    tokio::time::sleep(FOLLOW * 8).await;
    let evs = read_log(&log);
    assert_eq!(audit(&evs, "revoke", &user.id).len(), 1, "{evs:#?}");
    assert_eq!(
        id_set(&evs).len(),
        evs.len(),
        "no event is written twice: {evs:#?}"
    );
    assert_eq!(
        metric(
            &h,
            "xai_security_events_warning_total",
            &audit_labels("revoke")
        )
        .await,
        Some(1.0)
    );
    assert_no_secrets(
        &h.secrets,
        "the event log",
        &std::fs::read_to_string(&log).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Severity rules and change windows
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_severities_follow_the_rules_end_to_end() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    let evs = wait_log(&log, "the four initial issues", |e| {
        of_type(e, "api_key_audit").len() == 4
    })
    .await;
    // An admin key's issue is CRITICAL, other issues INFO.
    assert_eq!(
        one_audit(&evs, "issue", &h.keys.admin.id)["severity"],
        "CRITICAL"
    );
    for k in [&h.keys.user, &h.keys.operator, &h.keys.auditor] {
        let ev = one_audit(&evs, "issue", &k.id);
        assert_eq!(ev["severity"], "INFO", "{ev}");
        assert_eq!(detail(ev, "in_change_window"), "false");
    }

    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    let now = h.clock.now();
    m.set_disabled(&h.keys.operator.id, true, &cli_actor(), now)
        .unwrap();
    m.set_disabled(&h.keys.operator.id, false, &cli_actor(), now)
        .unwrap();
    let rot = m
        .rotate(&h.keys.user.id, RotateRequest::default(), &cli_actor(), now)
        .unwrap();
    h.secrets.add(rot.new.plaintext.expose());
    let new_user = rot.new.info.key_id.to_string();
    m.revoke(&h.keys.auditor.id, None, &cli_actor(), now)
        .unwrap();
    // And through the admin API: an admin key issued over HTTP is CRITICAL too.
    let admin2 = h
        .issue_http(json!({"scope": "admin", "label": "second admin"}))
        .await;

    let evs = wait_log(&log, "every action", |e| {
        audit(e, "issue", &admin2.id).len() == 1
    })
    .await;
    let sev = |action: &str, id: &str| one_audit(&evs, action, id)["severity"].clone();
    assert_eq!(sev("disable", &h.keys.operator.id), "WARNING");
    assert_eq!(sev("enable", &h.keys.operator.id), "INFO");
    assert_eq!(sev("issue", &new_user), "INFO", "the rotation's new key");
    assert_eq!(
        sev("revoke", &h.keys.user.id),
        "WARNING",
        "the rotation's old key"
    );
    assert_eq!(sev("rotate", &new_user), "WARNING");
    assert_eq!(sev("revoke", &h.keys.auditor.id), "WARNING");
    let ev = one_audit(&evs, "issue", &admin2.id);
    assert_eq!(ev["severity"], "CRITICAL");
    assert_eq!(detail(ev, "scope"), "admin");
    assert!(
        detail(ev, "actor").as_str().unwrap().starts_with("http:"),
        "{ev}"
    );
    for ev in of_type(&evs, "api_key_audit") {
        assert_eq!(detail(ev, "in_change_window"), "false", "{ev}");
    }

    let text = h.scrape().await;
    let n = |name: &str, action: &str| sample(&text, name, &audit_labels(action));
    assert_eq!(n("xai_security_events_critical_total", "issue"), Some(2.0));
    assert_eq!(n("xai_security_events_warning_total", "issue"), Some(0.0));
    assert_eq!(n("xai_security_events_total", "issue"), Some(6.0));
    assert_eq!(n("xai_security_events_warning_total", "revoke"), Some(2.0));
    assert_eq!(n("xai_security_events_warning_total", "disable"), Some(1.0));
    assert_eq!(n("xai_security_events_warning_total", "rotate"), Some(1.0));
    assert_eq!(n("xai_security_events_total", "enable"), Some(1.0));
    assert_eq!(n("xai_security_events_warning_total", "enable"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "xai_key_lifecycle_actions_total",
            &[
                ("action", "issue"),
                ("scope", "admin"),
                ("in_change_window", "false")
            ]
        ),
        Some(2.0)
    );
    assert_no_secrets(
        &h.secrets,
        "the event log",
        &std::fs::read_to_string(&log).unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_change_windows_make_unplanned_actions_critical() {
    let h = setup().harness(|c| c.telemetry.require_change_window = true);
    let log = event_log(h.dir.path());
    let a = h.keys.admin.clone();
    let evs = wait_log(&log, "the four initial issues", |e| {
        of_type(e, "api_key_audit").len() == 4
    })
    .await;
    // Issued outside any window: all CRITICAL.
    for k in h.keys.all() {
        let ev = one_audit(&evs, "issue", &k.id);
        assert_eq!(ev["severity"], "CRITICAL", "{ev}");
        assert_eq!(detail(ev, "in_change_window"), "false");
    }

    // The window's state, for auditors too.
    let v = h
        .send(get("/admin/change-window").key(&h.keys.auditor))
        .await
        .ok(200);
    assert_eq!(v["window"]["open"], false, "{v}");
    assert_eq!(v["window"]["required"], true, "{v}");
    h.send(get("/admin/change-window").key(&h.keys.user))
        .await
        .denied(403, "insufficient_scope");
    // Only an admin may open one.
    let open = json!({"ticket": "CHG-1", "duration": "2h", "reason": "quarterly rotation"});
    h.send(
        post("/admin/change-window")
            .key(&h.keys.auditor)
            .json(&open),
    )
    .await
    .denied(403, "insufficient_scope");
    h.send(
        post("/admin/change-window")
            .admin(&h.keys.auditor)
            .json(&open),
    )
    .await
    .denied(403, "insufficient_scope");
    // Invalid bodies say what is wrong.
    for (body, needle) in [
        (json!({"duration": "2h"}), "ticket"),
        (json!({"ticket": "CHG-1", "duration": "soon"}), "\"soon\""),
        (
            json!({"ticket": "CHG-1", "duration": "2h", "duration_seconds": 7200}),
            "not both",
        ),
        (json!({"ticket": "CHG-1"}), "duration"),
        (
            json!({"ticket": "CHG-1", "duration_seconds": "7200"}),
            "number",
        ),
        (json!({"ticket": "CHG-1", "duration": "10s"}), "60 s"),
        (json!({"ticket": "CHG-1", "duration_seconds": 10}), "60 s"),
        (json!({"ticket": "CHG-1", "duration": "30d"}), "7 days"),
        (
            json!({"ticket": "CHG-1", "duration": "2h", "tiket": "x"}),
            "tiket",
        ),
    ] {
        let r = h
            .send(post("/admin/change-window").admin(&a).json(&body))
            .await;
        let msg = r.err(400, "invalid_payload");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let r = h
        .send(
            post("/admin/change-window")
                .admin(&a)
                .json(&json!({"ticket": "  ", "duration": "2h"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    assert!(r.error().contains("ticket"), "{}", r.text());
    // Nothing was opened by the refusals.
    let v = h.send(get("/admin/change-window").admin(&a)).await.ok(200);
    assert_eq!(v["window"]["open"], false, "{v}");
    // Closing when none is open changes nothing.
    let v = h
        .send(delete("/admin/change-window").admin(&a))
        .await
        .ok(200);
    assert_eq!(v["closed"], false, "{v}");
    h.send(delete("/admin/change-window").key(&h.keys.auditor))
        .await
        .denied(403, "insufficient_scope");

    // Before the window: an unplanned revocation is CRITICAL.
    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    m.revoke(&h.keys.operator.id, None, &cli_actor(), h.clock.now())
        .unwrap();

    // Open it.
    let v = h
        .send(post("/admin/change-window").admin(&a).json(&open))
        .await
        .ok(201);
    assert_eq!(v["window"]["open"], true, "{v}");
    assert_eq!(v["window"]["ticket"], "CHG-1");
    assert_eq!(v["window"]["expires_at"].as_f64(), Some(T0 + 2.0 * HOUR));
    // A second one while it is open: 409.
    let r = h
        .send(
            post("/admin/change-window")
                .admin(&a)
                .json(&json!({"ticket": "CHG-2", "duration": "1h"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text());
    assert!(r.error().contains("CHG-1"), "{}", r.text());
    let v = h
        .send(get("/admin/change-window").key(&h.keys.auditor))
        .await
        .ok(200);
    assert_eq!(v["window"]["open"], true, "{v}");
    assert_eq!(v["window"]["ticket"], "CHG-1");
    assert_eq!(v["window"]["remaining_seconds"].as_f64(), Some(2.0 * HOUR));
    assert_eq!(v["window"]["required"], true);

    // Inside the window: usual severities, and the lines carry the ticket.
    h.clock.advance(60.0);
    let k = issue(
        cli.as_ref(),
        Scope::User,
        "planned",
        TtlRequest::Default,
        h.clock.now(),
    );
    h.secrets.add(&k.secret);
    h.wait_indexed(&k, true).await;
    h.send(delete(&format!("/admin/api-keys/{}", h.keys.auditor.id)).admin(&a))
        .await
        .ok(200);
    // Closing it.
    let v = h
        .send(delete("/admin/change-window?reason=done").admin(&a))
        .await
        .ok(200);
    assert_eq!(v["closed"], true, "{v}");
    assert_eq!(v["window"]["ticket"], "CHG-1");
    let v = h.send(get("/admin/change-window").admin(&a)).await.ok(200);
    assert_eq!(v["window"]["open"], false, "{v}");
    // After it: CRITICAL again.
    m.revoke(&k.id, None, &cli_actor(), h.clock.now()).unwrap();

    let evs = wait_log(&log, "the revocation after the window", |e| {
        audit(e, "revoke", &k.id).len() == 1
    })
    .await;
    let ev = one_audit(&evs, "revoke", &h.keys.operator.id);
    assert_eq!(ev["severity"], "CRITICAL", "{ev}");
    assert_eq!(detail(ev, "in_change_window"), "false");
    assert!(detail(ev, "change_window").is_null(), "{ev}");

    let ev = one_audit(&evs, "issue", &k.id);
    assert_eq!(ev["severity"], "INFO", "{ev}");
    assert_eq!(detail(ev, "in_change_window"), "true");
    assert_eq!(detail(ev, "change_window"), "CHG-1");
    let ev = one_audit(&evs, "revoke", &h.keys.auditor.id);
    assert_eq!(ev["severity"], "WARNING", "{ev}");
    assert_eq!(detail(ev, "in_change_window"), "true");
    assert_eq!(detail(ev, "change_window"), "CHG-1");
    assert!(
        detail(ev, "actor").as_str().unwrap().starts_with("http:"),
        "{ev}"
    );

    let ev = one_audit(&evs, "revoke", &k.id);
    assert_eq!(ev["severity"], "CRITICAL", "{ev}");
    assert_eq!(detail(ev, "in_change_window"), "false");

    // Opening and closing are events too (not lifecycle actions: no window flag).
    let opened: Vec<&Value> = evs
        .iter()
        .filter(|e| detail(e, "action") == "window_open")
        .collect();
    assert_eq!(opened.len(), 1, "{evs:#?}");
    assert_eq!(opened[0]["event_type"], "api_key_audit");
    assert_eq!(detail(opened[0], "ticket"), "CHG-1");
    assert_eq!(detail(opened[0], "reason"), "quarterly rotation");
    assert_eq!(
        detail(opened[0], "duration_seconds").as_f64(),
        Some(2.0 * HOUR)
    );
    assert!(detail(opened[0], "in_change_window").is_null());
    let closed: Vec<&Value> = evs
        .iter()
        .filter(|e| detail(e, "action") == "window_close")
        .collect();
    assert_eq!(closed.len(), 1, "{evs:#?}");
    assert_eq!(detail(closed[0], "ticket"), "CHG-1");
    assert_eq!(detail(closed[0], "reason"), "done");

    // The audit lines themselves carry the ticket.
    let log_text = std::fs::read_to_string(h.store.log_path()).unwrap();
    let tickets = log_text
        .lines()
        .filter(|l| l.contains("\"change_window\":\"CHG-1\""))
        .count();
    assert_eq!(tickets, 2, "{log_text}");

    let text = h.scrape().await;
    let lc = |action: &str, scope: &str, w: &str| {
        sample(
            &text,
            "xai_key_lifecycle_actions_total",
            &[
                ("action", action),
                ("scope", scope),
                ("in_change_window", w),
            ],
        )
    };
    assert_eq!(lc("issue", "user", "true"), Some(1.0), "{text}");
    assert_eq!(lc("issue", "user", "false"), Some(1.0));
    assert_eq!(lc("revoke", "auditor", "true"), Some(1.0));
    assert_eq!(lc("revoke", "operator", "false"), Some(1.0));
    assert_eq!(lc("revoke", "user", "false"), Some(1.0));
    assert_eq!(sample(&text, "xai_change_window_required", &[]), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "xai_security_events_critical_total",
            &audit_labels("revoke")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_total",
            &audit_labels("window_open")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_total",
            &audit_labels("window_close")
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_window_gauges_follow_the_window() {
    let h = setup().harness(|c| c.telemetry.require_change_window = true);
    let a = h.keys.admin.clone();
    wait_metric(&h, "xai_change_window_open", &[], |v| v == Some(0.0)).await;
    h.send(
        post("/admin/change-window")
            .admin(&a)
            .json(&json!({"ticket": "CHG-7", "duration_seconds": 600})),
    )
    .await
    .ok(201);
    // The window is read once a second.
    let took = Instant::now();
    wait_metric(&h, "xai_change_window_open", &[], |v| v == Some(1.0)).await;
    assert!(
        took.elapsed() < Duration::from_millis(1500),
        "{:?}",
        took.elapsed()
    );
    assert_eq!(
        metric(&h, "xai_change_window_expiry_timestamp_seconds", &[]).await,
        Some(T0 + 600.0)
    );
    assert_eq!(
        metric(&h, "xai_change_window_required", &[]).await,
        Some(1.0)
    );
    // It ends on its own.
    h.clock.advance(601.0);
    wait_metric(&h, "xai_change_window_open", &[], |v| v == Some(0.0)).await;
    assert_eq!(
        metric(&h, "xai_change_window_expiry_timestamp_seconds", &[]).await,
        Some(0.0)
    );
    let v = h.send(get("/admin/change-window").admin(&a)).await.ok(200);
    assert_eq!(v["window"]["open"], false, "{v}");
    assert_eq!(v["window"]["remaining_seconds"].as_f64(), Some(0.0), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_window_opens_admit_exactly_one() {
    let h = Arc::new(setup().harness(|_| {}));
    let log = event_log(h.dir.path());
    let mut opened_total = 0;
    for round in 0..5 {
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move {
                    let body = json!({"ticket": format!("CHG-{round}-{i}"), "duration": "2h"});
                    let r = h
                        .send(
                            post("/admin/change-window")
                                .admin(&h.keys.admin)
                                .json(&body),
                        )
                        .await;
                    r.status.as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 409, 409, 409, 409, 409],
            "round {round}: one window may be open at a time"
        );
        opened_total += 1;
        h.send(delete("/admin/change-window").admin(&h.keys.admin))
            .await
            .ok(200);
    }
    let evs = wait_log(&log, "the window events", |e| {
        e.iter()
            .filter(|e| detail(e, "action") == "window_close")
            .count()
            == opened_total
    })
    .await;
    assert_eq!(
        evs.iter()
            .filter(|e| detail(e, "action") == "window_open")
            .count(),
        opened_total
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Gateway-side events
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_become_throttled_events_without_secrets() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    let unknown = "unknown-key-for-telemetry-0001";
    for _ in 0..5 {
        h.send(post("/send").h("x-api-key", unknown))
            .await
            .denied(401, "unknown_key");
    }
    let other = peer("10.1.2.3:5000");
    h.send_from(other, post("/send").h("x-api-key", unknown))
        .await
        .denied(401, "unknown_key");
    let evs = wait_log(&log, "one failure event per client", |e| {
        of_type(e, "api_auth_failure").len() >= 2
    })
    .await;
    tokio::time::sleep(FOLLOW * 5).await;
    let evs2 = read_log(&log);
    assert_eq!(of_type(&evs2, "api_auth_failure").len(), 2, "{evs2:#?}");
    let by_client = |evs: &[Value], c: &str| -> Vec<Value> {
        of_type(evs, "api_auth_failure")
            .into_iter()
            .filter(|e| detail(e, "client") == c)
            .cloned()
            .collect()
    };
    let local = by_client(&evs, "127.0.0.1");
    assert_eq!(local.len(), 1, "{evs:#?}");
    let ev = &local[0];
    assert_eq!(ev["severity"], "WARNING");
    assert_eq!(detail(ev, "reason"), "unknown_key");
    assert_eq!(detail(ev, "route"), "/send");
    assert_eq!(detail(ev, "method"), "POST");
    assert_eq!(detail(ev, "route_class"), "user");
    assert!(detail(ev, "suppressed_repeats").is_null(), "{ev}");
    assert!(ev["event_id"].as_str().unwrap().starts_with("evt-"), "{ev}");
    assert_eq!(ev["timestamp"].as_f64(), Some(T0));
    assert_eq!(by_client(&evs, "10.1.2.3").len(), 1, "{evs:#?}");

    // A minute later the next failure is reported, with the count of those folded into it.
    h.clock.advance(61.0);
    h.send(post("/send").h("x-api-key", unknown))
        .await
        .denied(401, "unknown_key");
    let evs = wait_log(&log, "the failure after a minute", |e| {
        by_client(e, "127.0.0.1").len() == 2
    })
    .await;
    let later = by_client(&evs, "127.0.0.1");
    assert_eq!(
        detail(&later[1], "suppressed_repeats"),
        4,
        "{:#?}",
        later[1]
    );
    assert_eq!(later[1]["timestamp"].as_f64(), Some(T0 + 61.0));

    // A bad admin token on the admin API.
    let r = h
        .send(get("/admin/api-keys").h("x-admin-token", "not-an-admin-token-0002"))
        .await;
    assert_eq!(r.status.as_u16(), 401, "{}", r.text());
    let reason = r.reason();
    let evs = wait_log(&log, "the admin failure", |e| {
        !of_type(e, "api_admin_auth_failure").is_empty()
    })
    .await;
    let adm = of_type(&evs, "api_admin_auth_failure");
    assert_eq!(adm.len(), 1, "{evs:#?}");
    assert_eq!(adm[0]["severity"], "WARNING");
    assert_eq!(detail(adm[0], "route"), "/admin/api-keys");
    assert_eq!(detail(adm[0], "route_class"), "admin");
    assert_eq!(detail(adm[0], "client"), "127.0.0.1");
    assert_eq!(detail(adm[0], "reason"), reason.as_str());

    // An expired key.
    let k = h.issue_direct(Scope::User, TtlRequest::Seconds(HOUR)).await;
    let issued_at = h.clock.now();
    h.clock.advance(2.0 * HOUR);
    for _ in 0..3 {
        h.send(post("/send").key(&k)).await.denied(403, "expired");
    }
    let evs = wait_log(&log, "the expired attempt", |e| {
        !of_type(e, "api_key_expired_attempt").is_empty()
    })
    .await;
    tokio::time::sleep(FOLLOW * 5).await;
    let evs = {
        let again = read_log(&log);
        assert!(again.len() >= evs.len());
        again
    };
    let exp = of_type(&evs, "api_key_expired_attempt");
    assert_eq!(exp.len(), 1, "repeats are folded: {evs:#?}");
    assert_eq!(exp[0]["severity"], "WARNING");
    assert_eq!(detail(exp[0], "key_id"), k.id.as_str());
    assert_eq!(
        detail(exp[0], "expired_at").as_f64(),
        Some(issued_at + HOUR)
    );
    assert_eq!(detail(exp[0], "client"), "127.0.0.1");
    assert_eq!(detail(exp[0], "route"), "/send");

    // Counted once each in metrics; every refusal is still in the request counter.
    let text = h.scrape().await;
    let w = |t: &str| {
        sample(
            &text,
            "xai_security_events_warning_total",
            &[("event_type", t)],
        )
    };
    assert_eq!(w("api_auth_failure"), Some(3.0), "{text}");
    assert_eq!(w("api_admin_auth_failure"), Some(1.0));
    assert_eq!(w("api_key_expired_attempt"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "xai_api_auth_requests_total",
            &[
                ("result", "unknown_key"),
                ("scope", "none"),
                ("route_class", "user")
            ]
        ),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_dropped_total",
            &[("reason", "backpressure")]
        ),
        Some(0.0)
    );
    // No event carries a key, presented or issued.
    assert_no_secrets(
        &h.secrets,
        "the event log",
        &std::fs::read_to_string(&log).unwrap(),
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_clients_become_one_event_a_minute() {
    let h = setup().harness(|c| {
        c.admin_limit = xai_keys_server::ratelimit::Limit {
            max: 2,
            window_secs: 60.0,
        }
    });
    let log = event_log(h.dir.path());
    let a = h.keys.admin.clone();
    for _ in 0..2 {
        h.send(get("/admin/api-keys").admin(&a)).await.ok(200);
    }
    for _ in 0..3 {
        h.send(get("/admin/api-keys").admin(&a))
            .await
            .err(429, "rate_limited");
    }
    let evs = wait_log(&log, "the rate-limit event", |e| {
        !of_type(e, "api_rate_limited").is_empty()
    })
    .await;
    tokio::time::sleep(FOLLOW * 5).await;
    let evs = {
        let again = read_log(&log);
        assert!(again.len() >= evs.len());
        again
    };
    let rl = of_type(&evs, "api_rate_limited");
    assert_eq!(rl.len(), 1, "{evs:#?}");
    assert_eq!(rl[0]["severity"], "WARNING");
    assert_eq!(detail(rl[0], "limiter"), "admin");
    assert_eq!(detail(rl[0], "client"), "127.0.0.1");
    assert_eq!(detail(rl[0], "route"), "/admin/api-keys");
    assert_eq!(
        metric(
            &h,
            "xai_security_events_warning_total",
            &[("event_type", "api_rate_limited")]
        )
        .await,
        Some(1.0)
    );
    assert_no_secrets(
        &h.secrets,
        "the event log",
        &std::fs::read_to_string(&log).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Webhook delivery
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_carry_the_token_and_the_event_id_and_skip_events_below_min_severity() {
    let sink = HookServer::start().await;
    let url = sink.url();
    let vars: BTreeMap<&str, String> = [
        ("XAI_SECURITY_WEBHOOK_URL", url.clone()),
        (
            "XAI_SECURITY_WEBHOOK_TOKEN",
            "sink-token-0123456789".to_string(),
        ),
        ("XAI_SECURITY_WEBHOOK_MIN_SEVERITY", "warning".to_string()),
        ("XAI_SECURITY_WEBHOOK_RETRY_MIN", "0.02".to_string()),
        ("XAI_SECURITY_WEBHOOK_RETRY_MAX", "0.1".to_string()),
    ]
    .into();
    let webhooks = WebhookConfig::from_lookup(&|k| vars.get(k).cloned()).unwrap();
    let h = setup().net(|c| c.telemetry.webhooks = webhooks).await;
    let log = event_log(h.dir.path());
    // Of the four initial issues only the admin one (CRITICAL) is sent.
    sink.wait("the admin key's issue", |b| {
        !audit(b, "issue", &h.keys.admin.id).is_empty()
    })
    .await;

    // An INFO action, then a WARNING one: delivery is in order, so once the WARNING event
    // arrived the INFO one would have too.
    let cli = open_store(&h.path);
    let k = issue(
        cli.as_ref(),
        Scope::User,
        "info-only",
        TtlRequest::Default,
        h.clock.now(),
    );
    h.net.secrets.add(&k.secret);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&k.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    let bodies = sink
        .wait("the revocation", |b| !audit(b, "revoke", &k.id).is_empty())
        .await;
    tokio::time::sleep(FOLLOW * 5).await;
    let bodies = {
        let again = sink.delivered_bodies();
        assert_eq!(
            again.len(),
            bodies.len(),
            "nothing more arrives: {again:#?}"
        );
        again
    };
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    assert!(
        bodies.iter().all(|b| b["severity"] != "INFO"),
        "INFO events are not sent below WARNING: {bodies:#?}"
    );
    // The INFO events are still logged and counted.
    let evs = read_log(&log);
    assert_eq!(one_audit(&evs, "issue", &k.id)["severity"], "INFO");
    assert_eq!(
        metric(&h, "xai_security_events_total", &audit_labels("issue")).await,
        Some(5.0)
    );

    for hit in sink.delivered() {
        let hv = |n: &str| {
            hit.headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert_eq!(hv("authorization"), "Bearer sink-token-0123456789");
        assert_eq!(
            hv("idempotency-key"),
            hit.body["event_id"].as_str().unwrap()
        );
        assert_eq!(hv("content-type"), "application/json");
        assert!(
            hv("user-agent").starts_with("xai-keys/"),
            "{}",
            hv("user-agent")
        );
        let keys: BTreeSet<&str> = hit
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["details", "event_id", "event_type", "severity", "timestamp"].into(),
            "{}",
            hit.body
        );
        // The payload is the logged event.
        let logged = evs
            .iter()
            .find(|e| e["event_id"] == hit.body["event_id"])
            .unwrap_or_else(|| panic!("{} is not in the event log", hit.body));
        assert_eq!(logged, &hit.body);
    }
    let all: String = sink
        .delivered_bodies()
        .iter()
        .map(Value::to_string)
        .collect();
    assert_no_secrets(&h.net.secrets, "webhook bodies", &all);
    let id = sink_id(&url);
    let text = h.scrape().await;
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_deliveries_total",
            &[("sink", &id), ("result", "success")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "xai_security_webhook_queue_depth", &[("sink", &id)]),
        Some(0.0)
    );
    let host = sink.addr.to_string();
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_sink_info",
            &[("sink", &id), ("host", &host)]
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("secret-path-0001"),
        "the sink's URL path is not exported"
    );
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_does_not_stall_a_working_one() {
    let bad = HookServer::start().await;
    bad.set_status(500);
    let good = HookServer::start().await;
    let (bad_id, good_id) = (sink_id(&bad.url()), sink_id(&good.url()));
    let sinks = parse_sinks(&format!("{},{}", bad.url(), good.url())).unwrap();
    let h = setup().net(|c| c.telemetry.webhooks.sinks = sinks).await;
    let log = event_log(h.dir.path());
    good.wait("the four initial issues", |b| {
        of_type(b, "api_key_audit").len() == 4
    })
    .await;
    // The failing sink is retried, reported once, and its queue holds everything.
    wait_metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &bad_id), ("result", "http_error")],
        |v| v.unwrap_or(0.0) >= 2.0,
    )
    .await;
    let evs = wait_log(&log, "the delivery failure", |e| {
        !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    let wf = of_type(&evs, "webhook_delivery_failure");
    assert_eq!(wf.len(), 1, "{evs:#?}");
    assert_eq!(wf[0]["severity"], "WARNING");
    assert_eq!(detail(wf[0], "sink"), bad_id.as_str());
    assert_eq!(detail(wf[0], "result"), "http_error");
    assert!(!wf[0].to_string().contains("secret-path"), "{}", wf[0]);
    let before = wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &bad_id)],
        |v| v == Some(evs.len() as f64),
    )
    .await
    .unwrap();

    // New actions reach the working sink promptly.
    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    let t = Instant::now();
    m.revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    m.set_disabled(&h.keys.operator.id, true, &cli_actor(), h.clock.now())
        .unwrap();
    good.wait("the new actions", |b| {
        !audit(b, "disable", &h.keys.operator.id).is_empty()
    })
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the working sink waited {took:?}"
    );

    let evs = read_log(&log);
    let got = good
        .wait("every logged event", |b| id_set(b) == id_set(&evs))
        .await;
    assert_eq!(got.len(), evs.len(), "each once: {got:#?}");
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &good_id)],
        |v| v == Some(0.0),
    )
    .await;
    let after = wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &bad_id)],
        |v| v == Some(evs.len() as f64),
    )
    .await
    .unwrap();
    assert!(after > before, "{before} → {after}");
    assert!(bad.attempts() >= 2);
    assert!(bad.delivered().is_empty());
    let text = h.scrape().await;
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_deliveries_total",
            &[("sink", &good_id), ("result", "http_error")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_deliveries_total",
            &[("sink", &bad_id), ("result", "success")]
        ),
        Some(0.0)
    );
    h.gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A sink that comes back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_comes_back_receives_every_event_exactly_once() {
    let sink = HookServer::start().await;
    sink.set_status(503);
    let id = sink_id(&sink.url());
    let sinks = parse_sinks(&sink.url()).unwrap();
    let h = setup().net(|c| c.telemetry.webhooks.sinks = sinks).await;
    let log = event_log(h.dir.path());

    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    let now = h.clock.now();
    let mut issued = Vec::new();
    for i in 0..3 {
        let k = issue(
            cli.as_ref(),
            Scope::User,
            &format!("k{i}"),
            TtlRequest::Default,
            now,
        );
        h.net.secrets.add(&k.secret);
        issued.push(k);
    }
    m.revoke(&issued[0].id, None, &cli_actor(), now).unwrap();
    m.revoke(&issued[1].id, None, &cli_actor(), now).unwrap();
    m.set_disabled(&issued[2].id, true, &cli_actor(), now)
        .unwrap();
    let evs = wait_log(&log, "every action and the delivery failure", |e| {
        !audit(e, "disable", &issued[2].id).is_empty()
            && !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    // 4 initial issues, 3 issues, 2 revocations, 1 disable, 1 delivery failure.
    assert_eq!(evs.len(), 11, "{evs:#?}");
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(11.0),
    )
    .await;
    wait_metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
        |v| v.unwrap_or(0.0) >= 3.0,
    )
    .await;
    assert!(sink.delivered().is_empty());

    sink.set_status(200);
    let want = id_set(&evs);
    let got = sink.wait("every event", |b| id_set(b) == want).await;
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(0.0),
    )
    .await;
    // Let any stray retry arrive before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got_now = sink.delivered_bodies();
    assert_eq!(
        got_now.len(),
        got.len(),
        "nothing arrives after the queue drained"
    );
    assert_eq!(
        sorted(ids(&got_now)),
        want.iter().cloned().collect::<Vec<_>>(),
        "each event exactly once"
    );
    // In order of acceptance: the audit events in log order.
    let logged_audit: Vec<String> = ids(&evs
        .iter()
        .filter(|e| e["event_type"] == "api_key_audit")
        .cloned()
        .collect::<Vec<_>>());
    let sent_audit: Vec<String> = ids(&got_now
        .iter()
        .filter(|e| e["event_type"] == "api_key_audit")
        .cloned()
        .collect::<Vec<_>>());
    assert_eq!(sent_audit, logged_audit, "delivered in order");
    assert_eq!(
        metric(
            &h,
            "xai_security_webhook_deliveries_total",
            &[("sink", &id), ("result", "success")]
        )
        .await,
        Some(11.0)
    );
    // The recovery raises no second failure event.
    assert_eq!(
        of_type(&read_log(&log), "webhook_delivery_failure").len(),
        1
    );
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outage_of_a_sink_is_reported_once() {
    let sink = HookServer::start().await;
    sink.set_status(503);
    let id = sink_id(&sink.url());
    let sinks = parse_sinks(&sink.url()).unwrap();
    let h = setup().net(|c| c.telemetry.webhooks.sinks = sinks).await;
    let log = event_log(h.dir.path());
    let failures = |e: &[Value]| of_type(e, "webhook_delivery_failure").len();
    // First outage: reported once however often the delivery is retried.
    wait_log(&log, "the first outage", |e| failures(e) == 1).await;
    wait_metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
        |v| v.unwrap_or(0.0) >= 3.0,
    )
    .await;
    assert_eq!(failures(&read_log(&log)), 1);
    // Back: everything drains.
    sink.set_status(200);
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(0.0),
    )
    .await;
    // Second outage: reported again.
    sink.set_status(502);
    let before = metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
    )
    .await
    .unwrap();
    let cli = open_store(&h.path);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    wait_metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
        |v| v.unwrap_or(0.0) >= before + 2.0,
    )
    .await;
    // The report follows the first failed attempt within a few pipeline passes.
    let start = Instant::now();
    while failures(&read_log(&log)) < 2 && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let evs = read_log(&log);
    assert_eq!(
        failures(&evs),
        2,
        "the second outage of the sink raised no webhook_delivery_failure event: {:#?}",
        of_type(&evs, "webhook_delivery_failure")
    );
    let wf = of_type(&evs, "webhook_delivery_failure");
    assert_eq!(detail(wf[1], "problem"), "HTTP 502");
    h.gw.shutdown().await;
}

/// As above, when the first outage held a single event: the sink's recovery is then one
/// successful delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_a_single_event_recovery_is_reported() {
    let sink = HookServer::start().await;
    sink.set_status(503);
    let id = sink_id(&sink.url());
    let sinks = parse_sinks(&sink.url()).unwrap();
    // Only CRITICAL events are sent: of the initial issues only the admin key's, and the
    // failure reports (WARNING) are not queued for the sink.
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = sinks;
            c.telemetry.webhooks.min_severity = xai_keys_core::events::Severity::Critical;
        })
        .await;
    let log = event_log(h.dir.path());
    let failures = |e: &[Value]| of_type(e, "webhook_delivery_failure").len();
    wait_log(&log, "the first outage", |e| failures(e) == 1).await;
    sink.set_status(200);
    sink.wait("the admin key's issue", |b| b.len() == 1).await;
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(0.0),
    )
    .await;
    sink.set_status(502);
    let before = metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
    )
    .await
    .unwrap();
    let cli = open_store(&h.path);
    let k = issue(
        cli.as_ref(),
        Scope::Admin,
        "second admin",
        TtlRequest::Default,
        h.clock.now(),
    );
    h.net.secrets.add(&k.secret);
    wait_metric(
        &h,
        "xai_security_webhook_deliveries_total",
        &[("sink", &id), ("result", "http_error")],
        |v| v.unwrap_or(0.0) >= before + 2.0,
    )
    .await;
    let start = Instant::now();
    while failures(&read_log(&log)) < 2 && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        failures(&read_log(&log)),
        2,
        "the second outage raised no webhook_delivery_failure event (the sink's failing flag \
         was not cleared when it recovered)"
    );
    h.gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Restart without loss or replay
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_the_queued_events_once_and_replays_nothing() {
    let port = closed_port().await;
    let url = format!("http://{port}/hook/secret-path-0001");
    let sinks = parse_sinks(&url).unwrap();
    let id = sinks[0].id.clone();
    let s = setup();
    let log_a = event_log(s.dir.path());
    let log_b = s.dir.path().join("security-events-b.jsonl");
    let a_sinks = sinks.clone();
    let h = s.net(|c| c.telemetry.webhooks.sinks = a_sinks).await;

    let cli = open_store(&h.path);
    let m = KeyManager::new(cli.as_ref(), policy());
    m.revoke(
        &h.keys.user.id,
        Some("restart test"),
        &cli_actor(),
        h.clock.now(),
    )
    .unwrap();
    m.set_disabled(&h.keys.operator.id, true, &cli_actor(), h.clock.now())
        .unwrap();
    let evs_a = wait_log(&log_a, "A's events", |e| {
        !audit(e, "disable", &h.keys.operator.id).is_empty()
            && !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(read_log(&log_a).len() as f64),
    )
    .await;
    // A refusal just before the shutdown is still logged and queued by the final pass.
    h.send(post("/send").h("x-api-key", "unknown-key-before-shutdown"))
        .await
        .denied(401, "unknown_key");
    // The store's directory (`_dir`) lives to the end of the test, for gateway B.
    let NetHarness {
        gw,
        dir: _dir,
        path,
        store: _,
        clock,
        keys,
        net,
    } = h;
    gw.shutdown().await;
    let evs_a_final = read_log(&log_a);
    assert_eq!(
        of_type(&evs_a_final, "api_auth_failure").len(),
        1,
        "{evs_a_final:#?}"
    );
    assert!(evs_a_final.len() >= evs_a.len());
    let a_ids = id_set(&evs_a_final);
    assert_eq!(a_ids.len(), evs_a_final.len(), "{evs_a_final:#?}");

    // B: same store, same queue, the sink now up on the same address.
    let sink = HookServer::start_on(TcpListener::bind(port).await.unwrap());
    assert_eq!(sink_id(&sink.url()), id);
    let cfg = tel_config(&log_b, |c| c.telemetry.webhooks.sinks = sinks);
    let gw = Running::start(Gateway::start(cfg, open_store(&path), clock.clock()).unwrap()).await;
    let got = sink.wait("A's queued events", |b| id_set(b) == a_ids).await;
    assert_eq!(got.len(), a_ids.len(), "each once: {got:#?}");

    // A new action after B started is emitted and delivered once.
    let t = Instant::now();
    m.revoke(&keys.auditor.id, None, &cli_actor(), clock.now())
        .unwrap();
    let evs_b = wait_log(&log_b, "B's event", |e| {
        !audit(e, "revoke", &keys.auditor.id).is_empty()
    })
    .await;
    sink.wait("B's event", |b| {
        !audit(b, "revoke", &keys.auditor.id).is_empty()
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    tokio::time::sleep(FOLLOW * 8).await;
    let evs_b = {
        let again = read_log(&log_b);
        assert!(again.len() >= evs_b.len());
        again
    };
    let b_ids = id_set(&evs_b);
    assert!(
        a_ids.is_disjoint(&b_ids),
        "B repeats A's events: {:?}",
        a_ids.intersection(&b_ids).collect::<Vec<_>>()
    );
    assert_eq!(
        audit(&evs_b, "revoke", &keys.auditor.id).len(),
        1,
        "{evs_b:#?}"
    );
    assert_eq!(
        of_type(&evs_b, "api_key_audit").len(),
        1,
        "B emits only the new audit line: {evs_b:#?}"
    );
    let delivered = sink.delivered_bodies();
    let all: BTreeSet<String> = a_ids.union(&b_ids).cloned().collect();
    assert_eq!(
        sorted(ids(&delivered)),
        all.iter().cloned().collect::<Vec<_>>(),
        "everything from A and B, each once"
    );
    assert_no_secrets(
        &net.secrets,
        "webhook bodies",
        &delivered.iter().map(Value::to_string).collect::<String>(),
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Dead letters
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_are_dead_lettered() {
    let port = closed_port().await;
    let url = format!("http://{port}/hook");
    let id = sink_id(&url);
    let sinks = parse_sinks(&url).unwrap();
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = sinks;
            c.telemetry.webhooks.max_age = Duration::from_secs(1);
        })
        .await;
    let log = event_log(h.dir.path());
    let cli = open_store(&h.path);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    let evs = wait_log(&log, "the revocation and the delivery failure", |e| {
        !audit(e, "revoke", &h.keys.user.id).is_empty()
            && !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    assert_eq!(evs.len(), 6, "{evs:#?}");
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(6.0),
    )
    .await;
    assert_eq!(
        metric(
            &h,
            "xai_security_webhook_deliveries_total",
            &[("sink", &id), ("result", "connect_error")]
        )
        .await
        .map(|v| v >= 1.0),
        Some(true)
    );

    h.clock.advance(2.0);
    wait_metric(
        &h,
        "xai_security_webhook_dead_lettered_total",
        &[("sink", &id), ("reason", "max_age")],
        |v| v.unwrap_or(0.0) >= 6.0,
    )
    .await;
    let dead = PathBuf::from(format!("{}.dead", queue_path(&h.path).display()));
    let bytes = std::fs::read(&dead).unwrap_or_else(|e| panic!("{}: {e}", dead.display()));
    let text = String::from_utf8_lossy(&bytes);
    for e in &evs {
        let eid = e["event_id"].as_str().unwrap();
        assert_eq!(
            text.matches(eid).count(),
            1,
            "{eid} is dead-lettered once: {text}"
        );
    }
    let recs = read_dead_letters(&dead, None).unwrap();
    assert_eq!(
        sorted(
            recs.iter()
                .map(|r| r.event["event_id"].as_str().unwrap().to_string())
                .collect()
        ),
        id_set(&evs).into_iter().collect::<Vec<_>>()
    );
    for r in &recs {
        assert_eq!(
            (r.sink.as_str(), r.reason.as_str()),
            (id.as_str(), "max_age")
        );
        assert_eq!(r.accepted_at, T0);
        assert_eq!(r.dead_lettered_at, T0 + 2.0);
    }
    let evs = wait_log(&log, "the dead-letter report", |e| {
        !of_type(e, "webhook_dead_lettered").is_empty()
    })
    .await;
    let dl = of_type(&evs, "webhook_dead_lettered");
    assert_eq!(dl[0]["severity"], "WARNING");
    assert_eq!(detail(dl[0], "sink"), id.as_str());
    assert_eq!(detail(dl[0], "reason"), "max_age");
    // The report itself is queued for every sink, the dead one included (a sink that comes
    // back learns of its outage). Once it expires too it is dead-lettered without a further
    // report, so nothing is left for the dead sink and the queue does not grow while it
    // stays down.
    h.clock.advance(2.0);
    let depth = Instant::now();
    let v = loop {
        let v = metric(&h, "xai_security_webhook_queue_depth", &[("sink", &id)]).await;
        if v == Some(0.0) || depth.elapsed() > Duration::from_secs(3) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        v,
        Some(0.0),
        "the queue of a dead sink drains after max_age; still queued for it: the {} \
         webhook_dead_lettered events reporting its own dead letters",
        of_type(&read_log(&log), "webhook_dead_lettered").len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        of_type(&read_log(&log), "webhook_dead_lettered").len(),
        1,
        "an expired report makes no further report"
    );
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_dead_letters_only_what_a_sink_lost() {
    let bad = HookServer::start().await;
    bad.set_status(500);
    let good = HookServer::start().await;
    let (bad_id, good_id) = (sink_id(&bad.url()), sink_id(&good.url()));
    let sinks = parse_sinks(&format!("{},{}", bad.url(), good.url())).unwrap();
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = sinks;
            c.telemetry.queue_max_events = 6;
        })
        .await;
    let log = event_log(h.dir.path());
    // The four issues and the failure report: five events, all delivered to the good sink.
    let evs = wait_log(&log, "the delivery failure", |e| {
        !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    assert_eq!(evs.len(), 5, "{evs:#?}");
    good.wait("the first five", |b| id_set(b) == id_set(&evs))
        .await;
    // One action at a time, each delivered to the good sink before the next: whatever the
    // queue evicts is pending for the failing sink only.
    let cli = open_store(&h.path);
    for i in 0..4 {
        let k = issue(
            cli.as_ref(),
            Scope::User,
            &format!("fill-{i}"),
            TtlRequest::Default,
            h.clock.now(),
        );
        h.net.secrets.add(&k.secret);
        good.wait("the new key", |b| !audit(b, "issue", &k.id).is_empty())
            .await;
    }
    // 9 events for a queue of 6: the 3 oldest were lost for the failing sink, none for the good.
    wait_metric(
        &h,
        "xai_security_webhook_dead_lettered_total",
        &[("sink", &bad_id), ("reason", "queue_full")],
        |v| v == Some(3.0),
    )
    .await;
    let dead = PathBuf::from(format!("{}.dead", queue_path(&h.path).display()));
    let text = std::fs::read_to_string(&dead).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l.split_once(' ').unwrap().1).unwrap())
        .collect();
    assert_eq!(recs.len(), 3, "{text}");
    assert!(
        recs.iter()
            .all(|r| r["sink"] == bad_id.as_str() && r["reason"] == "queue_full"),
        "{text}"
    );
    assert_eq!(good.delivered().len(), 9);
    let text = h.scrape().await;
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_queue_depth",
            &[("sink", &bad_id)]
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_webhook_dead_lettered_total",
            &[("sink", &good_id), ("reason", "queue_full")]
        ),
        Some(0.0),
        "the good sink lost nothing, but its dead-letter counter moved"
    );
    h.gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Encrypted queue
// ---------------------------------------------------------------------------------------------

/// Every byte of the queue's files (the queue may be one file or a directory; the dead
/// letters and any file beside it that starts with its name).
fn queue_bytes(queue: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let dir = queue.parent().unwrap();
    let name = queue.file_name().unwrap().to_string_lossy().into_owned();
    let mut stack: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .unwrap()
                    .filter_map(Result::ok)
                    .map(|e| e.path()),
            );
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_queue_hides_events_at_rest_and_needs_its_key() {
    let sink = HookServer::start().await;
    sink.set_status(503);
    let sinks = parse_sinks(&sink.url()).unwrap();
    let id = sinks[0].id.clone();
    let key = || Some(Arc::new(QueueKey::parse(&"ab".repeat(32)).unwrap()));
    let s2 = sinks.clone();
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = s2;
            c.telemetry.queue_key = key();
        })
        .await;
    let log = event_log(h.dir.path());
    let cli = open_store(&h.path);
    let label = "label-in-the-queue-7f3a";
    let k = issue(
        cli.as_ref(),
        Scope::User,
        label,
        TtlRequest::Default,
        h.clock.now(),
    );
    h.net.secrets.add(&k.secret);
    wait_log(&log, "the issue", |e| !audit(e, "issue", &k.id).is_empty()).await;
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v.unwrap_or(0.0) >= 5.0,
    )
    .await;
    let q = queue_path(&h.path);
    let bytes = queue_bytes(&q);
    assert!(!bytes.is_empty(), "the queue is on disk at {}", q.display());
    for needle in [
        k.id.as_str(),
        label,
        "api_key_audit",
        h.keys.admin.id.as_str(),
        k.secret.as_str(),
    ] {
        assert!(
            !contains(&bytes, needle),
            "the queue holds {needle:?} in clear"
        );
    }

    // Delivered in clear to the sink.
    sink.set_status(200);
    let got = sink
        .wait("the issue", |b| !audit(b, "issue", &k.id).is_empty())
        .await;
    assert_eq!(detail(audit(&got, "issue", &k.id)[0], "label"), label);
    wait_metric(
        &h,
        "xai_security_webhook_queue_depth",
        &[("sink", &id)],
        |v| v == Some(0.0),
    )
    .await;
    let NetHarness {
        gw,
        dir,
        path,
        clock,
        ..
    } = h;
    gw.shutdown().await;

    // Another key, or none, does not open it.
    let other = "cd".repeat(32);
    let start = |queue_key: Option<Arc<QueueKey>>| {
        let cfg = tel_config(&event_log(dir.path()), |c| {
            c.telemetry.webhooks.sinks = sinks.clone();
            c.telemetry.queue_key = queue_key;
        });
        Gateway::start(cfg, open_store(&path), clock.clock())
    };
    for (what, qk) in [
        (
            "another key",
            Some(Arc::new(QueueKey::parse(&other).unwrap())),
        ),
        ("no key", None),
    ] {
        let err = match start(qk) {
            Ok(_) => panic!("a gateway started on an encrypted queue with {what}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("XAI_SECURITY_WEBHOOK_QUEUE_KEY"),
            "{what}: {err}"
        );
        assert!(
            !err.contains(&other) && !err.contains(&"ab".repeat(32)),
            "{what}: {err}"
        );
    }
    // The right key still does.
    let gw = start(key()).unwrap_or_else(|e| panic!("the right key: {e}"));
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dead_letters_need_the_key_too() {
    let port = closed_port().await;
    let url = format!("http://{port}/hook");
    let id = sink_id(&url);
    let sinks = parse_sinks(&url).unwrap();
    let key = QueueKey::parse(&"ab".repeat(32)).unwrap();
    let qk = Arc::new(key.clone());
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = sinks;
            c.telemetry.webhooks.max_age = Duration::from_secs(1);
            c.telemetry.queue_key = Some(qk);
        })
        .await;
    let log = event_log(h.dir.path());
    let evs = wait_log(&log, "the delivery failure", |e| {
        !of_type(e, "webhook_delivery_failure").is_empty()
    })
    .await;
    h.clock.advance(2.0);
    wait_metric(
        &h,
        "xai_security_webhook_dead_lettered_total",
        &[("sink", &id), ("reason", "max_age")],
        |v| v.unwrap_or(0.0) >= evs.len() as f64,
    )
    .await;
    let dead = PathBuf::from(format!("{}.dead", queue_path(&h.path).display()));
    let bytes = std::fs::read(&dead).unwrap();
    for e in &evs {
        let eid = e["event_id"].as_str().unwrap();
        assert!(!contains(&bytes, eid), "{eid} in clear in the dead letters");
    }
    for k in h.keys.all() {
        assert!(
            !contains(&bytes, &k.id),
            "a key id in clear in the dead letters"
        );
    }
    let recs = read_dead_letters(&dead, Some(&key)).unwrap();
    let dead_ids: BTreeSet<String> = recs
        .iter()
        .map(|r| r.event["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dead_ids, id_set(&evs));
    assert!(read_dead_letters(&dead, None).is_err());
    assert!(read_dead_letters(&dead, Some(&QueueKey::parse(&"cd".repeat(32)).unwrap())).is_err());
    h.gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Store health
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_problems_and_recovery_are_events() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    let original = std::fs::read(&h.path).unwrap();
    std::fs::write(&h.path, b"\x00\x01 this is not JSON {{{").unwrap();
    let evs = wait_log(&log, "store_unreadable", |e| {
        !of_type(e, "store_unreadable").is_empty()
    })
    .await;
    let ev = of_type(&evs, "store_unreadable")[0];
    assert_eq!(ev["severity"], "CRITICAL", "{ev}");
    assert_eq!(detail(ev, "status"), "unreadable");
    assert_eq!(detail(ev, "previous_status"), "ok");
    assert_eq!(detail(ev, "store"), h.path.to_string_lossy().as_ref());
    assert!(
        !detail(ev, "problem").as_str().unwrap_or("").is_empty(),
        "{ev}"
    );
    assert_eq!(
        metric(
            &h,
            "xai_security_events_critical_total",
            &[("event_type", "store_unreadable")]
        )
        .await,
        Some(1.0)
    );

    std::fs::write(&h.path, &original).unwrap();
    let evs = wait_log(&log, "store_recovered", |e| {
        !of_type(e, "store_recovered").is_empty()
    })
    .await;
    let ev = of_type(&evs, "store_recovered")[0];
    assert_eq!(ev["severity"], "INFO", "{ev}");
    assert_eq!(detail(ev, "status"), "ok");
    assert_eq!(detail(ev, "previous_status"), "unreadable");
    tokio::time::sleep(FOLLOW * 5).await;
    let evs = read_log(&log);
    assert_eq!(of_type(&evs, "store_unreadable").len(), 1, "{evs:#?}");
    assert_eq!(of_type(&evs, "store_recovered").len(), 1, "{evs:#?}");
    let text = h.scrape().await;
    assert_eq!(
        sample(
            &text,
            "xai_security_events_total",
            &[("event_type", "store_recovered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "xai_security_events_critical_total",
            &[("event_type", "store_recovered")]
        ),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 10. /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_describe_the_key_inventory() {
    let sink = HookServer::start().await;
    let sinks = parse_sinks(&sink.url()).unwrap();
    let h = setup().harness(|c| c.telemetry.webhooks.sinks = sinks);
    let text = h.scrape().await;
    // Every line is a comment (`# HELP`, `# TYPE`, `# EOF`) or a sample.
    for l in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = l.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE ") || rest == "EOF",
                "bad comment line {l:?}"
            );
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let (_, kind) = t.split_once(' ').unwrap();
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info"
                    ]
                    .contains(&kind),
                    "{l:?}"
                );
            }
        } else {
            assert!(parse_sample(l).is_some(), "unparseable line {l:?}");
        }
    }
    for (name, kind) in [
        ("xai_security_events_total", "counter"),
        ("xai_security_events_warning_total", "counter"),
        ("xai_security_events_critical_total", "counter"),
        ("xai_key_lifecycle_actions_total", "counter"),
        ("xai_security_events_dropped_total", "counter"),
        ("xai_change_window_open", "gauge"),
        ("xai_change_window_required", "gauge"),
        ("xai_change_window_expiry_timestamp_seconds", "gauge"),
        ("xai_keys_audit_chain_ok", "gauge"),
        ("xai_api_keys", "gauge"),
        ("xai_api_keys_expiring_7d", "gauge"),
        ("xai_api_key_next_expiry_seconds", "gauge"),
        ("xai_security_webhook_queue_depth", "gauge"),
        ("xai_security_webhook_oldest_event_age_seconds", "gauge"),
        ("xai_security_webhook_deliveries_total", "counter"),
        ("xai_security_webhook_dead_lettered_total", "counter"),
        ("xai_security_webhook_sink_info", "gauge"),
    ] {
        let line = format!("# TYPE {name} {kind}");
        assert_eq!(
            text.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} once in {text}"
        );
    }
    // Every event type's series exists from the start.
    for t in xai_keys_core::events::EVENT_TYPES {
        assert!(
            text.lines()
                .any(|l| l.starts_with("xai_security_events_total{")
                    && l.contains(&format!("event_type=\"{t}\""))),
            "{t}"
        );
    }
    assert_eq!(sample(&text, "xai_keys_audit_chain_ok", &[]), Some(1.0));
    assert_eq!(sample(&text, "xai_change_window_required", &[]), Some(0.0));

    // The harness's four keys: one active per scope, 90 days left.
    let inv = |text: &str, scope: &str, state: &str| {
        sample(text, "xai_api_keys", &[("scope", scope), ("state", state)])
    };
    for scope in ["user", "operator", "auditor", "admin"] {
        assert_eq!(inv(&text, scope, "active"), Some(1.0), "{scope}");
        assert_eq!(inv(&text, scope, "expired"), Some(0.0), "{scope}");
        assert_eq!(inv(&text, scope, "disabled"), Some(0.0), "{scope}");
        assert_eq!(
            sample(&text, "xai_api_keys_expiring_7d", &[("scope", scope)]),
            Some(0.0),
            "{scope}"
        );
    }
    assert_eq!(
        sample(&text, "xai_api_key_next_expiry_seconds", &[]),
        Some(90.0 * DAY)
    );

    // A key expiring in three days and a disabled key.
    let soon = h
        .issue_direct(Scope::User, TtlRequest::Seconds(3.0 * DAY))
        .await;
    let cli = open_store(&h.path);
    KeyManager::new(cli.as_ref(), policy())
        .set_disabled(&h.keys.operator.id, true, &cli_actor(), h.clock.now())
        .unwrap();
    let st = h.gateway.state();
    let op = h.keys.operator.key_id();
    wait_until("the index to see the disable", || {
        let disabled = st.index.load().get(&op).is_some_and(|e| e.disabled);
        async move { disabled }
    })
    .await;
    let text = h.scrape().await;
    assert_eq!(inv(&text, "user", "active"), Some(2.0));
    assert_eq!(inv(&text, "operator", "active"), Some(0.0));
    assert_eq!(inv(&text, "operator", "disabled"), Some(1.0));
    assert_eq!(
        sample(&text, "xai_api_keys_expiring_7d", &[("scope", "user")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "xai_api_key_next_expiry_seconds", &[]),
        Some(3.0 * DAY)
    );
    // Four days on, it has expired.
    h.clock.advance(4.0 * DAY);
    let text = h.scrape().await;
    assert_eq!(inv(&text, "user", "expired"), Some(1.0));
    assert_eq!(inv(&text, "user", "active"), Some(1.0));
    assert_eq!(
        sample(&text, "xai_api_keys_expiring_7d", &[("scope", "user")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "xai_api_key_next_expiry_seconds", &[]),
        Some(86.0 * DAY)
    );
    h.send(post("/send").key(&soon))
        .await
        .denied(403, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_answer_404() {
    let h = setup().harness(|c| c.metrics_enabled = false);
    let r = h.send(get("/metrics")).await;
    let msg = r.err(404, "metrics_disabled");
    assert!(msg.contains("XAI_METRICS"), "{msg}");
    // Events are still logged.
    wait_log(&event_log(h.dir.path()), "the initial issues", |e| {
        of_type(e, "api_key_audit").len() == 4
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. Audit chain
// ---------------------------------------------------------------------------------------------

/// Appends a line with a valid hash of its own whose `prev_hash` does not link to the line
/// before it (what an edit of the log leaves behind); returns its timestamp.
fn append_forged_line(store: &FileStore, about: &Key, now: f64) -> f64 {
    use std::io::Write;
    let text = std::fs::read_to_string(store.log_path()).unwrap();
    let mut forged: AuditEvent = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    forged.insert("timestamp".into(), json!(now + 1.0));
    forged.insert("key_id".into(), json!(about.id));
    forged.insert("prev_hash".into(), json!("f".repeat(64)));
    let hash = line_hash(&forged);
    forged.insert("hash".into(), json!(hash));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(store.log_path())
        .unwrap();
    writeln!(f, "{}", Value::Object(forged)).unwrap();
    now + 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_audit_line_breaks_the_chain() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    let cli = open_store(&h.path);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    wait_log(&log, "the revocation", |e| {
        !audit(e, "revoke", &h.keys.user.id).is_empty()
    })
    .await;
    assert_eq!(metric(&h, "xai_keys_audit_chain_ok", &[]).await, Some(1.0));
    assert!(of_type(&read_log(&log), "audit_chain_broken").is_empty());

    // A line with a valid hash of its own that does not follow the line before it.
    let forged_at = append_forged_line(&h.store, &h.keys.auditor, h.clock.now());

    let evs = wait_log(&log, "audit_chain_broken", |e| {
        !of_type(e, "audit_chain_broken").is_empty()
    })
    .await;
    let ev = of_type(&evs, "audit_chain_broken")[0];
    assert_eq!(ev["severity"], "CRITICAL", "{ev}");
    assert!(
        detail(ev, "problem")
            .as_str()
            .unwrap()
            .contains("does not follow"),
        "{ev}"
    );
    assert!(
        detail(ev, "remedy")
            .as_str()
            .unwrap()
            .contains("xai-keys verify"),
        "{ev}"
    );
    assert_eq!(detail(ev, "at_timestamp").as_f64(), Some(forged_at));
    wait_metric(&h, "xai_keys_audit_chain_ok", &[], |v| v == Some(0.0)).await;
    tokio::time::sleep(FOLLOW * 5).await;
    let text = h.scrape().await;
    assert_eq!(sample(&text, "xai_keys_audit_chain_ok", &[]), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "xai_security_events_critical_total",
            &[("event_type", "audit_chain_broken")]
        ),
        Some(1.0),
        "reported once"
    );
    assert_eq!(of_type(&read_log(&log), "audit_chain_broken").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_break_survives_a_restart_until_the_log_checks_out_again() {
    let s = setup();
    let log = event_log(s.dir.path());
    let (path, store, clock) = (s.path.clone(), s.store.clone(), s.clock.clone());
    let (user, auditor) = (s.keys.user.clone(), s.keys.auditor.clone());
    let gw = s.start(|_| {});
    let cli = open_store(&path);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&user.id, None, &cli_actor(), clock.now())
        .unwrap();
    wait_log(&log, "the revocation", |e| {
        !audit(e, "revoke", &user.id).is_empty()
    })
    .await;
    let good_len = std::fs::metadata(store.log_path()).unwrap().len();
    append_forged_line(&store, &auditor, clock.now());
    wait_log(&log, "the break", |e| {
        !of_type(e, "audit_chain_broken").is_empty()
    })
    .await;
    assert!(!gw.state().telemetry.audit_chain_ok());
    let mut gw = gw;
    gw.stop_background();
    drop(gw);

    // No restart on a broken log: the gateway refuses to start and says why.
    let cfg = tel_config(&log, |_| {});
    let e = Gateway::start(cfg.clone(), store.clone(), clock.clock())
        .err()
        .expect("a broken log stops the start")
        .to_string();
    assert!(e.contains("prev_hash"), "{e}");
    // The forged line removed (the log restored): the chain holds again, and the
    // truncation is reported.
    std::fs::OpenOptions::new()
        .write(true)
        .open(store.log_path())
        .unwrap()
        .set_len(good_len)
        .unwrap();
    let breaks = of_type(&read_log(&log), "audit_chain_broken").len();
    let gw = Gateway::start(cfg, store.clone(), clock.clock()).unwrap();
    wait_log(&log, "the truncation report", |e| {
        of_type(e, "audit_chain_broken").len() > breaks
    })
    .await;
    let started = Instant::now();
    while !gw.state().telemetry.audit_chain_ok() && started.elapsed() < WAIT {
        tokio::time::sleep(FOLLOW).await;
    }
    assert!(
        gw.state().telemetry.audit_chain_ok(),
        "the restored log's chain holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_refuses_is_dead_lettered_without_holding_up_the_rest() {
    let sink = HookServer::start().await;
    sink.set_status(422);
    let id = sink_id(&sink.url());
    let sinks = parse_sinks(&sink.url()).unwrap();
    let h = setup()
        .net(|c| {
            c.telemetry.webhooks.sinks = sinks;
            c.telemetry.webhooks.min_severity = xai_keys_core::events::Severity::Critical;
        })
        .await;
    // The admin key's issue (CRITICAL) is refused five times, then dead-lettered long before
    // XAI_SECURITY_WEBHOOK_MAX_AGE (72 h here).
    wait_metric(
        &h,
        "xai_security_webhook_dead_lettered_total",
        &[("sink", &id), ("reason", "rejected")],
        |v| v == Some(1.0),
    )
    .await;
    assert_eq!(
        sink.attempts(),
        xai_keys_server::webhook::MAX_REJECTIONS as usize
    );
    // The next event goes through once the receiver accepts it.
    sink.set_status(200);
    let cli = open_store(&h.path);
    let k = issue(
        cli.as_ref(),
        Scope::Admin,
        "after",
        TtlRequest::Default,
        h.clock.now(),
    );
    h.net.secrets.add(&k.secret);
    sink.wait("the next admin issue", |b| {
        b.iter().any(|e| e["details"]["key_id"] == k.id.as_str())
    })
    .await;
    let dead = PathBuf::from(format!("{}.dead", queue_path(&h.path).display()));
    let recs = read_dead_letters(&dead, None).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reason, "rejected");
    h.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_audit_line_does_not_stall_telemetry() {
    let port = closed_port().await;
    let sinks = parse_sinks(&format!("http://{port}/hook")).unwrap();
    let h = setup().harness(|c| c.telemetry.webhooks.sinks = sinks);
    let log = event_log(h.dir.path());
    // A line another tool wrote, nested 100 levels deep (the queue refuses more than 64).
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!({"d": deep});
    }
    {
        // Chained correctly (the store keeps accepting writes after it).
        use std::io::Write;
        let text = std::fs::read_to_string(h.store.log_path()).unwrap();
        let last: AuditEvent = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let mut line = last.clone();
        line.insert("timestamp".into(), json!(h.clock.now()));
        line.insert("action".into(), json!("restore"));
        line.insert("key_id".into(), Value::Null);
        line.insert("detail".into(), deep);
        line.insert("prev_hash".into(), last["hash"].clone());
        line.remove("hash");
        let hash = line_hash(&line);
        line.insert("hash".into(), json!(hash));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(h.store.log_path())
            .unwrap();
        writeln!(f, "{}", Value::Object(line)).unwrap();
    }
    let cli = open_store(&h.path);
    KeyManager::new(cli.as_ref(), policy())
        .revoke(&h.keys.user.id, None, &cli_actor(), h.clock.now())
        .unwrap();
    let evs = wait_log(&log, "the revocation after the odd line", |e| {
        !audit(e, "revoke", &h.keys.user.id).is_empty()
    })
    .await;
    let restore = evs
        .iter()
        .find(|e| e["details"]["action"] == "restore")
        .expect("the odd line is an event too");
    assert!(
        detail(restore, "detail")
            .as_str()
            .unwrap()
            .contains("nested deeper")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_peer_routes_are_peer_auth_failures() {
    let h = setup().harness(|_| {});
    let log = event_log(h.dir.path());
    h.send(post("/transaction/receive").h("x-api-key", "not-a-peer-key-at-all"))
        .await
        .denied(401, "unknown_key");
    let evs = wait_log(&log, "the peer failure", |e| {
        !of_type(e, "peer_auth_failure").is_empty()
    })
    .await;
    let ev = of_type(&evs, "peer_auth_failure")[0];
    assert_eq!(detail(ev, "route_class"), "peer");
    assert!(of_type(&evs, "api_auth_failure").is_empty());
}
