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
    /// The portal's CSRF key, shared by every replica.
    pub portal_key: Vec<u8>,
    /// The relay served on this server's TLS port.
    pub relay: drawbridge_relay::RelayState,
    /// Connected edges and clients.
    pub hub: crate::live::Hub,
    /// Browser access: web domain, peers' TLS trust, running peers.
    pub web: crate::web::Web,
    /// The CA of this server's own self-signed TLS certificate (PEM), for
    /// enrolment files; none when the server runs on a certificate of its own.
    pub tls_ca: std::sync::RwLock<Option<String>>,
    /// The browser desktops open on this replica.
    pub desktops: crate::desktop::live::Desktops,
    /// The relay tier: this replica's embedded relay and the others' heartbeats.
    pub relays: crate::relays::Relays,
    /// STUN servers handed to edges and clients (`host:port`).
    pub stun: std::sync::RwLock<Vec<String>>,
    /// The relay's UDP bridge for standard WireGuard clients (`host:port`), when it runs.
    pub bridge: std::sync::RwLock<Option<String>>,
    /// Attempts at the unauthenticated routes (login, second factor, enrolment,
    /// setup) per remote address; shared by the API and the portal, which calls it.
    pub attempts: governor::DefaultKeyedRateLimiter<String>,
    /// When this process started (unix seconds, by `clock`): an edge is judged
    /// offline for good only after this replica has itself been up for the grace
    /// period, so a control plane that was down itself ends nothing on its return.
    pub started_at: i64,
    /// Audit chain heads this process found intact (page views check only what is new).
    pub audit_verified: crate::audit::VerifiedHeads,
    /// E-mail and webhook settings of this replica (the outbox worker and the API).
    pub notify: crate::outbox::Notify,
    /// The database probe `/healthz` answers from.
    pub health: crate::health::Health,
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
    /// The state with the default allowance at the unauthenticated routes.
    pub async fn new(store: Store, clock: Clock, public_url: String) -> anyhow::Result<AppState> {
        Self::with_auth_attempts(
            store,
            clock,
            public_url,
            crate::config::DEFAULT_AUTH_ATTEMPTS_PER_MINUTE,
        )
        .await
    }

    /// The state allowing `per_minute` attempts per minute and remote address at
    /// the unauthenticated routes (bursts of twice that).
    pub async fn with_auth_attempts(
        store: Store,
        clock: Clock,
        public_url: String,
        per_minute: std::num::NonZeroU32,
    ) -> anyhow::Result<AppState> {
        let device_ca = DeviceCa::load_or_create(&store, clock.unix()).await?;
        let dummy_hash = crate::password::hash(&crate::secret::new_token(""));
        let relay_key = crate::keys::relay_signing_key(&store, clock.unix()).await?;
        let portal_key = crate::keys::portal_key(&store, clock.unix()).await?;
        let relay = drawbridge_relay::RelayState::new(drawbridge_relay::RelayConfig::new(
            relay_key.verifying_key(),
        ));
        let started_at = clock.unix();
        let state = AppState(Arc::new(Inner {
            started_at,
            audit_verified: Default::default(),
            notify: Default::default(),
            health: Default::default(),
            store,
            clock,
            device_ca,
            dummy_hash,
            public_url,
            relay_key,
            portal_key,
            relay,
            hub: crate::live::Hub::default(),
            web: crate::web::Web::default(),
            tls_ca: Default::default(),
            desktops: Default::default(),
            relays: crate::relays::Relays::default(),
            stun: std::sync::RwLock::new(Vec::new()),
            bridge: std::sync::RwLock::new(None),
            attempts: governor::RateLimiter::keyed(
                governor::Quota::per_minute(per_minute).allow_burst(
                    per_minute.saturating_mul(std::num::NonZeroU32::new(2).expect("non-zero")),
                ),
            ),
        }));
        crate::live::spawn_listener(state.clone());
        Ok(state)
    }

    pub fn now(&self) -> i64 {
        self.clock.unix()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    async fn state(per_minute: u32) -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        let per_minute = std::num::NonZeroU32::new(per_minute).expect("non-zero");
        let state =
            AppState::with_auth_attempts(store, Clock::default(), "https://x".into(), per_minute)
                .await
                .expect("state");
        (state, dir)
    }

    fn allowed(state: &AppState, source: &str, tries: usize) -> usize {
        (0..tries).filter(|_| state.attempt(source).is_ok()).count()
    }

    #[tokio::test]
    async fn the_attempt_allowance_is_the_configured_rate_with_twice_as_many_at_once() {
        let (default, _d1) = state(30).await;
        assert_eq!(allowed(&default, "192.0.2.1", 100), 60);
        assert_eq!(allowed(&default, "192.0.2.2", 100), 60, "per address");
        let (raised, _d2) = state(1000).await;
        assert_eq!(allowed(&raised, "192.0.2.1", 3000), 2000);
    }
}
