//! The `drawbridge-release` tool, run on an operator's machine (never on the
//! server): makes the keys, certifies signing keys, signs releases and root
//! rotations, and verifies a release as an edge would. The only part of this
//! crate that touches files.
//!
//! Private keys are written with mode 0600, and no output is ever written over
//! an existing file. Nothing here prints a private key.

use crate::verify::verify_cert;
use crate::{
    Digest, Envelope, PRODUCT_EDGE, PrivateKey, PublicKey, ReleaseMeta, SignedRelease,
    SigningKeyCert, check_install, current_root, this_target,
};
use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use drawbridge_proto::update::{MAX_RELEASE_SIZE, MAX_SIGNED_LEN};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest private key file read.
const MAX_KEY_FILE: u64 = 1024;
/// Most days a signing key may be certified for.
const MAX_DAYS: u32 = 3650;

/// Signs edge releases for Drawbridge (offline: keep the root key off the server).
#[derive(Parser, Debug)]
#[command(name = "drawbridge-release", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a key pair: writes FILE (private, mode 0600) and its public key
    /// next to it (`.key` becomes `.pub`), and prints the public key.
    Keygen {
        /// The private key file to write (never over an existing file).
        #[arg(long)]
        out: PathBuf,
    },
    /// The root certifies a signing key for a number of days from now.
    Certify {
        /// The root's private key file.
        #[arg(long)]
        root: PathBuf,
        /// The signing key's public key: its `.pub` file, or the key in base64.
        #[arg(long)]
        key: String,
        /// A name for people, e.g. "releases 2026" (1 to 64 printable characters).
        #[arg(long)]
        name: String,
        /// Days the signing key is valid from now (keep it short).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// The certificate file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// A signing key signs an edge binary: its version, target, size and SHA-256.
    Sign {
        /// The signing key's private key file.
        #[arg(long)]
        key: PathBuf,
        /// Its certificate (`certify --out`).
        #[arg(long)]
        cert: PathBuf,
        /// The binary's version (semver, e.g. 1.4.0).
        #[arg(long)]
        version: String,
        /// The machines it is for (default: this machine's, e.g. x86_64-linux).
        #[arg(long)]
        target: Option<String>,
        /// Sign it as a downgrade release: it may replace a newer version when
        /// an admin asks for a downgrade too.
        #[arg(long)]
        downgrade: bool,
        /// The binary.
        file: PathBuf,
        /// The signature file to write (default: FILE.release.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The current root hands over to a new one.
    RotateRoot {
        /// The current root's private key file.
        #[arg(long)]
        old: PathBuf,
        /// The new root's public key: its `.pub` file, or the key in base64.
        #[arg(long)]
        new: String,
        /// The rotation file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a binary and its signature file as an edge would.
    Verify {
        /// The root's public key: its `.pub` file, or the key in base64.
        #[arg(long)]
        root: String,
        /// Root rotations since that root, oldest first.
        #[arg(long = "rotation")]
        rotations: Vec<PathBuf>,
        /// The binary.
        file: PathBuf,
        /// Its signature file.
        signature: PathBuf,
        /// Also check it may replace this running version.
        #[arg(long)]
        running: Option<String>,
        /// With --running: the machine's target (default: the release's own).
        #[arg(long, requires = "running")]
        target: Option<String>,
        /// With --running: an admin asked for a downgrade.
        #[arg(long, requires = "running")]
        downgrade: bool,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    run(Cli::parse())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Certify {
            root,
            key,
            name,
            days,
            out,
        } => certify(&root, &key, name, days, &out),
        Command::Sign {
            key,
            cert,
            version,
            target,
            downgrade,
            file,
            out,
        } => {
            let out = out.unwrap_or_else(|| with_suffix(&file, ".release.json"));
            let target = target.unwrap_or_else(this_target);
            sign(&key, &cert, version, target, downgrade, &file, &out)
        }
        Command::RotateRoot { old, new, out } => rotate(&old, &new, &out),
        Command::Verify {
            root,
            rotations,
            file,
            signature,
            running,
            target,
            downgrade,
        } => verify(
            &root,
            &rotations,
            &file,
            &signature,
            running.as_deref(),
            target,
            downgrade,
        ),
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let public_path = public_path(out)?;
    ensure!(
        !public_path.exists(),
        "{} exists already; not writing over it",
        public_path.display()
    );
    let key = PrivateKey::generate();
    write_new(out, key.to_file_text().as_bytes(), 0o600)?;
    if let Err(e) = write_new(
        &public_path,
        format!("{}\n", key.public()).as_bytes(),
        0o644,
    ) {
        // Do not leave a private key without its public half.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    println!("{}", key.public());
    eprintln!(
        "wrote {} (private, mode 0600: keep it offline) and {}",
        out.display(),
        public_path.display()
    );
    Ok(())
}

fn certify(root: &Path, key: &str, name: String, days: u32, out: &Path) -> anyhow::Result<()> {
    let root = read_private(root)?;
    let public_key = read_public(key)?;
    ensure!(
        public_key != root.public(),
        "that is the root's own key: certify a separate signing key"
    );
    let not_before = now()?;
    let cert = SigningKeyCert {
        name,
        public_key,
        not_before,
        not_after: not_before + i64::from(days) * 86_400,
    };
    cert.check()?;
    let envelope = crate::certify(&root, &cert);
    write_new(out, format!("{}\n", envelope.to_json()).as_bytes(), 0o644)?;
    println!(
        "certified \"{}\" ({}) under root {} from {} until {}: {}",
        cert.name,
        cert.public_key,
        root.public(),
        date(cert.not_before),
        date(cert.not_after),
        out.display()
    );
    Ok(())
}

fn sign(
    key: &Path,
    cert: &Path,
    version: String,
    target: String,
    downgrade: bool,
    file: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let key = read_private(key)?;
    let cert_text = read_text(cert, MAX_SIGNED_LEN as u64)?;
    let envelope = Envelope::from_json(cert_text.trim())
        .with_context(|| format!("{} is not a certificate", cert.display()))?;
    // The root is not here to check the certificate's signature; check at
    // least that it is this key's and in force, or no edge would accept it.
    let certified: SigningKeyCert = envelope
        .payload_unverified()
        .with_context(|| format!("{} is not a certificate", cert.display()))?;
    ensure!(
        certified.public_key == key.public(),
        "{} certifies key {}, not this one ({})",
        cert.display(),
        certified.public_key,
        key.public()
    );
    let now = now()?;
    ensure!(
        now >= certified.not_before,
        "the certificate is valid only from {}",
        date(certified.not_before)
    );
    ensure!(
        now <= certified.not_after,
        "the certificate expired on {}: certify a new signing key",
        date(certified.not_after)
    );
    let (size, sha256) = hash_file(file)?;
    let meta = ReleaseMeta {
        product: PRODUCT_EDGE.into(),
        version,
        target,
        size,
        sha256,
        created: now,
        downgrade,
    };
    meta.check()?;
    let signed = crate::sign_release(&key, envelope, &meta);
    write_new(out, format!("{}\n", signed.to_json()).as_bytes(), 0o644)?;
    println!(
        "signed {} {} {}{}: {} bytes, sha256 {}, key \"{}\" (until {}): {}",
        meta.product,
        meta.version,
        meta.target,
        if meta.downgrade { " (downgrade)" } else { "" },
        meta.size,
        meta.sha256,
        certified.name,
        date(certified.not_after),
        out.display()
    );
    Ok(())
}

fn rotate(old: &Path, new: &str, out: &Path) -> anyhow::Result<()> {
    let old = read_private(old)?;
    let next = read_public(new)?;
    ensure!(next != old.public(), "the new root is the old one");
    let rotation = crate::rotate_root(&old, &next, now()?);
    write_new(out, format!("{rotation}\n").as_bytes(), 0o644)?;
    println!(
        "rotation from root {} to {}: {} (then: drawbridge-server release rotate-root {})",
        old.public(),
        next,
        out.display(),
        out.display()
    );
    Ok(())
}

fn verify(
    root: &str,
    rotations: &[PathBuf],
    file: &Path,
    signature: &Path,
    running: Option<&str>,
    target: Option<String>,
    downgrade: bool,
) -> anyhow::Result<()> {
    let pinned = read_public(root)?;
    let rotations = rotations
        .iter()
        .map(|p| Ok(read_text(p, MAX_SIGNED_LEN as u64)?.trim().to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let root = current_root(&pinned, &rotations)?;
    let signed = SignedRelease::from_json(read_text(signature, MAX_SIGNED_LEN as u64)?.trim())
        .with_context(|| format!("{}", signature.display()))?;
    let now = now()?;
    let meta = crate::verify(&root, &signed, now)?;
    let cert = verify_cert(&root, &signed.signing_key, now)?;
    check_binary(file, &meta)?;
    if let Some(running) = running {
        let target = target.unwrap_or_else(|| meta.target.clone());
        check_install(&meta, running, &target, downgrade)?;
    }
    println!(
        "OK: {} {} {}{}, {} bytes, sha256 {}, signed by \"{}\" ({}, until {}) under root {}",
        meta.product,
        meta.version,
        meta.target,
        if meta.downgrade { " (downgrade)" } else { "" },
        meta.size,
        meta.sha256,
        cert.name,
        cert.public_key,
        date(cert.not_after),
        root
    );
    Ok(())
}

/// The public key file next to a private key file: `x.key` → `x.pub`, else `x` → `x.pub`.
fn public_path(private: &Path) -> anyhow::Result<PathBuf> {
    let p = match private.extension() {
        Some(e) if e == "key" => private.with_extension("pub"),
        Some(e) if e == "pub" => bail!("name the private key file something other than .pub"),
        _ => with_suffix(private, ".pub"),
    };
    Ok(p)
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a new file (never over an existing one) with `mode`, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} exists already; not writing over it", path.display())
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
    }
    Ok(())
}

/// Reads a text file of at most `max` bytes.
fn read_text(path: &Path, max: u64) -> anyhow::Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() as u64 <= max,
        "{} is longer than {max} bytes",
        path.display()
    );
    String::from_utf8(bytes).with_context(|| format!("{} is not text", path.display()))
}

fn read_private(path: &Path) -> anyhow::Result<PrivateKey> {
    #[cfg(unix)]
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if m.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} can be read by others (chmod 600 it)",
                path.display()
            );
        }
    }
    let text = read_text(path, MAX_KEY_FILE)?;
    PrivateKey::from_file_text(&text).with_context(|| format!("{}", path.display()))
}

/// A public key from its file, or given in base64.
fn read_public(arg: &str) -> anyhow::Result<PublicKey> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = read_text(path, 1024)?;
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a public key file", path.display()));
    }
    arg.parse()
        .with_context(|| format!("{arg} is neither a public key file nor a base64 public key"))
}

/// Size and lowercase hex SHA-256 of a file, refused past [`MAX_RELEASE_SIZE`].
fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ensure!(
            size <= MAX_RELEASE_SIZE,
            "{} is larger than {MAX_RELEASE_SIZE} bytes",
            path.display()
        );
        ctx.update(&buf[..n]);
    }
    Ok((size, hex::encode(ctx.finish().as_ref())))
}

/// Streams a file through a [`Digest`] of `meta`.
fn check_binary(path: &Path, meta: &ReleaseMeta) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut digest = Digest::new(meta);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        digest
            .update(&buf[..n])
            .with_context(|| format!("{}", path.display()))?;
    }
    digest
        .finish()
        .with_context(|| format!("{}", path.display()))?;
    Ok(())
}

fn now() -> anyhow::Result<i64> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    i64::try_from(d.as_secs()).context("the clock is out of range")
}

/// A unix time as RFC 3339 (UTC), or the number when out of range.
fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_public_key_file_sits_next_to_the_private_one() {
        assert_eq!(
            public_path(Path::new("a/root.key")).unwrap(),
            Path::new("a/root.pub")
        );
        assert_eq!(
            public_path(Path::new("root")).unwrap(),
            Path::new("root.pub")
        );
        assert_eq!(
            public_path(Path::new("root.secret")).unwrap(),
            Path::new("root.secret.pub")
        );
        assert!(public_path(Path::new("root.pub")).is_err());
        assert_eq!(
            with_suffix(Path::new("bin/edge"), ".release.json"),
            Path::new("bin/edge.release.json")
        );
    }

    #[test]
    fn private_keys_are_written_0600_and_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k.key");
        keygen(&out).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&out).unwrap();
        assert!(keygen(&out).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), before);
        // A private key file where only the .pub is missing is not replaced either.
        std::fs::remove_file(dir.path().join("k.pub")).unwrap();
        assert!(keygen(&out).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), before);
        assert!(!dir.path().join("k.pub").exists());
    }
}
