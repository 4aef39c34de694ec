//! `verify`: the runbook's "confirm integrity" step.

use anyhow::Result;
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;
use xai_keys_core::store::{KeyStore, VerifyOptions};

use crate::args::VerifyArgs;
use crate::config::Config;
use crate::output;

pub fn verify(a: VerifyArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let rep = store.verify(
        &Actor::current_cli_user(),
        now_epoch(),
        VerifyOptions { adopt: a.adopt },
    )?;
    if cfg.json {
        output::json(&serde_json::to_value(&rep)?)?;
    } else {
        output::line(format!("store: {}", rep.store))?;
        output::line(format!("log:   {}", rep.log))?;
        let rows: Vec<Vec<String>> = rep
            .checks
            .iter()
            .map(|c| vec![c.status.to_uppercase(), c.name.clone(), c.detail.clone()])
            .collect();
        output::table(&["STATUS", "CHECK", "DETAIL"], &rows)?;
        output::line(if rep.ok {
            "integrity: OK"
        } else {
            "integrity: FAILED"
        })?;
    }
    if !rep.ok {
        let failed: Vec<&str> = rep
            .checks
            .iter()
            .filter(|c| c.status == "fail")
            .map(|c| c.name.as_str())
            .collect();
        let message = format!(
            "integrity check failed ({}): fix what each failing check names (a damaged store: `xai-keys restore BACKUP`)",
            failed.join(", ")
        );
        if cfg.json {
            // With -o json every error on stderr is one JSON object.
            let v = serde_json::json!({
                "error": "integrity_failed",
                "message": message,
                "store": rep.store,
            });
            eprintln!("{v}");
        } else {
            eprintln!("error: {message}");
        }
    }
    Ok(rep.ok)
}
