//! Emergency lockdown: one switch that freezes external access during an incident.
//!
//! Runbook 5.1 asks operators to "freeze external API access and temporarily firewall
//! `/admin/*` to VPN networks only". Lockdown makes that one audited command instead of
//! hand-made firewall rules: while it is on, every gateway on the store requires a key on
//! every non-public route (whatever `XAI_API_AUTH_REQUIRED` says) and serves `/admin/*` only
//! to clients in the lockdown's admin networks. The networks default to loopback, so the
//! operator on the host (and the offline CLI, which needs no network) can always turn it off.
//!
//! The state is a small file beside the store, `<store>.lockdown`, that gateways poll. Its
//! audit lines are `lockdown_on` and `lockdown_off`. The order of writes fails safe, the
//! opposite of change windows: turning it on writes the file before the audit line, and
//! turning it off writes the line before removing the file, so a crash in between can leave a
//! lockdown in force that the log does not show yet (run `lockdown off` again), never a
//! lockdown the log shows that is not in force.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditDraft};
use crate::error::{Error, Result, TextField};
use crate::ops::check_text;
use crate::store::KeyStore;

/// At most this many admin networks (a lockdown list is short by nature).
pub const MAX_NETWORKS: usize = 64;

/// A lockdown as recorded by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lockdown {
    /// Why (required: an incident always has a reason).
    pub reason: String,
    /// The incident ticket, if any.
    #[serde(default)]
    pub ticket: String,
    /// CIDR networks from which `/admin/*` stays reachable (canonical text, e.g.
    /// `10.8.0.0/16`). Empty means loopback only.
    #[serde(default)]
    pub admin_networks: Vec<String>,
    pub since: f64,
    /// Who turned it on (the audit actor string).
    #[serde(default)]
    pub by: String,
}

impl Lockdown {
    /// The lockdown as JSON for front ends.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "active": true,
            "reason": self.reason,
            "ticket": self.ticket,
            "admin_networks": self.effective_networks(),
            "since": self.since,
            "by": self.by,
        })
    }

    /// The networks `/admin/*` is limited to: the given ones, or loopback.
    pub fn effective_networks(&self) -> Vec<String> {
        if self.admin_networks.is_empty() {
            LOOPBACK.iter().map(|s| (*s).to_string()).collect()
        } else {
            self.admin_networks.clone()
        }
    }
}

/// The networks of "loopback only".
pub const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

/// What to turn on.
#[derive(Debug, Clone, Default)]
pub struct EngageLockdown {
    pub reason: String,
    pub ticket: String,
    /// CIDR texts, validated by [`parse_network`].
    pub admin_networks: Vec<String>,
}

/// Parses one network: `ADDR/PREFIX` or a bare address (a single host), IPv4 or IPv6. Returns
/// the canonical text (host bits cleared), so `10.1.2.3/8` is recorded as `10.0.0.0/8`.
pub fn parse_network(s: &str) -> std::result::Result<(IpAddr, u8, String), String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("{s:?} is not a network: give CIDR such as 10.8.0.0/16 or fd00::/8, or an address")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
    };
    let net = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok((net, prefix, format!("{net}/{prefix}")))
}

/// Validates and canonicalises a list of networks.
pub fn parse_networks(list: &[String]) -> Result<Vec<String>> {
    if list.len() > MAX_NETWORKS {
        return Err(Error::InvalidInput(format!(
            "at most {MAX_NETWORKS} admin networks; got {}",
            list.len()
        )));
    }
    let mut out = Vec::new();
    for n in list {
        let (_, _, text) = parse_network(n).map_err(Error::InvalidInput)?;
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

/// Checks a lockdown read back from storage; the message says what is wrong.
pub fn check_recorded(l: &Lockdown) -> std::result::Result<(), String> {
    if l.reason.trim().is_empty() {
        return Err("it has no reason".into());
    }
    if !l.since.is_finite() {
        return Err("its start time is not a number".into());
    }
    if l.admin_networks.len() > MAX_NETWORKS {
        return Err(format!("it lists more than {MAX_NETWORKS} networks"));
    }
    for n in &l.admin_networks {
        parse_network(n)?;
    }
    Ok(())
}

/// Turns lockdown on (or replaces the one in force: new reason or networks), audited as
/// `lockdown_on` (a CRITICAL security event).
pub fn engage(
    store: &dyn KeyStore,
    req: &EngageLockdown,
    actor: &Actor,
    now: f64,
) -> Result<Lockdown> {
    let reason = check_text(TextField::Reason, &req.reason)?;
    if reason.is_empty() {
        return Err(Error::InvalidText {
            field: TextField::Reason,
            problem: "a lockdown needs a reason (what the incident is)".into(),
        });
    }
    let ticket = check_text(TextField::Ticket, &req.ticket)?;
    let admin_networks = parse_networks(&req.admin_networks)?;
    // A damaged file is replaced (it already counts as a lockdown to loopback).
    let previous = match store.lockdown() {
        Err(Error::CorruptLockdown { .. }) => None,
        other => other?,
    };
    let l = Lockdown {
        reason,
        ticket,
        admin_networks,
        since: previous.as_ref().map_or(now, |p| p.since),
        by: actor.to_string(),
    };
    let mut draft = AuditDraft::new("lockdown_on", None)
        .with("reason", l.reason.clone())
        .with("ticket", l.ticket.clone())
        .with("admin_networks", l.effective_networks());
    if previous.is_some() {
        draft = draft.with("replaces_previous", true);
    }
    store.set_lockdown(actor, now, Some(&l), draft)?;
    Ok(l)
}

/// Turns lockdown off, audited as `lockdown_off`. `Ok(None)` when it was not on (nothing is
/// written).
pub fn release(
    store: &dyn KeyStore,
    reason: &str,
    actor: &Actor,
    now: f64,
) -> Result<Option<Lockdown>> {
    let reason = check_text(TextField::Reason, reason)?;
    let l = match store.lockdown() {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        // A damaged file is a lockdown in force (to loopback): turning it off removes it, and
        // the off line says what was found.
        Err(e @ Error::CorruptLockdown { .. }) => {
            let draft = AuditDraft::new("lockdown_off", None)
                .with("reason", reason)
                .with("detail", format!("removed a damaged lockdown file: {e}"));
            let damaged = Lockdown {
                reason: "(damaged lockdown file)".into(),
                ticket: String::new(),
                admin_networks: Vec::new(),
                since: now,
                by: String::new(),
            };
            return Ok(store
                .set_lockdown(actor, now, None, draft)?
                .map(|_| damaged));
        }
        Err(e) => return Err(e),
    };
    let draft = AuditDraft::new("lockdown_off", None)
        .with("reason", reason)
        .with("ticket", l.ticket.clone())
        .with("since", l.since)
        .with("duration_seconds", (now - l.since).max(0.0));
    Ok(store.set_lockdown(actor, now, None, draft)?.map(|_| l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_parsed_and_canonicalised() {
        assert_eq!(parse_network("10.1.2.3/8").unwrap().2, "10.0.0.0/8");
        assert_eq!(parse_network(" 192.0.2.7 ").unwrap().2, "192.0.2.7/32");
        assert_eq!(parse_network("fd00:8::1/48").unwrap().2, "fd00:8::/48");
        assert_eq!(parse_network("::1").unwrap().2, "::1/128");
        assert_eq!(parse_network("0.0.0.0/0").unwrap().2, "0.0.0.0/0");
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "vpn",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
        let e = parse_networks(&["10.0.0.0/8".into(), "nope".into()]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert_eq!(
            parse_networks(&["10.0.0.1/8".into(), "10.0.0.0/8".into()]).unwrap(),
            vec!["10.0.0.0/8"]
        );
    }

    #[test]
    fn no_networks_means_loopback() {
        let l = Lockdown {
            reason: "x".into(),
            ticket: String::new(),
            admin_networks: vec![],
            since: 1.0,
            by: String::new(),
        };
        assert_eq!(l.effective_networks(), vec!["127.0.0.0/8", "::1/128"]);
        assert!(check_recorded(&l).is_ok());
        let bad = Lockdown {
            admin_networks: vec!["nope".into()],
            ..l.clone()
        };
        assert!(check_recorded(&bad).is_err());
        let bad = Lockdown {
            reason: " ".into(),
            ..l
        };
        assert!(check_recorded(&bad).is_err());
    }
}
