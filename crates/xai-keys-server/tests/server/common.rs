//! Shared helpers: stores in temporary directories, an injectable clock, an in-process gateway
//! driven with `oneshot`, a real-socket gateway, a recording test upstream and an HTTP client.
//!
//! Every response that goes through [`Harness::send`] or [`Net::send`] is checked for leaked
//! secrets: no key presented in any request of the test, and no key issued in it, may appear in
//! a response body or header (except the `api_key` a key-issuing response hands out).
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use xai_keys_core::audit::Actor;
use xai_keys_core::ops::{IssueRequest, KeyManager};
use xai_keys_core::policy::{TtlPolicy, TtlRequest};
use xai_keys_core::scope::Scope;
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions, KeyStore};
use xai_keys_core::token::KeyId;
use xai_keys_server::ratelimit::Limit;
use xai_keys_server::{Clock, Gateway, ServerConfig};

/// A start time well inside the range the tool sees in practice.
pub const T0: f64 = 1_760_000_000.0;
pub const HOUR: f64 = 3_600.0;
pub const DAY: f64 = 86_400.0;

/// Every bounded wait of the suite gives up after this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// The default client address of in-process requests.
pub fn local_peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

pub fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// A settable clock: an `f64` kept as bits in an atomic.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub fn new(t: f64) -> Self {
        TestClock(Arc::new(AtomicU64::new(t.to_bits())))
    }
    pub fn now(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
    pub fn set(&self, t: f64) {
        self.0.store(t.to_bits(), Ordering::SeqCst);
    }
    pub fn advance(&self, secs: f64) {
        self.set(self.now() + secs);
    }
    pub fn clock(&self) -> Clock {
        let c = self.0.clone();
        Arc::new(move || f64::from_bits(c.load(Ordering::SeqCst)))
    }
}

// ---------------------------------------------------------------------------------------------
// Stores and keys
// ---------------------------------------------------------------------------------------------

/// The TTL policy of keys issued directly (permanent keys allowed).
pub fn policy() -> TtlPolicy {
    TtlPolicy {
        allow_permanent: true,
        ..TtlPolicy::default()
    }
}

pub fn cli_actor() -> Actor {
    Actor::Cli {
        user: "tester".into(),
        host: "testhost".into(),
    }
}

/// `<dir>/keys/api_keys.json`.
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("keys").join("api_keys.json")
}

/// A store without fsync (fast); a second call on the same path is "another process".
pub fn open_store(path: &Path) -> Arc<FileStore> {
    Arc::new(
        FileStore::new(
            path,
            FileStoreOptions {
                durability: Durability::UnsafeNoSync,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

/// A plaintext key and its id.
#[derive(Clone, Debug)]
pub struct Key {
    pub secret: String,
    pub id: String,
}

impl Key {
    pub fn key_id(&self) -> KeyId {
        KeyId::parse(&self.id).unwrap()
    }
}

/// Issues a key directly through the core (as the CLI does).
pub fn issue(store: &dyn KeyStore, scope: Scope, label: &str, ttl: TtlRequest, now: f64) -> Key {
    let m = KeyManager::new(store, policy());
    let k = m
        .issue(
            IssueRequest {
                scope,
                label: label.into(),
                ttl,
                secret: None,
            },
            &cli_actor(),
            now,
        )
        .unwrap();
    Key {
        secret: k.plaintext.expose().to_string(),
        id: k.info.key_id.to_string(),
    }
}

/// The four scopes' keys every harness starts with (90-day TTL).
#[derive(Clone, Debug)]
pub struct Keys {
    pub admin: Key,
    pub operator: Key,
    pub auditor: Key,
    pub user: Key,
}

impl Keys {
    pub fn issue(store: &dyn KeyStore, now: f64) -> Self {
        Keys {
            admin: issue(store, Scope::Admin, "admin", TtlRequest::Default, now),
            operator: issue(store, Scope::Operator, "operator", TtlRequest::Default, now),
            auditor: issue(store, Scope::Auditor, "auditor", TtlRequest::Default, now),
            user: issue(store, Scope::User, "user", TtlRequest::Default, now),
        }
    }

    pub fn all(&self) -> [&Key; 4] {
        [&self.admin, &self.operator, &self.auditor, &self.user]
    }
}

/// A configuration for tests: limits high enough not to interfere unless a test lowers them.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        admin_limit: Limit {
            max: 100_000,
            window_secs: 60.0,
        },
        auth_failure_limit: Limit {
            max: 100_000,
            window_secs: 60.0,
        },
        access_log: false,
        ..ServerConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Secret-leak checking
// ---------------------------------------------------------------------------------------------

/// Every secret a test used; shared by its harnesses.
#[derive(Clone, Default)]
pub struct Secrets(Arc<Mutex<Vec<String>>>);

impl Secrets {
    pub fn add(&self, s: &str) {
        let s = s.trim();
        // Short strings ("x", "nope") could appear in any text by chance; keys are long.
        if s.len() >= 12 {
            let mut g = self.0.lock().unwrap();
            if !g.iter().any(|x| x == s) {
                g.push(s.to_string());
            }
        }
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Records the credentials of a request before it is sent.
    pub fn add_from_request(&self, headers: &[(String, String)], uri: &str) {
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            if k == "x-api-key" || k == "x-admin-token" {
                self.add(v);
            } else if k == "authorization" {
                self.add(v);
                if let Some((_, rest)) = v.trim().split_once(' ') {
                    self.add(rest);
                }
            }
        }
        if let Some((_, q)) = uri.split_once('?') {
            for p in q.split('&') {
                if let Some(("api_key", v)) = p.split_once('=') {
                    self.add(v);
                }
            }
        }
    }

    /// Panics if `resp` carries any known secret (other than the key it issues, which is
    /// remembered from now on).
    pub fn check(&self, what: &str, resp: &Resp) {
        let issued = resp
            .json_opt()
            .and_then(|v| v.get("api_key").and_then(Value::as_str).map(str::to_string));
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        for s in self.list() {
            if issued.as_deref() == Some(s.as_str()) {
                continue;
            }
            assert!(
                !body.contains(&s),
                "{what}: response body echoes a key: {body}"
            );
            for (name, v) in &resp.headers {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(&s),
                    "{what}: response header {name} echoes a key"
                );
            }
        }
        if let Some(k) = issued {
            self.add(&k);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------------

/// A request under construction (used both in-process and over sockets).
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn req(method: Method, uri: &str) -> Req {
    Req {
        method,
        uri: uri.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

pub fn get(uri: &str) -> Req {
    req(Method::GET, uri)
}

pub fn post(uri: &str) -> Req {
    req(Method::POST, uri)
}

pub fn delete(uri: &str) -> Req {
    req(Method::DELETE, uri)
}

impl Req {
    pub fn h(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// `X-API-Key`.
    pub fn key(self, k: &Key) -> Self {
        self.h("x-api-key", &k.secret)
    }
    /// `X-Admin-Token`.
    pub fn admin(self, k: &Key) -> Self {
        self.h("x-admin-token", &k.secret)
    }
    pub fn json(mut self, v: &Value) -> Self {
        self.body = serde_json::to_vec(v).unwrap();
        self.h("content-type", "application/json")
    }
    /// A raw body with an optional Content-Type.
    pub fn raw(mut self, content_type: Option<&str>, body: &[u8]) -> Self {
        self.body = body.to_vec();
        match content_type {
            Some(ct) => self.h("content-type", ct),
            None => self,
        }
    }
    pub fn build(&self) -> Request<Body> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.as_str());
        for (k, v) in &self.headers {
            b = b.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        b.body(Body::from(self.body.clone())).unwrap()
    }
}

/// A collected response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json_opt(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
    /// The JSON body (panics, showing the body, if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_string()
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts the success envelope and `status`; returns the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["success"], Value::Bool(true), "{v}");
        v
    }

    /// Asserts the error envelope `{"success": false, "error", "code"}` with `status` and `code`;
    /// returns the message.
    #[track_caller]
    pub fn err(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["success"], Value::Bool(false), "{v}");
        assert_eq!(v["code"].as_str(), Some(code), "{v}");
        let msg = v["error"].as_str().unwrap_or("").to_string();
        assert!(!msg.is_empty(), "an error names the problem: {v}");
        msg
    }

    /// A refusal by the authentication layer: status, typed reason.
    #[track_caller]
    pub fn denied(&self, status: u16, reason: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["success"], Value::Bool(false), "{v}");
        assert_eq!(v["reason"].as_str(), Some(reason), "{v}");
        assert!(
            matches!(
                v["code"].as_str(),
                Some("unauthorized" | "admin_unauthorized")
            ),
            "{v}"
        );
    }

    /// The request passed authentication: on a proxied route without an upstream that is the
    /// gateway's 503 `no_upstream`.
    #[track_caller]
    pub fn passed_to_upstream(&self) {
        self.err(503, "no_upstream");
    }
}

// ---------------------------------------------------------------------------------------------
// In-process harness
// ---------------------------------------------------------------------------------------------

/// A store in a temporary directory with the four scopes' keys, a clock at [`T0`], and a
/// started gateway (its store watcher running) driven in-process.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub store: Arc<FileStore>,
    pub clock: TestClock,
    pub gateway: Gateway,
    pub keys: Keys,
    pub secrets: Secrets,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = test_config();
        f(&mut cfg);
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        let store = open_store(&path);
        let clock = TestClock::new(T0);
        let keys = Keys::issue(store.as_ref(), T0);
        let secrets = Secrets::default();
        for k in keys.all() {
            secrets.add(&k.secret);
        }
        let gateway = Gateway::start(cfg, store.clone(), clock.clock()).unwrap();
        Harness {
            dir,
            path,
            store,
            clock,
            gateway,
            keys,
            secrets,
        }
    }

    pub fn app_from(&self, addr: SocketAddr) -> Router {
        self.gateway.router().layer(MockConnectInfo(addr))
    }

    pub async fn send(&self, r: Req) -> Resp {
        self.send_from(local_peer(), r).await
    }

    pub async fn send_from(&self, addr: SocketAddr, r: Req) -> Resp {
        self.secrets.add_from_request(&r.headers, &r.uri);
        let what = format!("{} {}", r.method, r.uri);
        let fut = self.app_from(addr).oneshot(r.build());
        let resp = tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        let out = Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        self.secrets.check(&what, &out);
        out
    }

    /// Issues a key through the store directly and waits until the gateway's index has it.
    pub async fn issue_direct(&self, scope: Scope, ttl: TtlRequest) -> Key {
        let k = issue(self.store.as_ref(), scope, "direct", ttl, self.clock.now());
        self.secrets.add(&k.secret);
        self.wait_indexed(&k, true).await;
        k
    }

    /// Waits (bounded) until the gateway's index has (or no longer has) `k`.
    pub async fn wait_indexed(&self, k: &Key, present: bool) {
        let id = k.key_id();
        let st = self.gateway.state();
        wait_until("the gateway's index to follow the store", || {
            let present_now = st.index.load().get(&id).is_some();
            async move { present_now == present }
        })
        .await;
    }

    /// Issues a key through the gateway's admin API; returns it.
    pub async fn issue_http(&self, body: Value) -> Key {
        let r = self
            .send(post("/admin/api-keys").admin(&self.keys.admin).json(&body))
            .await;
        let v = r.ok(201);
        Key {
            secret: v["api_key"].as_str().unwrap().to_string(),
            id: v["key_id"].as_str().unwrap().to_string(),
        }
    }

    /// `GET /admin/api-keys` → the `store` object.
    pub async fn listing(&self) -> serde_json::Map<String, Value> {
        let v = self
            .send(get("/admin/api-keys").admin(&self.keys.admin))
            .await
            .ok(200);
        v["store"].as_object().unwrap().clone()
    }

    /// `GET /health` → (status, body).
    pub async fn health(&self) -> (u16, Value) {
        let r = self.send(get("/health")).await;
        (r.status.as_u16(), r.json())
    }
}

/// Every kind of admin change (issue, revoke, rotate, disable, enable, open a change window)
/// answers 503 `store_unavailable` while the store cannot be trusted; the responses, for more
/// checks.
pub async fn admin_writes_refused(h: &Harness) -> Vec<Resp> {
    let a = &h.keys.admin;
    let u = &h.keys.user.id;
    let mut out = Vec::new();
    for r in [
        post("/admin/api-keys")
            .admin(a)
            .json(&serde_json::json!({"label": "x"})),
        delete(&format!("/admin/api-keys/{u}")).admin(a),
        post(&format!("/admin/api-keys/{u}/rotate")).admin(a),
        post(&format!("/admin/api-keys/{u}/disable")).admin(a),
        post(&format!("/admin/api-keys/{u}/enable")).admin(a),
        post("/admin/change-window")
            .admin(a)
            .json(&serde_json::json!({"ticket": "CHG-1", "duration": "1h"})),
    ] {
        let resp = h.send(r).await;
        resp.err(503, "store_unavailable");
        out.push(resp);
    }
    out
}

/// The value of one series in the gateway's scrape: `series` is the name with its labels as
/// rendered (`xai_lockdown_active`, `xai_api_env_keys{scope="user"}`); panics when absent.
pub async fn scrape_value(h: &Harness, series: &str) -> f64 {
    let text = h.send(get("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Real sockets: the gateway, a test upstream, a client
// ---------------------------------------------------------------------------------------------

/// A gateway served on 127.0.0.1 by [`Gateway::run`].
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub async fn start(gw: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(listener, async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers the shutdown future and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("the gateway stops within the wait")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// What the test upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
    pub body: Bytes,
}

pub fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Size of `GET /big` from the test upstream.
pub const BIG: usize = 6 << 20;

/// The deterministic content of large test bodies.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A recording upstream on 127.0.0.1: `/slow` sleeps 20 s before answering, `/big` streams
/// [`BIG`] bytes, everything else echoes a JSON summary and records the request.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

async fn upstream_handler(State(seen): State<SeenLog>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let s = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body_len: body.len(),
        body_sha256: sha256(&body),
        body: body.clone(),
    };
    seen.lock().unwrap().push(s.clone());
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            "late".into_response()
        }
        "/big" => {
            let chunks: Vec<Result<Bytes, Infallible>> = pattern(BIG)
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Response::builder()
                .header("x-upstream", "big")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap()
        }
        _ => (
            StatusCode::ACCEPTED,
            [("x-upstream", "echo")],
            axum::Json(serde_json::json!({
                "method": s.method,
                "path": s.path,
                "query": s.query,
                "len": s.body_len,
                "sha256": s.body_sha256,
            })),
        )
            .into_response(),
    }
}

impl TestUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: SeenLog = Arc::default();
        let app = Router::new()
            .fallback(upstream_handler)
            .with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestUpstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last request recorded.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

pub type ClientBody = BoxBody<Bytes, std::io::Error>;

/// An HTTP/1.1 client with its own leak checker.
pub struct Net {
    pub client: Client<HttpConnector, ClientBody>,
    pub secrets: Secrets,
}

pub fn full(b: Vec<u8>) -> ClientBody {
    Full::new(Bytes::from(b))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body sent in chunks without a Content-Length.
pub fn chunked(b: Vec<u8>, chunk: usize) -> ClientBody {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = b
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

impl Net {
    pub fn new(secrets: Secrets) -> Self {
        Net {
            client: Client::builder(TokioExecutor::new()).build_http(),
            secrets,
        }
    }

    pub async fn send(&self, base: &Running, r: Req) -> Resp {
        let body = full(r.body.clone());
        self.send_body(base, r, body).await
    }

    /// Sends `r` (its method, URI and headers) with `body`; bounded by [`WAIT`].
    pub async fn send_body(&self, base: &Running, r: Req, body: ClientBody) -> Resp {
        self.secrets.add_from_request(&r.headers, &r.uri);
        let what = format!("{} {}", r.method, r.uri);
        let mut b = Request::builder()
            .method(r.method.clone())
            .uri(base.url(&r.uri));
        for (k, v) in &r.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let request = b.body(body).unwrap();
        let out = tokio::time::timeout(WAIT, async {
            let resp = self.client.request(request).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.secrets.check(&what, &out);
        out
    }
}

/// A store with the four scopes' keys and a gateway served on a real socket.
pub struct NetHarness {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub store: Arc<FileStore>,
    pub clock: TestClock,
    pub keys: Keys,
    pub gw: Running,
    pub net: Net,
}

impl NetHarness {
    pub async fn start(f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = test_config();
        f(&mut cfg);
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        let store = open_store(&path);
        let clock = TestClock::new(T0);
        let keys = Keys::issue(store.as_ref(), T0);
        let secrets = Secrets::default();
        for k in keys.all() {
            secrets.add(&k.secret);
        }
        let gateway = Gateway::start(cfg, store.clone(), clock.clock()).unwrap();
        let gw = Running::start(gateway).await;
        NetHarness {
            dir,
            path,
            store,
            clock,
            keys,
            gw,
            net: Net::new(secrets),
        }
    }

    pub async fn send(&self, r: Req) -> Resp {
        self.net.send(&self.gw, r).await
    }

    pub async fn send_body(&self, r: Req, body: ClientBody) -> Resp {
        self.net.send_body(&self.gw, r, body).await
    }
}
