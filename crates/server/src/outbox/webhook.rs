//! Webhook calls signed per the Standard Webhooks convention: `POST` of a JSON
//! body with `webhook-id` (the event's stable id: a retry carries the same one),
//! `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature:
//! v1,<base64 of HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, where the secret
//! is the base64 after `whsec_` in the one the account was shown.

use super::queue::EventRow;
use super::ssrf;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use std::time::Duration;

/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// A call gets this long to connect…
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// …and this long in all.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// At most this much of a response body is read (for the error message).
pub const MAX_RESPONSE: usize = 4096;

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the OS random number generator failed");
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The `webhook-signature` header's value for a body.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|_| "the webhook secret is not base64".to_string())?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|_| "the webhook secret is unusable".to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The JSON body of an event: `{"type", "timestamp", "data": {event_id, account_id,
/// subject, text, details}}` (attachments are not sent; the activity report's
/// figures are in `details`).
pub fn payload(ev: &EventRow) -> Vec<u8> {
    let timestamp = crate::clock::from_unix(ev.created_at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let details: serde_json::Value =
        serde_json::from_str(&ev.data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "type": ev.kind,
        "timestamp": timestamp,
        "data": {
            "event_id": ev.id,
            "account_id": ev.account_id,
            "subject": ev.subject,
            "text": ev.text,
            "details": details,
        }
    })
    .to_string()
    .into_bytes()
}

/// Sends webhooks: no proxy, no redirects, bounded time, only allowed addresses.
#[derive(Clone, Debug)]
pub struct Sender {
    http: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(allow_private: bool) -> anyhow::Result<Sender> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .dns_resolver(std::sync::Arc::new(ssrf::Resolver { allow_private }))
            .user_agent(concat!("Drawbridge-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            http,
            allow_private,
        })
    }

    /// One call; `Ok` on a 2xx answer. The URL is checked again (the rule may have
    /// changed since it was set; an address in the URL bypasses the resolver).
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        id: &str,
        timestamp: i64,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let url = ssrf::check_url(url, self.allow_private)?;
        let signature = sign(secret, id, timestamp, &body)?;
        let res = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let snippet = read_some(res).await;
        Err(format!("HTTP {status}{snippet}"))
    }
}

/// A reqwest error with its causes, for the delivery's last error.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The start of an error response's body (at most [`MAX_RESPONSE`] bytes read).
async fn read_some(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_RESPONSE {
        match tokio::time::timeout(Duration::from_secs(2), res.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c[..c.len().min(MAX_RESPONSE - buf.len())]),
            _ => break,
        }
    }
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(sign("whsec_!!!", id, 1, body).is_err());
    }

    #[test]
    fn secrets_are_fresh_prefixed_and_32_bytes() {
        let a = new_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(
            STANDARD.decode(&a[SECRET_PREFIX.len()..]).unwrap().len(),
            32
        );
        assert_ne!(a, new_secret());
    }
}
