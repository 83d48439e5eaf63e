//! Drawbridge control plane: accounts, users, rights, devices, sessions and
//! audit behind a JSON API over HTTPS. See ARCHITECTURE.md for the map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod background;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod db;
pub mod desktop;
pub mod error;
pub mod extract;
pub mod health;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod notifications;
pub mod outbox;
pub mod password;
pub mod pki;
pub mod records;
pub mod relay_feed;
pub mod relays;
pub mod rights;
pub mod sealed;
pub mod secret;
pub mod serve;
pub mod sessions;
pub mod sso;
pub mod state;
pub mod syslog;
pub mod totp;
pub mod updates;
pub mod web;

pub use api::app;
