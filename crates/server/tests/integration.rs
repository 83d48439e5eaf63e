//! The server crate's integration tests, linked into one test binary (one
//! binary per test file took several gigabytes of disk and most of the link time).
//! Each module is one file of this directory; filter with the module name, e.g.
//! `cargo test -p drawbridge-server --test integration -- account::`.
//! Not here: `hashing_outside_writes.rs`, a binary of its own (it takes the
//! process-wide password hashing pool).

#[macro_use]
mod common;
mod live_harness;
mod outbox_harness;

mod account;
mod audit;
mod auth;
mod auth_races;
mod binary;
mod data;
mod data_alarm_list;
mod data_ingest;
mod data_tokens;
mod desktop;
mod desktop_rdp;
mod desktop_stored;
mod desktop_watch;
mod devices_revoke;
mod dual_control;
mod edge_auth;
mod enroll;
mod figures;
mod health;
mod input;
mod keys;
mod lifecycle;
mod live;
mod narrow;
mod outbox;
mod outbox_events;
mod relay_feed;
mod relay_mount;
mod relay_tier;
mod revoke;
mod roles;
mod sso;
mod sweep;
mod syslog;
mod tenancy;
mod updates;
mod web_peer;
