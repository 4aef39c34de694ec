//! xai-keys core: keys, scopes, the store and its audit log, and lifecycle decisions.
//!
//! Synchronous and free of HTTP so that a Rust node can embed it. The CLI and the gateway are
//! thin front ends over [`ops::KeyManager`] and the [`store::KeyStore`] trait. Time is always a
//! parameter (`now`, epoch seconds as `f64`, the reference's unit); only front ends read clocks.

pub mod audit;
pub mod backup;
pub mod envkeys;
pub mod error;
pub mod events;
pub mod lockdown;
pub mod ops;
pub mod peer;
pub mod policy;
pub mod record;
pub mod scope;
pub mod store;
pub mod token;
pub mod usage;
pub mod volume;
pub mod window;

pub use error::{Error, ErrorClass, Result, TextField};
pub use scope::Scope;
pub use token::{KeyId, PlainToken};

/// The current time as epoch seconds, for front ends.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
