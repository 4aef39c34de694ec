//! `backup` and `restore`.

use anyhow::Result;
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;

use crate::args::{BackupArgs, RestoreArgs};
use crate::config::Config;
use crate::output;

pub fn backup(a: BackupArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let now = now_epoch();
    let has_history = !store
        .events(&xai_keys_core::audit::EventQuery {
            limit: 1,
            ..Default::default()
        })?
        .events
        .is_empty();
    if !store.load(now)?.exists && !has_history {
        // A wrong --store (or XAI_API_KEY_STORE) must not yield a "successful" empty backup.
        return Err(crate::CliError {
            code: "no_store",
            message: format!(
                "store {} does not exist: nothing to back up. Check --store or XAI_API_KEY_STORE",
                cfg.store_label
            ),
        }
        .into());
    }
    let m = store.backup(&a.out, now)?;
    if cfg.json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "path".into(),
                std::path::absolute(&a.out)?.display().to_string().into(),
            );
        }
        output::json(&v)?;
    } else {
        output::line(format!(
            "backup written to {}: {} keys, {} log lines, store sha256 {}",
            a.out.display(),
            m.keys,
            m.log_lines,
            m.store_sha256
        ))?;
        cfg.announce_store();
    }
    Ok(true)
}

pub fn restore(a: RestoreArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let r = store.restore(&a.path, &Actor::current_cli_user(), now_epoch())?;
    if cfg.json {
        output::json(&serde_json::to_value(&r)?)?;
    } else {
        output::line(format!(
            "restored {} keys from {}",
            r.restored_keys,
            a.path.display()
        ))?;
        if r.transactions > 1 {
            output::line(format!(
                "  in {} transactions (more records changed than one etcd transaction may carry): each one audited, restrictions first",
                r.transactions
            ))?;
        }
        for id in &r.revoked_since_backup {
            output::line(format!(
                "  left out {id}: revoked after the backup was taken"
            ))?;
        }
        for id in &r.restricted_since_backup {
            output::line(format!(
                "  kept restricted {id}: disabled or shortened after the backup"
            ))?;
        }
        for id in &r.dropped_keys {
            output::line(format!("  dropped {id}: issued after the backup"))?;
        }
        cfg.announce_store();
    }
    Ok(true)
}
