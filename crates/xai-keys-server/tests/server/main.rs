//! The gateway's integration tests: the admin key API, authentication and the route policy,
//! rate limits, proxying over real sockets, store reloads (the CLI in "another process"),
//! store problems while running, last-use tracking, bootstrap, metrics and security telemetry
//! (events, change windows, webhook delivery).
//!
//! In-process tests drive `Gateway::router()` with `tower::ServiceExt::oneshot` and an injected
//! clock; real-socket tests serve `Gateway::run` on 127.0.0.1 in front of a recording upstream.
//! Every wait is bounded, and every response is checked for echoed keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod admin_api;
mod admin_input;
mod assets;
mod auth_policy;
mod bootstrap;
mod clock;
mod common;
mod connections;
mod envkeys;
mod files;
mod metrics;
mod peer;
mod proxy;
mod reload;
mod store_health;
mod telemetry;
mod usage_limits;
