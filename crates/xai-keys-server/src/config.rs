//! The gateway's resolved configuration, read from environment variables (or any lookup).
//!
//! Parsing is separate from use (ripgrep's split): the CLI turns flags and the environment into
//! a [`ServerConfig`] once, and everything else reads fields. Every bad value is an error that
//! names the variable and the accepted form.

use std::time::Duration;

use ipnet::IpNet;
use xai_keys_core::policy::{TtlPolicy, parse_bool};

use crate::credentials::parse_networks;
use crate::policy::RoutePolicy;
use crate::ratelimit::Limit;

/// Everything `xai-keys serve` needs besides the store and the listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `XAI_UPSTREAM_URL`: the node behind the gateway (`None`: proxied routes answer 503).
    pub upstream_url: Option<String>,
    /// `XAI_API_AUTH_REQUIRED` (default on). Off opens `user` routes only.
    pub auth_required: bool,
    /// `XAI_API_KEY_ALLOW_QUERY` (default off): accept `?api_key=`.
    pub allow_query_key: bool,
    /// `XAI_TRUSTED_PROXIES`: proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `XAI_ADMIN_ALLOWED_NETWORKS`: client networks `/admin/*` is served to (a CIDR list, or
    /// a file re-read on change and on SIGHUP); unset: any client.
    pub admin_networks: crate::access::AdminNetworksSource,
    /// `XAI_API_KEYS`, `XAI_API_ADMIN_KEYS`, `XAI_API_ADMIN_TOKEN`: keys configured in the
    /// environment (ids only), served until the store manages them.
    pub env_keys: Vec<xai_keys_core::envkeys::EnvKey>,
    /// `XAI_API_MAX_JSON_BYTES` (1 MiB): admin API bodies.
    pub max_json_bytes: usize,
    /// `XAI_PROXY_MAX_BODY_BYTES` (16 MiB): proxied request bodies.
    pub max_proxy_body_bytes: usize,
    /// `XAI_UPSTREAM_TIMEOUT_SECS` (30): time for the node to answer (headers).
    pub upstream_timeout: Duration,
    /// `XAI_RATE_LIMIT_ENABLED` (on).
    pub rate_limit_enabled: bool,
    /// `XAI_RATE_LIMIT_ADMIN` / `_WINDOW` (20 per 60 s): admin routes per client and route.
    pub admin_limit: Limit,
    /// `XAI_AUTH_FAILURE_LIMIT` / `_WINDOW` (20 per 60 s): failed authentications per client.
    pub auth_failure_limit: Limit,
    /// `XAI_STORE_POLL_MS` (50): how often the store's version is checked.
    pub store_poll: Duration,
    /// `XAI_USAGE_FLUSH_SECS` (5): how often last-use data is written beside the store.
    pub usage_flush: Duration,
    /// `XAI_STORE_MAX_STALENESS` (30s): how long a networked store (etcd) may go unconfirmed
    /// before every key is refused, rather than trusting an index that can no longer be
    /// refreshed (a key revoked meanwhile on the rest of the fleet would still pass here).
    pub max_staleness: Duration,
    /// `XAI_STORE_FAIL_STATIC` (off): keep serving the last good index however stale.
    pub fail_static: bool,
    /// Where this gateway keeps its own files (`<base>.webhook-queue`, `<base>.peer-usage`)
    /// when the store is not a local file (etcd); a file store keeps them beside itself.
    pub state_base: Option<std::path::PathBuf>,
    /// Time allowed to send request headers (slow-client protection).
    pub header_read_timeout: Duration,
    /// `XAI_SHUTDOWN_GRACE_SECS` (30): time in-flight requests get on shutdown.
    pub shutdown_grace: Duration,
    /// `XAI_ACCESS_LOG` (on): one structured log line per request.
    pub access_log: bool,
    pub ttl: TtlPolicy,
    /// `XAI_ROUTE_POLICY` (a TOML file) or the built-in policy.
    pub policy: RoutePolicy,
    /// `XAI_API_VERSIONS` (`v1,v2`): the node's version prefixes, removed before the policy
    /// judges a path (`vN` is always removed).
    pub api_versions: Vec<String>,
    /// `XAI_MAX_CONNECTIONS` (4096): open client connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// `XAI_METRICS` (on): per-request metrics and `GET /metrics`.
    pub metrics_enabled: bool,
    /// Security events, webhooks, change-window policy (`crate::telemetry`).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The peer key ring and signed-gossip settings (`crate::peer`).
    pub peer: crate::peer::PeerConfig,
    /// The peer egress proxy (`serve --peer-egress`): allow-list and node id.
    pub egress: crate::egress::EgressConfig,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            upstream_url: None,
            auth_required: true,
            allow_query_key: false,
            trusted_proxies: Vec::new(),
            admin_networks: crate::access::AdminNetworksSource::Anywhere,
            env_keys: Vec::new(),
            max_json_bytes: 1 << 20,
            max_proxy_body_bytes: 16 << 20,
            upstream_timeout: Duration::from_secs(30),
            rate_limit_enabled: true,
            admin_limit: Limit {
                max: 20,
                window_secs: 60.0,
            },
            auth_failure_limit: Limit {
                max: 20,
                window_secs: 60.0,
            },
            store_poll: Duration::from_millis(50),
            usage_flush: Duration::from_secs(5),
            max_staleness: DEFAULT_MAX_STALENESS,
            fail_static: false,
            state_base: None,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            access_log: true,
            ttl: TtlPolicy::default(),
            policy: RoutePolicy::builtin(),
            api_versions: vec!["v1".into(), "v2".into()],
            max_connections: 4096,
            metrics_enabled: true,
            telemetry: crate::telemetry::TelemetryConfig::default(),
            peer: crate::peer::PeerConfig::default(),
            egress: crate::egress::EgressConfig::default(),
        }
    }
}

/// `XAI_STORE_MAX_STALENESS`'s default.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

/// `XAI_STORE_MAX_STALENESS`: a duration (`30s`, `2m`) or seconds, from 1 s to 1 day.
fn parse_staleness(raw: &str) -> Result<Duration, ConfigError> {
    let d = match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
        Ok(_) => None,
        Err(_) => humantime::parse_duration(raw).ok(),
    };
    d.filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(86_400))
        .ok_or_else(|| {
            ConfigError(format!(
                "XAI_STORE_MAX_STALENESS={raw:?}: expected a duration from 1s to 1d (e.g. 30s), or XAI_STORE_FAIL_STATIC=1 to never refuse"
            ))
        })
}

/// A variable's value, trimmed; unset and blank are both `None`. Every section of the
/// configuration (gateway, telemetry, webhooks, peers, egress) reads variables through these
/// three helpers, so that blank values and errors behave the same everywhere.
pub(crate) fn var(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A number within `min..=max`, `default` when unset; the error names the variable.
pub(crate) fn num<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let Some(raw) = self::var(lookup, var) else {
        return Ok(default);
    };
    match raw.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(ConfigError(format!(
            "{var}={raw:?}: expected a number from {min} to {max}"
        ))),
    }
}

/// A boolean (`1/0/true/false/yes/no/on/off`), `default` when unset.
pub(crate) fn flag(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match self::var(lookup, var) {
        None => Ok(default),
        Some(raw) => parse_bool(var, &raw).map_err(|e| ConfigError(e.to_string())),
    }
}

impl ServerConfig {
    /// Reads every `XAI_*` variable through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = ServerConfig::default();
        let ttl = TtlPolicy::from_lookup(lookup).map_err(|e| ConfigError(e.to_string()))?;
        let policy = match lookup("XAI_ROUTE_POLICY").filter(|v| !v.trim().is_empty()) {
            Some(p) => RoutePolicy::from_file(std::path::Path::new(p.trim()))
                .map_err(|e| ConfigError(e.to_string()))?,
            None => RoutePolicy::builtin(),
        };
        let trusted_proxies = match lookup("XAI_TRUSTED_PROXIES") {
            Some(raw) => parse_networks("XAI_TRUSTED_PROXIES", &raw).map_err(ConfigError)?,
            None => Vec::new(),
        };
        let secs = |var: &str, default: f64, min: f64, max: f64| {
            num(lookup, var, default, min, max).map(Duration::from_secs_f64)
        };
        let upstream_url = lookup("XAI_UPSTREAM_URL")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(u) = &upstream_url {
            // Refused here, with the other settings, not later when the gateway starts: by then
            // `serve` may already have generated and printed a first admin key for a start that
            // fails (and never offers one again).
            crate::proxy::Upstream::new(u, d.upstream_timeout, d.max_proxy_body_bytes)
                .map_err(|e| ConfigError(format!("XAI_UPSTREAM_URL / --upstream: {e}")))?;
        }
        Ok(ServerConfig {
            upstream_url,
            auth_required: flag(lookup, "XAI_API_AUTH_REQUIRED", d.auth_required)?,
            allow_query_key: flag(lookup, "XAI_API_KEY_ALLOW_QUERY", d.allow_query_key)?,
            trusted_proxies,
            admin_networks: crate::access::AdminNetworksSource::from_value(
                lookup(crate::access::ADMIN_NETWORKS_VAR).as_deref(),
            )
            .map_err(ConfigError)?,
            env_keys: xai_keys_core::envkeys::from_lookup(lookup)
                .map_err(|e| ConfigError(e.to_string()))?,
            max_json_bytes: num(
                lookup,
                "XAI_API_MAX_JSON_BYTES",
                d.max_json_bytes,
                64,
                64 << 20,
            )?,
            max_proxy_body_bytes: num(
                lookup,
                "XAI_PROXY_MAX_BODY_BYTES",
                d.max_proxy_body_bytes,
                0,
                1 << 30,
            )?,
            upstream_timeout: secs("XAI_UPSTREAM_TIMEOUT_SECS", 30.0, 0.1, 3600.0)?,
            rate_limit_enabled: flag(lookup, "XAI_RATE_LIMIT_ENABLED", d.rate_limit_enabled)?,
            admin_limit: Limit {
                max: num(
                    lookup,
                    "XAI_RATE_LIMIT_ADMIN",
                    d.admin_limit.max,
                    1,
                    u32::MAX,
                )?,
                window_secs: num(lookup, "XAI_RATE_LIMIT_ADMIN_WINDOW", 60.0, 1.0, 86_400.0)?,
            },
            auth_failure_limit: Limit {
                max: num(
                    lookup,
                    "XAI_AUTH_FAILURE_LIMIT",
                    d.auth_failure_limit.max,
                    1,
                    u32::MAX,
                )?,
                window_secs: num(lookup, "XAI_AUTH_FAILURE_WINDOW", 60.0, 1.0, 86_400.0)?,
            },
            store_poll: Duration::from_millis(num(lookup, "XAI_STORE_POLL_MS", 50, 5, 10_000)?),
            usage_flush: secs("XAI_USAGE_FLUSH_SECS", 5.0, 0.05, 3600.0)?,
            max_staleness: match var(lookup, "XAI_STORE_MAX_STALENESS") {
                None => d.max_staleness,
                Some(raw) => parse_staleness(&raw)?,
            },
            fail_static: flag(lookup, "XAI_STORE_FAIL_STATIC", d.fail_static)?,
            state_base: None,
            header_read_timeout: d.header_read_timeout,
            shutdown_grace: secs("XAI_SHUTDOWN_GRACE_SECS", 30.0, 0.0, 3600.0)?,
            access_log: flag(lookup, "XAI_ACCESS_LOG", d.access_log)?,
            ttl,
            policy,
            api_versions: match lookup("XAI_API_VERSIONS") {
                Some(raw) => {
                    let v: Vec<String> = raw
                        .split(',')
                        .map(|s| s.trim().trim_matches('/').to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(bad) = v.iter().find(|s| s.contains(['/', '%', '?', '#'])) {
                        return Err(ConfigError(format!(
                            "XAI_API_VERSIONS: {bad:?} is not a single path segment (e.g. v1,v2)"
                        )));
                    }
                    v
                }
                None => d.api_versions,
            },
            max_connections: num(
                lookup,
                "XAI_MAX_CONNECTIONS",
                d.max_connections,
                16,
                1 << 20,
            )?,
            metrics_enabled: flag(lookup, "XAI_METRICS", d.metrics_enabled)?,
            telemetry: crate::telemetry::TelemetryConfig::from_lookup(lookup)?,
            peer: crate::peer::PeerConfig::from_lookup(lookup)?,
            egress: crate::egress::EgressConfig::from_lookup(lookup)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let c = cfg(&[]).unwrap();
        assert!(c.auth_required && !c.allow_query_key && c.rate_limit_enabled);
        assert_eq!(c.max_json_bytes, 1 << 20);
        let c = cfg(&[
            ("XAI_API_AUTH_REQUIRED", "false"),
            ("XAI_TRUSTED_PROXIES", "10.0.0.0/8"),
        ])
        .unwrap();
        assert!(!c.auth_required);
        assert_eq!(c.trusted_proxies.len(), 1);
        for (k, v) in [
            ("XAI_API_AUTH_REQUIRED", "maybe"),
            ("XAI_API_MAX_JSON_BYTES", "-1"),
            ("XAI_STORE_POLL_MS", "0"),
            ("XAI_TRUSTED_PROXIES", "nope"),
            ("XAI_ROUTE_POLICY", "/nonexistent/policy.toml"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k) || e.contains("policy"), "{e}");
        }
    }
}
