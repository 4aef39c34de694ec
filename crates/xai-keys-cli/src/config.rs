//! Resolved settings: flags and environment folded into plain values, once, before any command
//! runs (ripgrep's split of parsing from configuration).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xai_keys_core::Error as CoreError;
use xai_keys_core::policy::{TtlPolicy, TtlRequest};
use xai_keys_core::store::{FileStore, FileStoreOptions, KeyStore};
use xai_keys_etcd::{EtcdOptions, EtcdStore, EtcdUrl};

use crate::args::{Cli, OutputFormat, TtlArgs};

/// The store used when neither `--store` nor the environment names one (the reference's).
pub const DEFAULT_STORE: &str = "secure_keys/api_keys.json";

/// How long a writer waits for another process's store lock, in whole seconds.
pub const LOCK_TIMEOUT_VAR: &str = "XAI_API_KEY_LOCK_TIMEOUT_SECS";

/// Everything a command needs besides its own arguments.
pub struct Config {
    /// The store file; for an etcd store, the base name of this machine's own files (the
    /// webhook queue, peer-key usage, cursors): `<XAI_STATE_DIR>/etcd_<prefix>`.
    pub store_path: PathBuf,
    /// The store as named in messages: the file's path or the etcd URL.
    pub store_label: String,
    /// Set when the store is on etcd (`--store etcd://…`).
    pub etcd: Option<EtcdUrl>,
    pub policy: TtlPolicy,
    pub json: bool,
    /// From [`LOCK_TIMEOUT_VAR`]; `None` keeps the store's default.
    pub lock_timeout: Option<Duration>,
    /// No `--store` nor variable was given: the default path, said when a store is opened.
    pub store_defaulted: bool,
    /// `XAI_REQUIRE_CHANGE_WINDOW`: lifecycle actions outside an open window are reported as
    /// CRITICAL by the gateway's telemetry; the CLI says so when it makes one.
    pub require_change_window: bool,
    /// How to reach the etcd cluster (TLS, user, timeouts), when the store is there.
    pub etcd_opts: Option<EtcdOptions>,
}

/// Where an etcd store's gateway keeps its own files (webhook queue, peer-key usage).
pub const STATE_DIR_VAR: &str = "XAI_STATE_DIR";
/// [`STATE_DIR_VAR`]'s default, the file store's default directory.
pub const DEFAULT_STATE_DIR: &str = "secure_keys";

/// Whether lifecycle actions must happen inside a change window (reported, never blocked).
pub const REQUIRE_WINDOW_VAR: &str = "XAI_REQUIRE_CHANGE_WINDOW";

impl Config {
    pub fn resolve(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let configured = cli.store.clone().or_else(|| {
            env("XAI_API_KEY_STORE")
                .or_else(|| env("XAI_API_KEY_STORE_PATH"))
                .filter(|s| !s.trim().is_empty())
                .map(PathBuf::from)
        });
        let defaulted = configured.is_none();
        let store_path = configured.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
        let etcd = match store_path.to_str() {
            Some(s) if xai_keys_etcd::is_etcd_url(s) => Some(EtcdUrl::parse(s)?),
            _ => None,
        };
        let store_path = match &etcd {
            // This machine's own files live in a local directory named after the prefix.
            Some(u) => PathBuf::from(
                env(STATE_DIR_VAR)
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            )
            .join(format!("etcd{}", u.prefix.replace('/', "_"))),
            None => store_path,
        };
        let store_path = std::path::absolute(&store_path)
            .with_context(|| format!("cannot resolve store path {}", store_path.display()))?;
        let store_label = match &etcd {
            Some(u) => u.to_string(),
            None => store_path.display().to_string(),
        };
        let etcd_opts = etcd
            .as_ref()
            .map(|u| EtcdOptions::from_env(u.clone(), env))
            .transpose()?;
        let policy = TtlPolicy::from_lookup(env)?;
        let lock_timeout = env(LOCK_TIMEOUT_VAR)
            .map(|v| parse_lock_timeout(&v))
            .transpose()?;
        let json = match cli.output {
            OutputFormat::Json => true,
            OutputFormat::Table => false,
            OutputFormat::Auto => !std::io::stdout().is_terminal(),
        };
        let require_change_window = match env(REQUIRE_WINDOW_VAR) {
            Some(v) => xai_keys_core::policy::parse_bool(REQUIRE_WINDOW_VAR, &v)?,
            None => false,
        };
        Ok(Config {
            store_path,
            store_label,
            etcd,
            etcd_opts,
            policy,
            json,
            lock_timeout,
            require_change_window,
            store_defaulted: defaulted,
        })
    }

    /// For people (table output): names the store a command used, on stderr.
    pub fn announce_store(&self) {
        if !self.json {
            eprintln!("store: {}", self.store_label);
        }
    }

    /// The audit log as named in messages and cursors.
    pub fn log_label(&self) -> PathBuf {
        match &self.etcd {
            Some(u) => PathBuf::from(format!("{u}/log/")),
            None => {
                let mut p = self.store_path.clone().into_os_string();
                p.push(".log");
                PathBuf::from(p)
            }
        }
    }

    /// Opens the configured store: the file, or the etcd cluster (checking that it answers).
    pub fn open_store(&self) -> Result<Box<dyn KeyStore>> {
        self.open_store_with(false)
    }

    /// [`Config::open_store`]; with `watch`, an etcd store keeps a watched copy in memory
    /// (for the gateway).
    pub fn open_store_with(&self, watch: bool) -> Result<Box<dyn KeyStore>> {
        if let Some(opts) = &self.etcd_opts {
            let opts = EtcdOptions {
                watch,
                default_ttl_secs: self.policy.default_ttl_secs,
                ..opts.clone()
            };
            let store = EtcdStore::open(opts)
                .with_context(|| format!("cannot open the etcd store {}", self.store_label))?;
            return Ok(Box::new(store));
        }
        Ok(Box::new(self.open_file_store()?))
    }

    /// The file store (for `migrate --from`, and commands that only make sense on a file).
    pub fn open_file_store(&self) -> Result<FileStore> {
        if self.store_defaulted {
            // The reference silently used whatever store the current directory held.
            eprintln!(
                "note: no --store or XAI_API_KEY_STORE given; using {} (relative to the current directory)",
                self.store_path.display()
            );
        }
        let defaults = FileStoreOptions::default();
        let opts = FileStoreOptions {
            default_ttl_secs: self.policy.default_ttl_secs,
            lock_timeout: self.lock_timeout.unwrap_or(defaults.lock_timeout),
            on_lock_wait: Some(say_waiting_for_lock),
            ..defaults
        };
        Ok(FileStore::new(&self.store_path, opts)?)
    }
}

/// A writer that waits for another process's lock says so (once, after about a second) instead
/// of sitting silent until the timeout.
fn say_waiting_for_lock(lock: &Path) {
    eprintln!(
        "waiting for the store lock {} (held by another xai-keys process)…",
        lock.display()
    );
}

/// Parses [`LOCK_TIMEOUT_VAR`]: a positive whole number of seconds.
fn parse_lock_timeout(value: &str) -> Result<Duration> {
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(CoreError::InvalidConfig {
            var: LOCK_TIMEOUT_VAR.into(),
            value: value.into(),
            reason: "must be a positive whole number of seconds (the default is 30)".into(),
        }
        .into()),
    }
}

/// Parses a duration such as `36h`, `90d`, `2w`, `1h 30m`.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim()).with_context(|| {
        format!("invalid {what} {s:?}: use a duration such as 30m, 36h, 90d or 2w")
    })
}

/// Parses a poll interval: a duration (`250ms`) or, as the reference's `--interval`, seconds.
pub fn parse_interval(s: &str) -> Result<Duration> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        Ok(_) => bail!("invalid --interval {s:?}: must be positive"),
        Err(_) => parse_duration("--interval", s),
    }
}

/// Folds the TTL flags into a request. Zero or negative lifetimes are errors. As in the
/// reference's `manage_api_keys.py`, `--ttl-days` wins when `--ttl-hours` is also given.
pub fn ttl_request(t: &TtlArgs) -> Result<TtlRequest> {
    if let (Some(d), Some(h)) = (t.ttl_days, t.ttl_hours) {
        eprintln!("warning: both --ttl-days {d} and --ttl-hours {h} given; --ttl-days wins");
    }
    let secs = if let Some(s) = &t.ttl {
        Some(parse_duration("--ttl", s)?.as_secs_f64())
    } else if let Some(d) = t.ttl_days {
        Some(d * 86_400.0)
    } else {
        t.ttl_hours.map(|h| h * 3_600.0)
    };
    match (secs, t.permanent) {
        (_, true) => Ok(TtlRequest::Permanent),
        (Some(s), false) if !s.is_finite() || s <= 0.0 => {
            bail!("invalid TTL: the lifetime must be positive (got {s} seconds)")
        }
        (Some(s), false) => Ok(TtlRequest::Seconds(s)),
        (None, false) => Ok(TtlRequest::Default),
    }
}

/// Whether any TTL flag was given (rotation inherits otherwise).
pub fn ttl_given(t: &TtlArgs) -> bool {
    t.ttl.is_some() || t.ttl_days.is_some() || t.ttl_hours.is_some() || t.permanent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_accept_durations_and_reference_seconds() {
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn lock_timeout_is_a_positive_whole_number_of_seconds() {
        assert_eq!(parse_lock_timeout(" 5 ").unwrap(), Duration::from_secs(5));
        for bad in ["0", "-1", "1.5", "soon", ""] {
            let e = parse_lock_timeout(bad).unwrap_err();
            assert!(e.to_string().contains(LOCK_TIMEOUT_VAR), "{e}");
        }
    }
}
