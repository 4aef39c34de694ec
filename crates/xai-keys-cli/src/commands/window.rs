//! `window open|close|status`: change windows (runbook 4.1), over [`xai_keys_core::window`].

use anyhow::Result;
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;
use xai_keys_core::store::KeyStore;
use xai_keys_core::window::{self, ChangeWindow, OpenWindow};

use crate::args::WindowCommand;
use crate::config::{Config, REQUIRE_WINDOW_VAR, parse_duration};
use crate::output::{self, clean, fmt_time};

pub fn window(cmd: WindowCommand, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let now = now_epoch();
    let actor = Actor::current_cli_user();
    match cmd {
        WindowCommand::Open(a) => {
            let d = parse_duration("--for", &a.duration)?;
            let w = window::open(
                &*store,
                &OpenWindow {
                    ticket: a.ticket,
                    reason: a.reason,
                    duration_secs: d.as_secs_f64(),
                },
                &actor,
                now,
            )?;
            show(cfg, "opened", Some(&w), now)?;
        }
        WindowCommand::Close(a) => match window::close(&*store, &a.reason, &actor, now)? {
            Some(w) => show(cfg, "closed", Some(&w), now)?,
            None => {
                if cfg.json {
                    output::json_line(&serde_json::json!({"open": false, "closed": false}))?;
                } else {
                    output::line("no change window is open; nothing to close")?;
                }
            }
        },
        WindowCommand::Status => {
            let w = store.change_window()?;
            show(cfg, "status", w.as_ref(), now)?;
        }
    }
    Ok(true)
}

fn show(cfg: &Config, what: &str, w: Option<&ChangeWindow>, now: f64) -> Result<()> {
    if cfg.json {
        let mut v = match w {
            Some(w) => w.to_json(now),
            None => serde_json::json!({"open": false}),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("required".into(), cfg.require_change_window.into());
            if what == "closed" {
                o.insert("open".into(), false.into());
                o.insert("remaining_seconds".into(), 0.into());
            }
            if what != "status" {
                o.insert(what.into(), true.into());
            }
        }
        return output::json_line(&v);
    }
    match (what, w) {
        ("opened", Some(w)) => output::line(format!(
            "change window {} open until {} (by {})",
            clean(&w.ticket),
            fmt_time(Some(w.expires_at)),
            clean(&w.opened_by)
        ))?,
        ("closed", Some(w)) => output::line(format!(
            "change window {} closed (it was scheduled to end at {})",
            clean(&w.ticket),
            fmt_time(Some(w.expires_at))
        ))?,
        (_, Some(w)) if w.is_open(now) => output::line(format!(
            "open: ticket {} until {} ({} min left), opened by {}{}",
            clean(&w.ticket),
            fmt_time(Some(w.expires_at)),
            (w.remaining(now) / 60.0).ceil(),
            clean(&w.opened_by),
            if w.reason.is_empty() {
                String::new()
            } else {
                format!(", reason {:?}", clean(&w.reason))
            }
        ))?,
        (_, Some(w)) => output::line(format!(
            "closed: the last window ({}) ended at {}",
            clean(&w.ticket),
            fmt_time(Some(w.expires_at))
        ))?,
        (_, None) => output::line("closed: no change window is open")?,
    }
    if what == "status" {
        output::line(format!(
            "{REQUIRE_WINDOW_VAR}={}: lifecycle actions outside a window are {}",
            u8::from(cfg.require_change_window),
            if cfg.require_change_window {
                "allowed but reported as CRITICAL security events"
            } else {
                "reported at their usual severity"
            }
        ))?;
    }
    cfg.announce_store();
    Ok(())
}

/// After a lifecycle action: says that it falls outside a change window while one is
/// required, so that the operator is not surprised by the page it causes.
pub fn warn_if_outside(store: &dyn KeyStore, now: f64) {
    match window::current(store, now) {
        Ok(Some(_)) => {}
        Ok(None) => eprintln!(
            "warning: no change window is open and {REQUIRE_WINDOW_VAR}=1: this action is reported as a CRITICAL security event (open one first with `xai-keys window open --for 2h --ticket CHG-…`)"
        ),
        Err(e) => eprintln!("warning: change window unknown: {e}"),
    }
}
