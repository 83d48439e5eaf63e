//! The agent's state directory: identity key, enrolment record, the
//! remote-access switch, on-site decisions and the status snapshot.
//!
//! ```text
//! identity.key     Ed25519 PKCS#8, mode 0600 — never leaves the machine
//! device.json      server URL, CA file, device and account ids, certificate
//! switch           "on" or "off" (written by `drawbridge-edge switch`); OFF when absent
//! decisions/ID     "approve" or "refuse" for a session waiting for approval
//! session-keys/ID  a session's WireGuard private key (base64), mode 0600; removed
//!                  when the session is gone from the server's list
//! status.json      what `drawbridge-edge status` shows (written by `run`)
//! update.json      the last installed update: trial, succeeded, rolled back (see `crate::update`)
//! tags.json, alarms.json, historian/   the data services (see `crate::data`)
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
    /// The release root this edge trusts for updates (base64 Ed25519), pinned
    /// from the enrolment response or, when the server had none then, from
    /// the first update offer; moved on only by a rotation signed by it.
    #[serde(default)]
    pub release_root: Option<String>,
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
    /// The relay instance the session uses (`wss://…/relay/v1`).
    #[serde(default)]
    pub relay: String,
    pub targets: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// The userspace stack's counters: flows, packets, drops by reason.
    #[serde(default)]
    pub forwarder: Option<drawbridge_netstack::ForwarderStats>,
    /// Who started the session (shown while it waits for on-site approval).
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Desktops open in a browser through the session.
    #[serde(default)]
    pub desktops: Vec<drawbridge_proto::channel::EdgeDesktop>,
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
    /// Tags, last poll qualities, the historian buffer.
    #[serde(default)]
    pub data: Option<crate::data::DataStatus>,
    /// The version of the running agent.
    #[serde(default)]
    pub version: String,
    /// The last update offered to this edge and where it is.
    #[serde(default)]
    pub update: Option<UpdateStatus>,
    /// Bytes of memory the agent's data takes (the allocator's, glibc only).
    #[serde(default)]
    pub heap_bytes: Option<u64>,
}

/// An update as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatus {
    /// The version offered.
    pub version: String,
    /// `waiting`, `downloading`, `installing`, `trial` (the new version runs
    /// and must come online), `succeeded`, `failed`, `rolled_back`, `refused`.
    pub state: String,
    #[serde(default)]
    pub message: String,
    /// When it got there (Unix seconds).
    pub at: i64,
}

/// A session id safe to use as a file name: 1–64 of `[A-Za-z0-9-]`.
fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

pub(crate) fn write_atomic(path: &Path, data: &[u8], private: bool) -> anyhow::Result<()> {
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
        if !valid_session_id(session_id) {
            bail!("{session_id:?} is not a session id");
        }
        self.create()?;
        write_atomic(
            &self.path("decisions").join(session_id),
            if approve { b"approve\n" } else { b"refuse\n" },
            false,
        )
    }

    /// The WireGuard private key of a session, kept in `session-keys/` so that the
    /// edge's public key stays the same across restarts (a standard WireGuard config
    /// exported for the session names it). Made on first use; a missing or unreadable
    /// file gets a fresh key. An id that is no safe file name gets a key that is not kept.
    pub fn session_key(&self, session_id: &str) -> [u8; 32] {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        if !valid_session_id(session_id) {
            return drawbridge_tunnel::keys::generate_private_key();
        }
        let path = self.path("session-keys").join(session_id);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(bytes) = STANDARD.decode(text.trim())
            && let Ok(key) = <[u8; 32]>::try_from(bytes)
        {
            return key;
        }
        let key = drawbridge_tunnel::keys::generate_private_key();
        let saved = self
            .create()
            .and_then(|()| {
                std::fs::create_dir_all(self.path("session-keys"))
                    .with_context(|| "creating session-keys")
            })
            .and_then(|()| {
                write_atomic(
                    &path,
                    format!("{}\n", STANDARD.encode(key)).as_bytes(),
                    true,
                )
            });
        if let Err(e) = saved {
            tracing::warn!(session = %session_id, error = %e, "the session key is not kept: an exported WireGuard config will need exporting again after a restart");
        }
        key
    }

    /// Deletes the kept keys of sessions not in `keep` (they ended).
    pub fn forget_session_keys(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(self.path("session-keys")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
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

    #[test]
    fn a_session_key_is_kept_privately_until_the_session_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir(dir.path().join("edge"));
        let a = s.session_key("s-1");
        assert_eq!(s.session_key("s-1"), a, "the same key after a restart");
        let b = s.session_key("s-2");
        assert_ne!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s.0.join("session-keys/s-1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.forget_session_keys(&["s-2".to_string()]);
        assert!(!s.0.join("session-keys/s-1").exists());
        assert_eq!(s.session_key("s-2"), b);
        assert_ne!(
            s.session_key("s-1"),
            a,
            "a forgotten session gets a new key"
        );
        // A hostile id is never a path: the key is not kept anywhere.
        let k = s.session_key("../identity");
        assert_ne!(s.session_key("../identity"), k);
        assert!(!s.0.join("identity").exists());
        // A damaged file is replaced by a fresh key.
        std::fs::write(s.0.join("session-keys/s-2"), "not a key").unwrap();
        let c = s.session_key("s-2");
        assert_eq!(s.session_key("s-2"), c);
    }
}
