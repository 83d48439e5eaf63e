//! Enrolment: prove the one-time activation key (or the fleet key) and the
//! locally generated identity key; keep the certificate the server signs.

use crate::local::{DeviceRecord, StateDir};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::api::{ENROLL_CONTEXT, EnrollRequest, EnrollResponse, EnrollStatus};
use ring::signature::Ed25519KeyPair;
use std::path::PathBuf;

pub enum Secret {
    Activation(String),
    Fleet { key: String, name: String },
}

/// Why the server did not enrol the device.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("name: {0}")]
    Name(#[from] drawbridge_proto::text::TextError),
    #[error(transparent)]
    Api(#[from] drawbridge_api_client::Error),
}

/// Proves `secret` and the identity `key` to the server behind `client`;
/// returns its answer and keeps nothing. [`enroll`] stores the result in the
/// state directory; a load generator simulating many edges keeps it in memory.
pub async fn request(
    client: &drawbridge_api_client::Client,
    key: &Ed25519KeyPair,
    secret: Secret,
) -> Result<EnrollResponse, EnrollError> {
    let (activation_key, fleet_key, name, text) = match secret {
        Secret::Activation(k) => (Some(k.clone()), None, None, k),
        Secret::Fleet { key, name } => (None, Some(key.clone()), Some(name), key),
    };
    let mut msg = ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(text.trim().as_bytes());
    let req = EnrollRequest {
        activation_key: activation_key.map(|k| k.trim().to_string()),
        fleet_key: fleet_key.map(|k| k.trim().to_string()),
        name: name.map(drawbridge_proto::Name::try_from).transpose()?,
        serial: None,
        public_key: StateDir::public_key_b64(key),
        signature: STANDARD.encode(key.sign(&msg).as_ref()),
    };
    Ok(client.post("/enroll", &req).await?)
}

/// The release root of the enrolment response, if it is a public key; the
/// edge trusts it for updates from now on (it came over the CA-pinned TLS).
fn pinnable_root(root: Option<&str>) -> Option<String> {
    let root = root?;
    match root.trim().parse::<drawbridge_release::PublicKey>() {
        Ok(k) => Some(k.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "the server's release root is not a public key; updates will pin the first offer's");
            None
        }
    }
}

pub async fn enroll(
    dir: &StateDir,
    server: &str,
    ca_file: Option<PathBuf>,
    secret: Secret,
) -> anyhow::Result<DeviceRecord> {
    let ca_file = ca_file
        .map(|p| std::fs::canonicalize(&p).with_context(|| format!("CA file {}", p.display())))
        .transpose()?;
    let key = dir.identity()?;
    let client = drawbridge_api_client::Client::new(server, ca_file.as_deref())?;
    let resp = request(&client, &key, secret).await?;
    let record = DeviceRecord {
        server: client.server().to_string(),
        ca_file,
        device_id: resp.device_id.clone(),
        account_id: resp.account_id.clone(),
        certificate: resp.certificate.clone(),
        ca_certificate: resp.ca_certificate.clone(),
        release_root: pinnable_root(resp.release_root.as_deref()),
    };
    dir.save_device(&record)?;
    if resp.status == EnrollStatus::PendingApproval {
        eprintln!(
            "registered as device {}; waiting for an admin's approval",
            resp.device_id
        );
    }
    Ok(record)
}
