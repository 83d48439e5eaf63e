//! `drawbridge session export-wireguard`: a standard wg-quick configuration for a
//! session. The key pair is made here and only the public key goes to the
//! server; the config's endpoint is the relay's UDP bridge, which passes the
//! standard client's packets to the session's edges, and each edge admits the
//! client by that registered key alone.

use crate::Error;
use crate::cli::context::Ctx;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::channel::{JoinRequest, JoinResponse};
use drawbridge_proto::{ErrorCode, WgKey};
use drawbridge_tunnel::keys;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Error>;

/// The interface MTU written into the config (WireGuard's usual 1420).
const MTU: u16 = 1420;

/// Text from the server that goes into a comment: one line, printable only.
fn comment(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `host:port` with nothing but host-name and address characters, so no value
/// from the server can add lines (wg-quick runs `PostUp` lines as root).
fn endpoint_ok(e: &str) -> bool {
    let Some((host, port)) = e.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && e.len() <= 255
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Renders the wg-quick config: one `[Peer]` per device of the session. Every
/// value from the server is parsed or checked first.
pub fn render(private_key: &[u8; 32], session: &str, join: &JoinResponse) -> Result<String> {
    let endpoint = join.bridge_endpoint.as_deref().ok_or_else(|| {
        Error::user("the server's relay runs no UDP bridge for standard WireGuard clients")
    })?;
    if !endpoint_ok(endpoint) {
        return Err(Error::user(format!(
            "the server gave an unusable bridge endpoint {:?}",
            comment(endpoint)
        )));
    }
    let overlay: std::net::Ipv4Addr = join
        .overlay_ip
        .parse()
        .map_err(|_| Error::user("the server gave no usable overlay address"))?;
    let session = comment(session);
    let mut out = format!(
        "# Drawbridge session {session} ({}), valid until {}.\n\
         # Standard WireGuard client through the relay's UDP bridge: wg-quick up <this file>\n\
         [Interface]\n\
         PrivateKey = {}\n\
         Address = {}/32\n\
         MTU = {MTU}\n",
        comment(&join.session_id),
        time::OffsetDateTime::from_unix_timestamp(join.valid_until)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_else(|| join.valid_until.to_string()),
        STANDARD.encode(private_key),
        overlay,
    );

    for d in &join.devices {
        // A `WgKey` prints as exactly 44 base64 characters: nothing else can get in.
        let key = d
            .edge_public_key
            .ok_or_else(|| Error::user(format!("device {} has no session key yet", d.name)))?;
        let mut allowed: Vec<String> = Vec::new();
        for t in &d.targets {
            let net = t.address.trunc().to_string();
            if !allowed.contains(&net) {
                allowed.push(net);
            }
        }
        if allowed.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n# {}\n[Peer]\nPublicKey = {key}\nAllowedIPs = {}\nEndpoint = {endpoint}\nPersistentKeepalive = 25\n",
            comment(&d.name.to_string()),
            allowed.join(", ")
        ));
    }
    Ok(out)
}

/// Joins the session with a fresh key as a standard client; retries while an
/// edge has not announced its session key yet.
async fn join(ctx: &Ctx, id: &str, public: WgKey) -> Result<JoinResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ctx
            .client
            .post(
                &format!("/sessions/{id}/join"),
                &JoinRequest {
                    public_key: public,
                    standard_client: true,
                },
            )
            .await;
        match r {
            Err(drawbridge_api_client::Error::Api {
                code: ErrorCode::Conflict,
                message,
                ..
            }) if message.contains("not announced") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Writes `text` to a new file readable by its owner only (it holds a private key).
fn write_private(path: &Path, text: &str) -> Result<()> {
    let io = |source| Error::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// `drawbridge session export-wireguard SESSION [--output FILE]`.
pub(crate) async fn run(ctx: &Ctx, session: &str, output: Option<&Path>) -> Result<()> {
    let id = ctx.session_id(session).await?;
    let s = crate::connect::start_and_wait(ctx, &id).await?;
    let private_key = keys::generate_private_key();
    let public = WgKey::from_bytes(keys::public_key(&private_key));
    let j = join(ctx, &id, public).await?;
    let text = render(&private_key, &s.name.to_string(), &j)?;
    match output {
        Some(path) => {
            write_private(path, &text)?;
            eprintln!(
                "wrote {} (private key inside, mode 0600); bring it up with: wg-quick up {}",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::SessionState;
    use drawbridge_proto::channel::JoinDevice;

    fn join(bridge: Option<&str>) -> JoinResponse {
        JoinResponse {
            tunnel_id: "t1".into(),
            session_id: "s1".into(),
            state: SessionState::Active,
            overlay_ip: "100.64.0.2".into(),
            relay_url: "wss://relay.example/relay/v1".into(),
            relay_token: None,
            stun: vec![],
            devices: vec![JoinDevice {
                device_id: "d1".into(),
                name: "press-1".into(),
                edge_public_key: Some(WgKey::from_bytes([7u8; 32])),
                targets: vec![
                    "tcp:192.168.1.10:502".parse().unwrap(),
                    "icmp:192.168.1.10".parse().unwrap(),
                    "tcp:10.77.1.0/24:80".parse().unwrap(),
                ],
                online: true,
            }],
            valid_until: 0,
            bridge_endpoint: bridge.map(str::to_string),
        }
    }

    #[test]
    fn the_config_routes_the_released_targets_to_the_edge_through_the_bridge() {
        let text = render(&[1u8; 32], "fix-press", &join(Some("relay.example:51820"))).unwrap();
        assert!(text.contains(&format!("PrivateKey = {}", STANDARD.encode([1u8; 32]))));
        assert!(text.contains("Address = 100.64.0.2/32"));
        assert!(text.contains(&format!("PublicKey = {}", STANDARD.encode([7u8; 32]))));
        assert!(text.contains("AllowedIPs = 192.168.1.10/32, 10.77.1.0/24\n"));
        assert!(text.contains("Endpoint = relay.example:51820\n"));
    }

    #[test]
    fn server_values_cannot_add_lines_to_the_config() {
        let mut j = join(Some("relay.example:51820\nPostUp = rm -rf /"));
        assert!(render(&[1u8; 32], "s", &j).is_err());
        // An edge key with a line in it does not even parse.
        let mut raw = serde_json::to_value(join(Some("relay.example:51820"))).unwrap();
        raw["devices"][0]["edge_public_key"] = "AAAA\nPostUp = id".into();
        assert!(serde_json::from_value::<JoinResponse>(raw).is_err());
        j = join(Some("relay.example:51820"));
        j.overlay_ip = "100.64.0.2/32\nPostUp = id".into();
        assert!(render(&[1u8; 32], "s", &j).is_err());
        j = join(Some("relay.example:51820"));
        j.session_id = "s1\nPostUp = id".into();
        let text = render(&[1u8; 32], "name\nPostUp = id", &j).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("PostUp")), "{text}");
        assert!(render(&[1u8; 32], "s", &join(Some("[::1]:51820"))).is_ok());
    }

    #[test]
    fn no_bridge_no_config() {
        assert!(render(&[1u8; 32], "fix-press", &join(None)).is_err());
    }
}
