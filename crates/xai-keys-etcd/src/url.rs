//! Parsing `--store etcd://host:port[,host:port…]/prefix`.
//!
//! The store location names the cluster's client endpoints and the key prefix the store lives
//! under; nothing else. `etcds://` means TLS (the CA and client certificate come from
//! `XAI_ETCD_*` settings, never from the URL). Credentials and query strings are refused, so a
//! password can never end up in a shell history, a unit file or a log line that prints the
//! store's location.

use xai_keys_core::Error;

/// A parsed etcd store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `etcds://`: connect with TLS.
    pub tls: bool,
    /// `host:port` (IPv6 as `[addr]:port`), in the order given.
    pub endpoints: Vec<String>,
    /// The key prefix, with one leading slash and none trailing (`/xai/mainnet`).
    pub prefix: String,
}

/// Whether `s` names an etcd store (rather than a file path).
pub fn is_etcd_url(s: &str) -> bool {
    s.starts_with("etcd://") || s.starts_with("etcds://")
}

/// `value` with any credentials before an `@` in the endpoints replaced and any query string
/// or fragment cut off, so that an error never repeats a password.
fn redact(value: &str) -> String {
    let value = match value.find(['?', '#']) {
        Some(i) => format!("{}<query removed>", &value[..i]),
        None => value.to_string(),
    };
    let (scheme, rest) = value.split_once("://").unwrap_or(("", &value));
    let hosts_end = rest.find('/').unwrap_or(rest.len());
    match rest[..hosts_end].rfind('@') {
        Some(at) => format!("{scheme}://<credentials removed>{}", &rest[at..]),
        None => value.clone(),
    }
}

fn bad(value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        var: "--store / XAI_API_KEY_STORE".into(),
        value: redact(value),
        reason: format!(
            "{}; expected etcd://host:port[,host:port…]/prefix (etcds:// for TLS)",
            reason.into()
        ),
    }
}

impl EtcdUrl {
    /// Parses `etcd://h1:2379,h2:2379/prefix` or `etcds://…`.
    pub fn parse(s: &str) -> Result<EtcdUrl, Error> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("etcds://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("etcd://") {
            (false, r)
        } else {
            return Err(bad(s, "not an etcd URL"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad(s, "query strings and fragments are not accepted"));
        }
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| bad(s, "no key prefix: add /prefix after the endpoints"))?;
        if hosts.contains('@') {
            return Err(bad(
                s,
                "credentials do not belong in the URL: set XAI_ETCD_USER and XAI_ETCD_PASSWORD_FILE",
            ));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            endpoints.push(parse_endpoint(h).map_err(|r| bad(s, r))?);
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(bad(
                s,
                "the key prefix is empty: give one (e.g. /xai/mainnet) so the store never writes at the root of the cluster",
            ));
        }
        if prefix.len() > 200 {
            return Err(bad(s, "the key prefix is longer than 200 characters"));
        }
        for seg in prefix.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad(s, format!("bad prefix segment {seg:?}")));
            }
            if !seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(bad(
                    s,
                    format!("prefix segment {seg:?} may hold only letters, digits, '-', '_', '.'"),
                ));
            }
        }
        Ok(EtcdUrl {
            tls,
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }

    /// The gRPC endpoint URLs (`http://h:p` or `https://h:p`).
    pub fn endpoint_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}{}", self.endpoints.join(","), self.prefix)
    }
}

fn parse_endpoint(h: &str) -> Result<String, String> {
    if h.is_empty() {
        return Err("an empty endpoint in the list".into());
    }
    let (host, port) = if let Some(r) = h.strip_prefix('[') {
        let (addr, after) = r
            .split_once(']')
            .ok_or_else(|| format!("endpoint {h:?}: unclosed '['"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("endpoint {h:?}: no port"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("endpoint {h:?}: not an IPv6 address"));
        }
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = h.rsplit_once(':').ok_or_else(|| {
            format!("endpoint {h:?}: no port (etcd's client port is usually 2379)")
        })?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            return Err(format!("endpoint {h:?}: bad host name"));
        }
        (host.to_string(), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(format!("endpoint {h:?}: bad port {port:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_prefix() {
        let u =
            EtcdUrl::parse("etcd://10.0.0.1:2379,node-2.lan:2379,[::1]:23790/xai/main/").unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.endpoints,
            ["10.0.0.1:2379", "node-2.lan:2379", "[::1]:23790"]
        );
        assert_eq!(u.prefix, "/xai/main");
        assert_eq!(
            u.to_string(),
            "etcd://10.0.0.1:2379,node-2.lan:2379,[::1]:23790/xai/main"
        );
        assert_eq!(u.endpoint_urls()[0], "http://10.0.0.1:2379");
        let t = EtcdUrl::parse("etcds://h:2379/p").unwrap();
        assert!(t.tls);
        assert_eq!(t.endpoint_urls(), ["https://h:2379"]);
    }

    #[test]
    fn refuses_what_would_be_unsafe_or_ambiguous() {
        for (s, want) in [
            ("etcd://h:2379", "no key prefix"),
            ("etcd://h:2379/", "prefix is empty"),
            ("etcd://user:pw@h:2379/p", "credentials"),
            ("etcd://h:2379/p?password=x", "query strings"),
            ("etcd://h/p", "no port"),
            ("etcd://h:0/p", "bad port"),
            ("etcd://h:2379,/p", "empty endpoint"),
            ("etcd://h:2379/a/../b", "bad prefix segment"),
            ("etcd://h:2379/a b", "may hold only"),
            ("http://h:2379/p", "not an etcd URL"),
        ] {
            let e = EtcdUrl::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains("pw@"), "{e}");
            assert!(!e.contains("password=x"), "{e}");
        }
    }
}
