//! Certificates: the server's own TLS CA and certificate (generated on first
//! start and kept in the data directory), and the device CA that signs each
//! enrolled edge's certificate (kept in the database so every replica signs
//! with the same CA).

use crate::db::Store;
use crate::error::{AppError, AppResult};
use crate::sealed::CA_KEY_NAME;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use ring::digest;
use sqlx::Row;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Files of the self-signed setup, inside the data directory.
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn ca_params(common_name: &str, years: i64) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Drawbridge");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * years);
    Ok(params)
}

/// Creates the CA and server certificate on first start; afterwards reuses
/// them. `names` are DNS names or IP addresses the certificate must cover.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles::in_dir(dir);
    let ca_key_path = dir.join("ca.key");
    if files.ca_cert.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ca = ca_params("Drawbridge local CA", 10)?.self_signed(&ca_key)?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = sans
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Drawbridge server");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    std::fs::create_dir_all(dir)?;
    write_private(&ca_key_path, &ca_key.serialize_pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca.pem()))?;
    std::fs::write(&files.ca_cert, ca.pem())?;
    Ok(files)
}

/// SHA-256 of the first certificate in a PEM file, as `AB:CD:…`.
pub fn fingerprint(pem_path: &Path) -> anyhow::Result<String> {
    let data = std::fs::read(pem_path)?;
    let der = rustls_pemfile::certs(&mut data.as_slice())
        .next()
        .context("no certificate in file")??;
    let d = digest::digest(&digest::SHA256, der.as_ref());
    Ok(d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// A rustls server configuration from PEM files (chain + key).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())
        .with_context(|| format!("reading key from {}", key.display()))?
        .context("no private key in file")?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A raw Ed25519 public key, for rcgen.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// The CA that signs device certificates.
pub struct DeviceCa {
    cert_pem: String,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl DeviceCa {
    /// Loads the device CA from the database, creating it once (race-safe across replicas).
    pub async fn load_or_create(store: &Store, now: i64) -> anyhow::Result<DeviceCa> {
        if let Some(ca) = Self::load(store).await? {
            return Ok(ca);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params("Drawbridge device CA", 20)?.self_signed(&key)?;
        let sealed_key = store.seal(
            &crate::sealed::server_secret_context(CA_KEY_NAME),
            &key.serialize_pem(),
        );
        // Both rows in one transaction: replicas starting at once keep one pair
        // (a cert of one and the key of another would sign nothing valid).
        let mut tx = store.begin().await?;
        for (name, value) in [("device_ca_cert", cert.pem()), (CA_KEY_NAME, sealed_key)] {
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Self::load(store)
            .await?
            .context("device CA vanished after creation")
    }

    async fn load(store: &Store) -> anyhow::Result<Option<DeviceCa>> {
        let rows = sqlx::query(
            "SELECT name, value FROM server_secrets WHERE name IN ('device_ca_cert', 'device_ca_key')",
        )
        .fetch_all(&store.pool)
        .await?;
        let mut cert_pem = None;
        let mut key_pem = None;
        for r in rows {
            let name: String = r.try_get(0)?;
            let value: String = r.try_get(1)?;
            match name.as_str() {
                "device_ca_cert" => cert_pem = Some(value),
                _ => key_pem = Some(value),
            }
        }
        let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
            return Ok(None);
        };
        let key_pem = store.unseal(&crate::sealed::server_secret_context(CA_KEY_NAME), &key_pem)?;
        let key = KeyPair::from_pem(&key_pem)?;
        // rcgen signs with issuer parameters; re-deriving them from the stored
        // certificate keeps subject and key identifier identical.
        let issuer = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        Ok(Some(DeviceCa {
            cert_pem,
            issuer,
            key,
        }))
    }

    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a certificate binding `device_id` (from the server's record) to the
    /// device's Ed25519 public key.
    pub fn issue(
        &self,
        device_id: &str,
        account_id: &str,
        public_key: [u8; 32],
    ) -> anyhow::Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, account_id);
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:drawbridge:device:{device_id}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365 * 5);
        let cert = params.signed_by(&Ed25519Public(public_key), &self.issuer, &self.key)?;
        Ok(cert.pem())
    }
}

/// A device's identity key: a base64 Ed25519 public key → 32 bytes.
pub fn decode_key(b64: &str) -> AppResult<[u8; 32]> {
    if b64.len() > 64 {
        return Err(AppError::invalid("public_key is not a base64 Ed25519 key"));
    }
    STANDARD
        .decode(b64)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| AppError::invalid("public_key is not a base64 Ed25519 key"))
}
