//! The CLI's one integration-test binary: every command end to end against real files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod commands;
mod common;
mod concurrency;
mod crash;
mod crash_gateway;
mod diskfull;
mod fixtures;
mod fleet;
mod hardening;
mod operator;
mod peer;
mod runbook;
mod serve;
mod smoke;
mod soak;
mod telemetry;
mod usage;
