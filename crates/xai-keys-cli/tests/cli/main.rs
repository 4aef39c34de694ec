//! The CLI's one integration-test binary: every command end to end against real files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod smoke;
