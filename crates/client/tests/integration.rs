//! The client crate's integration tests, linked into one test binary (one
//! binary per test file took several gigabytes of disk and most of the link time).
//! Each module is one file of this directory; filter with the module name, e.g.
//! `cargo test -p drawbridge --test integration -- account_cli::`.

mod common;

mod account_cli;
mod connect_cli;
mod data_cli;
mod device_cli;
mod notify_cli;
mod rollout_cli;
mod sso_cli;
mod totp_cli;
