//! `serve`: resolve the gateway's configuration, bootstrap a first admin key if needed, and
//! run the server crate's gateway until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::{Context, Result};
use xai_keys_core::store::KeyStore;
use xai_keys_core::token::PlainToken;
use xai_keys_server::bootstrap::{AUTO_LABEL, Bootstrap, bootstrap};
use xai_keys_server::{Gateway, ServerConfig};

use crate::args::{LogFormat, ServeArgs};
use crate::config::Config;

/// Default listen address: loopback, so a gateway is never exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn init_logging(format: LogFormat) -> Result<()> {
    let filter = match std::env::var("XAI_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(v.trim())
            .with_context(|| {
                format!("XAI_LOG={v:?} is not a log filter: use a level (warn, info, debug) or directives such as xai_keys=debug")
            })?,
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
    Ok(())
}

pub fn serve(a: ServeArgs, cfg: &Config) -> Result<bool> {
    if a.print_default_policy {
        print!("{}", xai_keys_server::policy::DEFAULT_POLICY_TOML);
        return Ok(true);
    }
    let env = |k: &str| -> Option<String> {
        match k {
            "XAI_UPSTREAM_URL" if a.upstream.is_some() => a.upstream.clone(),
            "XAI_ROUTE_POLICY" if a.policy.is_some() => {
                a.policy.as_ref().map(|p| p.display().to_string())
            }
            _ => std::env::var(k).ok(),
        }
    };
    let mut scfg = ServerConfig::from_lookup(&env)?;
    if cfg.etcd.is_some() {
        scfg.state_base = Some(cfg.store_path.clone());
    }
    let listen = a
        .listen
        .clone()
        .or_else(|| {
            std::env::var("XAI_LISTEN")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen_addr: std::net::SocketAddr = listen.trim().parse().with_context(|| {
        format!("invalid --listen / XAI_LISTEN {listen:?}: use IP:PORT such as 127.0.0.1:8080 or [::]:8080")
    })?;
    init_logging(a.log_format)?;
    // Bind before bootstrapping: an address in use must not cost a first admin key that is
    // printed for a start that then fails (and is never offered again on that store).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xai-keys-gw")
        .build()
        .context("cannot start the async runtime")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen_addr))
        .with_context(|| format!("cannot listen on {listen_addr}"))?;
    let egress = match a.peer_egress.clone().or_else(|| {
        std::env::var("XAI_PEER_EGRESS")
            .ok()
            .filter(|s| !s.trim().is_empty())
    }) {
        Some(e) => {
            let addr: std::net::SocketAddr = e.trim().parse().with_context(|| {
                format!("invalid --peer-egress / XAI_PEER_EGRESS {e:?}: use IP:PORT such as 127.0.0.1:8081")
            })?;
            if !scfg.peer.ring.is_configured() {
                anyhow::bail!(
                    "--peer-egress needs a peer key to sign with: set XAI_PEER_API_KEY or XAI_PEER_KEYRING_FILE"
                );
            }
            if scfg.egress.allowlist.is_empty() {
                anyhow::bail!(
                    "--peer-egress needs XAI_PEER_ALLOWLIST (the peers' gateways, host:port or CIDR): an egress proxy that signs for any destination would hand signed gossip to anyone"
                );
            }
            if !addr.ip().is_loopback() {
                // Whoever reaches the egress gets gossip signed with this node's key.
                eprintln!(
                    "warning: --peer-egress {addr} is not a loopback address: anyone who can reach it gets requests to XAI_PEER_ALLOWLIST signed with this node's peer key; bind it to 127.0.0.1 (or firewall it to the node)"
                );
            }
            Some(
                rt.block_on(tokio::net::TcpListener::bind(addr))
                    .with_context(|| format!("cannot listen on {addr} (--peer-egress)"))?,
            )
        }
        None => None,
    };

    if cfg.etcd.is_some()
        && let Some(dir) = cfg.store_path.parent()
    {
        // This gateway's own files (webhook queue, peer-key usage) for a store on etcd.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "cannot create the gateway's state directory {} (set XAI_STATE_DIR)",
                    dir.display()
                )
            })?;
    }
    let store: Arc<dyn KeyStore> = Arc::from(cfg.open_store_with(true)?);
    let now = xai_keys_core::now_epoch();
    let secret = match std::env::var("XAI_BOOTSTRAP_ADMIN_KEY") {
        Ok(s) if !s.trim().is_empty() => {
            Some(PlainToken::from_supplied(&s).context("XAI_BOOTSTRAP_ADMIN_KEY cannot be used")?)
        }
        _ => None,
    };
    match bootstrap(store.as_ref(), scfg.ttl, secret, !a.no_auto_bootstrap, now)
        .with_context(|| format!("cannot bootstrap the admin key in {}", store.location()))?
    {
        Bootstrap::FromSecret { key_id, created } => tracing::info!(
            key = key_id.fingerprint(),
            created,
            "admin key from XAI_BOOTSTRAP_ADMIN_KEY registered"
        ),
        Bootstrap::Generated(issued) => {
            // Shown once, on stderr only, outside the structured log.
            eprintln!(
                "\n==== xai-keys: FIRST ADMIN KEY (shown once) ====\n\
                 A new, empty store was found at {}, so an admin key was generated\n\
                 (label {AUTO_LABEL:?}, key id {}, expires {}).\n\
                 Store it in your secret manager now; it cannot be shown again:\n\n    {}\n\n\
                 Use it as `X-Admin-Token: <key>`. Disable this with --no-auto-bootstrap or\n\
                 provide your own secret in XAI_BOOTSTRAP_ADMIN_KEY.\n\
                 ================================================\n",
                store.location(),
                issued.info.key_id.fingerprint(),
                issued
                    .info
                    .record
                    .expires_at
                    .map_or_else(|| "never".to_string(), xai_keys_server::auth::iso),
                issued.plaintext.expose()
            );
        }
        Bootstrap::SecretRetired { key_id } => tracing::error!(
            key = key_id.fingerprint(),
            "XAI_BOOTSTRAP_ADMIN_KEY names an admin key that was revoked or rotated away; it is NOT registered again. Remove the variable from the gateway's environment"
        ),
        Bootstrap::NotNeeded => {}
        Bootstrap::Skipped => tracing::warn!(
            "the store is empty and auto-bootstrap is off: no key can use the admin API until `xai-keys bootstrap-admin` or `xai-keys issue --scope admin` runs"
        ),
    }
    if !scfg.auth_required {
        tracing::warn!(
            "XAI_API_AUTH_REQUIRED=0: USER ROUTES ARE OPEN TO ANYONE WITHOUT A KEY. Admin, operator, auditor and peer routes still require credentials. Do not run like this in production."
        );
    }
    if scfg.allow_query_key {
        tracing::warn!(
            "XAI_API_KEY_ALLOW_QUERY=1: keys are accepted in ?api_key=, where they end up in access logs and Referer headers"
        );
    }
    tracing::info!(
        store = %store.location(),
        upstream = scfg.upstream_url.as_deref().unwrap_or("(none)"),
        policy = %scfg.policy.source,
        rules = scfg.policy.len(),
        "starting gateway"
    );
    let mut gateway = Gateway::start(scfg, store, xai_keys_server::system_clock())?;
    if let Some(l) = egress {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "peer egress proxy listening");
        }
        gateway.set_egress_listener(l);
    }
    {
        let st = gateway.state();
        let idx = st.index.load();
        let now = st.now();
        let admins = idx
            .entries()
            .filter(|e| e.scope == xai_keys_core::Scope::Admin)
            .filter(|e| e.state(now) == xai_keys_core::record::KeyState::Active)
            .count();
        if admins == 0 {
            tracing::warn!(
                "no active admin key in the store: nobody can use the admin API. Issue one with `xai-keys issue --scope admin` or `xai-keys bootstrap-admin`"
            );
        }
    }
    let gw_state = gateway.state();
    let peers = gw_state.peers.clone();
    if let Some(f) = peers.keyring_file() {
        tracing::info!(file = %f.display(), "peer key ring read from a file: re-read when it changes and on SIGHUP");
    }
    match &gw_state.cfg.admin_networks {
        xai_keys_server::access::AdminNetworksSource::Anywhere => {}
        xai_keys_server::access::AdminNetworksSource::List(l) => tracing::info!(
            networks = l.len(),
            "/admin/* limited to XAI_ADMIN_ALLOWED_NETWORKS (a list: changes need a restart; give a file path to change it with SIGHUP)"
        ),
        xai_keys_server::access::AdminNetworksSource::File(f) => tracing::info!(
            file = %f.display(),
            "/admin/* limited to the networks in this file: re-read when it changes and on SIGHUP"
        ),
    }
    if gw_state.access.lockdown_active() {
        tracing::warn!("starting under an emergency lockdown (`xai-keys lockdown status`)");
    }
    rt.block_on(async move {
        // SIGHUP re-reads the peer keyring file (a Vault agent's rotation), without a restart.
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot install the SIGHUP handler; the keyring file is still re-read when it changes");
                return;
            };
            while hup.recv().await.is_some() {
                let a = gw_state.access.clone();
                match tokio::task::spawn_blocking(move || a.reload_networks()).await {
                    Ok(Ok(true)) => tracing::info!("SIGHUP: admin network allow-list file re-read"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(problem = %e, "SIGHUP: the admin network allow-list file cannot be used; the previous list stays in force"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                }
                let p = peers.clone();
                match tokio::task::spawn_blocking(move || p.reload()).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => tracing::info!("SIGHUP: no XAI_PEER_KEYRING_FILE to re-read (keys from the environment need a restart)"),
                    Ok(Err(e)) => {
                        gw_state.metrics.keyring_reload_failed();
                        tracing::error!(problem = %e, "SIGHUP: the peer keyring file cannot be used; the previous ring stays in force");
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        });
        let local = listener.local_addr().context("listener address")?;
        tracing::info!(addr = %local, "listening");
        gateway
            .run(listener, shutdown_signal())
            .await
            .context("gateway failed")
    })?;
    Ok(true)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
