//! `events` and `watch-events`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xai_keys_core::audit::{
    AuditEvent, EventQuery, FollowFrom, LogFollower, is_chained, str_field,
};
use xai_keys_core::now_epoch;
use xai_keys_core::store::KeyStore;

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
    let log = cfg.log_label();
    if page.end_offset == 0
        || (cfg.etcd.is_some() && page.end_offset <= 1 && page.events.is_empty())
    {
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
        last_use_footer(&*store, &k, now);
    }
    Ok(true)
}

/// Most keys a last-use footer names (a short prefix may match many).
const MAX_FOOTER_KEYS: usize = 5;

/// For `events --key-id K` in table mode: the last recorded use of the key(s) K names, from
/// the usage statistics, on stderr like the other footer. Nothing when none is recorded.
fn last_use_footer(store: &dyn KeyStore, prefix: &str, now: f64) {
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

/// Where `watch-events --cursor` resumes: the log it belongs to, the offset just past the last
/// line written out, that file's identity and the hash of that line (so a log moved to another
/// device is recognised as the same log).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cursor {
    version: u32,
    log: PathBuf,
    offset: u64,
    file_id: Option<(u64, u64)>,
    last_hash: Option<String>,
}

const CURSOR_VERSION: u32 = 1;
const CURSOR_MAX_BYTES: u64 = 64 * 1024;

impl Cursor {
    fn load(path: &Path, log: &Path) -> Result<Option<FollowFrom>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the cursor {}", path.display()));
            }
        };
        let bad = |why: String| {
            anyhow::anyhow!(
                "{} is not a watch-events cursor ({why}); remove it to start again from the last \
                 --limit events (lines shipped since may then be shipped twice)",
                path.display()
            )
        };
        if bytes.len() as u64 > CURSOR_MAX_BYTES {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        let c: Cursor = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if c.version != CURSOR_VERSION {
            return Err(bad(format!("version {}", c.version)));
        }
        if c.log != log {
            anyhow::bail!(
                "the cursor {} follows {}, not this store's log {}: give each store its own cursor",
                path.display(),
                c.log.display(),
                log.display()
            );
        }
        Ok(Some(FollowFrom {
            offset: c.offset,
            file_id: c.file_id,
            last_hash: c.last_hash,
        }))
    }

    fn save(path: &Path, c: &Cursor) -> Result<()> {
        use std::io::Write;
        let ctx = || format!("saving the cursor {}", path.display());
        let mut f = atomic_write_file::AtomicWriteFile::options()
            .open(path)
            .with_context(ctx)?;
        {
            use std::os::unix::fs::PermissionsExt;
            f.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(ctx)?;
        }
        f.write_all(&serde_json::to_vec(c)?).with_context(ctx)?;
        f.commit().with_context(ctx)
    }
}

/// Where the NDJSON goes: standard output, or a file appended to and synced per batch.
enum Sink {
    Stdout { pretty: bool },
    File { path: PathBuf, file: std::fs::File },
}

impl Sink {
    fn open(output: Option<&Path>, pretty: bool) -> Result<Self> {
        let Some(path) = output else {
            return Ok(Sink::Stdout { pretty });
        };
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(path)
            .with_context(|| {
                format!(
                    "opening {} for appending (it must be a regular file, not a link)",
                    path.display()
                )
            })?;
        Ok(Sink::File {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one batch; it is durable (or on its way to the reader) when this returns.
    fn write(&mut self, events: &[AuditEvent]) -> Result<()> {
        match self {
            Sink::Stdout { pretty } => {
                for e in events {
                    emit(e, *pretty)?;
                }
                Ok(())
            }
            Sink::File { path, file } => {
                use std::io::Write;
                let mut buf = Vec::new();
                for e in events {
                    serde_json::to_writer(&mut buf, e)?;
                    buf.push(b'\n');
                }
                file.write_all(&buf)
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("appending to {}", path.display()))
            }
        }
    }
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
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
    let store = cfg.open_store()?;
    let log = cfg.log_label();
    let mut sink = Sink::open(a.out.as_deref(), a.pretty)?;
    let resume = match &a.cursor {
        Some(c) => Cursor::load(c, &log)?,
        None => None,
    };
    let mut last_hash = resume.as_ref().and_then(|r| r.last_hash.clone());
    let mut follower = match resume {
        // Resume right after the last line shipped: nothing is replayed, nothing skipped.
        Some(from) => store.log_follower(Some(from))?,
        None => {
            // Replay, then follow from exactly where the replay read up to.
            let page = store.events(&EventQuery {
                limit: a.limit.clamp(1, xai_keys_core::audit::MAX_EVENT_LIMIT),
                ..Default::default()
            })?;
            if a.limit > 0 {
                sink.write(&page.events)?;
            }
            last_hash = page
                .events
                .last()
                .filter(|e| is_chained(e))
                .and_then(|e| str_field(e, "hash"))
                .map(str::to_string);
            store.log_follower(Some(FollowFrom {
                offset: page.end_offset,
                file_id: page.file_id,
                last_hash: last_hash.clone(),
            }))?
        }
    };
    let save = |follower: &LogFollower, last_hash: &Option<String>| -> Result<()> {
        match &a.cursor {
            Some(path) => Cursor::save(
                path,
                &Cursor {
                    version: CURSOR_VERSION,
                    log: log.clone(),
                    offset: follower.offset(),
                    file_id: follower.file_id(),
                    last_hash: last_hash.clone(),
                },
            ),
            None => Ok(()),
        }
    };
    save(&follower, &last_hash)?;
    eprintln!("watching {} (Ctrl-C to stop)", log.display());
    while !stop.load(Ordering::Relaxed) {
        let batch = follower.poll()?;
        if let Some(why) = &batch.reset {
            eprintln!("note: {why}");
            last_hash = None;
        }
        for off in &batch.skipped {
            eprintln!(
                "warning: skipped a line that is not valid JSON at position {off} of {}",
                log.display()
            );
        }
        if !batch.events.is_empty() || batch.reset.is_some() || !batch.skipped.is_empty() {
            sink.write(&batch.events)?;
            for e in &batch.events {
                last_hash = is_chained(e)
                    .then(|| str_field(e, "hash").map(str::to_string))
                    .flatten();
            }
            // Only once the lines are written out does the cursor move past them.
            save(&follower, &last_hash)?;
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(interval));
        }
    }
    Ok(true)
}
