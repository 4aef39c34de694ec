//! Security-event throughput (`bench/run-telemetry`, issue 4): audit lines per second turned
//! into events by the telemetry pipeline, against a baseline measured in the same run.
//!
//!     event_throughput [--lines 200000] [--dir DIR]
//!
//! A store's audit log is filled with `--lines` lifecycle lines (legacy format, timestamps of
//! now, so a fresh queue emits them all), then, each on the same file:
//!
//! * baseline: `LogFollower::poll` reading and parsing every line (the least any follower pays);
//! * pipeline, no sink: `Telemetry::start` on a fresh queue until `xai_security_events_total`
//!   for the audit type reaches the line count (events built, counted, the cursor appended and
//!   fsynced per batch, JSON lines off);
//! * pipeline, one sink: the same with one webhook sink configured (no worker runs, so every
//!   event is serialised into the queue journal and fsynced: the durable-queue cost).
//!
//! Prints one JSON object on stdout: lines, seconds and lines per second of each, ratios to
//! the baseline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use xai_keys_core::audit::LogFollower;
use xai_keys_core::store::{FileStore, FileStoreOptions, KeyStore};
use xai_keys_server::metrics::Metrics;
use xai_keys_server::reload::IndexHandle;
use xai_keys_server::telemetry::{EventLog, Telemetry, TelemetryConfig};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn write_log(log: &Path, lines: usize, now: f64) {
    let f = std::fs::File::create(log).unwrap();
    let mut w = std::io::BufWriter::new(f);
    for i in 0..lines {
        let action = ["issue", "revoke", "disable", "enable", "rotate"][i % 5];
        writeln!(
            w,
            "{{\"timestamp\": {}, \"action\": \"{action}\", \"key_id\": \"{:064x}\", \"scope\": \"user\", \"label\": \"bench-{i}\", \"actor\": \"cli:bench@host\"}}",
            now + i as f64 * 1e-6,
            i
        )
        .unwrap();
    }
    w.flush().unwrap();
}

fn audit_events_counted(m: &Metrics) -> u64 {
    m.encode()
        .lines()
        .filter(|l| {
            l.starts_with("xai_security_events_total{")
                && l.contains("event_type=\"api_key_audit\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn pipeline(dir: &Path, store_path: &Path, lines: usize, sink: bool, tag: &str) -> f64 {
    let store: Arc<dyn KeyStore> =
        Arc::new(FileStore::new(store_path, FileStoreOptions::default()).unwrap());
    let now = xai_keys_core::now_epoch();
    let idx = Arc::new(IndexHandle::initial(store.as_ref(), now).unwrap());
    let metrics = Arc::new(Metrics::new());
    let mut cfg = TelemetryConfig {
        event_log: EventLog::Off,
        queue_path: Some(dir.join(format!("queue-{tag}"))),
        follow_interval: Duration::from_millis(10),
        queue_max_events: 10_000_000,
        ..TelemetryConfig::default()
    };
    if sink {
        cfg.webhooks.sinks =
            xai_keys_server::webhook::parse_sinks("http://127.0.0.1:9/never-contacted").unwrap();
    }
    let clock: xai_keys_server::Clock = Arc::new(xai_keys_core::now_epoch);
    let started = Instant::now();
    let tel = Telemetry::start(cfg, store, idx.clone(), metrics.clone(), clock).unwrap();
    loop {
        if audit_events_counted(&metrics) >= lines as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "pipeline stalled"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = started.elapsed().as_secs_f64();
    tel.stop();
    secs
}

fn main() {
    let lines: usize = arg("--lines").map_or(200_000, |v| v.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = arg("--dir").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("api_keys.json");
    let log = dir.join("api_keys.json.log");
    let now = xai_keys_core::now_epoch();
    write_log(&log, lines, now);
    let bytes = std::fs::metadata(&log).unwrap().len();

    // Baseline: read and parse every line with the follower alone.
    let started = Instant::now();
    let mut f = LogFollower::new(&log, 0, None);
    let mut n = 0usize;
    while n < lines {
        n += f.poll().unwrap().events.len();
    }
    let base = started.elapsed().as_secs_f64();
    eprintln!("baseline: {lines} lines parsed in {base:.3} s");

    let no_sink = pipeline(&dir, &store_path, lines, false, "nosink");
    eprintln!("pipeline (no sink): {no_sink:.3} s");
    let one_sink = pipeline(&dir, &store_path, lines, true, "sink");
    eprintln!("pipeline (one sink, queue journal): {one_sink:.3} s");

    let rate = |s: f64| lines as f64 / s;
    println!(
        "{}",
        json!({
            "lines": lines,
            "log_bytes": bytes,
            "baseline_parse": {"secs": base, "lines_per_sec": rate(base)},
            "pipeline_no_sink": {"secs": no_sink, "lines_per_sec": rate(no_sink), "ratio_to_baseline": base / no_sink},
            "pipeline_one_sink": {"secs": one_sink, "lines_per_sec": rate(one_sink), "ratio_to_baseline": base / one_sink},
        })
    );
}
