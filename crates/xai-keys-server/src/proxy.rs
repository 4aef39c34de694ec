//! Forwarding allowed requests to the node, streaming both ways.
//!
//! Method, path, query and headers are kept, except credentials (`X-API-Key`, `X-Admin-Token`,
//! `Authorization`, an `api_key` query parameter), hop-by-hop headers, and identity headers a
//! client could forge: the gateway sets `X-XAI-Key-Id` and `X-XAI-Scope` itself, and replaces
//! `X-Forwarded-For` / `X-Real-IP` with the client address it determined. Bodies stream
//! through with a size cap; the upstream must answer (headers) within the timeout, or the
//! client gets a 504 JSON error; a connection failure is a 502. Never a hang.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, Version, header};
use axum::response::Response;
use http_body_util::Limited;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::Principal;
use crate::credentials::{X_ADMIN_TOKEN, X_API_KEY};
use crate::error::ApiError;

pub const X_XAI_KEY_ID: HeaderName = HeaderName::from_static("x-xai-key-id");
pub const X_XAI_SCOPE: HeaderName = HeaderName::from_static("x-xai-scope");
/// Set on requests a verified peer sent: its node id (`legacy` for a legacy peer key).
pub const X_XAI_PEER_NODE: HeaderName = HeaderName::from_static("x-xai-peer-node");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The node behind the gateway.
#[derive(Clone)]
pub struct Upstream {
    scheme_authority: String,
    /// Path prefix of the upstream URL, without a trailing `/` (often empty).
    prefix: String,
    authority: HeaderValue,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({}{})", self.scheme_authority, self.prefix)
    }
}

/// How a forward ended, for metrics.
pub type Outcome = &'static str;

impl Upstream {
    /// `url` is `http://host:port[/prefix]`.
    pub fn new(url: &str, timeout: Duration, max_body: usize) -> Result<Self, String> {
        let uri: Uri = url.trim().parse().map_err(|e| {
            format!("upstream URL {url:?} is not a URL ({e}); use e.g. http://127.0.0.1:8545")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "upstream URL {url:?}: scheme {other:?} is not supported; the node behind the gateway is reached over plain http on a private address (use http://…)"
                ));
            }
            None => {
                return Err(format!(
                    "upstream URL {url:?} has no scheme; use e.g. http://127.0.0.1:8545"
                ));
            }
        }
        let Some(auth) = uri.authority() else {
            return Err(format!("upstream URL {url:?} has no host"));
        };
        if auth.as_str().contains('@') {
            return Err(
                "upstream URL must not carry credentials (user:password@): they would be shown in /health and logs and sent as the Host header; protect the node by binding it to a private address"
                    .to_string(),
            );
        }
        if uri.query().is_some() {
            return Err(format!("upstream URL {url:?} must not carry a query"));
        }
        let authority = HeaderValue::from_str(auth.as_str())
            .map_err(|_| format!("upstream URL {url:?} has an unusable host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Upstream {
            scheme_authority: format!("http://{}", auth.as_str()),
            prefix: uri.path().trim_end_matches('/').to_string(),
            authority,
            client,
            timeout,
            max_body,
        })
    }

    pub fn url(&self) -> String {
        format!("{}{}", self.scheme_authority, self.prefix)
    }

    /// Forwards `req` (whose credentials were already checked). `query` replaces the request's
    /// query when given (the original with its `api_key` removed).
    pub async fn forward(
        &self,
        req: Request<Body>,
        query: Option<&str>,
        principal: Option<&Principal>,
        peer_node: Option<&str>,
        client: IpAddr,
    ) -> (Result<Response, ApiError>, Outcome) {
        let (parts, body) = req.into_parts();
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > self.max_body as u64
        {
            return (
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "request body of {len} bytes exceeds the gateway's limit of {} bytes (XAI_PROXY_MAX_BODY_BYTES)",
                        self.max_body
                    ),
                )),
                "body_too_large",
            );
        }
        let mut target = String::with_capacity(self.scheme_authority.len() + 64);
        target.push_str(&self.scheme_authority);
        target.push_str(&self.prefix);
        target.push_str(parts.uri.path());
        if let Some(q) = query.or(parts.uri.query()).filter(|q| !q.is_empty()) {
            target.push('?');
            target.push_str(q);
        }
        let uri: Uri = match target.parse() {
            Ok(u) => u,
            Err(_) => {
                return (
                    Err(ApiError::bad_request(
                        "invalid_path",
                        "the request path cannot be forwarded",
                    )),
                    "bad_request",
                );
            }
        };
        let mut headers = parts.headers;
        let original_host = headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut headers);
        strip_lookalikes(&mut headers);
        for h in [
            X_API_KEY,
            X_ADMIN_TOKEN,
            header::AUTHORIZATION,
            X_XAI_KEY_ID,
            X_XAI_SCOPE,
            X_FORWARDED_FOR,
            X_REAL_IP,
            X_FORWARDED_HOST,
            header::FORWARDED,
            header::HOST,
        ] {
            headers.remove(&h);
        }
        // Peer signatures are the gateway's business; the node learns the verified sender only.
        for h in xai_keys_core::peer::HEADERS
            .iter()
            .chain([&"x-xai-peer-node"])
        {
            headers.remove(*h);
        }
        if let Some(v) = peer_node.and_then(|n| HeaderValue::from_str(n).ok()) {
            headers.insert(X_XAI_PEER_NODE, v);
        }
        headers.insert(header::HOST, self.authority.clone());
        if let Some(h) = original_host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(X_FORWARDED_FOR, v.clone());
            headers.insert(X_REAL_IP, v);
        }
        if let Some(p) = principal {
            if let Ok(v) = HeaderValue::from_str(p.key_id.as_str()) {
                headers.insert(X_XAI_KEY_ID, v);
            }
            headers.insert(X_XAI_SCOPE, HeaderValue::from_static(p.scope.as_str()));
        }
        let mut out = Request::new(Body::new(Limited::new(body, self.max_body)));
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.client.request(out)).await {
            Err(_) => (
                Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "the node at {} did not answer within {:?} (XAI_UPSTREAM_TIMEOUT_SECS)",
                        self.url(),
                        self.timeout
                    ),
                )),
                "timeout",
            ),
            Ok(Err(e)) => {
                let too_large = std::error::Error::source(&e)
                    .and_then(|s| s.source())
                    .is_some_and(|s| s.to_string().contains("length limit exceeded"));
                if too_large {
                    return (
                        Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            format!(
                                "request body exceeds the gateway's limit of {} bytes (XAI_PROXY_MAX_BODY_BYTES)",
                                self.max_body
                            ),
                        )),
                        "body_too_large",
                    );
                }
                tracing::warn!(upstream = %self.url(), error = %e, connect = e.is_connect(), "upstream request failed");
                (
                    Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        format!(
                            "the node at {} could not be reached or closed the connection; check that it is running",
                            self.url()
                        ),
                    )
                    .with_retry_after(1)),
                    if e.is_connect() { "connect_error" } else { "error" },
                )
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                (Ok(Response::from_parts(parts, Body::new(body))), "ok")
            }
        }
    }
}

/// Headers the gateway controls, by their lower-case names with `-`.
const CONTROLLED: [&str; 14] = [
    "x-xai-peer-node",
    "x-xai-peer-key",
    "x-xai-peer-timestamp",
    "x-xai-peer-nonce",
    "x-xai-peer-content-sha256",
    "x-xai-peer-signature",
    "x-api-key",
    "x-admin-token",
    "authorization",
    "x-xai-key-id",
    "x-xai-scope",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
];

/// Removes spellings of controlled headers with `_` for `-` (`X_XAI_SCOPE`): some servers
/// (WSGI via CGI-style environ) read them as the real header.
fn strip_lookalikes(h: &mut HeaderMap) {
    let lookalikes: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| CONTROLLED.contains(&n.as_str().replace('_', "-").as_str()))
        .cloned()
        .collect();
    for n in lookalikes {
        h.remove(n);
    }
}

/// Removes hop-by-hop headers, including those named by `Connection`.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(Upstream::new("https://node:1", t, 1).is_err());
        assert!(Upstream::new("node:1", t, 1).is_err());
        assert!(Upstream::new("http://node:1/?a=1", t, 1).is_err());
        assert!(Upstream::new("http://u:p@node:1", t, 1).is_err());
        assert_eq!(
            Upstream::new("http://127.0.0.1:9/api/", t, 1)
                .unwrap()
                .url(),
            "http://127.0.0.1:9/api"
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        h.insert("x_xai_scope", HeaderValue::from_static("admin"));
        h.insert("x_api_key", HeaderValue::from_static("k"));
        h.insert("x_other_thing", HeaderValue::from_static("1"));
        strip_lookalikes(&mut h);
        assert_eq!(h.len(), 2);
    }
}
