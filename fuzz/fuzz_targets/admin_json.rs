//! The admin key API end to end: arbitrary requests (method, path, query, headers, body) sent
//! with a valid admin token through the gateway's real router (`xai_keys_server::router`, the
//! authenticating middleware and the admin handlers) over a file store in a temporary
//! directory, driven in-process with `tower::ServiceExt::oneshot` on a current-thread runtime.
//!
//! Input: the text request format of `xai_keys_fuzz`. In the request line, `{user}`,
//! `{operator}` and `{admin}` stand for the ids of the store's keys of those scopes, so that
//! rotate, revoke, disable and enable reach existing keys. An `X-Admin-Token` with the admin
//! key is added unless the input brings its own `X-Admin-Token`, `X-API-Key` or
//! `Authorization`.
//!
//! Checks: nothing panics; no answer is a server error (5xx) other than the documented 503
//! `no_upstream` of a path the gateway forwards; every JSON answer's `success` matches its
//! status; and no answer echoes a key the harness holds (the admin token it sent, the other
//! keys' secrets, or a key an earlier answer issued). The store is rebuilt every few hundred requests (it grows with each
//! issued key) and whenever the admin key stops working (the fuzzer may revoke it); before
//! that, whatever the requests did, the store must still match its audit log
//! (`Integrity::is_consistent`) and the log's hash chain must verify.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;
use xai_keys_core::audit::Actor;
use xai_keys_core::ops::{IssueRequest, KeyManager};
use xai_keys_core::policy::{TtlPolicy, TtlRequest};
use xai_keys_core::scope::Scope;
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions, KeyStore};
use xai_keys_fuzz::parse_request;
use xai_keys_server::ratelimit::Limit;
use xai_keys_server::{Gateway, ServerConfig};

/// The gateway's clock: fixed, so change windows and expiries are reproducible.
const T0: f64 = 1_760_000_000.0;
/// Requests served by one store before it is rebuilt.
const REBUILD_EVERY: usize = 300;

struct Harness {
    rt: tokio::runtime::Runtime,
    gateway: Gateway,
    app: Router,
    /// Secrets of the store's keys (admin first), then of the keys answers issued.
    secrets: Vec<String>,
    /// (placeholder, key id).
    ids: Vec<(&'static str, String)>,
    served: usize,
    store: Arc<FileStore>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("keys").join("api_keys.json");
        let store = Arc::new(
            FileStore::new(
                &path,
                FileStoreOptions {
                    durability: Durability::UnsafeNoSync,
                    ..Default::default()
                },
            )
            .expect("a store"),
        );
        let ttl = TtlPolicy {
            allow_permanent: true,
            ..TtlPolicy::default()
        };
        let mgr = KeyManager::new(store.as_ref(), ttl);
        let actor = Actor::System;
        let mut secrets = Vec::new();
        let mut ids = Vec::new();
        for (scope, name) in [
            (Scope::Admin, "{admin}"),
            (Scope::Operator, "{operator}"),
            (Scope::User, "{user}"),
        ] {
            let k = mgr
                .issue(
                    IssueRequest {
                        scope,
                        label: name.trim_matches(['{', '}']).into(),
                        ttl: TtlRequest::Default,
                        secret: None,
                    },
                    &actor,
                    T0,
                )
                .expect("issue a key");
            secrets.push(k.plaintext.expose().to_string());
            ids.push((name, k.info.key_id.to_string()));
        }
        let cfg = ServerConfig {
            admin_limit: Limit {
                max: 1_000_000,
                window_secs: 60.0,
            },
            auth_failure_limit: Limit {
                max: 1_000_000,
                window_secs: 60.0,
            },
            rate_limit_enabled: false,
            access_log: false,
            ttl,
            ..ServerConfig::default()
        };
        let gateway = {
            let _in_rt = rt.enter();
            Gateway::start(cfg, store.clone(), Arc::new(|| T0)).expect("start the gateway")
        };
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let app = gateway.router().layer(MockConnectInfo(peer));
        Harness {
            rt,
            gateway,
            app,
            secrets,
            ids,
            served: 0,
            store,
            _dir: dir,
        }
    }

    /// Whatever the requests did, the store still matches its audit log and the chain is
    /// intact (checked before a harness is replaced).
    fn check_store(&self) {
        let snap = self.store.load(T0).expect("the store loads");
        assert!(
            snap.integrity.is_consistent(),
            "after {} requests the store does not match its log: {:?}",
            self.served,
            snap.integrity
        );
        assert_eq!(
            self.store.check_log_chain().expect("the log reads"),
            None,
            "after {} requests the audit chain is broken",
            self.served
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Joins the store watcher and the telemetry thread (no runtime needed: this also runs
        // while thread-locals are destroyed at exit).
        self.gateway.stop_background();
    }
}

/// `FUZZ_VERBOSE=1` prints every request's answer (to check what the seeds reach).
fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FUZZ_VERBOSE").is_some())
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let req = parse_request(data);
    let Ok(method) = Method::from_bytes(req.method.as_bytes()) else {
        return;
    };
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some(h) = slot.as_ref().filter(|h| h.served >= REBUILD_EVERY) {
            h.check_store();
            *slot = None;
        }
        let h = slot.get_or_insert_with(Harness::new);
        h.served += 1;
        let mut target = req.target.to_string();
        for (name, id) in &h.ids {
            target = target.replace(name, id);
        }
        let mut b = Request::builder()
            .method(method.clone())
            .uri(target.as_str());
        let mut own_credentials = false;
        for (n, v) in req.header_map().iter() {
            own_credentials |=
                matches!(n.as_str(), "x-admin-token" | "x-api-key" | "authorization");
            b = b.header(n, v);
        }
        let admin = h.secrets[0].clone();
        if !own_credentials {
            let Ok(v) = HeaderValue::from_str(&admin) else {
                return;
            };
            b = b.header("x-admin-token", v);
        }
        let Ok(request) = b.body(Body::from(req.body.to_vec())) else {
            return; // not a valid URI
        };
        let app = h.app.clone();
        let (status, headers, body) = h.rt.block_on(async move {
            let fut = app.oneshot(request);
            let resp = tokio::time::timeout(std::time::Duration::from_secs(20), fut)
                .await
                .expect("an answer within 20 s")
                .expect("the router is infallible");
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.expect("a body").to_bytes();
            (parts.status, parts.headers, bytes)
        });
        if verbose() {
            eprintln!(
                "{method} {target} -> {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let code = json
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("");
        assert!(
            status.as_u16() < 500
                || (status == StatusCode::SERVICE_UNAVAILABLE && code == "no_upstream"),
            "{method} {target}: server error {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if let Some(ok) = json
            .as_ref()
            .and_then(|v| v.get("success"))
            .and_then(Value::as_bool)
        {
            assert_eq!(
                ok,
                status.is_success(),
                "{method} {target}: success {ok} with {status}"
            );
        }
        let text = String::from_utf8_lossy(&body);
        // A key handed out by an earlier answer is a secret from then on.
        let issued = json
            .as_ref()
            .and_then(|v| v.get("api_key"))
            .and_then(Value::as_str)
            .map(str::to_string);
        for s in &h.secrets {
            assert!(
                !text.contains(s.as_str()),
                "{method} {target}: the answer echoes a key: {text}"
            );
            for (n, v) in &headers {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(s.as_str()),
                    "{method} {target}: header {n} echoes a key"
                );
            }
        }
        h.secrets.extend(issued);
        // The fuzzer revoked or disabled the admin key: start over with a fresh store.
        if !own_credentials && status == StatusCode::UNAUTHORIZED {
            h.check_store();
            *slot = None;
        }
    });
});
