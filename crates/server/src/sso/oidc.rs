//! The OpenID Connect relying party, on the `openidconnect` crate: discovery
//! (cached per issuer), the authorization URL with PKCE and nonce, the code
//! exchange, the device grant's two calls, and ID token verification against
//! the provider's keys, the client id, the stored nonce and the server's clock.
//!
//! HTTP goes through our own reqwest client (rustls with ring, the system's
//! roots, no proxy, no redirects, 10 s). Nothing here logs a code, a token,
//! a verifier or a secret.

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthType, Client, ClientId, ClientSecret,
    DeviceAuthorizationUrl, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IdTokenFields, IssuerUrl, ProviderMetadata, RedirectUrl, StandardErrorResponse,
    StandardTokenResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The discovery document's fields the core type does not have.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMeta {
    #[serde(default)]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 9207: the provider adds `iss` to its answers at the redirect URI.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraMeta {}

pub type Meta = ProviderMetadata<
    ExtraMeta,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Every claim that is not a standard one, so the admin can name the groups claim.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Extra {
    #[serde(flatten)]
    pub claims: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for Extra {}

pub type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        Extra,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

pub type OidcClient = Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

pub type IdToken = openidconnect::IdToken<
    Extra,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type IdTokenClaims = openidconnect::IdTokenClaims<Extra, CoreGenderClaim>;

/// The signature algorithms we accept (asymmetric only: never HS*, never none).
pub const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a discovery document (with its keys) is used before it is fetched again.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// The HTTP client for providers: rustls (ring) with the system's roots, no
/// proxy, no redirects (the crate's advice against request forgery), 10 s.
pub fn http() -> reqwest::Client {
    static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .user_agent(concat!("Drawbridge-SSO/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the SSO HTTP client builds")
    });
    HTTP.clone()
}

static CACHE: LazyLock<Mutex<HashMap<String, (Instant, Meta)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The provider's discovery document and keys: cached for 10 minutes, fetched
/// again when `fresh` (a key the cached set does not have: rotation). The
/// crate refuses a document whose `issuer` is not exactly `issuer`.
pub async fn discover(issuer: &str, fresh: bool) -> Result<Meta, String> {
    if !fresh
        && let Some((at, meta)) = CACHE.lock().expect("cache lock").get(issuer)
        && at.elapsed() < CACHE_TTL
    {
        return Ok(meta.clone());
    }
    let url = IssuerUrl::new(issuer.to_string()).map_err(|e| format!("issuer: {e}"))?;
    let meta = Meta::discover_async(url, &http())
        .await
        .map_err(|e| describe_discovery(&e))?;
    let mut cache = CACHE.lock().expect("cache lock");
    if cache.len() > 1000 {
        cache.clear();
    }
    cache.insert(issuer.to_string(), (Instant::now(), meta.clone()));
    Ok(meta)
}

fn describe_discovery<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    use openidconnect::DiscoveryError as D;
    match e {
        D::Validation(m) => format!("discovery document refused: {m}"),
        D::Parse(p) => format!("discovery document does not parse: {p}"),
        D::Response(status, _, _) => format!("discovery answered HTTP {status}"),
        D::Request(r) => format!("discovery request failed: {}", chain(r)),
        other => format!("discovery failed: {other}"),
    }
}

/// An error with its sources, for messages (none of these carry secrets).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The client for `client_id` (and its secret, if any) with our redirect URI.
pub fn client(
    meta: &Meta,
    client_id: &str,
    secret: Option<&str>,
    redirect_uri: &str,
) -> Result<OidcClient, String> {
    // client_secret_basic unless the provider says it takes only client_secret_post.
    let auth = match meta.token_endpoint_auth_methods_supported() {
        Some(m)
            if !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && m.contains(&CoreClientAuthMethod::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    };
    Ok(OidcClient::from_provider_metadata(
        meta.clone(),
        ClientId::new(client_id.to_string()),
        secret.map(|s| ClientSecret::new(s.to_string())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect_uri.to_string()).map_err(|e| e.to_string())?)
    .set_auth_type(auth))
}

/// A unix time as the crate's clock.
pub fn chrono_time(unix: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// Why an ID token was refused, as a short reason for the audit log.
pub fn claims_reason(e: &openidconnect::ClaimsVerificationError) -> String {
    use openidconnect::ClaimsVerificationError as C;
    use openidconnect::SignatureVerificationError as S;
    match e {
        C::Expired(_) => "token_expired".into(),
        C::InvalidAudience(_) => "wrong_audience".into(),
        C::InvalidIssuer(_) => "wrong_issuer".into(),
        C::InvalidNonce(_) => "nonce_mismatch".into(),
        C::InvalidSubject(_) => "bad_subject".into(),
        C::SignatureVerification(S::NoSignature) => "unsigned_token".into(),
        C::SignatureVerification(S::DisallowedAlg(_)) => "disallowed_algorithm".into(),
        C::SignatureVerification(S::NoMatchingKey) => "unknown_key".into(),
        C::SignatureVerification(S::CryptoError(_)) => "bad_signature".into(),
        C::SignatureVerification(_) => "bad_signature".into(),
        _ => "token_invalid".into(),
    }
}

/// The groups in a claim: an array of strings, or one string.
pub fn groups(claims: &IdTokenClaims, name: &str) -> Vec<String> {
    match claims.additional_claims().claims.get(name) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .take(1000)
            .map(|s| s.chars().take(256).collect())
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.chars().take(256).collect()],
        _ => Vec::new(),
    }
}

/// The `amr` values of the token.
pub fn amr(claims: &IdTokenClaims) -> Vec<String> {
    claims
        .auth_method_refs()
        .map(|v| v.iter().take(32).map(|a| a.as_str().to_string()).collect())
        .unwrap_or_default()
}
