//! Wire and API types shared by every Drawbridge part. No I/O lives here.
//!
//! Request types reject unknown fields and parse bounded, validated values at
//! deserialisation time ("parse, don't validate"): a handler that receives a
//! `Name` knows it is 1..=64 printable characters.

pub mod api;
pub mod channel;
pub mod data;
pub mod desktop;
pub mod enrollfile;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod mailbox;
pub mod model;
pub mod sso;
pub mod text;
pub mod update;
pub mod web;
pub mod wgconf;
pub mod wgkey;

pub use error::{ApiError, ErrorCode};
pub use model::*;
pub use text::{LongText, Name, Region, TagName, Username};
pub use wgkey::{WgKey, WgKeyError};

/// Prefix of every versioned control API route.
pub const API_PREFIX: &str = "/api/v1";
