//! `drawbridge-server release …`: the operator's side of signed edge updates,
//! run on the server machine. It only stores what the offline tool
//! (`drawbridge-release`) signed: no signing key ever reaches the server.

use super::open;
use crate::clock::Clock;
use crate::config::Overrides;
use crate::updates::store;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Trust a release root for the first time (its public key, base64, or a
    /// file holding it). Later roots come only by `rotate-root`.
    Root {
        #[command(flatten)]
        db: Overrides,
        /// The root's public key (base64), or the path of `drawbridge-release keygen`'s `.pub` file.
        public_key: String,
    },
    /// Move to a new root by a rotation the current root signed
    /// (`drawbridge-release rotate-root`); edges follow it at their next update.
    RotateRoot {
        #[command(flatten)]
        db: Overrides,
        rotation: PathBuf,
    },
    /// Store a signed edge release: the binary and its signature file
    /// (`drawbridge-release sign`), both checked under the current root.
    Add {
        #[command(flatten)]
        db: Overrides,
        binary: PathBuf,
        #[arg(long)]
        signature: PathBuf,
    },
    /// The stored releases and the root in force.
    List {
        #[command(flatten)]
        db: Overrides,
    },
}

/// Reads at most `max` bytes of `path`.
fn read_bounded(path: &PathBuf, max: u64) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(len <= max, "{} is larger than {max} bytes", path.display());
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn text(path: &PathBuf) -> anyhow::Result<String> {
    String::from_utf8(read_bounded(
        path,
        drawbridge_proto::update::MAX_SIGNED_LEN as u64,
    )?)
    .with_context(|| format!("{} is not text", path.display()))
}

pub async fn release_command(command: ReleaseCommand) -> anyhow::Result<i32> {
    let err = |e: crate::error::AppError| anyhow::anyhow!("{}", e.message);
    let now = Clock::default().unix();
    match command {
        ReleaseCommand::Root { db, public_key } => {
            let path = PathBuf::from(&public_key);
            let b64 = if path.is_file() {
                text(&path)?.trim().to_string()
            } else {
                public_key.trim().to_string()
            };
            let key: drawbridge_release::PublicKey = b64
                .parse()
                .map_err(|e| anyhow::anyhow!("the root public key: {e}"))?;
            let (_, store) = open(&db).await?;
            store::set_first_root(&store, &key, now)
                .await
                .map_err(err)?;
            println!("release root {key} trusted; edges enrolled from now on pin it");
            Ok(0)
        }
        ReleaseCommand::RotateRoot { db, rotation } => {
            let rotation = text(&rotation)?;
            let (_, store) = open(&db).await?;
            let next = store::rotate_root(&store, rotation.trim(), now)
                .await
                .map_err(err)?;
            println!("release root is now {next}");
            Ok(0)
        }
        ReleaseCommand::Add {
            db,
            binary,
            signature,
        } => {
            let signed = text(&signature)?;
            let bytes = read_bounded(&binary, drawbridge_proto::update::MAX_RELEASE_SIZE)?;
            let (_, store) = open(&db).await?;
            let r = store::add_release(&store, &bytes, signed.trim(), now)
                .await
                .map_err(err)?;
            println!("release {} {} {}", r.id, r.version, r.target);
            Ok(0)
        }
        ReleaseCommand::List { db } => {
            let (_, store) = open(&db).await?;
            match store::roots(&store).await.map_err(err)? {
                Some(r) => println!("root: {} ({} rotation(s))", r.current, r.rotations.len()),
                None => println!("root: none set (drawbridge-server release root KEY)"),
            }
            for r in store::list(&store).await.map_err(err)? {
                println!(
                    "{}  {}  {}  {} bytes  sha256 {}{}",
                    r.id,
                    r.version,
                    r.target,
                    r.size,
                    r.sha256,
                    if r.downgrade { "  (downgrade)" } else { "" }
                );
            }
            Ok(0)
        }
    }
}
