//! The thin tokio loop around [`Feed`]: one HTTPS request at a time to the control
//! plane's feed, each reply handed to the state machine, its revocations applied with
//! [`RelayState::revoke_session`], then the wait it asks for.

use std::time::Duration;

use super::announce::{Announce, AnnounceError, Heartbeat};
use super::{FEED_PATH, Feed, FeedError, MAX_BODY, MAX_CREDENTIAL_LEN};
use crate::RelayState;

/// Longest a request may take (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the feed cannot be set up (reported at start).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the control-plane URL must be https://host[:port] ({0})")]
    Url(String),
    #[error("the CA file holds no usable PEM certificate ({0})")]
    Ca(String),
    #[error("the relay credential is empty or longer than {MAX_CREDENTIAL_LEN} bytes")]
    Credential,
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Announce(#[from] AnnounceError),
}

/// Where and how a standalone relay reads the revocation feed.
#[derive(Clone)]
pub struct RevocationFeed {
    url: String,
    credential: String,
    http: reqwest::Client,
    /// Sent with every poll as this relay's heartbeat (the relay tier).
    announce: Option<Announce>,
}

impl std::fmt::Debug for RevocationFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationFeed")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RevocationFeed {
    /// The feed of the control plane at `control_url` (`https://host[:port]`), read with
    /// `credential`, trusting the system's roots and the PEM certificates in `ca_pem`.
    pub fn new(
        control_url: &str,
        credential: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, SetupError> {
        let base = control_url.trim().trim_end_matches('/');
        let rest = base
            .strip_prefix("https://")
            .ok_or_else(|| SetupError::Url(base.to_string()))?;
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(SetupError::Url(base.to_string()));
        }
        let credential = credential.trim();
        if credential.is_empty() || credential.len() > MAX_CREDENTIAL_LEN {
            return Err(SetupError::Credential);
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(ca_pem)?)
            .https_only(true)
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("drawbridge-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Tls(e.to_string()))?;
        Ok(RevocationFeed {
            url: format!("{base}{FEED_PATH}"),
            credential: credential.to_string(),
            http,
            announce: None,
        })
    }

    /// Announces this relay with every poll (its heartbeat): the control plane then
    /// hands sessions to it and moves them away when it stops or drains.
    pub fn with_announce(mut self, announce: Announce) -> Result<Self, SetupError> {
        announce.check()?;
        self.announce = Some(announce);
        Ok(self)
    }

    pub fn announce(&self) -> Option<&Announce> {
        self.announce.as_ref()
    }

    /// The feed's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Polls forever, revoking on `state` what the control plane reports.
    pub async fn run(self, state: RelayState) {
        let mut feed = Feed::new();
        tracing::info!(url = %self.url, "relay: reading the revocation feed");
        loop {
            let heartbeat = self.announce.as_ref().map(|a| Heartbeat {
                announce: a.clone(),
                draining: state.is_draining(),
                connections: state.connections(),
            });
            let reply = self.fetch(feed.cursor(), heartbeat.as_ref()).await;
            let step = feed.handle(
                reply
                    .as_ref()
                    .map(|(status, body)| (*status, body.as_slice()))
                    .map_err(Clone::clone),
            );
            for r in &step.revoke {
                tracing::debug!(session = %r.session, until = r.until, "relay: session revoked by the control plane");
                state.revoke_session(&r.session, r.until);
            }
            if !step.revoke.is_empty() {
                tracing::info!(
                    sessions = step.revoke.len(),
                    "relay: revoked sessions from the control plane"
                );
            }
            if step.recovered {
                tracing::info!("relay: revocation feed reachable again");
            }
            if let Some(e) = &step.error {
                tracing::warn!(error = %e, failures = feed.failures(), retry_in = ?step.wait,
                    "relay: revocation feed failed; sessions revoked so far stay revoked");
            }
            // Draining starts a heartbeat at once instead of after the wait.
            tokio::select! {
                _ = tokio::time::sleep(step.wait) => {}
                _ = state.feed_woken() => {}
            }
        }
    }

    /// One request: the status and at most [`MAX_BODY`] bytes of body.
    async fn fetch(
        &self,
        cursor: &str,
        heartbeat: Option<&Heartbeat>,
    ) -> Result<(u16, Vec<u8>), FeedError> {
        let transport = |e: reqwest::Error| FeedError::Transport(error_chain(&e));
        let mut query = vec![("after", cursor.to_string())];
        query.extend(heartbeat.map(Heartbeat::to_query).unwrap_or_default());
        let mut resp = self
            .http
            .get(&self.url)
            .query(&query)
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(FeedError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(FeedError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// The system's roots plus the certificates of `ca_pem`.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    // Missing system roots are not fatal: the CA file may be all that is needed.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| SetupError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| SetupError::Ca(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(SetupError::Ca("no certificate found".into()));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
