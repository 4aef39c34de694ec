//! `dead-letters`: the security events the gateway's webhooks gave up on, readable (and
//! decrypted) so that none is lost for the SOC even when a sink was down for longer than
//! `XAI_SECURITY_WEBHOOK_MAX_AGE`.

use anyhow::{Context, Result};
use xai_keys_server::webhook::queue::{QueueKey, read_dead_letters};

use crate::args::DeadLettersArgs;
use crate::config::Config;
use crate::output;

pub fn dead_letters(a: DeadLettersArgs, cfg: &Config) -> Result<bool> {
    let queue = a
        .queue
        .or_else(|| {
            std::env::var("XAI_SECURITY_WEBHOOK_QUEUE")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(Into::into)
        })
        .unwrap_or_else(|| {
            let mut s = cfg.store_path.clone().into_os_string();
            s.push(".webhook-queue");
            s.into()
        });
    let key = match std::env::var("XAI_SECURITY_WEBHOOK_QUEUE_KEY") {
        Ok(v) if !v.trim().is_empty() => Some(QueueKey::parse(v.trim())?),
        _ => None,
    };
    let mut dead = queue.clone().into_os_string();
    dead.push(".dead");
    let dead = std::path::PathBuf::from(dead);
    let letters = read_dead_letters(&dead, key.as_ref())
        .with_context(|| format!("cannot read the dead letters in {}", dead.display()))?;
    for l in &letters {
        output::json_line(&serde_json::to_value(l)?)?;
    }
    eprintln!(
        "{} dead-lettered event(s) in {}",
        letters.len(),
        dead.display()
    );
    Ok(true)
}
