//! What every request handler shares.

use crate::clock::Clock;
use crate::db::Store;
use crate::pki::DeviceCa;
use std::ops::Deref;
use std::sync::Arc;

pub struct Inner {
    pub store: Store,
    pub clock: Clock,
    pub device_ca: DeviceCa,
    /// An argon2 hash of a random password, verified against when the user is
    /// unknown so that unknown and known users take the same time.
    pub dummy_hash: String,
    /// The URL users reach this server at (for links and printed commands).
    pub public_url: String,
    /// Signs relay admission tokens.
    pub relay_key: drawbridge_relay::SigningKey,
    /// The relay served on this server's TLS port.
    pub relay: drawbridge_relay::RelayState,
    /// Connected edges and clients.
    pub hub: crate::live::Hub,
    /// STUN servers handed to edges and clients (`host:port`).
    pub stun: std::sync::RwLock<Vec<String>>,
    /// The relay's UDP bridge for standard WireGuard clients (`host:port`), when it runs.
    pub bridge: std::sync::RwLock<Option<String>>,
    /// Attempts at the unauthenticated routes (login, second factor, enrolment,
    /// setup) per remote address; shared by the API and the portal, which calls it.
    pub attempts: governor::DefaultKeyedRateLimiter<String>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn new(store: Store, clock: Clock, public_url: String) -> anyhow::Result<AppState> {
        let device_ca = DeviceCa::load_or_create(&store, clock.unix()).await?;
        let dummy_hash = crate::password::hash(&crate::secret::new_token(""));
        let relay_key = crate::keys::relay_signing_key(&store, clock.unix()).await?;
        let relay = drawbridge_relay::RelayState::new(drawbridge_relay::RelayConfig::new(
            relay_key.verifying_key(),
        ));
        let state = AppState(Arc::new(Inner {
            store,
            clock,
            device_ca,
            dummy_hash,
            public_url,
            relay_key,
            relay,
            hub: crate::live::Hub::default(),
            stun: std::sync::RwLock::new(Vec::new()),
            bridge: std::sync::RwLock::new(None),
            attempts: governor::RateLimiter::keyed(
                governor::Quota::per_minute(ATTEMPTS_PER_MINUTE).allow_burst(ATTEMPTS_BURST),
            ),
        }));
        crate::live::spawn_listener(state.clone());
        Ok(state)
    }

    pub fn now(&self) -> i64 {
        self.clock.unix()
    }
}

/// Sustained attempts per minute and address at the unauthenticated routes.
const ATTEMPTS_PER_MINUTE: std::num::NonZeroU32 = std::num::NonZeroU32::new(30).expect("non-zero");
/// How many may come at once before the rate applies.
const ATTEMPTS_BURST: std::num::NonZeroU32 = std::num::NonZeroU32::new(60).expect("non-zero");

impl AppState {
    /// Refuses an unauthenticated attempt from `source` over the rate limit.
    pub fn attempt(&self, source: &str) -> crate::error::AppResult<()> {
        match self.attempts.check_key(&source.to_string()) {
            Ok(()) => Ok(()),
            Err(_) => {
                metrics::counter!("rate_limited_total").increment(1);
                Err(crate::error::AppError::new(
                    drawbridge_proto::ErrorCode::RateLimited,
                    "too many attempts from your address; wait a minute and try again",
                ))
            }
        }
    }

    pub fn stun_servers(&self) -> Vec<String> {
        self.stun.read().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn bridge_endpoint(&self) -> Option<String> {
        self.bridge.read().ok().and_then(|v| v.clone())
    }

    pub fn set_bridge_endpoint(&self, endpoint: Option<String>) {
        if let Ok(mut v) = self.bridge.write() {
            *v = endpoint;
        }
    }

    pub fn set_stun_servers(&self, servers: Vec<String>) {
        if let Ok(mut v) = self.stun.write() {
            *v = servers;
        }
    }
}
