//! `migrate --from FILE --to etcd://…`: a file store into etcd (see `xai_keys_etcd::migrate`).

use anyhow::{Context, Result, bail};
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;
use xai_keys_core::store::{FileStore, FileStoreOptions};
use xai_keys_etcd::{EtcdOptions, EtcdStore, EtcdUrl};

use crate::args::MigrateArgs;
use crate::config::Config;
use crate::output;

pub fn migrate(a: MigrateArgs, cfg: &Config) -> Result<bool> {
    if !xai_keys_etcd::is_etcd_url(&a.to) {
        bail!(
            "--to {:?} is not an etcd store: give etcd://host:port[,host:port…]/prefix",
            a.to
        );
    }
    let url = EtcdUrl::parse(&a.to)?;
    let env = |k: &str| std::env::var(k).ok();
    let opts = EtcdOptions {
        default_ttl_secs: cfg.policy.default_ttl_secs,
        ..EtcdOptions::from_env(url, &env)?
    };
    let from_path = std::path::absolute(&a.from)
        .with_context(|| format!("cannot resolve {}", a.from.display()))?;
    if !from_path.is_file() {
        bail!(
            "--from {}: no such store file (the file store to copy, e.g. /opt/xai/secrets/api_keys.json)",
            from_path.display()
        );
    }
    let from = FileStore::new(
        &from_path,
        FileStoreOptions {
            default_ttl_secs: cfg.policy.default_ttl_secs,
            ..FileStoreOptions::default()
        },
    )?;
    let to = EtcdStore::open(opts).with_context(|| format!("cannot open {}", a.to))?;
    let rep = xai_keys_etcd::migrate(&from, &to, &Actor::current_cli_user(), now_epoch())?;
    if cfg.json {
        output::json(&serde_json::to_value(&rep)?)?;
    } else if rep.already_migrated {
        output::line(format!(
            "already migrated: {} holds {} ({} keys, {} log lines); {} change(s) made on etcd since. Nothing was written.",
            rep.to, rep.from, rep.keys, rep.log_lines, rep.changes_since
        ))?;
    } else {
        output::line(format!(
            "migrated {} keys and {} log lines ({} copied by this run) from {} to {}",
            rep.keys, rep.log_lines, rep.copied_lines, rep.from, rep.to
        ))?;
        output::line(format!("file chain: {}", rep.file_chain))?;
        output::line(format!("etcd chain: {}", rep.etcd_chain))?;
        output::line(format!(
            "next: point every gateway and CLI at XAI_API_KEY_STORE={} and stop using {}",
            rep.to, rep.from
        ))?;
    }
    Ok(true)
}
