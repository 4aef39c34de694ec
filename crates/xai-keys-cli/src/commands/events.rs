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
use crate::config::{Config, parse_interval};
use crate::output::{self, clean, fmt_ago, fmt_time};
use xai_keys_core::audit::parse_since;

/// The actions xai-keys writes (a legacy or gateway log may hold others).
const KNOWN_ACTIONS: &[&str] = &[
    "issue",
    "revoke",
    "rotate",
    "expire",
    "disable",
    "enable",
    "restore",
    "adopt",
    "recover",
    "window_open",
    "window_close",
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
    let now = now_epoch();
    let action = a.action.clone();
    let key_id = a.key_id.map(|k| k.trim().to_ascii_lowercase());
    let q = EventQuery {
        limit: a.limit,
        action: a.action,
        key_id: key_id.clone(),
        since: a
            .since
            .as_deref()
            .map(|s| parse_since(s, now))
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
    if let Some(k) = key_id.filter(|k| !k.is_empty()) {
        last_use_footer(&store, &k, now);
    }
    Ok(true)
}

/// Most keys a last-use footer names (a short prefix may match many).
const MAX_FOOTER_KEYS: usize = 5;

/// For `events --key-id K` in table mode: the last recorded use of the key(s) K names, from
/// the usage statistics, on stderr like the other footer. Nothing when none is recorded.
fn last_use_footer(store: &FileStore, prefix: &str, now: f64) {
    let usage = match store.usage() {
        Ok(u) => u,
        Err(e) => {
            output::warnings(&[format!("last use not shown: {e}")]);
            return;
        }
    };
    let matches: Vec<_> = usage
        .range(prefix.to_string()..)
        .take_while(|(id, _)| id.starts_with(prefix))
        .collect();
    for (id, u) in matches.iter().take(MAX_FOOTER_KEYS) {
        let or_unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                clean(s).into_owned()
            }
        };
        eprintln!(
            "last use of {}: {} ({}) by client {} on route {}; {} use(s) recorded",
            xai_keys_core::token::short(&clean(id)),
            fmt_ago(Some(u.last_used), now),
            fmt_time(Some(u.last_used)),
            or_unknown(&u.last_client),
            or_unknown(&u.last_route),
            u.count
        );
    }
    if matches.len() > MAX_FOOTER_KEYS {
        eprintln!(
            "… and {} more key(s) matching {prefix}: give more of the id",
            matches.len() - MAX_FOOTER_KEYS
        );
    }
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
