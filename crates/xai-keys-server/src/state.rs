//! The gateway's shared state and its lifecycle (start, background tasks, shutdown).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use xai_keys_core::store::KeyStore;

use crate::Clock;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::ratelimit::Limiter;
use crate::reload::{IndexHandle, StartError};
use crate::telemetry::Telemetry;
use crate::usage::UsageTracker;

/// Everything a request handler reads.
pub struct Shared {
    pub cfg: ServerConfig,
    pub store: Arc<dyn KeyStore>,
    pub index: Arc<IndexHandle>,
    pub usage: UsageTracker,
    pub admin_limiter: Limiter<(IpAddr, Arc<str>)>,
    pub fail_limiter: Limiter<IpAddr>,
    pub metrics: Arc<Metrics>,
    pub telemetry: Arc<Telemetry>,
    pub peers: Arc<crate::peer::PeerAuth>,
    /// The admin network allow-list and the emergency lockdown.
    pub access: Arc<crate::access::AccessControl>,
    pub upstream: Option<Upstream>,
    pub clock: Clock,
}

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn now(&self) -> f64 {
        (self.clock)()
    }

    /// Writes unflushed last-use data beside the store (blocking I/O).
    pub fn flush_usage(&self) {
        let idx = self.index.load();
        // Entries of revoked keys are dropped only while the index is the store's recorded
        // state: an empty or restricted index (store missing, degraded) must not wipe the
        // history of keys that are merely not served right now.
        let trusted = self.index.health().is_ok();
        let live = |id: &str| {
            !trusted || xai_keys_core::token::KeyId::parse(id).is_ok_and(|k| idx.get(&k).is_some())
        };
        if let Err(e) = self.usage.flush(self.store.as_ref(), &live, self.now()) {
            self.metrics.usage_flush_failed();
            tracing::warn!(error = %e, "could not write last-use data; kept for the next flush");
        }
        if let Some(p) = crate::peer::usage_path(&self.store.location()).or_else(|| {
            self.cfg
                .state_base
                .as_ref()
                .map(|b| suffixed(b, ".peer-usage"))
        }) && let Err(e) = self.peers.flush_usage(&p, self.now())
        {
            tracing::warn!(error = %e, file = %p.display(), "could not write peer usage; kept for the next flush");
        }
    }
}

/// A started gateway: state plus the store watcher.
pub struct Gateway {
    pub(crate) state: AppState,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) watcher: Option<std::thread::JoinHandle<()>>,
    pub(crate) peer_watcher: Option<std::thread::JoinHandle<()>>,
    pub(crate) access_watcher: Option<std::thread::JoinHandle<()>>,
    /// The peer egress proxy's listener, served by `run` beside the main one.
    pub(crate) egress: Option<tokio::net::TcpListener>,
}

/// Why a gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StartError),
    #[error("{0}")]
    Config(String),
    #[error("cannot start the store watcher thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Telemetry(String),
}

impl Gateway {
    /// Loads the store, builds the index and starts watching the store.
    pub fn start(
        cfg: ServerConfig,
        store: Arc<dyn KeyStore>,
        clock: Clock,
    ) -> Result<Self, GatewayError> {
        if let Some(w) = xai_keys_core::envkeys::warning(&cfg.env_keys) {
            tracing::warn!("{w}");
        }
        let index = Arc::new(
            IndexHandle::initial_with_env(store.as_ref(), clock(), cfg.env_keys.clone())?
                .with_staleness((!cfg.fail_static).then_some(cfg.max_staleness)),
        );
        let upstream = match &cfg.upstream_url {
            Some(u) => Some(
                Upstream::new(u, cfg.upstream_timeout, cfg.max_proxy_body_bytes)
                    .map_err(GatewayError::Config)?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::with_enabled(cfg.metrics_enabled));
        let mut tcfg = cfg.telemetry.clone();
        if tcfg.queue_path.is_none()
            && crate::telemetry::default_queue_path(&store.location()).is_none()
        {
            tcfg.queue_path = cfg
                .state_base
                .as_ref()
                .map(|b| suffixed(b, ".webhook-queue"));
        }
        let telemetry = Telemetry::start(
            tcfg,
            store.clone(),
            index.clone(),
            metrics.clone(),
            clock.clone(),
        )
        .map_err(GatewayError::Telemetry)?;
        let peers = Arc::new(crate::peer::PeerAuth::new(&cfg.peer));
        if let Some(p) = crate::peer::usage_path(&store.location())
            .or_else(|| cfg.state_base.as_ref().map(|b| suffixed(b, ".peer-usage")))
        {
            peers.load_usage(&p);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let peer_watcher = match peers.keyring_file() {
            Some(_) => {
                let (p, stop, m) = (peers.clone(), stop.clone(), metrics.clone());
                Some(
                    std::thread::Builder::new()
                        .name("xai-keys-keyring-watch".into())
                        .spawn(move || {
                            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_secs(1));
                                p.poll_file_counted(&m);
                            }
                        })
                        .map_err(GatewayError::Thread)?,
                )
            }
            None => None,
        };
        // The lockdown is read before the first request is served, then every poll interval
        // (at most every 500 ms: "within a second"), with the allow-list file's changes.
        let access = Arc::new(
            crate::access::AccessControl::new(cfg.admin_networks.clone())
                .map_err(GatewayError::Config)?,
        );
        access.poll_lockdown(store.as_ref());
        metrics.set_lockdown(access.lockdown_active());
        let access_watcher = {
            let (a, st, m, stop) = (access.clone(), store.clone(), metrics.clone(), stop.clone());
            let every = cfg.store_poll.clamp(
                std::time::Duration::from_millis(20),
                std::time::Duration::from_millis(500),
            );
            std::thread::Builder::new()
                .name("xai-keys-access-watch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(every);
                        if let Some(active) = a.poll_lockdown(st.as_ref()) {
                            m.set_lockdown(active);
                        }
                        a.poll_networks_file();
                    }
                })
                .map_err(GatewayError::Thread)?
        };
        let watcher = crate::reload::spawn_watcher(
            index.clone(),
            store.clone(),
            clock.clone(),
            cfg.store_poll,
            stop.clone(),
        )
        .map_err(GatewayError::Thread)?;
        let state = AppState(Arc::new(Shared {
            admin_limiter: Limiter::new(cfg.admin_limit),
            fail_limiter: Limiter::new(cfg.auth_failure_limit),
            cfg,
            store,
            index,
            usage: UsageTracker::default(),
            metrics,
            telemetry,
            peers,
            access,
            upstream,
            clock,
        }));
        Ok(Gateway {
            state,
            stop,
            watcher: Some(watcher),
            access_watcher: Some(access_watcher),
            peer_watcher,
            egress: None,
        })
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Also serve the peer egress proxy ([`crate::egress`]) on `listener` while running.
    pub fn set_egress_listener(&mut self, listener: tokio::net::TcpListener) {
        self.egress = Some(listener);
    }

    /// Re-reads the peer keyring file (what SIGHUP does). `Ok(false)` without a keyring file;
    /// on error the previous ring stays in force.
    pub fn reload_peer_keys(&self) -> Result<bool, String> {
        self.state.peers.reload()
    }

    /// Re-reads the admin allow-list file (what SIGHUP does). `Ok(false)` when the list is not
    /// a file; on error the previous list stays in force.
    pub fn reload_admin_networks(&self) -> Result<bool, String> {
        self.state.access.reload_networks()
    }

    /// The router over this gateway's state.
    pub fn router(&self) -> axum::Router {
        crate::router(self.state.clone())
    }

    /// Stops the watcher and writes the last usage (blocking). `run` calls it on shutdown.
    pub fn stop_background(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Some(w) = self.peer_watcher.take() {
            let _ = w.join();
        }
        if let Some(w) = self.access_watcher.take() {
            let _ = w.join();
        }
        self.state.flush_usage();
        self.state.telemetry.stop();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `base` with `suffix` appended to its last component (`/d/store` + `.x` = `/d/store.x`).
fn suffixed(base: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    std::path::PathBuf::from(s)
}
