//! The standard wg-quick configuration of a session, as
//! `drawbridge session export-wireguard` writes it and the portal offers it to
//! the official WireGuard apps: one `[Peer]` per device of the session, each
//! reached through the relay's UDP bridge.
//!
//! wg-quick runs `PostUp` lines as root, so no value from the server may add a
//! line: every value is parsed or checked first, and free text only ever goes
//! into a one-line comment.

use crate::channel::JoinResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The interface MTU written into the config (WireGuard's usual 1420).
pub const MTU: u16 = 1420;

/// Why no config could be made from a join answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WgConfError {
    #[error("the server's relay runs no UDP bridge for standard WireGuard clients (bridge_listen)")]
    NoBridge,
    #[error("the server gave an unusable bridge endpoint {0:?}")]
    BadEndpoint(String),
    #[error("the server gave no usable overlay address")]
    BadOverlay,
    #[error("device {0} has no session key yet")]
    NoEdgeKey(String),
}

/// Text from the server that goes into a comment: one line, printable only.
fn comment(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `host:port` with nothing but host-name and address characters, so no value
/// from the server can add lines.
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

/// Renders the wg-quick config of `join` for the session named `session`.
///
/// With `private_key` the config is complete; without it (the user's app made
/// the key pair and only its public key was joined) the `PrivateKey` line is a
/// comment saying to keep the app's own.
pub fn render(
    private_key: Option<&[u8; 32]>,
    session: &str,
    join: &JoinResponse,
) -> Result<String, WgConfError> {
    let endpoint = join
        .bridge_endpoint
        .as_deref()
        .ok_or(WgConfError::NoBridge)?;
    if !endpoint_ok(endpoint) {
        return Err(WgConfError::BadEndpoint(comment(endpoint)));
    }
    let overlay: std::net::Ipv4Addr = join
        .overlay_ip
        .parse()
        .map_err(|_| WgConfError::BadOverlay)?;
    let key_line = match private_key {
        Some(k) => format!("PrivateKey = {}", STANDARD.encode(k)),
        None => "# PrivateKey: keep the one your WireGuard app made (it never left your device)"
            .to_string(),
    };
    let mut out = format!(
        "# Drawbridge session {} ({}), valid until {}.\n\
         # Standard WireGuard client through the relay's UDP bridge: wg-quick up <this file>\n\
         [Interface]\n\
         {key_line}\n\
         Address = {overlay}/32\n\
         MTU = {MTU}\n",
        comment(session),
        comment(&join.session_id),
        time::OffsetDateTime::from_unix_timestamp(join.valid_until)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_else(|| join.valid_until.to_string()),
    );

    for d in &join.devices {
        // A `WgKey` prints as exactly 44 base64 characters: nothing else can get in.
        let key = d
            .edge_public_key
            .ok_or_else(|| WgConfError::NoEdgeKey(comment(&d.name)))?;
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
            comment(&d.name),
            allowed.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::JoinDevice;
    use crate::{SessionState, WgKey};

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
            relays: vec![],
            bridge_endpoint: bridge.map(str::to_string),
        }
    }

    #[test]
    fn the_config_routes_the_released_targets_to_the_edge_through_the_bridge() {
        let text = render(
            Some(&[1u8; 32]),
            "fix-press",
            &join(Some("relay.example:51820")),
        )
        .unwrap();
        assert!(text.contains(&format!("PrivateKey = {}", STANDARD.encode([1u8; 32]))));
        assert!(text.contains("Address = 100.64.0.2/32"));
        assert!(text.contains(&format!("PublicKey = {}", STANDARD.encode([7u8; 32]))));
        assert!(text.contains("AllowedIPs = 192.168.1.10/32, 10.77.1.0/24\n"));
        assert!(text.contains("Endpoint = relay.example:51820\n"));
    }

    #[test]
    fn without_a_private_key_the_config_keeps_the_apps_own() {
        let text = render(None, "fix-press", &join(Some("relay.example:51820"))).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("PrivateKey")), "{text}");
        assert!(text.contains("# PrivateKey: keep the one your WireGuard app made"));
        assert!(text.contains("Address = 100.64.0.2/32"));
        assert!(text.contains(&format!("PublicKey = {}", STANDARD.encode([7u8; 32]))));
    }

    #[test]
    fn server_values_cannot_add_lines_to_the_config() {
        let k = Some(&[1u8; 32]);
        let mut j = join(Some("relay.example:51820\nPostUp = rm -rf /"));
        assert!(matches!(
            render(k, "s", &j),
            Err(WgConfError::BadEndpoint(_))
        ));
        // An edge key with a line in it does not even parse.
        let mut raw = serde_json::to_value(join(Some("relay.example:51820"))).unwrap();
        raw["devices"][0]["edge_public_key"] = "AAAA\nPostUp = id".into();
        assert!(serde_json::from_value::<JoinResponse>(raw).is_err());
        j = join(Some("relay.example:51820"));
        j.overlay_ip = "100.64.0.2/32\nPostUp = id".into();
        assert_eq!(render(k, "s", &j), Err(WgConfError::BadOverlay));
        j = join(Some("relay.example:51820"));
        j.session_id = "s1\nPostUp = id".into();
        j.devices[0].name = "press\nPostUp = id".into();
        let text = render(k, "name\nPostUp = id", &j).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("PostUp")), "{text}");
        assert!(render(k, "s", &join(Some("[::1]:51820"))).is_ok());
    }

    #[test]
    fn no_bridge_no_config() {
        assert_eq!(
            render(Some(&[1u8; 32]), "fix-press", &join(None)),
            Err(WgConfError::NoBridge)
        );
    }

    #[test]
    fn an_edge_without_its_session_key_gives_no_config() {
        let mut j = join(Some("relay.example:51820"));
        j.devices[0].edge_public_key = None;
        assert_eq!(
            render(None, "s", &j),
            Err(WgConfError::NoEdgeKey("press-1".into()))
        );
    }
}
