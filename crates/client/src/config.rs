//! The stored login: `credentials.json` in the user's config directory
//! (`$DRAWBRIDGE_CONFIG_DIR`, else `<config dir>/drawbridge`), readable by the
//! user only (mode 0600, in a 0700 directory).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the configuration directory.
pub const CONFIG_DIR_ENV: &str = "DRAWBRIDGE_CONFIG_DIR";
const FILE_NAME: &str = "credentials.json";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find a configuration directory; set {CONFIG_DIR_ENV}")]
    NoConfigDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({source}); run `drawbridge logout` and log in again")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `drawbridge login` stores.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// Base URL, e.g. `https://drawbridge.example.com`.
    pub server: String,
    /// Extra CA certificate (PEM) trusted for this server, absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub account: String,
    pub user: String,
    /// The login's bearer token.
    pub token: String,
    /// When the login ends at the latest (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("account", &self.account)
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The directory holding the credentials.
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::config_dir()
        .map(|d| d.join("drawbridge"))
        .ok_or(ConfigError::NoConfigDir)
}

/// The credentials file's path.
pub fn credentials_path() -> Result<PathBuf, ConfigError> {
    Ok(config_dir()?.join(FILE_NAME))
}

/// The stored credentials, if any.
pub fn load() -> Result<Option<Credentials>, ConfigError> {
    load_from(&credentials_path()?)
}

pub fn load_from(path: &Path) -> Result<Option<Credentials>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Stores the credentials, replacing any earlier ones atomically.
pub fn save(creds: &Credentials) -> Result<PathBuf, ConfigError> {
    let path = credentials_path()?;
    save_to(&path, creds)?;
    Ok(path)
}

pub fn save_to(path: &Path, creds: &Credentials) -> Result<(), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut json = serde_json::to_vec_pretty(creds).expect("credentials serialise");
    json.push(b'\n');
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = open_private(&tmp).map_err(io(&tmp))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the stored credentials. Returns whether there were any.
pub fn remove() -> Result<bool, ConfigError> {
    let path = credentials_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&path)(e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ConfigError> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io(dir))
    }
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            server: "https://127.0.0.1:8443".into(),
            ca_file: Some("/tmp/ca.pem".into()),
            account: "acme".into(),
            user: "anna".into(),
            token: "dbs_secret".into(),
            expires_at: None,
        }
    }

    #[test]
    fn credentials_round_trip_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        assert!(load_from(&path).unwrap().is_none());
        save_to(&path, &creds()).unwrap();
        save_to(&path, &creds()).unwrap();
        assert_eq!(load_from(&path).unwrap(), Some(creds()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert!(!format!("{:?}", creds()).contains("dbs_secret"));
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{not json").unwrap();
        let e = load_from(&path).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
