//! The admin key API served by the gateway, plus `/health` and `/metrics`.
//!
//! Handlers validate everything before touching the store, run the core's locked
//! read-modify-write on the blocking pool (a gateway never writes a stale view back), then
//! reload the index before answering, so a key issued here works on the next request and a key
//! revoked here is refused by it. Every action is audited with the caller's key id and address.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use xai_keys_core::audit::{Actor, EventQuery};
use xai_keys_core::ops::{
    IssueRequest, KeyManager, MAX_LABEL_CHARS, MIN_PREFIX, RotateRequest, check_label,
    is_unsafe_text_char, listing_json_with_usage,
};
use xai_keys_core::policy::TtlRequest;
use xai_keys_core::scope::Scope;
use xai_keys_core::{Error as CoreError, TextField};

use crate::credentials::form_pairs;
use crate::error::{ApiError, success};
use crate::router::RequestContext;
use crate::state::AppState;

/// Largest `limit` of `GET /admin/api-key-events`.
pub const MAX_EVENTS_LIMIT: usize = 1000;

/// The smallest `expires_in_days` (one second); the OpenAPI document publishes the same number.
pub const MIN_TTL_DAYS: f64 = 1.0 / 86_400.0;
/// The smallest `expires_in_hours` (one second).
pub const MIN_TTL_HOURS: f64 = 1.0 / 3_600.0;
/// The largest `expires_in_days` or `expires_in_hours` given as a number (longer lifetimes are
/// clamped to the policy's maximum anyway; past this the expiry would overflow).
pub const MAX_TTL_NUMBER: f64 = 1e300;

/// A lifetime given as a string: a decimal of at least 1 (no sign, exponent, spaces or leading
/// zeros), as the handlers read it; published in the OpenAPI document.
pub const TTL_STRING_PATTERN: &str = r"^[1-9][0-9]{0,8}(\.[0-9]{1,9})?$";
/// `grace`: whole seconds, or a whole number with a unit (s, m, h, d, w).
pub const GRACE_PATTERN: &str = r"^(0|[1-9][0-9]{0,8})[smhdw]?$";
/// `if_idle`: as `grace`, but greater than zero.
pub const IF_IDLE_PATTERN: &str = r"^[1-9][0-9]{0,8}[smhdw]?$";
/// A change window's `duration`: a whole number with a unit from 1 minute to 7 days: 60 to
/// 604800 s, 1 to 10080 m, 1 to 168 h, 1 to 7 d or 1 w.
pub const WINDOW_DURATION_PATTERN: &str = concat!(
    r"^(?:(?:[6-9][0-9]|[1-9][0-9]{2,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)s",
    r"|(?:[1-9][0-9]{0,3}|100[0-7][0-9]|10080)m|(?:[1-9][0-9]?|1[0-5][0-9]|16[0-8])h|[1-7]d|1w)$"
);
/// `since` as epoch seconds.
pub const SINCE_EPOCH_PATTERN: &str = r"^[0-9]{1,12}(\.[0-9]{1,6})?$";
/// `since` as a duration ago.
/// One of `admin_networks` as CIDR: an IPv4 network (no leading zeros, prefix 0–32).
pub const IPV4_CIDR_PATTERN: &str = r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])$";
/// One of `admin_networks` as CIDR: an IPv6 network in hex groups (prefix 0–128).
pub const IPV6_CIDR_PATTERN: &str = concat!(
    r"^(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|",
    r"([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|",
    r"([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|",
    r"([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|",
    r":((:[0-9a-fA-F]{1,4}){1,7}|:))/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$"
);
pub const SINCE_AGO_PATTERN: &str = r"^(0|[1-9][0-9]{0,8})[smhdw]$";

/// Seconds per duration unit.
const UNITS: &[(char, f64)] = &[
    ('s', 1.0),
    ('m', 60.0),
    ('h', 3_600.0),
    ('d', 86_400.0),
    ('w', 604_800.0),
];

/// A duration in the gateway's one grammar: `0` or a whole number without leading zeros (at
/// most 9 digits), followed by one of `units` (or by none, meaning seconds, when `bare`).
/// Nothing else: no spaces, signs, fractions or compound forms, so that the published patterns
/// describe exactly what is accepted.
fn grammar_duration(raw: &str, units: &[(char, f64)], bare: bool) -> Option<f64> {
    let (digits, per) = match raw.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let per = units.iter().find(|(u, _)| *u == c)?.1;
            (&raw[..raw.len() - 1], per)
        }
        _ if bare => (raw, 1.0),
        _ => return None,
    };
    let ok = !digits.is_empty()
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'));
    if !ok {
        return None;
    }
    digits.parse::<u64>().ok().map(|n| n as f64 * per)
}

/// A decimal with `int` integer digits at most and an optional fraction of `frac` digits at
/// most: `^[0-9]{1,int}(\.[0-9]{1,frac})?$`.
fn is_plain_decimal(raw: &str, int: usize, frac: usize) -> bool {
    let (i, f) = match raw.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (raw, None),
    };
    let digits =
        |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    digits(i, int) && f.is_none_or(|f| digits(f, frac))
}

/// Free text (a label, a reason, a ticket) as it was sent: the core trims before it checks, so
/// a trailing newline or an overlong padded value would otherwise slip through. The published
/// schema says "at most 256 characters, none of them unsafe", and this makes it true.
fn raw_text(field: TextField, raw: &str) -> Result<(), ApiError> {
    let problem = if raw.chars().count() > MAX_LABEL_CHARS {
        format!("a {field} is at most {MAX_LABEL_CHARS} characters")
    } else if raw.chars().any(is_unsafe_text_char) {
        format!(
            "a {field} may not contain control characters (newlines, tabs, escapes) or Unicode bidirectional controls, not even at its start or end"
        )
    } else {
        return Ok(());
    };
    Err(CoreError::InvalidText { field, problem }.into())
}

fn actor(ctx: &RequestContext) -> Actor {
    Actor::Http {
        key_fingerprint: ctx
            .principal
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), |p| p.key_id.to_string()),
        remote: ctx.client.to_string(),
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ApiError::internal(what, e)),
    }
}

fn writable(st: &AppState) -> Result<(), ApiError> {
    let h = st.index.health();
    if h.is_ok() {
        Ok(())
    } else {
        Err(ApiError::store_unavailable(format!(
            "key changes are refused while the store is {}: {}",
            h.status,
            h.problem.unwrap_or_default()
        )))
    }
}

/// Reads a JSON object body: 415 for another media type, 413 over the limit, 400 otherwise.
async fn json_object(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    let limit = st.cfg.max_json_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit));
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON sent with Content-Type: application/json (got {:?})",
                if ct.is_empty() { "no Content-Type" } else { ct }
            ),
        ));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid_payload(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body exceeds {limit} bytes (XAI_API_MAX_JSON_BYTES)"),
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn only_fields(m: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid_payload(format!(
                "unknown field {k:?}; accepted fields: {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

fn opt_string(m: &Map<String, Value>, f: &str) -> Result<Option<String>, ApiError> {
    match m.get(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid_payload(format!(
            "{f} must be a string, not {}",
            kind(other)
        ))),
    }
}

fn opt_bool(m: &Map<String, Value>, f: &str) -> Result<Option<bool>, ApiError> {
    match m.get(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid_payload(format!(
            "{f} must be a JSON boolean (true or false), not {} ({other})",
            kind(other)
        ))),
    }
}

/// A lifetime in `f`'s unit (days or hours), at least `min` (one second): a JSON number up to
/// [`MAX_TTL_NUMBER`], or (as the reference) a decimal string matching [`TTL_STRING_PATTERN`].
fn opt_ttl(m: &Map<String, Value>, f: &str, min: f64) -> Result<Option<f64>, ApiError> {
    let x = match m.get(f) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => {
            return match s.parse::<f64>() {
                Ok(x) if is_plain_decimal(s, 9, 9) && !s.starts_with('0') => Ok(Some(x)),
                _ => Err(ApiError::invalid_payload(format!(
                    "Invalid {f}: must be a finite positive number, given as a JSON number or as a decimal string of at least 1 such as \"1.5\" (no sign, exponent or spaces)"
                ))),
            };
        }
        Some(other) => {
            return Err(ApiError::invalid_payload(format!(
                "Invalid {f}: must be a number, not {}",
                kind(other)
            )));
        }
    };
    if !x.is_finite() {
        return Err(ApiError::invalid_payload(format!(
            "Invalid {f}: must be a finite positive number"
        )));
    }
    if x <= 0.0 {
        return Err(ApiError::invalid_payload(format!(
            "TTL must be positive: {f} is {x}"
        )));
    }
    if x < min {
        return Err(ApiError::invalid_payload(format!(
            "TTL must be at least 1 second: {f} is too small"
        )));
    }
    if x > MAX_TTL_NUMBER {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("TTL out of range: {f} is at most {MAX_TTL_NUMBER:e}"),
        ));
    }
    Ok(Some(x))
}

/// TTL from `expires_in_days` (preferred, as the reference) or `expires_in_hours`, or
/// `permanent`.
fn ttl_from(m: &Map<String, Value>) -> Result<Option<TtlRequest>, ApiError> {
    let days = opt_ttl(m, "expires_in_days", MIN_TTL_DAYS)?;
    let hours = opt_ttl(m, "expires_in_hours", MIN_TTL_HOURS)?;
    let permanent = opt_bool(m, "permanent")?.unwrap_or(false);
    if permanent && (days.is_some() || hours.is_some()) {
        return Err(ApiError::invalid_payload(
            "permanent: true cannot be combined with expires_in_days or expires_in_hours",
        ));
    }
    Ok(if permanent {
        Some(TtlRequest::Permanent)
    } else if let Some(d) = days {
        Some(TtlRequest::Seconds(d * 86_400.0))
    } else {
        hours.map(|h| TtlRequest::Seconds(h * 3_600.0))
    })
}

fn scope_from(m: &Map<String, Value>) -> Result<Option<Scope>, ApiError> {
    match opt_string(m, "scope")? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.parse::<Scope>().map(Some).map_err(|_| {
            ApiError::invalid_payload(format!(
                "Invalid scope {s:?}: valid scopes are user, operator, auditor, admin"
            ))
        }),
    }
}

/// A duration string in the gateway's grammar ([`GRACE_PATTERN`]): whole seconds, or a whole
/// number with a unit such as `15m`, `24h`, `7d`.
fn duration_secs(f: &str, raw: &str) -> Result<f64, ApiError> {
    grammar_duration(raw, UNITS, true).ok_or_else(|| {
        ApiError::invalid_payload(format!(
            "{f} {raw:?} is not a duration: use whole seconds or a whole number with a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"
        ))
    })
}

/// The `{key_id}` path parameter: a full id or a prefix of at least [`MIN_PREFIX`] hex
/// characters. Anything else is refused without repeating it: a plaintext key pasted where its
/// id belongs must not be echoed back (the core's message quotes what it was given).
fn key_id_param(given: &str) -> Result<String, ApiError> {
    // Not trimmed: the published pattern has no room for spaces, so none are accepted.
    let g = given;
    if (MIN_PREFIX..=64).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(g.to_string());
    }
    Err(ApiError::bad_request(
        "invalid_key_id",
        format!(
            "the path must name a key by its id: the full 64-character key id or a prefix of at least {MIN_PREFIX} hex characters (see GET /admin/api-keys); never the key itself"
        ),
    ))
}

fn query_map(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in form_pairs(raw.unwrap_or("")) {
        if k == "api_key" {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown query parameter {k:?}; accepted: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {k:?} is given more than once"),
            ));
        }
    }
    Ok(out)
}

fn plaintext_response(status: StatusCode, v: Value) -> Response {
    let mut r = success(status, v);
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn record(st: &AppState, op: &'static str, r: &Result<Response, ApiError>) {
    st.metrics
        .admin_op(op, if r.is_ok() { "ok" } else { "error" });
}

// ---- handlers ----

pub async fn health(State(st): State<AppState>) -> Response {
    let h = st.index.health();
    let status = if h.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "success": h.is_ok(),
        "status": if h.is_ok() { "ok" } else { "degraded" },
        "store": {
            "location": st.store.location(),
            "status": h.status,
            "problem": h.problem,
            "integrity": h.integrity,
            "keys": h.keys,
            "last_reload": h.last_reload,
            "reloads": h.reloads,
            "failed_reloads": h.failed_reloads,
            "warnings": h.warnings,
            "stale_for_secs": h.stale_for_secs,
            "max_staleness_secs": h.max_staleness_secs,
        },
        "upstream": st.upstream.as_ref().map(|u| u.url()),
        // A lockdown requires keys everywhere; the networks it allows are not shown here
        // (health is public): see GET /admin/lockdown.
        "auth_required": st.cfg.auth_required || st.access.lockdown_active(),
        "lockdown": st.access.lockdown_active(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, axum::Json(body)).into_response()
}

pub async fn metrics(State(st): State<AppState>) -> Response {
    if !st.metrics.enabled() {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are disabled on this gateway (XAI_METRICS=0)",
        )
        .into_response();
    }
    let now = st.now();
    let health = st.index.health();
    let inventory = crate::metrics::Inventory::of(&st.index.load(), now);
    let sinks = st.telemetry.sink_views();
    let peer_keys: Vec<(&'static str, String)> = st
        .peers
        .ring()
        .keys()
        .map(|(role, k)| (role, k.fingerprint().to_string()))
        .collect();
    let text = st.metrics.render(&crate::metrics::ScrapeInputs {
        health: &health,
        inventory: &inventory,
        sinks: &sinks,
        window: st.telemetry.window(),
        window_required: st.telemetry.window_required(),
        audit_chain_ok: st.telemetry.audit_chain_ok(),
        uncommitted: st.telemetry.uncommitted(),
        peer_keys: &peer_keys,
        now,
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

pub async fn openapi(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::document_for(st.cfg.ttl.allow_permanent).to_string(),
    )
        .into_response()
}

pub async fn list_keys(State(st): State<AppState>) -> Result<Response, ApiError> {
    let st2 = st.clone();
    blocking("listing keys", move || {
        let now = st2.now();
        let m = KeyManager::new(st2.store.as_ref(), st2.cfg.ttl);
        let (keys, warnings, _) = m.list(&Default::default(), now)?;
        let (usage, usage_warning) = match st2.store.usage() {
            Ok(mut u) => {
                xai_keys_core::usage::merge(&mut u, &st2.usage.snapshot());
                (u, None)
            }
            Err(e) => (st2.usage.snapshot(), Some(e.to_string())),
        };
        let served = (!st2.index.health().is_ok()).then(|| st2.index.load_full());
        let mut store = Map::new();
        for k in &keys {
            let mut j = listing_json_with_usage(k, usage.get(k.key_id.as_str()), now);
            // While the store does not match its log the gateway enforces only restrictions:
            // say, per key, whether it currently authenticates here.
            if let (Some(idx), Some(o)) = (&served, j.as_object_mut()) {
                o.insert(
                    "accepted_by_gateway".into(),
                    idx.get(&k.key_id).is_some().into(),
                );
            }
            store.insert(k.key_id.to_string(), j);
        }
        let mut warnings = warnings;
        warnings.extend(usage_warning);
        // Keys from the environment this gateway serves: by hash only, as the reference's
        // "manual" keys (counted there), and listed with `source: env`.
        let idx = st2.index.load_full();
        let (mut manual_user, mut manual_admin) = (0, 0);
        let env_entries = (!st2.cfg.env_keys.is_empty())
            .then(|| idx.env_entries())
            .into_iter()
            .flatten();
        for e in env_entries {
            if e.scope == xai_keys_core::scope::Scope::Admin {
                manual_admin += 1;
            } else {
                manual_user += 1;
            }
            let var = e.env_var.unwrap_or("");
            let j = xai_keys_core::envkeys::listing_json(
                e.scope,
                var,
                &format!("env:{var}"),
                usage.get(e.key_id.as_str()),
            );
            store.insert(e.key_id.to_string(), j);
        }
        if manual_user + manual_admin > 0 {
            warnings.push(format!(
                "{} key(s) come from this gateway's environment (source: env): they never expire and cannot be revoked; move them into the store with `xai-keys import-env`",
                manual_user + manual_admin
            ));
        }
        Ok(success(
            StatusCode::OK,
            json!({
                "manual_keys": manual_user,
                "manual_admin_keys": manual_admin,
                "store": store,
                "store_status": st2.index.health(),
                "warnings": warnings,
            }),
        ))
    })
    .await
}

pub async fn issue_key(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = async {
        let m = json_object(&st, &headers, body).await?;
        only_fields(
            &m,
            &[
                "label",
                "scope",
                "permanent",
                "expires_in_days",
                "expires_in_hours",
            ],
        )?;
        let label = opt_string(&m, "label")?.unwrap_or_default();
        // Validated before the store-health check: a bad request is a 400 whatever the store's state.
        raw_text(TextField::Label, &label)?;
        check_label(&label)?;
        let scope = scope_from(&m)?.unwrap_or(Scope::User);
        let ttl = ttl_from(&m)?.unwrap_or(TtlRequest::Default);
        writable(&st)?;
        let st2 = st.clone();
        blocking("issuing a key", move || {
            let now = st2.now();
            let mgr = KeyManager::new(st2.store.as_ref(), st2.cfg.ttl);
            let issued = mgr.issue(
                IssueRequest {
                    scope,
                    label,
                    ttl,
                    secret: None,
                },
                &actor(&ctx),
                now,
            )?;
            st2.index
                .refresh_after_commit(st2.store.as_ref(), st2.now());
            let r = &issued.info.record;
            Ok(plaintext_response(
                StatusCode::CREATED,
                json!({
                    "api_key": issued.plaintext.expose(),
                    "key_id": issued.info.key_id.as_str(),
                    "scope": r.scope.as_str(),
                    "label": r.label,
                    "expires_at": r.expires_at,
                    "permanent": r.permanent,
                    "fingerprint": issued.info.key_id.fingerprint(),
                    "ttl_clamped": issued.clamped,
                }),
            ))
        })
        .await
    }
    .await;
    record(&st, "issue", &r);
    r
}

pub async fn revoke_key(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Path(key_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = async {
        let key_id = key_id_param(&key_id)?;
        let q = query_map(q.as_deref(), &["if_idle", "reason"])?;
        let if_idle = q
            .get("if_idle")
            .map(|v| duration_secs("if_idle", v))
            .transpose()?;
        if if_idle == Some(0.0) {
            return Err(ApiError::invalid_payload("if_idle must be positive"));
        }
        let reason = q.get("reason").cloned();
        if let Some(r) = &reason {
            raw_text(TextField::Reason, r)?;
        }
        // A key from this gateway's environment is not the store's to revoke. (The index is
        // scanned only when the environment holds keys at all.)
        if !st.cfg.env_keys.is_empty()
            && let Some(e) = st
            .index
            .load()
            .env_entries()
            .find(|e| key_id.len() >= 12 && e.key_id.as_str().starts_with(key_id.as_str()))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "env_key",
                format!(
                    "key {} comes from {} in this gateway's environment, not from the store: it cannot be revoked here. Remove it from the environment and restart the gateway (or move it into the store first with `xai-keys import-env`, then revoke it)",
                    e.key_id.fingerprint(),
                    e.env_var.unwrap_or("the environment")
                ),
            ));
        }
        writable(&st)?;
        let st2 = st.clone();
        blocking("revoking a key", move || {
            let now = st2.now();
            let mgr = KeyManager::new(st2.store.as_ref(), st2.cfg.ttl);
            let recent = st2.usage.snapshot();
            let info = mgr.revoke_guarded(
                &key_id,
                reason.as_deref(),
                if_idle,
                Some(&recent),
                &actor(&ctx),
                now,
            )?;
            st2.index
                .refresh_after_commit(st2.store.as_ref(), st2.now());
            Ok(success(
                StatusCode::OK,
                json!({
                    "revoked": true,
                    "key_id": info.key_id.as_str(),
                    "scope": info.record.scope.as_str(),
                    "label": info.record.label,
                }),
            ))
        })
        .await
    }
    .await;
    record(&st, "revoke", &r);
    r
}

pub async fn rotate_key(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = async {
        let key_id = key_id_param(&key_id)?;
        let m = json_object(&st, &headers, body).await?;
        only_fields(
            &m,
            &[
                "grace",
                "label",
                "scope",
                "permanent",
                "expires_in_days",
                "expires_in_hours",
            ],
        )?;
        let grace_secs = match m.get("grace") {
            None | Some(Value::Null) => 0.0,
            Some(Value::String(s)) => duration_secs("grace", s)?,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(g) if g.is_finite() && g >= 0.0 => g,
                _ => {
                    return Err(ApiError::invalid_payload(
                        "grace must be zero or positive and finite",
                    ));
                }
            },
            Some(other) => {
                return Err(ApiError::invalid_payload(format!(
                    "grace must be seconds or a duration string such as \"24h\", not {}",
                    kind(other)
                )));
            }
        };
        // An empty label is "not given" (inherit), as an empty scope is.
        let label = opt_string(&m, "label")?;
        if let Some(l) = &label {
            raw_text(TextField::Label, l)?;
        }
        let label = label.filter(|l| !l.trim().is_empty());
        if let Some(l) = &label {
            check_label(l)?;
        }
        let req = RotateRequest {
            grace_secs,
            scope: scope_from(&m)?,
            label,
            ttl: ttl_from(&m)?,
        };
        writable(&st)?;
        let st2 = st.clone();
        blocking("rotating a key", move || {
            let now = st2.now();
            let mgr = KeyManager::new(st2.store.as_ref(), st2.cfg.ttl);
            let rot = mgr.rotate(&key_id, req, &actor(&ctx), now)?;
            st2.index
                .refresh_after_commit(st2.store.as_ref(), st2.now());
            let r = &rot.new.info.record;
            Ok(plaintext_response(
                StatusCode::CREATED,
                json!({
                    "api_key": rot.new.plaintext.expose(),
                    "key_id": rot.new.info.key_id.as_str(),
                    "scope": r.scope.as_str(),
                    "label": r.label,
                    "expires_at": r.expires_at,
                    "permanent": r.permanent,
                    "ttl_clamped": rot.new.clamped,
                    "old_key_id": rot.old_key_id.as_str(),
                    "old_expires_at": rot.old_expires_at,
                    "grace_seconds": grace_secs,
                }),
            ))
        })
        .await
    }
    .await;
    record(&st, "rotate", &r);
    r
}

async fn set_disabled(
    st: AppState,
    ctx: RequestContext,
    key_id: String,
    disabled: bool,
) -> Result<Response, ApiError> {
    let r = set_disabled_inner(st.clone(), ctx, key_id, disabled).await;
    record(&st, if disabled { "disable" } else { "enable" }, &r);
    r
}

async fn set_disabled_inner(
    st: AppState,
    ctx: RequestContext,
    key_id: String,
    disabled: bool,
) -> Result<Response, ApiError> {
    let key_id = key_id_param(&key_id)?;
    writable(&st)?;
    let st2 = st.clone();
    blocking("changing a key", move || {
        let now = st2.now();
        let mgr = KeyManager::new(st2.store.as_ref(), st2.cfg.ttl);
        let info = mgr.set_disabled(&key_id, disabled, &actor(&ctx), now)?;
        st2.index
            .refresh_after_commit(st2.store.as_ref(), st2.now());
        Ok(success(
            StatusCode::OK,
            json!({
                "key_id": info.key_id.as_str(),
                "state": info.state.as_str(),
                "disabled": info.record.disabled,
            }),
        ))
    })
    .await
}

pub async fn disable_key(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(st, ctx, key_id, true).await
}

pub async fn enable_key(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(st, ctx, key_id, false).await
}

pub async fn events(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_map(q.as_deref(), &["limit", "action", "key_id", "since"])?;
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_EVENTS_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("limit {v:?} must be a whole number from 1 to {MAX_EVENTS_LIMIT}"),
                ));
            }
        },
    };
    let now = st.now();
    let since = q.get("since").map(|v| since_from(v, now)).transpose()?;
    let query = EventQuery {
        limit,
        action: q.get("action").map(|s| s.trim().to_string()),
        key_id: q.get("key_id").map(|s| s.trim().to_ascii_lowercase()),
        since,
    };
    let st2 = st.clone();
    blocking("reading audit events", move || {
        let page = st2.store.events(&query)?;
        Ok(success(StatusCode::OK, json!({ "events": page.events })))
    })
    .await
}

/// `since`: epoch seconds ([`SINCE_EPOCH_PATTERN`]), a duration ago ([`SINCE_AGO_PATTERN`]) or
/// an RFC 3339 time. The core reads more forms (spaces, fractions of a unit, compound
/// durations); the API takes exactly what its document describes.
fn since_from(v: &str, now: f64) -> Result<f64, ApiError> {
    if let Some(ago) = grammar_duration(v, UNITS, false) {
        return Ok(now - ago);
    }
    let rfc3339_shape = v.len() >= 20
        && v.is_char_boundary(10)
        && matches!(v.as_bytes()[10], b'T' | b't')
        && v.as_bytes()[..4].iter().all(u8::is_ascii_digit);
    if is_plain_decimal(v, 12, 6) || rfc3339_shape {
        return xai_keys_core::audit::parse_since(v, now)
            .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()));
    }
    Err(ApiError::bad_request(
        "invalid_query",
        format!(
            "since {v:?}: use an RFC 3339 time (2026-01-31T12:00:00Z), epoch seconds, or a duration ago such as 2h"
        ),
    ))
}

// ---- change windows ----

pub async fn window_status(State(st): State<AppState>) -> Result<Response, ApiError> {
    let st2 = st.clone();
    blocking("reading the change window", move || {
        let now = st2.now();
        let w = st2.store.change_window()?;
        let mut v = w.map_or_else(|| json!({"open": false}), |w| w.to_json(now));
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "required".into(),
                st2.cfg.telemetry.require_change_window.into(),
            );
        }
        Ok(success(StatusCode::OK, json!({"window": v})))
    })
    .await
}

/// `POST /admin/change-window` `{"ticket": "CHG-1", "duration": "2h" | "duration_seconds": 7200, "reason": "…"}`.
pub async fn window_open(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = window_open_inner(st.clone(), ctx, headers, body).await;
    record(&st, "window_open", &r);
    r
}

async fn window_open_inner(
    st: AppState,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = json_object(&st, &headers, body).await?;
    only_fields(&m, &["ticket", "reason", "duration", "duration_seconds"])?;
    let ticket = opt_string(&m, "ticket")?.ok_or_else(|| {
        ApiError::invalid_payload("\"ticket\" is required: the change request id, such as CHG-123")
    })?;
    let reason = opt_string(&m, "reason")?.unwrap_or_default();
    raw_text(TextField::Ticket, &ticket)?;
    raw_text(TextField::Reason, &reason)?;
    let secs = match (m.get("duration"), m.get("duration_seconds")) {
        (Some(Value::String(d)), None) => grammar_duration(d, UNITS, false)
            .ok_or_else(|| {
                ApiError::invalid_payload(format!(
                    "\"duration\" {d:?} is not a duration such as 30m, 2h or 1d: a whole number with a unit (s, m, h, d, w), from 60 s to 7 days"
                ))
            })?,
        (None, Some(Value::Number(n))) => n.as_f64().unwrap_or(f64::NAN),
        (None, None) => {
            return Err(ApiError::invalid_payload(
                "give \"duration\" (such as \"2h\") or \"duration_seconds\"",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_payload(
                "give either \"duration\" or \"duration_seconds\", not both",
            ));
        }
        (Some(_), None) => {
            return Err(ApiError::invalid_payload(
                "\"duration\" must be a string such as \"2h\"",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_payload(
                "\"duration_seconds\" must be a number",
            ));
        }
    };
    writable(&st)?;
    let st2 = st.clone();
    blocking("opening a change window", move || {
        let now = st2.now();
        let w = xai_keys_core::window::open(
            st2.store.as_ref(),
            &xai_keys_core::window::OpenWindow {
                ticket,
                reason,
                duration_secs: secs,
            },
            &actor(&ctx),
            now,
        )?;
        Ok(success(
            StatusCode::CREATED,
            json!({"window": w.to_json(now)}),
        ))
    })
    .await
}

/// `DELETE /admin/change-window?reason=…`: closes the open window early.
pub async fn window_close(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_map(q.as_deref(), &["reason"])?;
    let reason = q.get("reason").cloned().unwrap_or_default();
    raw_text(TextField::Reason, &reason)?;
    writable(&st)?;
    let st2 = st.clone();
    let r = blocking("closing a change window", move || {
        let now = st2.now();
        match xai_keys_core::window::close(st2.store.as_ref(), &reason, &actor(&ctx), now)? {
            Some(w) => {
                let mut v = w.to_json(now);
                if let Some(o) = v.as_object_mut() {
                    o.insert("open".into(), false.into());
                    o.insert("remaining_seconds".into(), 0.into());
                }
                Ok(success(StatusCode::OK, json!({"closed": true, "window": v})))
            }
            None => Ok(success(
                StatusCode::OK,
                json!({"closed": false, "window": {"open": false}, "message": "no change window is open"}),
            )),
        }
    })
    .await;
    record(&st, "window_close", &r);
    r
}

// ---- emergency lockdown ----

/// `GET /admin/lockdown`: the lockdown in force (as this gateway applies it) and the admin
/// network allow-list.
pub async fn lockdown_status(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(success(StatusCode::OK, st.access.status_json()))
}

/// `POST /admin/lockdown` `{"reason": "…", "ticket": "INC-1", "admin_networks": ["10.8.0.0/16"]}`:
/// turns lockdown on (or replaces the one in force) for every gateway on the store.
pub async fn lockdown_on(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = lockdown_on_inner(st.clone(), ctx, headers, body).await;
    record(&st, "lockdown_on", &r);
    r
}

async fn lockdown_on_inner(
    st: AppState,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = json_object(&st, &headers, body).await?;
    only_fields(&m, &["reason", "ticket", "admin_networks"])?;
    let reason = opt_string(&m, "reason")?
        .ok_or_else(|| ApiError::invalid_payload("\"reason\" is required: what the incident is"))?;
    let ticket = opt_string(&m, "ticket")?.unwrap_or_default();
    raw_text(TextField::Reason, &reason)?;
    raw_text(TextField::Ticket, &ticket)?;
    let admin_networks = match m.get("admin_networks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v.as_str() {
                // As sent: no surrounding space (the document's patterns have none).
                Some(n) if n.trim() == n && !n.is_empty() => Ok(n.to_string()),
                _ => Err(ApiError::invalid_payload(
                    "\"admin_networks\" must be a list of CIDR strings such as \"10.8.0.0/16\" or addresses, without spaces",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid_payload(format!(
                "\"admin_networks\" must be a list of CIDR strings, not {}",
                kind(v)
            )));
        }
    };
    let st2 = st.clone();
    blocking("turning lockdown on", move || {
        let now = st2.now();
        let l = xai_keys_core::lockdown::engage(
            st2.store.as_ref(),
            &xai_keys_core::lockdown::EngageLockdown {
                reason,
                ticket,
                admin_networks,
            },
            &actor(&ctx),
            now,
        )?;
        // In force here at once; the other gateways follow within a poll.
        st2.access.poll_lockdown(st2.store.as_ref());
        st2.metrics.set_lockdown(st2.access.lockdown_active());
        Ok(success(
            StatusCode::CREATED,
            json!({"lockdown": l.to_json()}),
        ))
    })
    .await
}

/// `DELETE /admin/lockdown?reason=…`: turns lockdown off.
pub async fn lockdown_off(
    State(st): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_map(q.as_deref(), &["reason"])?;
    let reason = q.get("reason").cloned().unwrap_or_default();
    raw_text(TextField::Reason, &reason)?;
    let st2 = st.clone();
    let r = blocking("turning lockdown off", move || {
        let now = st2.now();
        let was = xai_keys_core::lockdown::release(st2.store.as_ref(), &reason, &actor(&ctx), now)?;
        st2.access.poll_lockdown(st2.store.as_ref());
        st2.metrics.set_lockdown(st2.access.lockdown_active());
        Ok(match was {
            Some(l) => success(
                StatusCode::OK,
                json!({"released": true, "lockdown": {"active": false, "was": l.to_json()}}),
            ),
            None => success(
                StatusCode::OK,
                json!({"released": false, "lockdown": {"active": false}, "message": "no lockdown is in force"}),
            ),
        })
    })
    .await;
    record(&st, "lockdown_off", &r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn issue_fields_are_strict() {
        assert!(opt_bool(&obj(json!({"permanent": "false"})), "permanent").is_err());
        assert_eq!(
            opt_bool(&obj(json!({"permanent": false})), "permanent").unwrap(),
            Some(false)
        );
        let days = |v: Value| {
            opt_ttl(
                &obj(json!({ "expires_in_days": v })),
                "expires_in_days",
                MIN_TTL_DAYS,
            )
        };
        for bad in [
            json!("inf"),
            json!("nan"),
            json!(0),
            json!([1]),
            json!(" 2"),
            json!("+2"),
            json!("1e3"),
            json!("0.5"),
            json!("02"),
            json!(1e301),
            json!(MIN_TTL_DAYS / 2.0),
        ] {
            assert!(days(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(days(json!("2.5")).unwrap(), Some(2.5));
        assert_eq!(days(json!(MIN_TTL_DAYS)).unwrap(), Some(MIN_TTL_DAYS));
        assert_eq!(days(json!(MAX_TTL_NUMBER)).unwrap(), Some(MAX_TTL_NUMBER));
        assert!(ttl_from(&obj(json!({"permanent": true, "expires_in_days": 1}))).is_err());
        assert!(ttl_from(&obj(json!({"expires_in_hours": 1e-300}))).is_err());
        assert!(scope_from(&obj(json!({"scope": "root"}))).is_err());
        assert_eq!(
            scope_from(&obj(json!({"scope": " ADMIN "}))).unwrap(),
            Some(Scope::Admin)
        );
        assert_eq!(scope_from(&obj(json!({"scope": ""}))).unwrap(), None);
        assert!(only_fields(&obj(json!({"lable": "x"})), &["label"]).is_err());
    }

    #[test]
    fn durations_and_queries() {
        assert_eq!(duration_secs("g", "1w").unwrap(), 604_800.0);
        assert_eq!(duration_secs("g", "0").unwrap(), 0.0);
        for bad in [
            "", " 15m", "15m ", "1h30m", "1.5h", "015m", "15 m", "15min", "+5", "1e3",
        ] {
            assert!(duration_secs("g", bad).is_err(), "{bad:?}");
        }
        for (d, ok) in [
            ("1m", true),
            ("10080m", true),
            ("10081m", false),
            ("168h", true),
            ("7d", true),
            ("1w", true),
            ("2w", false),
            ("59s", false),
            ("604800s", true),
            ("604801s", false),
            ("60s", true),
            ("60", false),
        ] {
            assert_eq!(
                grammar_duration(d, UNITS, false).is_some_and(|s| (60.0..=604_800.0).contains(&s)),
                ok,
                "{d}"
            );
        }
        assert!(
            is_plain_decimal("1234.5", 12, 6)
                && !is_plain_decimal("1.", 12, 6)
                && !is_plain_decimal(".5", 12, 6)
        );
        assert_eq!(duration_secs("g", "15m").unwrap(), 900.0);
        assert_eq!(duration_secs("g", "30").unwrap(), 30.0);
        assert!(duration_secs("g", "-1").is_err());
        assert!(duration_secs("g", "soon").is_err());
        assert!(query_map(Some("limit=1&limit=2"), &["limit"]).is_err());
        assert!(query_map(Some("lmit=1"), &["limit"]).is_err());
        assert_eq!(
            query_map(Some("limit=5&api_key=x"), &["limit"])
                .unwrap()
                .len(),
            1
        );
    }
}
