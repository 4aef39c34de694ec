//! The core's one integration-test binary: property tests of the store format, the audit chain,
//! the key format and id resolution; every crash point of a commit, simulated on real files;
//! threads sharing a store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod crash_points;
mod lockdown;
mod props_chain;
mod props_store;
mod props_token;
mod restore;
mod review;
mod threads;
mod usage;
mod ux;
mod window;
