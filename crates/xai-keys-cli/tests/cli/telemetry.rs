//! Security telemetry end to end with real processes: CLI actions reaching a running
//! gateway's metrics and a webhook sink, durability of the event queue across SIGKILL, the
//! encrypted queue's key check, and change windows from the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A webhook receiver on 127.0.0.1 recording every JSON body it gets; answers 200, or 503
/// while `down` is set.
struct Sink {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start_on(listener: TcpListener) -> Sink {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, d, s) = (bodies.clone(), down, stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (b, d) = (b.clone(), d.clone());
                        std::thread::spawn(move || serve_one(conn, &b, &d));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { addr, bodies, stop }
    }

    fn start() -> Sink {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the bodies received.
    fn wait(&self, what: &str, limit: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        poll(limit, || {
            let b = self.bodies();
            pred(&b).then_some(b)
        })
        .unwrap_or_else(|| panic!("webhook sink: {what}; received {:#?}", self.bodies()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One HTTP/1.1 exchange (keep-alive loop) of the sink.
fn serve_one(conn: TcpStream, bodies: &Mutex<Vec<Value>>, down: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = if down.load(Ordering::Relaxed) {
            "503 Service Unavailable"
        } else {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                bodies.lock().unwrap().push(v);
            }
            "200 OK"
        };
        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// The JSON lines of an event log file (missing file: none).
fn event_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .map(|t| json_lines(&t))
        .unwrap_or_default()
}

fn audit_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event_type"] == "api_key_audit")
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

fn kill9(gw: &Gateway) {
    let st = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// The settings every test here uses: fast retries, the event log in a file.
fn vars<'a>(events: &'a str, sink: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("XAI_SECURITY_EVENT_LOG", events),
        ("XAI_SECURITY_WEBHOOK_URL", sink),
        ("XAI_SECURITY_WEBHOOK_RETRY_MIN", "0.05"),
        ("XAI_SECURITY_WEBHOOK_RETRY_MAX", "0.2"),
        ("XAI_SECURITY_WEBHOOK_TIMEOUT", "2"),
        ("XAI_AUDIT_FOLLOW_MS", "50"),
    ]
}

#[test]
fn a_cli_revoke_reaches_metrics_and_the_webhook_sink_within_seconds() {
    let env = Env::new();
    let sink = Sink::start();
    let events = env.dir.path().join("events.ndjson");
    let ev = events.display().to_string();
    let url = sink.url();
    let gw = env.serve(&[], &vars(&ev, &url));
    let (_, id) = env.issue("user", "telemetry");
    env.ok(&["revoke", &id]);

    let got = sink.wait("the revoke event", Duration::from_secs(5), |b| {
        b.iter()
            .any(|e| e["details"]["action"] == "revoke" && e["details"]["key_id"] == id.as_str())
    });
    let revoke = got
        .iter()
        .find(|e| e["details"]["action"] == "revoke")
        .unwrap();
    assert_eq!(revoke["event_type"], "api_key_audit");
    assert_eq!(revoke["severity"], "WARNING");
    assert_eq!(revoke["details"]["scope"], "user");
    assert!(
        revoke["details"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("cli:")
    );
    assert!(revoke["event_id"].as_str().unwrap().starts_with("audit-"));
    // Issuance reaches the SOC too (reference defect R).
    assert!(got.iter().any(|e| e["details"]["action"] == "issue"));

    let metrics = gw.get("/metrics", &[]).text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("xai_security_events_warning_total{")
                && l.contains("event_type=\"api_key_audit\"")
                && l.contains("action=\"revoke\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    // Logged once as a JSON line.
    let logged = event_lines(&events);
    let revokes: Vec<_> = logged
        .iter()
        .filter(|e| e["details"]["action"] == "revoke")
        .collect();
    assert_eq!(revokes.len(), 1, "{logged:#?}");
    // No secret anywhere.
    for e in logged.iter().chain(got.iter()) {
        assert!(!e.to_string().contains("xai_"), "{e}");
    }
}

#[test]
fn sigkill_loses_no_queued_event_and_a_restart_replays_no_emitted_line() {
    let env = Env::new();
    // The sink's address is fixed for both runs (the queue is per sink URL) but nothing
    // listens on it during the first run.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/hook");
    let log_a = env.dir.path().join("events-a.ndjson");
    let log_b = env.dir.path().join("events-b.ndjson");
    let (la, lb) = (log_a.display().to_string(), log_b.display().to_string());

    let gw = env.serve(&[], &vars(&la, &url));
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(env.issue("user", &format!("k{i}")).1);
    }
    env.ok(&["revoke", &ids[0]]);
    env.ok(&["disable", &ids[1]]);
    // Every audit line so far (the bootstrapped admin key's included) is emitted before the
    // kill. Emitted (logged) means queued: the log line is written after the queue append.
    let lines = env
        .ok(&["events", "--limit", "100"])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(lines, 7);
    let emitted = poll(Duration::from_secs(5), || {
        let ids = audit_ids(&event_lines(&log_a));
        (ids.len() >= lines).then_some(ids)
    })
    .unwrap_or_else(|| {
        panic!(
            "first run did not emit {lines} audit events: {:#?}",
            event_lines(&log_a)
        )
    });
    kill9(&gw);
    drop(gw);

    let sink = Sink::start_on(TcpListener::bind(addr).unwrap());
    let gw = env.serve(&[], &vars(&lb, &url));
    let expected: BTreeSet<String> = emitted.iter().cloned().collect();
    sink.wait("every queued event", Duration::from_secs(10), |b| {
        let got: BTreeSet<String> = b
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_string))
            .collect();
        expected.is_subset(&got)
    });
    // A new action after the restart is emitted and delivered once.
    env.ok(&["revoke", &ids[2]]);
    let after = sink.wait("the new revoke", Duration::from_secs(5), |b| {
        b.iter().any(|e| {
            e["details"]["key_id"] == ids[2].as_str() && e["details"]["action"] == "revoke"
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in sink.bodies().iter().chain(after.iter().take(0)) {
        *counts
            .entry(e["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &expected {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "event {id} delivered {:?} times",
            counts.get(id)
        );
    }
    // The second run emitted no line the first run had emitted.
    let second = audit_ids(&event_lines(&log_b));
    for id in &second {
        assert!(!expected.contains(id), "replayed {id}");
    }
    assert_eq!(second.len(), 1, "{:#?}", event_lines(&log_b));
    drop(gw);
}

#[test]
fn the_encrypted_queue_refuses_a_wrong_or_missing_key_at_startup() {
    let env = Env::new();
    let sink = Sink::start();
    let url = sink.url();
    let key_a = "a1".repeat(32);
    let key_b = "b2".repeat(32);
    let mut vars_a = vars("off", &url);
    vars_a.push(("XAI_SECURITY_WEBHOOK_QUEUE_KEY", &key_a));
    let mut gw = env.serve(&[], &vars_a);
    env.issue("user", "secret-label-in-queue");
    sink.wait("an event", Duration::from_secs(5), |b| !b.is_empty());
    let (status, _) = gw.terminate();
    assert!(status.success());
    let mut queue = env.local_base().into_os_string();
    queue.push(".webhook-queue");
    let bytes = std::fs::read(&queue).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("secret-label-in-queue"),
        "the queue holds the event in clear"
    );
    assert_eq!(mode(Path::new(&queue)), 0o600);

    for (key, why) in [(Some(key_b.as_str()), "wrong key"), (None, "no key")] {
        let mut v = vars("off", &url);
        if let Some(k) = key {
            v.push(("XAI_SECURITY_WEBHOOK_QUEUE_KEY", k));
        }
        let out = env.serve_cmd(&[], &v).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{why}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("XAI_SECURITY_WEBHOOK_QUEUE_KEY"),
            "{why}: {err}"
        );
        assert!(
            !err.contains(&key_a) && !err.contains(&key_b),
            "{why}: {err}"
        );
    }
    // An invalid key is a configuration error, never a fall-back to plaintext.
    let mut v = vars("off", &url);
    v.push(("XAI_SECURITY_WEBHOOK_QUEUE_KEY", "not-a-key"));
    let out = env.serve_cmd(&[], &v).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("XAI_SECURITY_WEBHOOK_QUEUE_KEY") && !err.contains("not-a-key"),
        "{err}"
    );
    // The original key still opens it.
    let gw = env.serve(&[], &vars_a);
    drop(gw);
}

#[test]
fn change_windows_are_audited_and_mark_the_actions_inside_them() {
    let env = Env::new();
    let st = env.ok(&["window", "status"]);
    assert_eq!(st["open"], false);
    let w = env.ok(&[
        "window", "open", "--for", "2h", "--ticket", "CHG-42", "--reason", "rotation",
    ]);
    assert_eq!(w["open"], true);
    assert_eq!(w["ticket"], "CHG-42");
    let err = env.fails(&["window", "open", "--for", "1h", "--ticket", "CHG-43"], 1);
    assert!(
        err.contains("CHG-42") && err.contains("window close"),
        "{err}"
    );
    let (_, inside) = env.issue("user", "inside");
    let closed = env.ok(&["window", "close", "--reason", "done"]);
    assert_eq!(closed["closed"], true);
    assert_eq!(closed["open"], false);
    let none = env.ok(&["window", "close"]);
    assert_eq!(none["closed"], false);

    let out = env
        .cmd()
        .env("XAI_REQUIRE_CHANGE_WINDOW", "1")
        .args(["issue", "--label", "outside"])
        .output()
        .unwrap();
    assert_exit(&out, 0, &["issue"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CRITICAL") && err.contains("window open"),
        "{err}"
    );

    for (args, what) in [
        (
            vec!["window", "open", "--for", "10s", "--ticket", "X"],
            "60 s",
        ),
        (
            vec!["window", "open", "--for", "30d", "--ticket", "X"],
            "7 days",
        ),
        (
            vec!["window", "open", "--for", "1h", "--ticket", " "],
            "ticket",
        ),
        (
            vec!["window", "open", "--for", "soon", "--ticket", "X"],
            "duration",
        ),
    ] {
        let err = env.fails(&args, 1);
        assert!(err.contains(what), "{args:?}: {err}");
    }

    let events = env.ok(&["events", "--limit", "20"]);
    let events = events.as_array().unwrap();
    let by_action =
        |a: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == a).collect() };
    assert_eq!(by_action("window_open").len(), 1);
    assert_eq!(by_action("window_open")[0]["ticket"], "CHG-42");
    assert_eq!(by_action("window_close").len(), 1);
    let issues = by_action("issue");
    let inside_line = issues
        .iter()
        .find(|e| e["key_id"] == inside.as_str())
        .unwrap();
    assert_eq!(inside_line["change_window"], "CHG-42");
    let outside_line = issues.iter().find(|e| e["label"] == "outside").unwrap();
    assert!(outside_line.get("change_window").is_none());
    let (code, report) = env.verify();
    assert_eq!(code, 0, "{report}");
}

#[test]
fn events_a_dead_sink_never_took_are_dead_lettered_and_readable_with_the_cli() {
    let env = Env::new();
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", reserved.local_addr().unwrap());
    drop(reserved);
    let key = "c3".repeat(32);
    let mut v = vars("off", &url);
    v.push(("XAI_SECURITY_WEBHOOK_MAX_AGE", "1"));
    v.push(("XAI_SECURITY_WEBHOOK_QUEUE_KEY", &key));
    let gw = env.serve(&[], &v);
    let (_, id) = env.issue("user", "never-delivered");
    let dead = poll(Duration::from_secs(8), || {
        let out = env
            .cmd()
            .env("XAI_SECURITY_WEBHOOK_QUEUE_KEY", &key)
            .arg("dead-letters")
            .output()
            .unwrap();
        assert_exit(&out, 0, &["dead-letters"]);
        let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
        lines
            .iter()
            .any(|l| l["event"]["details"]["key_id"] == id.as_str())
            .then_some(lines)
    })
    .expect("the undeliverable issue event in the dead letters");
    let l = dead
        .iter()
        .find(|l| l["event"]["details"]["key_id"] == id.as_str())
        .unwrap();
    assert_eq!(l["reason"], "max_age");
    assert_eq!(l["event"]["event_type"], "api_key_audit");
    // Encrypted at rest: without the key the file cannot be read, and the error says so.
    let err = env.fails(&["dead-letters"], 1);
    assert!(err.contains("XAI_SECURITY_WEBHOOK_QUEUE_KEY"), "{err}");
    let metrics = gw.get("/metrics", &[]).text();
    assert!(
        metrics.lines().any(
            |m| m.starts_with("xai_security_webhook_dead_lettered_total{")
                && m.contains("reason=\"max_age\"")
                && !m.ends_with(" 0")
        ),
        "{metrics}"
    );
}
