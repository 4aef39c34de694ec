//! `events` and `watch-events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xai_keys_core::audit::{AuditEvent, EventQuery, LogFollower, str_field};
use xai_keys_core::now_epoch;
use xai_keys_core::store::{FileStore, KeyStore};

use crate::args::{EventsArgs, WatchArgs};
use crate::config::{Config, parse_interval, parse_since};
use crate::output::{self, fmt_time};

/// The actions xai-keys writes (a legacy or gateway log may hold others).
const KNOWN_ACTIONS: &[&str] = &[
    "issue", "revoke", "rotate", "expire", "disable", "enable", "restore", "adopt", "recover",
];

/// One table row; the free-text label goes last so long or wide labels do not shift columns.
fn row(e: &AuditEvent) -> Vec<String> {
    let s = |k: &str| str_field(e, k).unwrap_or("").to_string();
    let key = s("key_id");
    vec![
        fmt_time(e.get("timestamp").and_then(Value::as_f64)),
        s("action"),
        key.get(..12).unwrap_or(&key).to_string(),
        s("scope"),
        s("actor"),
        s("label"),
    ]
}

pub fn events(a: EventsArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let action = a.action.clone();
    let q = EventQuery {
        limit: a.limit,
        action: a.action,
        key_id: a.key_id.map(|k| k.trim().to_ascii_lowercase()),
        since: a
            .since
            .as_deref()
            .map(|s| parse_since(s, now_epoch()))
            .transpose()?,
    };
    let page = store.events(&q)?;
    let log = store.log_path();
    if !log.exists() {
        eprintln!(
            "note: audit log {} does not exist yet (no events)",
            log.display()
        );
    } else if let Some(act) =
        action.filter(|a| page.events.is_empty() && !KNOWN_ACTIONS.contains(&a.as_str()))
    {
        eprintln!(
            "note: no event has action {:?}; xai-keys writes {}",
            output::clean(&act),
            KNOWN_ACTIONS.join(", ")
        );
    }
    if cfg.json {
        return output::json(&Value::Array(
            page.events.into_iter().map(Value::Object).collect(),
        ))
        .map(|()| true);
    }
    let rows: Vec<Vec<String>> = page.events.iter().map(row).collect();
    output::table(
        &["TIME", "ACTION", "KEY_ID", "SCOPE", "ACTOR", "LABEL"],
        &rows,
    )?;
    eprintln!("{} event(s) from {}", rows.len(), log.display());
    Ok(true)
}

fn emit(e: &AuditEvent, pretty: bool) -> Result<()> {
    let v = Value::Object(e.clone());
    if pretty {
        output::json(&v)
    } else {
        output::json_line(&v)
    }
}

pub fn watch(a: WatchArgs, cfg: &Config) -> Result<bool> {
    let interval = parse_interval(&a.interval)?.max(Duration::from_millis(20));
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let store: FileStore = cfg.open_store()?;
    let log = store.log_path().to_path_buf();
    // Replay, then follow from exactly where the replay read up to: nothing is lost between.
    let page = store.events(&EventQuery {
        limit: a.limit.clamp(1, xai_keys_core::audit::MAX_EVENT_LIMIT),
        ..Default::default()
    })?;
    if a.limit > 0 {
        for e in &page.events {
            emit(e, a.pretty)?;
        }
    }
    eprintln!("watching {} (Ctrl-C to stop)", log.display());
    let mut follower = LogFollower::new(&log, page.end_offset, page.file_id);
    while !stop.load(Ordering::Relaxed) {
        let batch = follower.poll()?;
        if let Some(why) = batch.reset {
            eprintln!("note: {why}");
        }
        for off in batch.skipped {
            eprintln!(
                "warning: skipped a line that is not valid JSON at byte {off} of {}",
                log.display()
            );
        }
        for e in &batch.events {
            emit(e, a.pretty)?;
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(interval));
        }
    }
    Ok(true)
}
