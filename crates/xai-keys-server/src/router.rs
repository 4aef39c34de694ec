//! The router and the authenticating middleware every request goes through.
//!
//! Order for each request: client address → path normalisation → route (the gateway's own
//! routes, else the policy) → brute-force throttle → credentials → decision → admin rate
//! limit → last-use record → handler (own) or proxy (everything else). Own routes are matched
//! on the normalised path, so `/api/v2/admin/api-keys` is the gateway's admin API, never
//! forwarded to the node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tower::Layer;
use xai_keys_core::events::Severity;

use crate::admin;
use crate::auth::{Denial, Outcome, Principal, decide};
use crate::credentials::{self, strip_api_key};
use crate::error::ApiError;
use crate::policy::{Access, Route, normalize_path_with};
use crate::ratelimit::client_bucket;
use crate::state::AppState;

/// What the middleware learned, for handlers.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub client: IpAddr,
    /// The sending node of a verified peer request (`legacy` for a legacy peer key).
    pub peer_node: Option<String>,
    pub principal: Option<Principal>,
    pub route: Arc<str>,
    /// The query to forward when it differs from the request's (an `api_key` removed).
    pub forward_query: Option<String>,
    /// The path is in the gateway's own namespace (never forwarded to the node).
    pub own: bool,
}

/// The methods the gateway forwards or serves.
const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The gateway's own routes: (method, normalised path) → access and name.
fn own_route(method: &Method, path: &str) -> Option<(Access, &'static str)> {
    // The hot path (every proxied request) leaves here without allocating.
    if !(path.starts_with("/admin/") || path == "/health" || path == "/metrics") {
        return None;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match (segs.as_slice(), read) {
        (["health"], true) => (Access::Public, "/health"),
        (["metrics"], true) => (Access::Public, "/metrics"),
        (["admin", "openapi.json"], true) => (Access::Public, "/admin/openapi.json"),
        (["admin", "api-keys"], _) if read || *method == Method::POST => {
            (Access::Admin, "/admin/api-keys")
        }
        (["admin", "api-keys", _], _) if *method == Method::DELETE => {
            (Access::Admin, "/admin/api-keys/{key_id}")
        }
        (["admin", "api-keys", _, "rotate"], _) if *method == Method::POST => {
            (Access::Admin, "/admin/api-keys/{key_id}/rotate")
        }
        (["admin", "api-keys", _, "disable"], _) if *method == Method::POST => {
            (Access::Admin, "/admin/api-keys/{key_id}/disable")
        }
        (["admin", "api-keys", _, "enable"], _) if *method == Method::POST => {
            (Access::Admin, "/admin/api-keys/{key_id}/enable")
        }
        (["admin", "api-key-events"], true) => (Access::Auditor, "/admin/api-key-events"),
        (["admin", "change-window"], true) => (Access::Auditor, "/admin/change-window"),
        (["admin", "change-window"], _) => (Access::Admin, "/admin/change-window"),
        (["admin", "lockdown"], true) => (Access::Auditor, "/admin/lockdown"),
        (["admin", "lockdown"], _) => (Access::Admin, "/admin/lockdown"),
        // Any other method on the key API's paths: admin, then a JSON 405 from the router.
        (["admin", "api-keys", ..], _) | (["admin", "api-key-events"], _) => {
            (Access::Admin, "/admin/api-keys")
        }
        _ => return None,
    })
}

/// The router over `state`. Serve it with `ConnectInfo<SocketAddr>` (as [`crate::Gateway::run`]
/// does; in-process tests may use axum's `MockConnectInfo`); without either the client address
/// is taken as 0.0.0.0.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/health", get(admin::health))
        .route("/metrics", get(admin::metrics))
        .route("/admin/openapi.json", get(admin::openapi))
        .route(
            "/admin/api-keys",
            get(admin::list_keys).post(admin::issue_key),
        )
        .route("/admin/api-keys/{key_id}", delete(admin::revoke_key))
        .route("/admin/api-keys/{key_id}/rotate", post(admin::rotate_key))
        .route("/admin/api-keys/{key_id}/disable", post(admin::disable_key))
        .route("/admin/api-keys/{key_id}/enable", post(admin::enable_key))
        .route("/admin/api-key-events", get(admin::events))
        .route(
            "/admin/change-window",
            get(admin::window_status)
                .post(admin::window_open)
                .delete(admin::window_close),
        )
        .route(
            "/admin/lockdown",
            get(admin::lockdown_status)
                .post(admin::lockdown_on)
                .delete(admin::lockdown_off),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(proxy)
        .with_state(state.clone());
    // Authentication wraps the routes rather than being a route layer: it runs before routing,
    // so the gateway's own endpoints are routed on the normalised path it writes back
    // (`/api/v2/admin/api-keys` is the admin API, never a proxied request).
    let authenticated = middleware::from_fn_with_state(state, authenticate).layer(routes);
    Router::new().fallback_service(authenticated)
}

/// The path for logs, with any segment that looks like a key (our `xai_` prefix, or longer than
/// a key id) replaced: a key pasted into a URL must not reach the logs.
pub fn loggable_path(norm: &str) -> String {
    let mut out = String::with_capacity(norm.len());
    for seg in norm.split('/').skip(1) {
        out.push('/');
        if seg.starts_with("xai_") || seg.len() > 64 {
            out.push_str("<redacted>");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

async fn method_not_allowed(req: Request) -> ApiError {
    // Named by the route's pattern, not the request path: a key pasted into the path where its
    // id belongs must not be echoed back.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .or_else(|| {
            req.extensions()
                .get::<RequestContext>()
                .map(|c| c.route.to_string())
        })
        .unwrap_or_else(|| "this path".to_string());
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {route}", req.method()),
    )
}

async fn proxy(State(st): State<AppState>, mut req: Request) -> Response {
    let Some(ctx) = req.extensions_mut().remove::<RequestContext>() else {
        return ApiError::internal("routing", "request context missing").into_response();
    };
    // A path in the gateway's own namespace that no handler serves (`/admin/api-keys/x/y`) is
    // answered here, never forwarded to the node.
    if ctx.own {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{} {} is not an endpoint of the gateway's key API; see GET /admin/openapi.json",
                req.method(),
                ctx.route
            ),
        )
        .into_response();
    }
    let Some(up) = &st.upstream else {
        st.metrics.upstream("no_upstream");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            "this gateway has no upstream node configured (set --upstream or XAI_UPSTREAM_URL); it serves only /admin/api-keys, /admin/api-key-events, /health and /metrics",
        )
        .into_response();
    };
    let (res, outcome) = up
        .forward(
            req,
            ctx.forward_query.as_deref(),
            ctx.principal.as_ref(),
            ctx.peer_node.as_deref(),
            ctx.client,
        )
        .await;
    st.metrics.upstream(outcome);
    match res {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn route_for(st: &AppState, method: &Method, norm: &str) -> (Route, bool) {
    match own_route(method, norm) {
        Some((access, name)) => (
            Route {
                access,
                template: Arc::from(name),
            },
            true,
        ),
        None => (st.cfg.policy.classify(method, norm), false),
    }
}

async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // `MockConnectInfo` is axum's test stand-in for `ConnectInfo`, honoured as its extractor does.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            req.extensions()
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|m| m.0)
        })
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let client = credentials::client_addr(peer, req.headers(), &st.cfg.trusted_proxies);
    let method = req.method().clone();
    // `http::Method` is case-sensitive (`delete` is an extension method) while the node
    // upper-cases methods before routing: anything but the standard methods would slip past
    // method-scoped rules, so it is refused here.
    if !STANDARD_METHODS.contains(&method) {
        tracing::info!(target: "xai_keys::auth", client = %client, "request refused: non-standard method");
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS are accepted (methods are case-sensitive)",
        )
        .into_response();
        // RFC 9110: a 405 lists what the resource supports: an own route's methods, else every
        // method the gateway forwards.
        let allow = normalize_path_with(req.uri().path(), &st.cfg.api_versions)
            .ok()
            .and_then(|p| crate::openapi::allowed_methods(&p))
            .unwrap_or_else(|| "GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS".to_string());
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    let norm = match normalize_path_with(req.uri().path(), &st.cfg.api_versions) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(target: "xai_keys::auth", client = %client, problem = e.0, "request refused: invalid path");
            return ApiError::bad_request(
                "invalid_path",
                format!("{}: request paths must be plain, normalised paths", e.0),
            )
            .into_response();
        }
    };
    let (route, own) = route_for(&st, &method, &norm);
    let now = st.now();
    let class = route.access.as_str();

    // The admin network fence (allow-list, or the lockdown's networks) comes before any
    // credential is looked at: a client outside it learns nothing about keys.
    if is_admin_path(&norm)
        && let Err(refusal) = st.access.check_admin_client(client)
    {
        return admin_network_refused(&st, &refusal, &method, &route.template, class, started, now);
    }

    if route.access != Access::Public
        && st.cfg.rate_limit_enabled
        && let Some(x) = st.fail_limiter.blocked(&client_bucket(client), now)
    {
        st.metrics.rate_limited("auth_failures");
        tracing::info!(target: "xai_keys::auth", client = %client, route = %route.template, "request refused: too many failed authentications");
        rate_limit_event(&st, "auth_failures", client, &route.template, now);
        st.metrics.auth(
            "rate_limited",
            "none",
            class,
            started.elapsed().as_secs_f64(),
        );
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many failed authentications from {client}: at most {} per {} s; try again in {} s",
                x.limit.max, x.limit.window_secs, x.retry_after
            ),
        )
        .with_retry_after(x.retry_after)
        .into_response();
    }

    // Peer routes, once a peer key is configured: the peer signature (or, while allowed, the
    // legacy header) decides, and a user key is never enough.
    let peer = match crate::peer::authenticate(
        &st,
        &mut req,
        client,
        &method,
        route.access,
        &route.template,
        now,
    )
    .await
    {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let principal = if peer.is_some() {
        None
    } else {
        let creds = match credentials::extract(
            req.headers(),
            req.uri().query(),
            st.cfg.allow_query_key,
        ) {
            Ok(c) => c,
            Err(e) => {
                st.metrics.auth(
                    "bad_credentials",
                    "none",
                    class,
                    started.elapsed().as_secs_f64(),
                );
                tracing::info!(target: "xai_keys::auth", client = %client, route = %route.template, problem = %e.0, "request refused: unreadable credentials");
                auth_event(
                    &st,
                    &AuthFailure {
                        client,
                        method: &method,
                        route: &route.template,
                        class,
                        reason: "bad_credentials",
                        key_id: None,
                        now,
                    },
                );
                return ApiError::bad_request("invalid_credentials", e.0).into_response();
            }
        };
        let outcome = {
            let idx = st.index.load();
            decide(
                &idx,
                route.access,
                &method,
                &creds,
                // A lockdown requires keys on every non-public route, whatever the setting.
                st.cfg.auth_required || st.access.lockdown_active(),
                now,
            )
        };
        let decided = started.elapsed().as_secs_f64();
        let principal = match outcome {
            Outcome::Allowed(p) => p,
            Outcome::Denied(d) => {
                st.metrics.auth(d.reason(), "none", class, decided);
                if d.is_failed_guess() && st.cfg.rate_limit_enabled {
                    let _ = st.fail_limiter.hit(&client_bucket(client), now);
                }
                tracing::info!(
                    target: "xai_keys::auth",
                    client = %client,
                    method = %method,
                    route = %route.template,
                    reason = d.reason(),
                    key = d.key_id().map(|k| k.fingerprint()),
                    "request refused"
                );
                if let Denial::Expired { key_id, expired_at } = &d {
                    st.telemetry.emitter.emit_throttled(
                        &format!("expired|{key_id}"),
                        "api_key_expired_attempt",
                        Severity::Warning,
                        now,
                        json!({
                            "key_id": key_id.as_str(),
                            "expired_at": expired_at,
                            "client": client.to_string(),
                            "route": route.template.as_ref(),
                            "method": method.as_str(),
                        }),
                    );
                } else {
                    auth_event(
                        &st,
                        &AuthFailure {
                            client,
                            method: &method,
                            route: &route.template,
                            class,
                            reason: d.reason(),
                            key_id: d.key_id(),
                            now,
                        },
                    );
                }
                return d
                    .to_api_error(route.access, &route.template)
                    .into_response();
            }
        };
        st.metrics.auth(
            "allowed",
            principal.as_ref().map_or("none", |p| p.scope.as_str()),
            class,
            decided,
        );
        principal
    };

    if st.cfg.rate_limit_enabled
        && norm.starts_with("/admin")
        && let Err(x) = st
            .admin_limiter
            .hit(&(client_bucket(client), route.template.clone()), now)
    {
        st.metrics.rate_limited("admin");
        tracing::info!(target: "xai_keys::auth", client = %client, route = %route.template, "request refused: admin rate limit");
        rate_limit_event(&st, "admin", client, &route.template, now);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "Rate limit exceeded: at most {} admin requests per {} s to {} from {client}; try again in {} s",
                x.limit.max, x.limit.window_secs, route.template, x.retry_after
            ),
        )
        .with_retry_after(x.retry_after)
        .into_response();
    }

    if let Some(p) = &principal {
        st.usage.record(&p.key_id, now, client, &route.template);
    }

    let forward_query = req.uri().query().and_then(strip_api_key);
    if own {
        // Route the gateway's own endpoints on the normalised path, percent-encoded again: a
        // decoded `#` or `?` would otherwise end the path (routing `/{key_id}/rotate` as
        // `/{key_id}`), and a decoded `%` would be decoded twice by the path extractor.
        let path = encode_path(&norm);
        if req.uri().path() != path {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            match pq.parse::<Uri>() {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => {
                    return ApiError::bad_request(
                        "invalid_path",
                        "the request path cannot be routed: request paths must be plain, normalised paths",
                    )
                    .into_response();
                }
            }
        }
    }
    // Only the access log needs it: no allocation per request when it is off.
    let fingerprint = principal
        .as_ref()
        .filter(|_| st.cfg.access_log)
        .map(|p| p.key_id.fingerprint().to_string());
    req.extensions_mut().insert(RequestContext {
        client,
        peer_node: peer.map(|p| p.node_id),
        principal,
        route: route.template.clone(),
        forward_query,
        own,
    });
    let mut resp = next.run(req).await;
    if own {
        resp.headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    if st.cfg.access_log {
        tracing::info!(
            target: "xai_keys::access",
            client = %client,
            method = %method,
            path = %loggable_path(&norm),
            route = %route.template,
            status = resp.status().as_u16(),
            key = fingerprint.as_deref().unwrap_or("-"),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
    resp
}

/// A refused authentication, for its security event.
struct AuthFailure<'a> {
    client: IpAddr,
    method: &'a Method,
    route: &'a str,
    class: &'static str,
    reason: &'static str,
    key_id: Option<&'a xai_keys_core::token::KeyId>,
    now: f64,
}

/// `api_admin_auth_failure` on admin routes, `peer_auth_failure` on peer routes,
/// `api_auth_failure` elsewhere; throttled per client and reason so that one client hammering
/// the gateway makes one event a minute.
fn auth_event(st: &AppState, f: &AuthFailure<'_>) {
    let event_type = match f.class {
        "admin" => "api_admin_auth_failure",
        "peer" => "peer_auth_failure",
        _ => "api_auth_failure",
    };
    // Throttled per address bucket (an IPv6 client per /64, as the limiters count it), so
    // rotating addresses inside one network does not multiply the events.
    st.telemetry.emitter.emit_throttled(
        &format!("{event_type}|{}|{}", client_bucket(f.client), f.reason),
        event_type,
        Severity::Warning,
        f.now,
        json!({
            "reason": f.reason,
            "client": f.client.to_string(),
            "method": f.method.as_str(),
            "route": f.route,
            "route_class": f.class,
            "key_id": f.key_id.map(|k| k.as_str()),
        }),
    );
}

/// `/admin` and everything under it (what `XAI_ADMIN_ALLOWED_NETWORKS` and lockdown fence).
/// Bytes a path segment keeps as they are when a normalised path is written back for routing:
/// RFC 3986's unreserved characters. Everything else (`#`, `?`, `%`, spaces, non-ASCII, ...)
/// is percent-encoded, and the router's path extractor decodes it exactly once.
const SEGMENT_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A normalised (decoded) path, each segment percent-encoded again.
fn encode_path(norm: &str) -> String {
    if norm == "/" {
        return norm.to_string();
    }
    let mut out = String::with_capacity(norm.len() + 8);
    for seg in norm.split('/').skip(1) {
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(seg, SEGMENT_KEEP));
    }
    out
}

fn is_admin_path(norm: &str) -> bool {
    norm == "/admin" || norm.starts_with("/admin/")
}

/// The 403 for a client outside the admin networks: counted, logged, and an
/// `api_admin_network_refused` event (once a minute per client network).
fn admin_network_refused(
    st: &AppState,
    refusal: &crate::access::NetworkRefusal,
    method: &Method,
    route: &str,
    class: &'static str,
    started: Instant,
    now: f64,
) -> Response {
    let client = refusal.client;
    st.metrics.admin_network_refused(refusal.by);
    st.metrics.auth(
        "network_refused",
        "none",
        class,
        started.elapsed().as_secs_f64(),
    );
    tracing::warn!(target: "xai_keys::auth", client = %client, route, by = refusal.by, "request refused: client network not allowed on /admin/*");
    st.telemetry.emitter.emit_throttled(
        &format!("adminnet|{}|{}", client_bucket(client), refusal.by),
        "api_admin_network_refused",
        Severity::Warning,
        now,
        json!({
            "client": client.to_string(),
            "method": method.as_str(),
            "route": route,
            "by": refusal.by,
        }),
    );
    let message = if refusal.by == "lockdown" {
        format!(
            "an emergency lockdown is in force: /admin/* is served only to the lockdown's admin networks, and {client} is not in them (an operator on the host can run `xai-keys lockdown status`)"
        )
    } else {
        format!(
            "/admin/* is not served to {client}: it is outside the admin networks (XAI_ADMIN_ALLOWED_NETWORKS)"
        )
    };
    ApiError::new(StatusCode::FORBIDDEN, "admin_network_refused", message)
        .with_reason("network_refused")
        .into_response()
}

/// `api_rate_limited`, once a minute per limiter and client.
fn rate_limit_event(st: &AppState, limiter: &'static str, client: IpAddr, route: &str, now: f64) {
    st.telemetry.emitter.emit_throttled(
        &format!("rate|{limiter}|{}", client_bucket(client)),
        "api_rate_limited",
        Severity::Warning,
        now,
        json!({"limiter": limiter, "client": client.to_string(), "route": route}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_is_an_own_route_with_its_template() {
        for (m, p) in crate::openapi::OWN_ROUTES {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            let concrete = p.replace("{key_id}", "0123456789abcdef");
            let (_, name) = own_route(&method, &concrete).unwrap_or_else(|| panic!("{m} {p}"));
            assert_eq!(name, *p);
        }
        assert!(own_route(&Method::GET, "/admin/peers").is_none());
        assert!(own_route(&Method::POST, "/send").is_none());
    }

    #[test]
    fn normalised_paths_are_encoded_again_for_routing() {
        assert_eq!(encode_path("/"), "/");
        assert_eq!(encode_path("/admin/api-keys"), "/admin/api-keys");
        assert_eq!(encode_path("/admin/openapi.json"), "/admin/openapi.json");
        assert_eq!(encode_path("/a/b#c/rotate"), "/a/b%23c/rotate");
        assert_eq!(encode_path("/a/b?c/rotate"), "/a/b%3Fc/rotate");
        assert_eq!(encode_path("/a/100%/x y"), "/a/100%25/x%20y");
        assert_eq!(encode_path("/a/\u{b3}\u{da}"), "/a/%C2%B3%C3%9A");
        for p in ["/a/b#c/rotate", "/a/b?c", "/a/%25/x y", "/\u{b3}"] {
            let u: Uri = encode_path(p).parse().unwrap();
            assert_eq!(u.query(), None, "{p}");
            assert_eq!(normalize_path_with(u.path(), &[]).unwrap(), p);
        }
    }

    #[test]
    fn keys_pasted_into_paths_are_redacted_in_logs() {
        let k = "xai_m7sps0WHw9NlG6jX2ibw90RBCIxH6CBC817YbIbZ1ET2qHnjs";
        assert_eq!(
            loggable_path(&format!("/admin/api-keys/{k}/rotate")),
            "/admin/api-keys/<redacted>/rotate"
        );
        assert_eq!(loggable_path("/send"), "/send");
        assert_eq!(loggable_path("/"), "/");
        assert_eq!(
            loggable_path(&format!("/x/{}", "a".repeat(65))),
            "/x/<redacted>"
        );
    }
}
