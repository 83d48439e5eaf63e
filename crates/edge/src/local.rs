//! The agent's state directory: identity key, enrolment record, the
//! remote-access switch, on-site decisions and the status snapshot.
//!
//! ```text
//! identity.key     Ed25519 PKCS#8, mode 0600 — never leaves the machine
//! device.json      server URL, CA file, device and account ids, certificate
//! switch           "on" or "off" (written by `drawbridge-edge switch`); OFF when absent
//! decisions/ID     "approve" or "refuse" for a session waiting for approval
//! status.json      what `drawbridge-edge status` shows (written by `run`)
//! ```

use anyhow::{Context, bail};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the agent keeps its files.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

/// What enrolment leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub server: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub device_id: String,
    pub account_id: String,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub ca_certificate: Option<String>,
}

/// How the remote-access switch is read.
#[derive(Debug, Clone)]
pub enum SwitchSource {
    /// The `switch` file in the state directory, set with `drawbridge-edge switch on|off`.
    Local,
    /// A file holding `1`/`on` or `0`/`off`, e.g. a GPIO value wired to a key switch.
    File(PathBuf),
}

/// One session as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionStatus {
    pub session_id: String,
    pub name: String,
    pub state: String,
    pub valid_until: i64,
    pub targets: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// The userspace stack's counters: flows, packets, drops by reason.
    #[serde(default)]
    pub forwarder: Option<drawbridge_netstack::ForwarderStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub user: String,
    pub overlay_ip: String,
    pub path: String,
    pub reason: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub drops: u64,
    /// Seconds since the last WireGuard handshake with this client, if any.
    #[serde(default)]
    pub handshake_secs_ago: Option<u64>,
}

/// The snapshot `run` writes and `status` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub device_id: String,
    pub connected: bool,
    pub switch_on: bool,
    pub updated_at: i64,
    pub sessions: Vec<SessionStatus>,
    /// `userspace`, or `kernel (IFACE)` with `run --tun`.
    #[serde(default)]
    pub forwarding: String,
}

fn write_atomic(path: &Path, data: &[u8], private: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    let _ = private;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

impl StateDir {
    /// `--state-dir`, else `$DRAWBRIDGE_EDGE_DIR`, else the platform data dir.
    pub fn resolve(flag: Option<PathBuf>) -> StateDir {
        let dir = flag
            .or_else(|| std::env::var_os("DRAWBRIDGE_EDGE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| {
                dirs::data_local_dir()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join("drawbridge-edge")
            });
        StateDir(dir)
    }

    pub fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.0.join("decisions"))
            .with_context(|| format!("creating {}", self.0.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Creates the identity key on first use; returns it.
    pub fn identity(&self) -> anyhow::Result<Ed25519KeyPair> {
        let path = self.path("identity.key");
        if !path.exists() {
            self.create()?;
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the identity key failed"))?;
            write_atomic(&path, doc.as_ref(), true)?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| anyhow::anyhow!("{} is not an identity key", path.display()))
    }

    pub fn public_key_b64(key: &Ed25519KeyPair) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref())
    }

    pub fn device(&self) -> anyhow::Result<DeviceRecord> {
        let path = self.path("device.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "this edge is not enrolled yet ({} missing); run `drawbridge-edge enroll`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save_device(&self, d: &DeviceRecord) -> anyhow::Result<()> {
        self.create()?;
        write_atomic(
            &self.path("device.json"),
            serde_json::to_string_pretty(d)?.as_bytes(),
            true,
        )
    }

    /// Sets the local switch (the default source).
    pub fn set_switch(&self, on: bool) -> anyhow::Result<()> {
        self.create()?;
        write_atomic(
            &self.path("switch"),
            if on { b"on\n" } else { b"off\n" },
            false,
        )
    }

    /// Reads the switch. Anything but a clear "on" is OFF (fail closed).
    pub fn switch_on(&self, source: &SwitchSource) -> bool {
        let path = match source {
            SwitchSource::Local => self.path("switch"),
            SwitchSource::File(p) => p.clone(),
        };
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() <= 64 => {
                let v = String::from_utf8_lossy(&bytes).trim().to_ascii_lowercase();
                v == "on" || v == "1"
            }
            _ => false,
        }
    }

    /// Records an on-site decision for `run` to send.
    pub fn decide(&self, session_id: &str, approve: bool) -> anyhow::Result<()> {
        if session_id.is_empty()
            || session_id.len() > 64
            || !session_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("{session_id:?} is not a session id");
        }
        self.create()?;
        write_atomic(
            &self.path("decisions").join(session_id),
            if approve { b"approve\n" } else { b"refuse\n" },
            false,
        )
    }

    /// Takes the pending decisions (deleting their files).
    pub fn take_decisions(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.path("decisions")) else {
            return out;
        };
        for e in entries.flatten().take(64) {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                continue;
            }
            let approve = std::fs::read_to_string(e.path())
                .map(|s| s.trim() == "approve")
                .unwrap_or(false);
            let _ = std::fs::remove_file(e.path());
            out.push((name, approve));
        }
        out
    }

    pub fn save_status(&self, s: &Status) -> anyhow::Result<()> {
        write_atomic(
            &self.path("status.json"),
            serde_json::to_string_pretty(s)?.as_bytes(),
            false,
        )
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        let path = self.path("status.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no status yet ({}); is `drawbridge-edge run` running?",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_fails_closed_and_decisions_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir(dir.path().join("edge"));
        assert!(!s.switch_on(&SwitchSource::Local), "OFF when installed");
        s.set_switch(true).unwrap();
        assert!(s.switch_on(&SwitchSource::Local));
        s.set_switch(false).unwrap();
        assert!(!s.switch_on(&SwitchSource::Local));
        let gpio = dir.path().join("gpio");
        std::fs::write(&gpio, "1\n").unwrap();
        assert!(s.switch_on(&SwitchSource::File(gpio.clone())));
        std::fs::write(&gpio, "garbage").unwrap();
        assert!(!s.switch_on(&SwitchSource::File(gpio)));
        assert!(s.decide("../etc/passwd", true).is_err());
        s.decide("0192-abc", true).unwrap();
        assert_eq!(s.take_decisions(), vec![("0192-abc".to_string(), true)]);
        assert!(s.take_decisions().is_empty());
    }

    #[test]
    fn the_identity_key_is_created_once_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir(dir.path().join("edge"));
        let a = StateDir::public_key_b64(&s.identity().unwrap());
        let b = StateDir::public_key_b64(&s.identity().unwrap());
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s.0.join("identity.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
