//! `lockdown on|off|status`: the emergency switch (runbook 5.1), over
//! [`xai_keys_core::lockdown`]. Gateways on the store apply it within a second.

use anyhow::Result;
use serde_json::json;
use xai_keys_core::audit::Actor;
use xai_keys_core::lockdown::{self, EngageLockdown, Lockdown};
use xai_keys_core::now_epoch;

use crate::args::LockdownCommand;
use crate::config::Config;
use crate::output::{self, clean, fmt_time};

pub fn lockdown(cmd: LockdownCommand, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let now = now_epoch();
    let actor = Actor::current_cli_user();
    match cmd {
        LockdownCommand::On(a) => {
            let l = lockdown::engage(
                &*store,
                &EngageLockdown {
                    reason: a.reason,
                    ticket: a.ticket,
                    admin_networks: a.admin_networks,
                },
                &actor,
                now,
            )?;
            if cfg.json {
                output::json_line(&json!({"lockdown": l.to_json(), "engaged": true}))?;
            } else {
                output::line(format!(
                    "LOCKDOWN ON since {}: keys required on every non-public route; /admin/* only from {}",
                    fmt_time(Some(l.since)),
                    l.effective_networks().join(", ")
                ))?;
                output::line(
                    "running gateways apply it within a second; turn it off with `xai-keys lockdown off --reason …`",
                )?;
            }
        }
        LockdownCommand::Off(a) => match lockdown::release(&*store, &a.reason, &actor, now)? {
            Some(l) => {
                if cfg.json {
                    output::json_line(
                        &json!({"released": true, "lockdown": {"active": false, "was": l.to_json()}}),
                    )?;
                } else {
                    output::line(format!(
                        "lockdown off (it was on since {}: {})",
                        fmt_time(Some(l.since)),
                        clean(&l.reason)
                    ))?;
                }
            }
            None => {
                if cfg.json {
                    output::json_line(&json!({"released": false, "lockdown": {"active": false}}))?;
                } else {
                    output::line("no lockdown is in force; nothing to turn off")?;
                }
            }
        },
        LockdownCommand::Status => {
            // A damaged file is reported (and gateways treat it as a lockdown to loopback).
            let l = store.lockdown()?;
            status(cfg, l.as_ref())?;
        }
    }
    Ok(true)
}

fn status(cfg: &Config, l: Option<&Lockdown>) -> Result<()> {
    if cfg.json {
        let v = l.map_or_else(|| json!({"active": false}), Lockdown::to_json);
        return output::json_line(&json!({ "lockdown": v }));
    }
    match l {
        None => output::line("lockdown: off"),
        Some(l) => {
            output::line(format!(
                "lockdown: ON since {} by {}",
                fmt_time(Some(l.since)),
                clean(&l.by)
            ))?;
            output::line(format!("reason: {}", clean(&l.reason)))?;
            if !l.ticket.is_empty() {
                output::line(format!("ticket: {}", clean(&l.ticket)))?;
            }
            output::line(format!(
                "/admin/* only from: {}",
                l.effective_networks().join(", ")
            ))
        }
    }
}
