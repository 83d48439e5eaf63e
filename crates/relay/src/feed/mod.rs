//! The revocation feed: how a standalone relay learns which sessions ended.
//!
//! The control plane serves `GET /relay/v1/revoked?after=CURSOR` ([`FEED_PATH`]): the
//! ended sessions whose tokens have not expired yet, each with `until` (the latest
//! expiry any of its tokens can have), in pages of at most [`MAX_PAGE`] ordered by when
//! they ended, and the cursor to ask with next ([`Page`]). Readers present a relay
//! credential ([`issue_credential`]): `drf1.<b64url(JSON)>.<b64url(Ed25519 sig)>`,
//! signed with the relay-token signing key, so only relays the operator handed one to
//! can read session ids; its own prefix keeps it apart from admission tokens.
//!
//! [`Feed`] is the relay's side, pure: it checks each reply (status, size, shape,
//! bounds), keeps the cursor, says which sessions to revoke and how long to wait
//! before the next request (at once for another page, [`POLL_EVERY`] when caught up,
//! doubling backoff up to [`MAX_BACKOFF`] after failures, keeping the cursor and
//! everything revoked so far). [`poll`] is the thin tokio loop around it.

pub mod announce;
pub mod poll;
#[cfg(test)]
mod tests;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::token::{MAX_SESSION_ID_LEN, SigningKey, TokenError, VerifyingKey};

/// Path of the feed on the control plane.
pub const FEED_PATH: &str = "/relay/v1/revoked";
/// Most entries in one page (the control plane sends at most this many).
pub const MAX_PAGE: usize = 500;
/// Longest reply body a relay reads; a longer one is refused as a whole.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest cursor.
pub const MAX_CURSOR_LEN: usize = 160;
/// Time between requests once caught up.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// Longest wait after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest relay credential.
pub const MAX_CREDENTIAL_LEN: usize = 512;
/// Longest relay name in a credential.
pub const MAX_RELAY_NAME_LEN: usize = 64;
const CREDENTIAL_PREFIX: &str = "drf1";

/// One revoked session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub session: String,
    /// Unix seconds after which no token of the session can be valid.
    pub until: u64,
}

/// One reply of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub revoked: Vec<Revoked>,
    /// The cursor for the next request.
    pub next: String,
    /// More entries follow at once (ask again without waiting).
    pub more: bool,
}

/// Why a reply was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the control plane could not be reached: {0}")]
    Transport(String),
    #[error("the control plane refused the relay credential (HTTP {0})")]
    Refused(u16),
    #[error("the control plane answered HTTP {0}")]
    Status(u16),
    #[error("the reply is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the reply is not a revocation page")]
    Malformed,
    #[error("the reply is out of bounds")]
    OutOfBounds,
}

/// What to do after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Sessions to revoke now.
    pub revoke: Vec<Revoked>,
    /// Wait this long before the next request.
    pub wait: Duration,
    /// Why the reply was not used (nothing revoked, cursor kept).
    pub error: Option<FeedError>,
    /// The first good reply after failures (for the log).
    pub recovered: bool,
}

/// The relay's side of the feed: cursor and backoff. Pure: no I/O, no clock.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    cursor: String,
    failures: u32,
}

impl Feed {
    pub fn new() -> Self {
        Feed::default()
    }

    /// The cursor to send as `after` (empty at first: from the beginning).
    pub fn cursor(&self) -> &str {
        &self.cursor
    }

    /// Failed replies in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes one reply: `Ok((status, body))`, or a transport failure.
    pub fn handle(&mut self, reply: Result<(u16, &[u8]), FeedError>) -> Step {
        match reply.and_then(|(status, body)| parse(status, body)) {
            Ok(page) => {
                let recovered = self.failures > 0;
                self.failures = 0;
                self.cursor = page.next;
                Step {
                    revoke: page.revoked,
                    wait: if page.more {
                        Duration::ZERO
                    } else {
                        POLL_EVERY
                    },
                    error: None,
                    recovered,
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                Step {
                    revoke: Vec::new(),
                    wait: backoff(self.failures),
                    error: Some(e),
                    recovered: false,
                }
            }
        }
    }
}

/// The wait after `failures` failed replies in a row: 2 s, 4 s, 8 s, ... up to 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    (POLL_EVERY * (1u32 << exp)).min(MAX_BACKOFF)
}

/// Checks one reply completely before anything of it is used.
fn parse(status: u16, body: &[u8]) -> Result<Page, FeedError> {
    match status {
        200 => {}
        401 | 403 => return Err(FeedError::Refused(status)),
        s => return Err(FeedError::Status(s)),
    }
    if body.len() > MAX_BODY {
        return Err(FeedError::TooLarge);
    }
    let page: Page = serde_json::from_slice(body).map_err(|_| FeedError::Malformed)?;
    let bad_id = |s: &str| s.is_empty() || s.len() > MAX_SESSION_ID_LEN;
    if page.revoked.len() > MAX_PAGE
        || page.next.len() > MAX_CURSOR_LEN
        || page.revoked.iter().any(|r| bad_id(&r.session))
    {
        return Err(FeedError::OutOfBounds);
    }
    Ok(page)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialWire {
    /// The relay's name, for the control plane's log.
    relay: String,
    exp: u64,
}

/// What a verified relay credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub relay: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

/// Signs a relay credential for the revocation feed (`drawbridge-server relay-credential`).
pub fn issue_credential(key: &SigningKey, cred: &Credential) -> Result<String, TokenError> {
    if cred.relay.len() > MAX_RELAY_NAME_LEN {
        return Err(TokenError::OutOfBounds);
    }
    let wire = CredentialWire {
        relay: cred.relay.clone(),
        exp: cred.expires_at,
    };
    let json = serde_json::to_vec(&wire).map_err(|_| TokenError::Malformed)?;
    let signed = format!("{CREDENTIAL_PREFIX}.{}", B64.encode(json));
    let sig = key.sign(signed.as_bytes());
    Ok(format!("{signed}.{}", B64.encode(sig)))
}

/// Verifies a relay credential at unix time `now`.
pub fn verify_credential(
    key: &VerifyingKey,
    credential: &str,
    now: u64,
) -> Result<Credential, TokenError> {
    if credential.len() > MAX_CREDENTIAL_LEN {
        return Err(TokenError::TooLong);
    }
    let (signed, sig_b64) = credential.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (prefix, body_b64) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if prefix != CREDENTIAL_PREFIX {
        return Err(TokenError::Malformed);
    }
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    if !key.verifies(signed.as_bytes(), &sig) {
        return Err(TokenError::BadSignature);
    }
    let body = B64.decode(body_b64).map_err(|_| TokenError::Malformed)?;
    let wire: CredentialWire = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if wire.relay.len() > MAX_RELAY_NAME_LEN {
        return Err(TokenError::OutOfBounds);
    }
    if wire.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(Credential {
        relay: wire.relay,
        expires_at: wire.exp,
    })
}
