//! The xai-keys gateway: an authenticating reverse proxy in front of an XAI node.
//!
//! It serves the admin key API itself, decides every other request by the route policy and the
//! key index, and forwards what it allows to the node. The pieces:
//!
//! * [`policy`]: which credential a method and path need (TOML, with a runbook default).
//! * [`credentials`]: credential extraction in the reference's order; the client address.
//! * [`index`], [`auth`]: the in-memory key index and the pure per-request decision.
//! * [`reload`]: keeping the index equal to the store, whoever writes it.
//! * [`usage`]: last-use tracking, flushed beside the store.
//! * [`peer`]: peer routes decided by signed gossip against the peer key ring; [`egress`]: the
//!   forward proxy that signs a node's outbound gossip.
//! * [`telemetry`]: security events from the audit log and the gateway, counted once, logged
//!   as JSON lines and queued for [`webhook`] delivery.
//! * [`ratelimit`], [`metrics`], [`proxy`], [`admin`], [`bootstrap`].
//! * [`router()`] builds the axum router; [`Gateway::run`] serves it until shutdown.
//!
//! Store I/O is synchronous (the core has no async); handlers run it on the blocking pool.

use std::sync::Arc;

pub mod access;
pub mod admin;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod error;
pub mod index;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod router;
mod serve;
mod state;
pub mod telemetry;
pub mod usage;
pub mod webhook;

pub use config::ServerConfig;
pub use router::{RequestContext, router};
pub use state::{AppState, Gateway, Shared};

/// The time source: epoch seconds. Tests inject their own.
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Locks a mutex, recovering the data of a holder that panicked: every mutex here guards
/// state that stays consistent between statements (maps, counters, the queue's own journal
/// state), so a poisoned lock is no reason to stop serving.
pub(crate) fn relock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(xai_keys_core::now_epoch)
}
