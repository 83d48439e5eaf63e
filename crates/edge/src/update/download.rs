//! Fetching a release's binary: `GET /api/v1/edge/releases/{id}` over the
//! same outbound path as the edge channel (the plant's proxy when one is set,
//! `drawbridge_tunnel::proxy::dial`; TLS trusting what the channel trusts),
//! with headers signed by the identity key. The body streams into the
//! download file through the signed size and hash: it stops as soon as it
//! runs past the size, and the file is removed on any error.

use super::UpdateError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drawbridge_proto::update::{
    FETCH_DEVICE_HEADER, FETCH_SIGNATURE_HEADER, FETCH_TIME_HEADER, fetch_message,
};
use drawbridge_release::{Digest, ReleaseMeta};
use http_body_util::BodyExt;
use hyper::body::Body;
use ring::signature::Ed25519KeyPair;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Connecting, the TLS handshake and the response head each get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The body may stall this long between two pieces.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where releases come from and how this edge proves itself.
pub struct Source {
    /// `https://host[:port]` (the enrolment's server).
    pub server: String,
    /// The channel's TLS settings (HTTP/1.1).
    pub tls: Arc<rustls::ClientConfig>,
    pub device_id: String,
    pub key: Arc<Ed25519KeyPair>,
}

/// The download file, removed when dropped unless kept.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn transfer(e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Transfer(e.to_string())
}

/// Streams `body` into `dest` (created afresh, 0700 while written, 0755 when
/// complete and synced) through `meta`'s size and hash. On any error `dest`
/// is gone.
pub async fn write_verified<B>(
    mut body: B,
    meta: &ReleaseMeta,
    dest: &Path,
) -> Result<(), UpdateError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(dest);
    let mut partial = Partial {
        path: dest.to_path_buf(),
        keep: false,
    };
    let ctx = |what: &str| format!("{what} {}", dest.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(dest)
        .map_err(|e| UpdateError::io(ctx("creating"), e))?;
    let mut digest = Digest::new(meta);
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| transfer("the server stopped sending"))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(transfer)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        // Past the signed size it stops here, before writing a byte more.
        digest.update(&data)?;
        file.write_all(&data)
            .map_err(|e| UpdateError::io(ctx("writing"), e))?;
    }
    digest.finish()?;
    file.sync_all()
        .map_err(|e| UpdateError::io(ctx("flushing"), e))?;
    drop(file);
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| UpdateError::io(ctx("making executable"), e))?;
    partial.keep = true;
    Ok(())
}

/// Stops the HTTP connection's task when the download ends either way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Downloads release `release_id` (checked: `meta`) from `src` into `dest`.
pub async fn fetch(
    src: &Source,
    release_id: &str,
    meta: &ReleaseMeta,
    dest: &Path,
) -> Result<(), UpdateError> {
    let url = format!("{}/api/v1/edge/releases/{release_id}", src.server);
    let uri: hyper::Uri = url.parse().map_err(transfer)?;
    if uri.scheme_str() != Some("https") {
        return Err(transfer("the server URL is not https"));
    }
    let host = uri
        .host()
        .ok_or_else(|| transfer("the server URL has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    // The channel's way out: DRAWBRIDGE_PROXY / HTTPS_PROXY when set.
    let proxy = drawbridge_tunnel::proxy::Proxy::from_env().map_err(transfer)?;
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        drawbridge_tunnel::proxy::dial(&host, port, proxy.as_ref(), None),
    )
    .await
    .map_err(|_| transfer("connecting timed out"))?
    .map_err(|e| transfer(format!("connecting to {host}:{port}: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(transfer)?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(src.tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| transfer("the TLS handshake timed out"))?
    .map_err(|e| transfer(format!("TLS: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(transfer)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let now = super::now();
    let signature = src
        .key
        .sign(&fetch_message(&src.device_id, release_id, now));
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            format!("drawbridge-edge/{}", crate::version()),
        )
        .header(FETCH_DEVICE_HEADER, &src.device_id)
        .header(FETCH_TIME_HEADER, now.to_string())
        .header(FETCH_SIGNATURE_HEADER, STANDARD.encode(signature.as_ref()))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(transfer)?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| transfer("the server did not answer"))?
        .map_err(transfer)?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(UpdateError::Http(resp.status().as_u16()));
    }
    if let Some(len) = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len != meta.size
    {
        return Err(UpdateError::Size {
            expected: meta.size,
            got: len,
        });
    }
    write_verified(resp.into_body(), meta, dest).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn meta_of(binary: &[u8]) -> ReleaseMeta {
        ReleaseMeta {
            product: drawbridge_release::PRODUCT_EDGE.into(),
            version: "1.1.0".into(),
            target: "x86_64-linux".into(),
            size: binary.len() as u64,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, binary)),
            created: 0,
            downgrade: false,
        }
    }

    type Frames = futures_util::stream::Iter<
        std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn body(chunks: Vec<&'static [u8]>) -> StreamBody<Frames> {
        let frames: Vec<_> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_download_matching_its_signature_is_kept_executable() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join(".edge.download");
        let meta = meta_of(b"build B, in two parts");
        write_verified(body(vec![b"build B, ", b"in two parts"]), &meta, &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"build B, in two parts");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[tokio::test]
    async fn a_wrong_hash_or_size_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join(".edge.download");
        let meta = meta_of(b"build B");
        let e = write_verified(body(vec![b"build C"]), &meta, &dest)
            .await
            .unwrap_err();
        assert_eq!(e.state(), drawbridge_proto::update::UpdateState::Refused);
        assert!(!dest.exists());
        assert!(
            write_verified(body(vec![b"build"]), &meta, &dest)
                .await
                .is_err()
        );
        assert!(!dest.exists(), "short");
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn a_download_stops_as_soon_as_it_runs_past_the_signed_size() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join(".edge.download");
        let meta = meta_of(b"small");
        // An endless body: only the size check ends it.
        let endless = StreamBody::new(futures_util::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[0u8; 4096])))
        }));
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            write_verified(endless, &meta, &dest),
        )
        .await
        .expect("stopped at the size")
        .unwrap_err();
        assert_eq!(e.state(), drawbridge_proto::update::UpdateState::Refused);
        assert!(!dest.exists());
    }
}
