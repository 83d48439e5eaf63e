//! The binary on disk: where a download lands, keeping the running binary as
//! `<exe>.previous`, the atomic swap, putting the previous one back, and the
//! re-execution. Everything takes paths, so that it is tested in a temporary
//! directory; only [`exec`] replaces the process.

use super::UpdateError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The proxy settings the edge reads (`drawbridge_tunnel::proxy::Proxy::from_env`).
pub const PROXY_VARS: &[&str] = &["DRAWBRIDGE_PROXY", "HTTPS_PROXY", "https_proxy"];

fn sibling(exe: &Path, name: impl FnOnce(&str) -> String) -> PathBuf {
    let file = exe
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "drawbridge-edge".into());
    exe.with_file_name(name(&file))
}

/// Where the binary `exe` replaced is kept: `<exe>.previous`.
pub fn previous_path(exe: &Path) -> PathBuf {
    sibling(exe, |f| format!("{f}.previous"))
}

/// Where a release for `exe` is downloaded: `.<exe name>.download` next to it
/// (the same file system, so that the swap is a rename).
pub fn download_path(exe: &Path) -> PathBuf {
    sibling(exe, |f| format!(".{f}.download"))
}

fn io(context: impl std::fmt::Display, path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError {
    let context = format!("{context} {}", path.display());
    move |e| UpdateError::io(context, e)
}

/// Flushes a directory's entries (a rename in it) to disk.
fn sync_dir(file_in_it: &Path) {
    if let Some(dir) = file_in_it.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

/// Keeps the binary at `exe` as `<exe>.previous` (a hard link, else a copy),
/// replacing an older one. `exe` itself is left as it is.
pub fn keep_previous(exe: &Path) -> Result<PathBuf, UpdateError> {
    let prev = previous_path(exe);
    match std::fs::remove_file(&prev) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &prev)(e)),
    }
    if std::fs::hard_link(exe, &prev).is_err() {
        let tmp = sibling(exe, |f| format!(".{f}.previous.tmp"));
        std::fs::copy(exe, &tmp).map_err(io("copying the running binary to", &tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("flushing", &tmp))?;
        std::fs::rename(&tmp, &prev).map_err(io("renaming to", &prev))?;
    }
    sync_dir(&prev);
    Ok(prev)
}

/// Moves the downloaded binary over `exe` (one atomic rename).
pub fn swap(download: &Path, exe: &Path) -> Result<(), UpdateError> {
    std::fs::rename(download, exe).map_err(io("moving the new binary to", exe))?;
    sync_dir(exe);
    Ok(())
}

/// Puts `<exe>.previous` back over `exe` (one atomic rename).
pub fn restore_previous(exe: &Path) -> Result<(), UpdateError> {
    let prev = previous_path(exe);
    std::fs::rename(&prev, exe).map_err(io("putting back", &prev))?;
    sync_dir(exe);
    Ok(())
}

/// Hex SHA-256 of the file at `path`, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String, UpdateError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io("reading", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// The proxy variables set in this process's environment (names only).
pub fn proxy_env_names() -> Vec<String> {
    PROXY_VARS
        .iter()
        .filter(|v| std::env::var_os(v).is_some())
        .map(|v| v.to_string())
        .collect()
}

/// Replaces this process with the binary at `exe`, with this process's
/// arguments. `keep_proxy`: with `Some(names)` (a rollback), proxy variables
/// not among `names` are dropped — the previous binary gets the proxy settings
/// it ran with, not ones the failed release's launcher may have added. Returns
/// only if the exec failed.
pub fn exec(exe: &Path, keep_proxy: Option<&[String]>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args);
    if let Some(keep) = keep_proxy {
        for v in PROXY_VARS {
            if !keep.iter().any(|k| k == v) {
                cmd.env_remove(v);
            }
        }
    }
    tracing::info!(exe = %exe.display(), "restarting into the binary");
    cmd.exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_exe(path: &Path, body: &[u8]) {
        std::fs::write(path, body).unwrap();
    }

    #[test]
    fn swap_keeps_the_running_binary_as_previous() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("drawbridge-edge");
        write_exe(&exe, b"build A");
        write_exe(&previous_path(&exe), b"an older one");
        let dl = download_path(&exe);
        assert_eq!(dl, tmp.path().join(".drawbridge-edge.download"));
        write_exe(&dl, b"build B");
        let prev = keep_previous(&exe).unwrap();
        assert_eq!(prev, tmp.path().join("drawbridge-edge.previous"));
        swap(&dl, &exe).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"build B");
        assert_eq!(std::fs::read(&prev).unwrap(), b"build A");
        assert!(!dl.exists());
    }

    #[test]
    fn rollback_puts_the_previous_binary_back() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("edge");
        write_exe(&exe, b"build A");
        keep_previous(&exe).unwrap();
        write_exe(&download_path(&exe), b"build B");
        swap(&download_path(&exe), &exe).unwrap();
        restore_previous(&exe).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"build A");
        assert!(!previous_path(&exe).exists());
        assert!(
            restore_previous(&exe).is_err(),
            "nothing to put back a second time"
        );
        assert_eq!(std::fs::read(&exe).unwrap(), b"build A");
    }

    #[test]
    fn files_hash_to_their_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_file(&tmp.path().join("missing")).is_err());
    }
}
