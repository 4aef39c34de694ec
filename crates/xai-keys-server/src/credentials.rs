//! Credential extraction, in the reference's order, and the client address.
//!
//! API key: `X-API-Key` (a present header ends the search, even when empty), then
//! `Authorization: Bearer …`, then `?api_key=` only when the operator opted in. Admin token:
//! `X-Admin-Token`, then `Authorization: Admin …`. A repeated credential header is refused
//! rather than guessed at. The client address is the socket's, unless the socket belongs to a
//! trusted proxy, whose `X-Forwarded-For` is then believed (right to left, skipping other
//! trusted proxies).

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_ADMIN_TOKEN: HeaderName = HeaderName::from_static("x-admin-token");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where a credential came from (for messages and logs; never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    XApiKey,
    Bearer,
    Query,
    XAdminToken,
    AuthorizationAdmin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::XApiKey => "X-API-Key",
            Source::Bearer => "Authorization: Bearer",
            Source::Query => "api_key query parameter",
            Source::XAdminToken => "X-Admin-Token",
            Source::AuthorizationAdmin => "Authorization: Admin",
        }
    }
}

/// A presented secret. `Debug` never shows it.
pub struct Presented {
    pub source: Source,
    pub value: String,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Presented({}, <redacted>)", self.source.as_str())
    }
}

/// The credentials of one request.
#[derive(Debug, Default)]
pub struct Credentials {
    pub api_key: Option<Presented>,
    pub admin_token: Option<Presented>,
    /// `?api_key=` was present while query keys are disabled.
    pub query_key_refused: bool,
}

/// A request whose credential headers cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCredentials(pub String);

fn single(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, BadCredentials> {
    let mut it = headers.get_all(name).iter();
    let Some(v) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(BadCredentials(format!(
            "the {name} header appears more than once; send one credential"
        )));
    }
    let s = v.to_str().map_err(|_| {
        BadCredentials(format!(
            "the {name} header is not visible ASCII; keys are ASCII text"
        ))
    })?;
    Ok(Some(s.trim().to_string()))
}

/// The `api_key` query parameter's (decoded) value, if present.
pub fn query_api_key(query: Option<&str>) -> Option<String> {
    let q = query?;
    form_pairs(q).find_map(|(k, v)| (k == "api_key").then_some(v))
}

/// Decodes `application/x-www-form-urlencoded` pairs (enough for `api_key` and admin filters).
pub fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (form_decode(k), form_decode(v))
    })
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query without its `api_key` parameter(s), so a key never reaches the node's logs;
/// `None` when there is none to remove (the common case allocates nothing).
pub fn strip_api_key(query: &str) -> Option<String> {
    let is_key = |p: &&str| {
        let k = p.split_once('=').map_or(*p, |(k, _)| k);
        // Only a name that could decode to `api_key` is decoded.
        (k.contains(['%', '+']) || k == "api_key") && form_decode(k) == "api_key"
    };
    if !query.split('&').any(|p| is_key(&p)) {
        return None;
    }
    Some(
        query
            .split('&')
            .filter(|p| !is_key(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Extracts the credentials in the reference's order.
pub fn extract(
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Result<Credentials, BadCredentials> {
    let mut c = Credentials::default();
    let auth = single(headers, &axum::http::header::AUTHORIZATION)?;
    let (auth_scheme, auth_rest) = match auth.as_deref() {
        Some(a) => match a.split_once(' ') {
            Some((s, rest)) => (s.to_ascii_lowercase(), rest.trim().to_string()),
            None => (a.to_ascii_lowercase(), String::new()),
        },
        None => (String::new(), String::new()),
    };
    if let Some(v) = single(headers, &X_API_KEY)? {
        c.api_key = Some(Presented {
            source: Source::XApiKey,
            value: v,
        });
    } else if auth_scheme == "bearer" {
        c.api_key = Some(Presented {
            source: Source::Bearer,
            value: auth_rest.clone(),
        });
    } else if let Some(v) = query_api_key(query) {
        if allow_query {
            c.api_key = Some(Presented {
                source: Source::Query,
                value: v.trim().to_string(),
            });
        } else {
            c.query_key_refused = true;
        }
    }
    if let Some(v) = single(headers, &X_ADMIN_TOKEN)? {
        c.admin_token = Some(Presented {
            source: Source::XAdminToken,
            value: v,
        });
    } else if auth_scheme == "admin" {
        c.admin_token = Some(Presented {
            source: Source::AuthorizationAdmin,
            value: auth_rest,
        });
    }
    Ok(c)
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read right to left).
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    // Entries appended by our trusted proxies are on the right; the first untrusted address
    // from the right is the client. Entries left of it were written by the client and are never
    // parsed. An unparseable entry before that point means the chain cannot be followed: the
    // nearest trusted hop is the client.
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else {
            return peer;
        };
        entries.extend(s.split(','));
    }
    let mut nearest = peer;
    for raw in entries.into_iter().rev() {
        let Ok(ip) = raw.trim().parse::<IpAddr>().map(canonical) else {
            return nearest;
        };
        if !trusted.iter().any(|n| n.contains(&ip)) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// IPv4-mapped IPv6 addresses as IPv4, so lists and limits see one form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a comma-separated CIDR (or bare address) list.
pub fn parse_networks(var: &str, raw: &str) -> Result<Vec<IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "{var}: {s:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8, ::1)"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn reference_order() {
        let c = extract(
            &h(&[("x-api-key", " k1 "), ("authorization", "Bearer k2")]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.api_key.as_ref().unwrap().value, "k1");
        let c = extract(&h(&[("x-api-key", "  ")]), Some("api_key=k3"), true).unwrap();
        assert_eq!(
            c.api_key.as_ref().unwrap().value,
            "",
            "present header ends the search"
        );
        let c = extract(&h(&[("authorization", "bEaReR  k2 ")]), None, false).unwrap();
        assert_eq!(c.api_key.as_ref().unwrap().value, "k2");
        let c = extract(&h(&[("authorization", "Admin t1")]), None, false).unwrap();
        assert!(c.api_key.is_none());
        assert_eq!(c.admin_token.as_ref().unwrap().value, "t1");
        let c = extract(
            &h(&[("x-admin-token", "t0"), ("authorization", "Admin t1")]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().value, "t0");
        let c = extract(&h(&[]), Some("a=1&api_key=k%2B3"), true).unwrap();
        assert_eq!(c.api_key.as_ref().unwrap().value, "k+3");
        let c = extract(&h(&[]), Some("api_key=k3"), false).unwrap();
        assert!(c.api_key.is_none() && c.query_key_refused);
        assert!(extract(&h(&[("x-api-key", "a"), ("x-api-key", "b")]), None, false).is_err());
        assert!(
            !format!(
                "{:?}",
                extract(&h(&[("x-api-key", "secret")]), None, false).unwrap()
            )
            .contains("secret")
        );
    }

    #[test]
    fn query_stripping() {
        assert_eq!(
            strip_api_key("a=1&api_key=x&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_api_key("api%5Fkey=x").as_deref(), Some(""));
        assert_eq!(strip_api_key("api_keys=1"), None);
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = parse_networks("T", "10.0.0.0/8, ::1").unwrap();
        let xff = h(&[("x-forwarded-for", "203.0.113.9, 10.0.0.7")]);
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let direct: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_addr(proxy, &xff, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_addr(direct, &xff, &trusted), direct);
        assert_eq!(
            client_addr(proxy, &h(&[("x-forwarded-for", "junk")]), &trusted),
            proxy
        );
        assert_eq!(client_addr(proxy, &xff, &[]), proxy);
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            client_addr(mapped, &xff, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert!(parse_networks("T", "10.0.0.0/33").is_err());
    }
}
