//! `verify`: the runbook's "confirm integrity" step.

use anyhow::Result;
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;
use xai_keys_core::store::{Check, VerifyOptions};
use xai_keys_core::volume;

use crate::args::VerifyArgs;
use crate::config::Config;
use crate::output;

pub fn verify(a: VerifyArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let mut rep = store.verify(
        &Actor::current_cli_user(),
        now_epoch(),
        VerifyOptions { adopt: a.adopt },
    )?;
    // Runbook §1: the store MUST reside on an encrypted volume. On etcd, the volumes are the
    // members': xai-keys can check only that the way there is encrypted.
    let vol = volume::inspect(&cfg.store_path);
    let (status, detail) = match (&cfg.etcd, &vol) {
        (Some(u), _) if u.tls => (
            "ok",
            "the store is in etcd over TLS (etcds://); the members' data directories must be on encrypted volumes (not visible from here: check each member)".to_string(),
        ),
        (Some(_), _) => (
            if a.require_encrypted { "fail" } else { "warn" },
            "the store is in etcd over plain etcd:// (keys' hashes and the audit log cross the network unencrypted): use etcds:// with XAI_ETCD_CA_FILE, and encrypted volumes on every member".to_string(),
        ),
        (None, vol) => match vol {
        Ok(v) if v.encryption.is_encrypted() => ("ok", v.summary()),
        Ok(v) => (
            if a.require_encrypted { "fail" } else { "warn" },
            format!(
                "{}; the runbook requires an encrypted volume: move the store onto LUKS/dm-crypt \
                 (or a Vault Agent tmpfs) and set XAI_API_KEY_STORE",
                v.summary()
            ),
        ),
        Err(e) => (
            if a.require_encrypted { "fail" } else { "warn" },
            format!("cannot tell what storage holds the store: {e}"),
        ),
        },
    };
    rep.checks.push(Check {
        name: "encrypted_volume".to_string(),
        status,
        detail,
    });
    if status == "fail" {
        rep.ok = false;
    }
    if cfg.json {
        let mut v = serde_json::to_value(&rep)?;
        if let (Some(obj), Ok(report), None) = (v.as_object_mut(), &vol, &cfg.etcd) {
            obj.insert("volume".to_string(), serde_json::to_value(report)?);
        }
        output::json(&v)?;
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
