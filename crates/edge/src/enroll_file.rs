//! The enrolment file for USB/SD deployment (the portal and `drawbridge
//! device config-file` write it): the server's URL, a one-time activation key
//! (or the fleet key and a name), and what to trust for the server — the CA
//! of its self-signed certificate, inline, with its SHA-256. With it an edge
//! enrols with nothing else at hand; `--watch` waits for the file to appear
//! (a medium being mounted), and a used activation key is removed from the
//! file where the medium is writable.

use crate::enroll::Secret;
use crate::local::StateDir;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest enrolment file read.
const MAX_FILE: u64 = 64 * 1024;
/// The server's CA taken from the file, kept in the state directory.
const CA_NAME: &str = "server-ca.pem";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFile {
    pub server: String,
    #[serde(default)]
    pub activation_key: Option<String>,
    #[serde(default)]
    pub fleet_key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// A CA certificate file to trust (a path on the gateway).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The CA of the server's self-signed certificate, inline (PEM).
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// SHA-256 (hex) of `ca_certificate`; when given it must match.
    #[serde(default)]
    pub ca_sha256: Option<String>,
}

impl EnrollFile {
    pub fn read(path: &Path) -> anyhow::Result<EnrollFile> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.len() > MAX_FILE {
            bail!("{} is larger than an enrolment file can be", path.display());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The secret it holds.
    pub fn secret(&self, path: &Path) -> anyhow::Result<Secret> {
        match (&self.activation_key, &self.fleet_key, &self.name) {
            (Some(k), None, _) => Ok(Secret::Activation(k.clone())),
            (None, Some(key), Some(name)) => Ok(Secret::Fleet {
                key: key.clone(),
                name: name.clone(),
            }),
            (None, None, _) => bail!(
                "{} holds no activation key (it was used, and removed, already?) and no fleet key",
                path.display()
            ),
            _ => bail!(
                "{}: give activation_key, or fleet_key with name",
                path.display()
            ),
        }
    }

    /// The CA file to trust: the file's `ca_file`, or its inline CA checked
    /// against `ca_sha256` and kept in the state directory.
    pub fn trust(&self, dir: &StateDir) -> anyhow::Result<Option<PathBuf>> {
        let Some(pem) = &self.ca_certificate else {
            if self.ca_sha256.is_some() {
                bail!("the enrolment file gives ca_sha256 without ca_certificate");
            }
            return Ok(self.ca_file.clone());
        };
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .context("ca_certificate holds no PEM certificate")?
            .context("ca_certificate is not a readable certificate")?;
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &der));
        if let Some(want) = &self.ca_sha256
            && !want.trim().eq_ignore_ascii_case(&sha)
        {
            bail!(
                "the enrolment file's CA certificate does not have the SHA-256 it names (it has {sha}): the file was changed"
            );
        }
        dir.create()?;
        let path = dir.0.join(CA_NAME);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(path))
    }
}

/// Waits until `path` exists (a medium being mounted), saying so once.
pub async fn wait_for(path: &Path) {
    let mut said = false;
    while !path.exists() {
        if !said {
            eprintln!("waiting for {} to appear", path.display());
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Removes a used activation key from the file (it works once anyway), where
/// the medium is writable; a fleet key stays (it enrols the next gateway).
pub fn forget_activation_key(path: &Path, device_id: &str) {
    let r = (|| -> anyhow::Result<bool> {
        let text = std::fs::read_to_string(path)?;
        let mut table: toml::Table = toml::from_str(&text)?;
        if table.remove("activation_key").is_none() {
            return Ok(false);
        }
        let body = toml::to_string(&table)?;
        let out = format!(
            "# Drawbridge edge configuration. Its activation key enrolled device {device_id} and was removed.\n{body}"
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, path)?;
        Ok(true)
    })();
    match r {
        Ok(true) => eprintln!("removed the used activation key from {}", path.display()),
        Ok(false) => {}
        Err(e) => eprintln!(
            "could not remove the used activation key from {} ({e}); it no longer works anyway",
            path.display()
        ),
    }
}
