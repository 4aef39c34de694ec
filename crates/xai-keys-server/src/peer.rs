//! Peer routes: signed gossip between validators, checked against the peer key ring.
//!
//! Once a peer key is configured, a route the policy marks `peer` is decided here and never by
//! a user key: a request signed with a key of the ring ([`xai_keys_core::peer`]) is accepted,
//! the reference's `X-API-Key: <peer key>` only while `XAI_PEER_ACCEPT_LEGACY=1`, anything else
//! is refused with its own reason code (response, `peer_auth_failure` event,
//! `xai_peer_auth_total{result, key}`). Without a peer key, peer routes behave as before (user
//! keys), so that upgrading a node does not stop its gossip.
//!
//! The ring comes from the environment or from `XAI_PEER_KEYRING_FILE`, re-read when the file
//! changes (polled every second) and on SIGHUP, so a rotation needs no restart. The key is
//! never written anywhere by the gateway.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use xai_keys_core::events::Severity;
use xai_keys_core::peer::{
    HEADERS, KeyRing, NonceCache, PeerRefusal, RequestParts, VerifiedPeer, VerifyPolicy,
    verify_peer_request,
};

use crate::config::ConfigError;
use crate::error::ApiError;
use crate::ratelimit::client_bucket;
use crate::relock;
use crate::state::AppState;

/// Peer settings (`XAI_PEER_*`).
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The ring (from the environment or, at start, from the keyring file).
    pub ring: KeyRing,
    /// `XAI_PEER_KEYRING_FILE`.
    pub keyring_file: Option<PathBuf>,
    /// `XAI_PEER_ACCEPT_LEGACY` (off): accept the peer key in `X-API-Key` on peer routes.
    pub accept_legacy: bool,
    pub policy: VerifyPolicy,
    /// `XAI_PEER_NONCE_CAPACITY` (1000000): nonces remembered at most (a sustained
    /// capacity / `XAI_PEER_NONCE_TTL_SECONDS` signed requests per second: 3,333 by default).
    pub nonce_capacity: usize,
    /// `XAI_P2P_DISABLE_SECURITY_EVENTS` (off): no `peer_auth_failure` events (the refusals are
    /// still counted in `xai_peer_auth_total`). Other security events are not affected (the
    /// reference's flag silenced all of them: defect S).
    pub disable_events: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            ring: KeyRing::default(),
            keyring_file: None,
            accept_legacy: false,
            policy: VerifyPolicy::default(),
            nonce_capacity: 1_000_000,
            disable_events: false,
        }
    }
}

impl PeerConfig {
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = PeerConfig::default();
        use crate::config::{flag, num};
        let (ring, keyring_file) =
            KeyRing::resolve(lookup).map_err(|e| ConfigError(e.to_string()))?;
        Ok(PeerConfig {
            disable_events: flag(lookup, "XAI_P2P_DISABLE_SECURITY_EVENTS", d.disable_events)?,
            ring,
            keyring_file,
            accept_legacy: flag(lookup, "XAI_PEER_ACCEPT_LEGACY", d.accept_legacy)?,
            policy: VerifyPolicy {
                max_skew_secs: num(lookup, "XAI_PEER_MAX_SKEW_SECONDS", 60, 1, 3600)?,
                nonce_ttl_secs: num(lookup, "XAI_PEER_NONCE_TTL_SECONDS", 300, 1, 86_400)?,
            },
            nonce_capacity: num(
                lookup,
                "XAI_PEER_NONCE_CAPACITY",
                d.nonce_capacity,
                1000,
                100_000_000,
            )?,
        })
    }
}

/// The running peer authentication: the ring (swapped whole on reload) and the nonce memory.
pub struct PeerAuth {
    ring: ArcSwap<KeyRing>,
    nonces: NonceCache,
    policy: VerifyPolicy,
    accept_legacy: bool,
    disable_events: bool,
    file: Option<PathBuf>,
    /// What the keyring file looked like at the last read (device, inode, size, mtime).
    file_stamp: std::sync::Mutex<Option<FileStamp>>,
    /// Last use per (fingerprint, sending node), for `xai-keys peer status`.
    usage: std::sync::Mutex<PeerUsage>,
    /// Serialises reloads (the keyring watcher and SIGHUP).
    reload_lock: std::sync::Mutex<()>,
}

/// Format name of the peer-usage file.
pub const PEER_USAGE_FORMAT: &str = "xai-keys-peer-usage/1";

/// When each peer last used each key: `<store>.peer-usage`, written by the gateway with its
/// last-use flush, read by `xai-keys peer status`. Statistics only (no secret, not audited).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerUsage {
    /// fingerprint → node id → use.
    pub keys: std::collections::BTreeMap<String, std::collections::BTreeMap<String, PeerUse>>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerUse {
    pub last_used: f64,
    pub count: u64,
}

/// Most (fingerprint, node) pairs remembered: node ids come from senders that proved the key,
/// but a bound keeps a misbehaving peer from growing the file without end.
const MAX_PEER_USES: usize = 10_000;

impl PeerUsage {
    fn record(&mut self, fp: &str, node: &str, now: f64) {
        let n = self.keys.values().map(|m| m.len()).sum::<usize>();
        let per_key = self.keys.entry(fp.to_string()).or_default();
        match per_key.get_mut(node) {
            Some(u) => {
                u.last_used = u.last_used.max(now);
                u.count = u.count.saturating_add(1);
            }
            None if n < MAX_PEER_USES => {
                per_key.insert(
                    node.to_string(),
                    PeerUse {
                        last_used: now,
                        count: 1,
                    },
                );
            }
            None => return,
        }
        self.dirty = true;
    }

    /// Reads the file (`None` when it does not exist).
    pub fn read(path: &std::path::Path) -> Result<Option<Self>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a peer-usage file ({e}); it only holds statistics and can be deleted",
                path.display()
            )
        })?;
        if v.get("format").and_then(serde_json::Value::as_str) != Some(PEER_USAGE_FORMAT) {
            return Err(format!(
                "{} is not a peer-usage file (format {PEER_USAGE_FORMAT}); it only holds statistics and can be deleted",
                path.display()
            ));
        }
        serde_json::from_value(v).map(Some).map_err(|e| {
            format!(
                "{} is damaged: {e}; it only holds statistics and can be deleted",
                path.display()
            )
        })
    }
}

/// Device, inode, size and modification time (seconds, nanoseconds) of a file.
type FileStamp = (u64, u64, u64, i64, i64);

fn stamp(p: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

impl PeerAuth {
    pub fn new(cfg: &PeerConfig) -> Self {
        PeerAuth {
            ring: ArcSwap::from_pointee(cfg.ring.clone()),
            nonces: NonceCache::new(cfg.nonce_capacity),
            policy: cfg.policy,
            accept_legacy: cfg.accept_legacy,
            disable_events: cfg.disable_events,
            file_stamp: std::sync::Mutex::new(cfg.keyring_file.as_deref().and_then(stamp)),
            file: cfg.keyring_file.clone(),
            usage: std::sync::Mutex::new(PeerUsage::default()),
            reload_lock: std::sync::Mutex::new(()),
        }
    }

    /// Starts from what an earlier run recorded in `path` (a damaged file is replaced).
    pub fn load_usage(&self, path: &std::path::Path) {
        match PeerUsage::read(path) {
            Ok(Some(u)) => *relock(&self.usage) = u,
            Ok(None) => {}
            Err(e) => tracing::warn!(problem = %e, "peer usage starts afresh"),
        }
    }

    /// Writes the peer usage to `path` when something changed (atomically, 0600).
    pub fn flush_usage(&self, path: &std::path::Path, now: f64) -> std::io::Result<()> {
        use std::io::Write;
        let mut u = relock(&self.usage);
        if !u.dirty {
            return Ok(());
        }
        let mut v = serde_json::to_value(&*u).map_err(std::io::Error::other)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("format".into(), PEER_USAGE_FORMAT.into());
            o.insert("updated".into(), now.into());
        }
        use atomic_write_file::unix::OpenOptionsExt as _;
        let mut opts = atomic_write_file::AtomicWriteFile::options();
        opts.preserve_mode(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path)?;
        f.write_all(v.to_string().as_bytes())?;
        f.commit()?;
        u.dirty = false;
        Ok(())
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    pub fn keyring_file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// Re-reads the keyring file (SIGHUP, or a change seen by [`PeerAuth::poll_file`]). A file
    /// that cannot be read or parsed leaves the current ring in place: `Err` says why.
    /// `Ok(false)` without a keyring file.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(f) = &self.file else {
            return Ok(false);
        };
        // One reload at a time (the watcher and SIGHUP): the ring and the stamp stored
        // together, so an older read can never overwrite a newer one.
        let _one = relock(&self.reload_lock);
        let st = stamp(f);
        let ring = KeyRing::from_file(f).map_err(|e| e.to_string())?;
        let fps: Vec<String> = ring
            .keys()
            .map(|(role, k)| format!("{role}={}", k.fingerprint()))
            .collect();
        self.ring.store(Arc::new(ring));
        *relock(&self.file_stamp) = st;
        tracing::info!(file = %f.display(), keys = ?fps, "peer key ring loaded");
        Ok(true)
    }

    /// Reloads when the keyring file changed since the last read (a few `stat` calls).
    pub fn poll_file_counted(&self, metrics: &crate::metrics::Metrics) {
        if !self.poll_file() {
            metrics.keyring_reload_failed();
        }
    }

    /// Reloads when the keyring file changed since the last read (a few `stat` calls); `false`
    /// when it changed but cannot be used (the previous ring stays in force).
    pub fn poll_file(&self) -> bool {
        let Some(f) = &self.file else {
            return true;
        };
        let now = stamp(f);
        if now == *relock(&self.file_stamp) {
            return true;
        }
        if let Err(e) = self.reload() {
            let _one = relock(&self.reload_lock);
            // Logged once per change of the file, not at every poll.
            *relock(&self.file_stamp) = now;
            tracing::error!(problem = %e, "the peer keyring file changed but cannot be used; the previous ring stays in force");
            return false;
        }
        true
    }
}

/// Every value of a header, as text (a value that is not text reads as empty).
fn header_values(headers: &axum::http::HeaderMap, h: &str) -> Vec<String> {
    headers
        .get_all(h)
        .iter()
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default())
        .collect()
}

/// The fingerprint a request presents (16 hex digits, not secret), for logs and events;
/// metrics label only fingerprints of the ring (a caller cannot grow the series).
fn presented_fingerprint(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(xai_keys_core::peer::H_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|fp| fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// `<store>.peer-usage` for a file store (`None` for other backends).
pub fn usage_path(store_location: &str) -> Option<PathBuf> {
    (!store_location.contains("://")).then(|| PathBuf::from(format!("{store_location}.peer-usage")))
}

/// Decides a request on a peer route when a peer key is configured: `Ok(Some(peer))` accepted,
/// `Ok(None)` not this module's decision (not a peer route, or no peer key), `Err(response)`
/// refused.
pub async fn authenticate(
    st: &AppState,
    req: &mut Request,
    client: std::net::IpAddr,
    method: &Method,
    access: crate::policy::Access,
    route: &str,
    now: f64,
) -> Result<Option<VerifiedPeer>, Response> {
    if access != crate::policy::Access::Peer {
        return Ok(None);
    }
    let ring = st.peers.ring();
    if !ring.is_configured() {
        return Ok(None);
    }
    let signed = HEADERS.iter().any(|h| req.headers().contains_key(*h));
    if signed {
        // Headers, key and clock first: a request that cannot verify is refused before its
        // body is read (no one makes the gateway buffer bodies without the key).
        let pre = {
            let headers = req.headers();
            let get = |h: &str| header_values(headers, h);
            xai_keys_core::peer::precheck_peer_request(&ring, st.peers.policy, &get, now)
        };
        if let Err(r) = pre {
            let named = presented_fingerprint(req.headers());
            return Err(refuse(st, &r, named.as_deref(), client, method, route, now));
        }
        let limit = st.cfg.max_proxy_body_bytes;
        let body = std::mem::take(req.body_mut());
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body exceeds {limit} bytes (XAI_PROXY_MAX_BODY_BYTES)"),
                )
                .into_response());
            }
        };
        let headers = req.headers();
        let get = |h: &str| header_values(headers, h);
        let pq = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
        let verdict = verify_peer_request(
            &ring,
            &st.peers.nonces,
            st.peers.policy,
            &get,
            &RequestParts {
                method: method.as_str(),
                path_and_query: &pq,
                body: &bytes,
            },
            now,
        );
        let named = presented_fingerprint(headers);
        *req.body_mut() = Body::from(bytes);
        return match verdict {
            Ok(v) => {
                st.metrics.peer_auth("signed", &v.fingerprint);
                st.metrics.auth_count("allowed", "peer", "peer");
                relock(&st.peers.usage).record(&v.fingerprint, &v.node_id, now);
                Ok(Some(v))
            }
            Err(r) => Err(refuse(st, &r, named.as_deref(), client, method, route, now)),
        };
    }
    let legacy = req
        .headers()
        .get(crate::credentials::X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ring.legacy_match(v))
        .map(|k| k.fingerprint().to_string());
    match legacy {
        Some(fp) if st.peers.accept_legacy => {
            st.metrics.peer_auth("legacy", &fp);
            st.metrics.auth_count("allowed", "peer", "peer");
            relock(&st.peers.usage).record(&fp, "legacy", now);
            Ok(Some(VerifiedPeer {
                fingerprint: fp,
                node_id: "legacy".into(),
            }))
        }
        Some(fp) => Err(refuse(
            st,
            &PeerRefusal::LegacyDisabled,
            Some(&fp),
            client,
            method,
            route,
            now,
        )),
        None => Err(refuse(
            st,
            &PeerRefusal::Missing,
            None,
            client,
            method,
            route,
            now,
        )),
    }
}

fn refuse(
    st: &AppState,
    r: &PeerRefusal,
    fingerprint: Option<&str>,
    client: std::net::IpAddr,
    method: &Method,
    route: &str,
    now: f64,
) -> Response {
    let code = r.code();
    let ring = st.peers.ring();
    let label = fingerprint
        .filter(|fp| ring.by_fingerprint(fp).is_some())
        .unwrap_or("unknown");
    st.metrics.peer_auth(code, label);
    // Refusals show in the general authentication counter too (the failure-spike alert).
    st.metrics.auth_count(code, "none", "peer");
    // A forged signature under a key of the ring counts toward the brute-force throttle. An
    // unknown key does not: a validator whose ring lags behind a rotation would otherwise be
    // locked out for a minute after it catches up.
    if matches!(r, PeerRefusal::BadSignature) && st.cfg.rate_limit_enabled {
        let _ = st.fail_limiter.hit(&client_bucket(client), now);
    }
    tracing::info!(target: "xai_keys::auth", client = %client, method = %method, route, reason = code, key = fingerprint.unwrap_or("-"), "peer request refused");
    if !st.peers.disable_events {
        st.telemetry.emitter.emit_throttled(
            &format!("peer_auth_failure|{}|{code}", client_bucket(client)),
            "peer_auth_failure",
            Severity::Warning,
            now,
            json!({
                "reason": code,
                "client": client.to_string(),
                "method": method.as_str(),
                "route": route,
                "route_class": "peer",
                "key": fingerprint,
            }),
        );
    }
    let status = match r {
        PeerRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
        PeerRefusal::NonceCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut e = ApiError::new(status, code, r.message());
    if let PeerRefusal::NonceCapacity { retry_after_secs } = r {
        e = e.with_retry_after(*retry_after_secs);
    }
    e.into_response()
}
