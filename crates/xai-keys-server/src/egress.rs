//! The peer egress proxy (`serve --peer-egress ADDR`): signs a node's outbound gossip.
//!
//! A node that cannot sign (the Python reference) sends its gossip through this proxy with the
//! standard HTTP proxy protocol (`HTTP_PROXY=http://ADDR`: requests in absolute form,
//! `POST http://peer:8080/block/receive`). For each request the proxy
//!
//! 1. refuses destinations outside `XAI_PEER_ALLOWLIST` (`host:port` entries or CIDRs; empty:
//!    nothing is allowed), `CONNECT` (HTTPS tunnels cannot be signed), and non-`http` targets;
//! 2. drops the reference's `X-API-Key` (the peer key in clear) and any signature headers;
//! 3. signs requests to peer routes (the route policy's `peer` class) with the ring's current
//!    key as `XAI_PEER_NODE_ID`, over the exact path, query and body it forwards;
//! 4. forwards to the destination and streams the answer back.
//!
//! Other routes to allowed destinations (sync reads such as `/blocks`) are forwarded unsigned.
//! Failures answer in the gateway's JSON envelope with their own codes (`egress_*`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use xai_keys_core::peer::{RequestParts, sign_peer_request};

use crate::config::ConfigError;
use crate::error::ApiError;
use crate::policy::{Access, normalize_path_with};
use crate::state::AppState;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// An exact `host:port` (the host as written in the proxied URL).
    HostPort(String, u16),
    /// Any address in a network (literal IP destinations only), any port.
    Net(IpNet),
}

/// Egress settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// `XAI_PEER_ALLOWLIST`.
    pub allowlist: Vec<Allowed>,
    /// `XAI_PEER_NODE_ID` (default: the host name).
    pub node_id: String,
    /// Time for a peer to answer.
    pub timeout: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allowlist: Vec::new(),
            node_id: default_node_id(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The host name as a node id (`node` when unknown), as `xai-keys peer sign` defaults too.
pub fn default_node_id() -> String {
    xai_keys_core::peer::host_node_id().unwrap_or_else(|| "node".into())
}

/// Parses `XAI_PEER_ALLOWLIST`: comma-separated `host:port` or CIDR entries.
pub fn parse_allowlist(raw: &str) -> Result<Vec<Allowed>, ConfigError> {
    let mut out = Vec::new();
    for e in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Ok(n) = e.parse::<IpNet>() {
            out.push(Allowed::Net(n));
            continue;
        }
        if let Ok(ip) = e.parse::<IpAddr>() {
            out.push(Allowed::Net(IpNet::from(ip)));
            continue;
        }
        let (host, port) = e.rsplit_once(':').ok_or_else(|| {
            ConfigError(format!(
                "XAI_PEER_ALLOWLIST: {e:?} is neither host:port nor a CIDR (e.g. peer1.example:8080,10.0.0.0/24)"
            ))
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| ConfigError(format!("XAI_PEER_ALLOWLIST: {e:?} has no valid port")))?;
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        if host.is_empty() {
            return Err(ConfigError(format!(
                "XAI_PEER_ALLOWLIST: {e:?} has no host"
            )));
        }
        out.push(Allowed::HostPort(host, port));
    }
    Ok(out)
}

impl EgressConfig {
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = EgressConfig::default();
        let get = |k: &str| crate::config::var(lookup, k);
        let node_id = match get("XAI_PEER_NODE_ID") {
            Some(n) => {
                xai_keys_core::peer::check_node_id(&n)
                    .map_err(|e| ConfigError(format!("XAI_PEER_NODE_ID: {e}")))?;
                n
            }
            None => d.node_id,
        };
        Ok(EgressConfig {
            allowlist: match get("XAI_PEER_ALLOWLIST") {
                Some(raw) => parse_allowlist(&raw)?,
                None => Vec::new(),
            },
            node_id,
            timeout: d.timeout,
        })
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.allowlist.iter().any(|a| match a {
            Allowed::HostPort(h, p) => *h == host && *p == port,
            Allowed::Net(n) => ip.is_some_and(|ip| n.contains(&ip)),
        })
    }
}

/// The egress proxy's state: the gateway's (ring, policy, metrics) plus an HTTP client.
#[derive(Clone)]
pub struct Egress {
    st: AppState,
    client: Client<HttpConnector, Body>,
}

/// The egress router: every request goes to [`forward`].
pub fn router(st: AppState) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    Router::new()
        .fallback(forward)
        .with_state(Egress { st, client })
}

fn refuse(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Response {
    ApiError::new(status, code, msg).into_response()
}

/// Hop-by-hop and credential headers never forwarded to a peer.
const DROPPED: [&str; 9] = [
    "connection",
    "proxy-connection",
    "proxy-authorization",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-api-key",
];

async fn forward(State(eg): State<Egress>, req: Request) -> Response {
    let st = &eg.st;
    let cfg = &st.cfg.egress;
    if req.method() == Method::CONNECT {
        st.metrics.egress("connect_refused");
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "egress_connect_refused",
            "the peer egress proxy signs plain-http gossip; an HTTPS tunnel (CONNECT) cannot be signed: send gossip to the peers' gateways over http through this proxy",
        );
    }
    let uri = req.uri().clone();
    let (Some("http"), Some(auth)) = (uri.scheme_str(), uri.authority().cloned()) else {
        st.metrics.egress("not_a_proxy_request");
        return refuse(
            StatusCode::BAD_REQUEST,
            "egress_not_a_proxy_request",
            "send requests in proxy form (an absolute http:// URL), e.g. with HTTP_PROXY pointing here",
        );
    };
    if auth.as_str().contains('@') {
        st.metrics.egress("destination_refused");
        // Never echoed: the part before '@' is a credential.
        return refuse(
            StatusCode::FORBIDDEN,
            "egress_destination_refused",
            "destinations with credentials (user:password@) are refused",
        );
    }
    let port = auth.port_u16().unwrap_or(80);
    if !cfg.allows(auth.host(), port) {
        st.metrics.egress("destination_refused");
        tracing::warn!(target: "xai_keys::egress", destination = %auth, "peer egress refused a destination outside XAI_PEER_ALLOWLIST");
        return refuse(
            StatusCode::FORBIDDEN,
            "egress_destination_refused",
            format!("{auth} is not in XAI_PEER_ALLOWLIST"),
        );
    }
    let pq = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let is_peer_route = normalize_path_with(uri.path(), &st.cfg.api_versions)
        .map(|p| st.cfg.policy.classify(&method, &p).access == Access::Peer)
        .unwrap_or(false);
    let (parts, body) = req.into_parts();
    let limit = st.cfg.max_proxy_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        st.metrics.egress("body_too_large");
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {limit} bytes (XAI_PROXY_MAX_BODY_BYTES)"),
        );
    };
    let mut headers = parts.headers;
    for h in DROPPED.iter().chain(xai_keys_core::peer::HEADERS.iter()) {
        headers.remove(*h);
    }
    let signed = if is_peer_route {
        let ring = st.peers.ring();
        let Some(key) = ring.current.as_ref() else {
            st.metrics.egress("no_key");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "egress_no_peer_key",
                "no peer key to sign with: set XAI_PEER_API_KEY or XAI_PEER_KEYRING_FILE",
            );
        };
        match sign_peer_request(
            key,
            &cfg.node_id,
            &RequestParts {
                method: method.as_str(),
                path_and_query: &pq,
                body: &bytes,
            },
            st.now(),
        ) {
            Ok(h) => {
                for (name, value) in h {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.insert(HeaderName::from_static(name), v);
                    }
                }
                true
            }
            Err(e) => {
                st.metrics.egress("sign_error");
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "egress_sign_error",
                    format!("cannot sign the request: {e}"),
                );
            }
        }
    } else {
        false
    };
    let Ok(target) = format!("http://{auth}{pq}").parse::<Uri>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "egress_not_a_proxy_request",
            "the target URL cannot be forwarded",
        );
    };
    if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
        headers.insert(header::HOST, v);
    }
    let mut out = axum::http::Request::new(Body::from(bytes));
    *out.method_mut() = method;
    *out.uri_mut() = target;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    match tokio::time::timeout(cfg.timeout, eg.client.request(out)).await {
        Ok(Ok(resp)) => {
            st.metrics
                .egress(if signed { "signed" } else { "unsigned" });
            let (mut p, b) = resp.into_parts();
            for h in DROPPED {
                p.headers.remove(h);
            }
            Response::from_parts(p, Body::new(b))
        }
        Ok(Err(e)) => {
            st.metrics.egress("peer_unreachable");
            tracing::warn!(target: "xai_keys::egress", destination = %auth, error = %e, "peer unreachable");
            refuse(
                StatusCode::BAD_GATEWAY,
                "egress_peer_unreachable",
                format!("the peer at {auth} could not be reached"),
            )
        }
        Err(_) => {
            st.metrics.egress("peer_timeout");
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "egress_peer_timeout",
                format!("the peer at {auth} did not answer within {:?}", cfg.timeout),
            )
        }
    }
}

/// Serves the egress proxy on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    st: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(st).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Shared between tests and the CLI: a destination check without a running proxy.
pub fn allows(cfg: &EgressConfig, host: &str, port: u16) -> bool {
    cfg.allows(host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_entries_parse_and_match() {
        let cfg = EgressConfig {
            allowlist: parse_allowlist("peer1.example:8080, 10.1.0.0/16, [::1]:9000, 192.168.1.7")
                .unwrap(),
            ..Default::default()
        };
        assert!(allows(&cfg, "peer1.example", 8080));
        assert!(allows(&cfg, "PEER1.example", 8080));
        assert!(!allows(&cfg, "peer1.example", 8081));
        assert!(allows(&cfg, "10.1.200.3", 80));
        assert!(!allows(&cfg, "10.2.0.1", 80));
        assert!(allows(&cfg, "[::1]", 9000));
        assert!(allows(&cfg, "192.168.1.7", 1234));
        assert!(!allows(&cfg, "evil.example", 80));
        for bad in ["nohost", "host:notaport", ":80"] {
            let e = parse_allowlist(bad).unwrap_err().0;
            assert!(e.contains("XAI_PEER_ALLOWLIST"), "{e}");
        }
        assert!(
            !allows(&EgressConfig::default(), "127.0.0.1", 80),
            "empty allows nothing"
        );
    }
}
