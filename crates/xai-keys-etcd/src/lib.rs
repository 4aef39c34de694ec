//! The etcd backend of the xai-keys key store: one store shared by a fleet of gateways.
//!
//! [`EtcdStore`] implements [`xai_keys_core::store::KeyStore`], so the CLI, the admin API and
//! the gateway work on it exactly as on the local JSON file. The layout under the store's
//! prefix is in [`layout`]; how a gateway keeps a watched copy and reports losing the cluster is
//! in [`mirror`]; `xai-keys migrate` is [`migrate::migrate`]. The core stays synchronous: this
//! crate owns the async etcd client and a small runtime behind a blocking bridge.

mod bridge;
pub mod layout;
pub mod migrate;
pub mod mirror;
mod store;
mod url;

pub use migrate::{MigrateReport, migrate};
pub use store::{EtcdOptions, EtcdStore, TlsFiles};
pub use url::{EtcdUrl, is_etcd_url};
