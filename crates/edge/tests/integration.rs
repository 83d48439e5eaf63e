//! The edge crate's integration tests, linked into one test binary (one
//! binary per test file took several gigabytes of disk and most of the link time).
//! Each module is one file of this directory; filter with the module name, e.g.
//! `cargo test -p drawbridge-edge --test integration -- agent::`.

mod common;
mod data;

mod agent;
mod cluster;
mod data_cluster;
mod data_poll;
mod data_services;
mod desktop_browser;
mod desktop_rdp;
mod dual_control;
mod enroll_file;
mod lifecycle;
mod relay_failover;
mod revoke;
mod update;
mod web_access;
mod web_browser;
mod web_https;
mod web_replicas;
