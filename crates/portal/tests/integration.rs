//! The portal crate's integration tests, linked into one test binary (one
//! binary per test file took several gigabytes of disk and most of the link time).
//! Each module is one file of this directory; filter with the module name, e.g.
//! `cargo test -p drawbridge-portal --test integration -- browser::`.

#[macro_use]
mod common;
mod browser_ui;
mod data_harness;

mod browser;
mod browser_data;
mod data;
mod notifications;
mod portal;
mod sso_browser;
mod updates;
mod wireguard;
