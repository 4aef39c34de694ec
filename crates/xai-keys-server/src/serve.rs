//! Serving: the accept loop, connection limits and graceful shutdown.
//!
//! Each connection is served by hyper (HTTP/1.1 and HTTP/2) with a header-read timeout that also
//! covers a client that connects and sends nothing, a header-count cap, HTTP/2 keep-alive pings
//! and a stream cap, and at most `XAI_MAX_CONNECTIONS` connections at once (more wait in the
//! listen backlog), so slow or idle clients cannot hold the gateway. On shutdown the listener
//! closes, in-flight requests get `shutdown_grace` to finish, the webhook workers stop, the
//! store watcher stops, the last usage data is written and the telemetry pipeline makes its
//! final pass.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::state::Gateway;

/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 100;

impl Gateway {
    /// Serves until `shutdown` completes, then drains and stops background work.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let router = self.router();
        let st = self.state();
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(st.cfg.header_read_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(128)
            // An HTTP/2 connection that stops answering pings is closed.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let (workers_stop_tx, workers_stop) = tokio::sync::watch::channel(false);
        let workers = st
            .telemetry
            .spawn_workers(&workers_stop)
            .map_err(std::io::Error::other)?;
        let egress = self.egress.take().map(|l| {
            let mut stop = workers_stop.clone();
            tokio::spawn(crate::egress::serve(l, st.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let slots = Arc::new(Semaphore::new(st.cfg.max_connections));
        let first_byte = st.cfg.header_read_timeout;
        let graceful = GracefulShutdown::new();
        let flusher = {
            let st = st.clone();
            let every = st.cfg.usage_flush;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let st = st.clone();
                    let _ = tokio::task::spawn_blocking(move || st.flush_usage()).await;
                }
            })
        };
        // Tells connections still waiting for their first byte that the gateway is stopping
        // (they hold a graceful-shutdown watcher, which `shutdown()` waits for).
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            // At the connection cap, stop accepting: new clients wait in the listen backlog.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let svc = router
                .clone()
                .map_request(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // hyper's header timeout starts with the first byte, and protocol detection
                // waits without one: a client that connects and sends nothing is closed after
                // the header timeout too.
                let mut probe = [0u8; 1];
                tokio::select! {
                    r = tokio::time::timeout(first_byte, stream.peek(&mut probe)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    },
                    _ = stopping.wait_for(|s| *s) => return,
                }
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(svc),
                );
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let _ = stopping_tx.send(true);
        tracing::info!("shutting down: draining in-flight requests");
        if tokio::time::timeout(st.cfg.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?st.cfg.shutdown_grace, "in-flight requests did not finish in time");
        }
        flusher.abort();
        // Webhook workers stop between deliveries; queued events stay on disk for the next run.
        let _ = workers_stop_tx.send(true);
        if let Some(e) = egress {
            let abort = e.abort_handle();
            if tokio::time::timeout(st.cfg.shutdown_grace, e)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for w in workers {
            let abort = w.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        tokio::task::spawn_blocking(move || self.stop_background())
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}
