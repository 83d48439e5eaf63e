//! Test support for the data plane, never shipped (`publish = false`, only a
//! dev-dependency): [`sim`], a deterministic simulated network whose relay is the real
//! relay [`Switchboard`](drawbridge_relay::switchboard::Switchboard). Its `tests/` run the
//! relay with real tunnel drivers over loopback sockets, and `tests/tidy.rs` checks
//! ARCHITECTURE.md and the workspace's architecture rules; `src/bin/drawbridge-bench` is
//! the throughput bench; [`browser`] runs real Chromium for the portal's and
//! browser access's tests; [`oidc`] runs a real OpenID provider (npm's `oidc-provider`)
//! for the single sign-on tests.

pub mod browser;
pub mod oidc;
pub mod sim;
