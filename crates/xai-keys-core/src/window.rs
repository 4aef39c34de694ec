//! Change windows: a declared, time-limited period in which key lifecycle actions are planned.
//!
//! Runbook 4.1 asks operators to confirm a maintenance window before rotating, and SOC teams
//! alert on lifecycle actions outside one. A window is opened for a fixed duration with a
//! ticket, and closes on its own when the duration ends (or early, on request). Opening and
//! closing are audited like key changes (`window_open`, `window_close`), and every lifecycle
//! line written while a window is open carries its ticket as `change_window`, so a reader of
//! the log (the gateway's telemetry, a SIEM) can tell planned actions from unplanned ones
//! without knowing the window's history.
//!
//! Windows never block anything: an emergency revocation outside a window succeeds; the
//! telemetry reports it as CRITICAL when the operator requires windows.

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditDraft};
use crate::error::{Error, Result, TextField};
use crate::ops::check_text;
use crate::store::KeyStore;

/// Shortest window accepted (seconds).
pub const MIN_WINDOW_SECS: f64 = 60.0;
/// Longest window accepted (seconds): seven days. A longer "window" is a standing exemption.
pub const MAX_WINDOW_SECS: f64 = 7.0 * 86_400.0;

/// A change window as recorded by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeWindow {
    /// The change ticket (`CHG-123`): required, so that every planned action names its plan.
    pub ticket: String,
    #[serde(default)]
    pub reason: String,
    pub opened_at: f64,
    pub expires_at: f64,
    /// Who opened it (the audit actor string).
    #[serde(default)]
    pub opened_by: String,
}

impl ChangeWindow {
    /// Whether the window is open at `now`.
    pub fn is_open(&self, now: f64) -> bool {
        now >= self.opened_at && now < self.expires_at
    }

    /// Seconds left at `now` (0 when closed).
    pub fn remaining(&self, now: f64) -> f64 {
        if self.is_open(now) {
            self.expires_at - now
        } else {
            0.0
        }
    }

    /// The window as JSON for front ends, with its state at `now`.
    pub fn to_json(&self, now: f64) -> serde_json::Value {
        serde_json::json!({
            "open": self.is_open(now),
            "ticket": self.ticket,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "expires_at": self.expires_at,
            "opened_by": self.opened_by,
            "remaining_seconds": self.remaining(now).round(),
        })
    }
}

/// What to open.
#[derive(Debug, Clone)]
pub struct OpenWindow {
    pub ticket: String,
    pub reason: String,
    pub duration_secs: f64,
}

/// Checks a window read back from storage: only what [`open`] can write is accepted (a ticket,
/// a start before the end, a length within [`MAX_WINDOW_SECS`]). The message says what is wrong.
pub fn check_recorded(w: &ChangeWindow) -> std::result::Result<(), String> {
    if check_ticket(&w.ticket).is_err() {
        return Err("its ticket is empty or not a single line of text".into());
    }
    let len = w.expires_at - w.opened_at;
    if !w.opened_at.is_finite() || !len.is_finite() || len <= 0.0 || len > MAX_WINDOW_SECS + 1.0 {
        return Err(format!(
            "it claims a window from {} to {}, which `xai-keys window open` cannot write (at most {} days)",
            w.opened_at,
            w.expires_at,
            MAX_WINDOW_SECS / 86_400.0
        ));
    }
    Ok(())
}

/// Validates a ticket: non-empty, single line, bounded.
pub fn check_ticket(ticket: &str) -> Result<String> {
    let t = check_text(TextField::Ticket, ticket)?;
    if t.is_empty() {
        return Err(Error::InvalidText {
            field: TextField::Ticket,
            problem:
                "a change window needs a ticket (the change request it belongs to, such as CHG-123)"
                    .into(),
        });
    }
    Ok(t)
}

/// Opens a window for `req.duration_secs` from `now`, audited as `window_open`.
///
/// Refuses while another window is open (checked again under the store's window lock, so of
/// two concurrent opens exactly one succeeds): two plans at once are one too many to reason
/// about; close the first (or let it end) before opening the next.
pub fn open(
    store: &dyn KeyStore,
    req: &OpenWindow,
    actor: &Actor,
    now: f64,
) -> Result<ChangeWindow> {
    let ticket = check_ticket(&req.ticket)?;
    let reason = check_text(TextField::Reason, &req.reason)?;
    let d = req.duration_secs;
    if !d.is_finite() || !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&d) {
        return Err(Error::InvalidInput(format!(
            "a change window lasts from {} s to {} days; got {d} s (give a duration such as 2h)",
            MIN_WINDOW_SECS,
            MAX_WINDOW_SECS / 86_400.0
        )));
    }
    if let Some(w) = store.change_window()?.filter(|w| w.is_open(now)) {
        return Err(Error::WindowOpen {
            ticket: w.ticket,
            expires_at: w.expires_at,
        });
    }
    let w = ChangeWindow {
        ticket,
        reason,
        opened_at: now,
        expires_at: now + d,
        opened_by: actor.to_string(),
    };
    let draft = AuditDraft::new("window_open", None)
        .with("ticket", w.ticket.clone())
        .with("reason", w.reason.clone())
        .with("expires_at", w.expires_at)
        .with("duration_seconds", d);
    store.set_change_window(actor, now, Some(&w), draft)?;
    Ok(w)
}

/// Closes the open window early, audited as `window_close`. `Ok(None)` when none was open
/// (nothing is written).
pub fn close(
    store: &dyn KeyStore,
    reason: &str,
    actor: &Actor,
    now: f64,
) -> Result<Option<ChangeWindow>> {
    let reason = check_text(TextField::Reason, reason)?;
    let Some(w) = store.change_window()?.filter(|w| w.is_open(now)) else {
        return Ok(None);
    };
    let draft = AuditDraft::new("window_close", None)
        .with("ticket", w.ticket.clone())
        .with("reason", reason)
        .with("opened_at", w.opened_at)
        .with("scheduled_end", w.expires_at);
    // Another process may have closed it since the check: then nothing was written.
    Ok(store.set_change_window(actor, now, None, draft)?.map(|_| w))
}

/// The rule every backend's [`KeyStore::set_change_window`] applies, under its own
/// serialisation, to the window it has recorded (`recorded`, open or not): `Ok(true)` record
/// `requested`; `Ok(false)` nothing to do (closing when none is open at `now`); an open window
/// refuses another open with [`Error::WindowOpen`].
pub fn plan_change(
    requested: Option<&ChangeWindow>,
    recorded: Option<ChangeWindow>,
    now: f64,
) -> Result<bool> {
    match (requested, recorded.filter(|w| w.is_open(now))) {
        (Some(_), Some(open)) => Err(Error::WindowOpen {
            ticket: open.ticket,
            expires_at: open.expires_at,
        }),
        (None, None) => Ok(false),
        _ => Ok(true),
    }
}

/// The window open at `now`, if any.
pub fn current(store: &dyn KeyStore, now: f64) -> Result<Option<ChangeWindow>> {
    Ok(store.change_window()?.filter(|w| w.is_open(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_is_half_open_interval() {
        let w = ChangeWindow {
            ticket: "CHG-1".into(),
            reason: String::new(),
            opened_at: 100.0,
            expires_at: 200.0,
            opened_by: String::new(),
        };
        assert!(!w.is_open(99.9));
        assert!(w.is_open(100.0));
        assert!(w.is_open(199.9));
        assert!(!w.is_open(200.0));
        assert_eq!(w.remaining(150.0), 50.0);
        assert_eq!(w.remaining(250.0), 0.0);
    }

    #[test]
    fn tickets_are_required_and_single_line() {
        assert!(check_ticket("  ").is_err());
        assert!(check_ticket("CHG\n1").is_err());
        assert_eq!(check_ticket(" CHG-9 ").ok().as_deref(), Some("CHG-9"));
    }
}
