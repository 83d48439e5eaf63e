//! The enrolment file for USB/SD deployment, as the portal and `drawbridge
//! device config-file` write it and `drawbridge-edge enroll --config` reads it:
//! TOML with the server's URL, a one-time activation key, and the CA of the
//! server's self-signed certificate with its SHA-256.

use crate::api::ServerTrust;

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The file's text for device `device_id`.
pub fn render(device_id: &str, trust: &ServerTrust, activation_key: &str) -> String {
    let mut out = format!(
        "# Drawbridge edge configuration for device {device_id}.\n\
         # Copy it to the gateway's USB stick or SD card and run\n\
         #   drawbridge-edge enroll --config /media/usb/drawbridge-edge.toml\n\
         # The activation key works once; the edge removes it from this file after use.\n\
         server = {}\n\
         activation_key = {}\n",
        quoted(&trust.server),
        quoted(activation_key),
    );
    if let (Some(pem), Some(sha)) = (&trust.ca_certificate, &trust.ca_sha256) {
        out.push_str(
            "# The CA of the server's self-signed certificate; the edge checks its SHA-256.\n",
        );
        out.push_str(&format!("ca_sha256 = {}\n", quoted(sha)));
        // PEM holds base64, dashes and line breaks: a multi-line literal string
        // keeps it readable; anything else is quoted.
        if pem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=- \n\r".contains(&b))
        {
            out.push_str(&format!("ca_certificate = '''\n{}'''\n", pem));
        } else {
            out.push_str(&format!("ca_certificate = {}\n", quoted(pem)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_names_server_key_and_ca_and_quotes_what_it_must() {
        let t = ServerTrust {
            server: "https://remote.example:8443".into(),
            ca_certificate: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
            ca_sha256: Some("ab".repeat(32)),
        };
        let text = render("dev-1", &t, "dba_\"key\"\n");
        assert!(text.contains("server = \"https://remote.example:8443\""));
        assert!(
            text.contains(r#"activation_key = "dba_\"key\"\n""#),
            "{text}"
        );
        assert!(text.contains("ca_certificate = '''\n-----BEGIN CERTIFICATE-----\nMIIB\n"));
        let plain = ServerTrust {
            server: "https://remote.example".into(),
            ca_certificate: None,
            ca_sha256: None,
        };
        assert!(!render("d", &plain, "k").contains("ca_"));
    }
}
