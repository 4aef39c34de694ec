//! A blocking face on the async etcd client.
//!
//! The [`xai_keys_core::store::KeyStore`] trait is synchronous (the core has no runtime), and
//! its callers are plain threads, the CLI, or the gateway's tokio workers. The bridge owns a
//! small runtime of its own and runs each etcd call there, handing the result back over a
//! channel: no caller ever enters `block_on`, so it is safe from inside another runtime. Every
//! call is bounded by a timeout. Dropping the bridge shuts its runtime down in the background,
//! which is allowed from any context.

use std::future::Future;
use std::time::Duration;

use xai_keys_core::Error;

pub(crate) struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
    location: String,
    timeout: Duration,
}

impl Bridge {
    pub(crate) fn new(location: String, timeout: Duration) -> Result<Bridge, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("xai-keys-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Unavailable {
                store: location.clone(),
                problem: format!("cannot start the etcd client's runtime: {e}"),
            })?;
        Ok(Bridge {
            rt: Some(rt),
            location,
            timeout,
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn unavailable(&self, problem: impl std::fmt::Display) -> Error {
        Error::Unavailable {
            store: self.location.clone(),
            problem: problem.to_string(),
        }
    }

    /// Runs `fut` on the bridge's runtime and waits for it, at most the bridge's timeout.
    pub(crate) fn run<T, F>(&self, what: &str, fut: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.run_for(what, self.timeout, fut)
    }

    /// [`Bridge::run`] with its own time limit.
    pub(crate) fn run_for<T, F>(&self, what: &str, limit: Duration, fut: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(self.unavailable("the etcd client is shut down"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let res = tokio::time::timeout(limit, fut).await;
            let _ = tx.send(res);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.unavailable(format!("{what}: {}", describe(&e)))),
            Ok(Err(_)) => Err(self.unavailable(format!(
                "{what}: no answer within {} (is a quorum of the cluster up and reachable?)",
                humantime::format_duration(limit)
            ))),
            Err(_) => Err(self.unavailable(format!("{what}: the etcd client stopped"))),
        }
    }

    /// [`Bridge::run`] for a read, which is safe to repeat: a transport failure is retried (at
    /// most 3 times, within the same time limit). After the cluster was away, the client reports
    /// the failed reconnect of each endpoint once more to the next request even when the member
    /// is back, so the first read after an outage would fail although the cluster answers.
    pub(crate) fn run_read<T, F, M>(&self, what: &str, make: M) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        M: Fn() -> F + Send + 'static,
    {
        self.run(what, async move {
            let mut tries = 0;
            loop {
                match make().await {
                    Err(e) if tries < 3 && transient(&e) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    r => return r,
                }
            }
        })
    }

    /// Starts a background task on the bridge's runtime.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.rt {
            rt.spawn(fut);
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A failure to reach a member (nothing was read or written): worth one more try.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC `Unavailable` (14).
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 14,
        _ => false,
    }
}

/// An etcd error as one line an operator can act on.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            // gRPC status codes (tonic is not re-exported by the client).
            // A wrong password or a missing user is `InvalidArgument` (3), not `Unauthenticated`.
            let auth = msg.contains("authentication failed")
                || msg.contains("user name is empty")
                || msg.contains("invalid auth token");
            let hint = match s.code() as i32 {
                16 => " (check XAI_ETCD_USER and XAI_ETCD_PASSWORD_FILE)",
                3 if auth => " (check XAI_ETCD_USER and XAI_ETCD_PASSWORD_FILE)",
                7 => " (the etcd user needs read and write on the store's prefix)",
                14 => " (no reachable member with a leader: is a quorum of the cluster up?)",
                _ => "",
            };
            format!("{:?}: {msg}{hint}", s.code())
        }
        other => other.to_string(),
    }
}
