//! `drawbridge session export-wireguard`: a standard wg-quick configuration for a
//! session. The key pair is made here and only the public key goes to the
//! server; the config's endpoint is the relay's UDP bridge, which passes the
//! standard client's packets to the session's edges, and each edge admits the
//! client by that registered key alone. The text is `drawbridge_proto::wgconf`'s
//! (the portal offers the same to the official WireGuard apps).

use crate::Error;
use crate::cli::context::Ctx;
use drawbridge_proto::channel::{JoinRequest, JoinResponse};
use drawbridge_proto::{ErrorCode, WgKey, wgconf};
use drawbridge_tunnel::keys;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Error>;

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

/// Writes `text` to a new file readable by its owner only (it holds a private key or an activation key).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
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
    let text = wgconf::render(Some(&private_key), s.name.as_str(), &j)
        .map_err(|e| Error::user(e.to_string()))?;
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
