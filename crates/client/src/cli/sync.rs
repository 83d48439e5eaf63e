//! `data sync`: the mailbox loop as a tool. Pages of points after the cursor
//! until the server has no more; each page is appended as JSON lines (and
//! flushed to disk), and only then is the page's cursor written to the cursor
//! file (a temporary file renamed over it), so a later run continues right
//! after the last page written.
//!
//! A crash between the two writes hands that page out again on the next run
//! (at least once). Written into the same `--out` file, the repeat is dropped:
//! the mailbox hands out points in increasing `txid`, so a run skips points
//! whose `txid` is not above the file's last line. An unfinished last line (a
//! crash while writing) is cut first; its points come again.

use super::context::Ctx;
use crate::{Error, Result, fail};
use drawbridge_proto::mailbox::DataPoint;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Longest cursor kept (the server's are `t` and up to 19 digits).
const MAX_CURSOR: usize = 128;
/// How far back from its end the out file is searched for its last line.
const MAX_TAIL: u64 = 64 * 1024;

pub(super) struct SyncArgs {
    pub cursor_file: Option<PathBuf>,
    pub after: Option<String>,
    pub out: Option<PathBuf>,
    pub page_size: u32,
}

pub(super) async fn sync(ctx: &Ctx, a: SyncArgs) -> Result<()> {
    let _lock = a.cursor_file.as_deref().map(lock).transpose()?;
    let mut cursor = match &a.cursor_file {
        Some(f) => read_cursor(f)?,
        None => a.after.clone(),
    };
    let (mut sink, mut last_txid) = match &a.out {
        Some(p) => {
            let (f, last) = open_out(p)?;
            (Sink::File(f, p.clone()), last)
        }
        None => (Sink::Stdout, None),
    };
    let (mut points, mut skipped, mut pages) = (0u64, 0u64, 0u64);
    loop {
        let page = ctx.client.data_sync(cursor.as_deref(), a.page_size).await?;
        check_cursor(&page.cursor)?;
        let mut buf = Vec::new();
        for p in &page.points {
            if last_txid.is_some_and(|t| p.txid <= t) {
                skipped += 1;
                continue;
            }
            serde_json::to_writer(&mut buf, p).expect("points serialise");
            buf.push(b'\n');
            last_txid = Some(p.txid);
            points += 1;
        }
        sink.write_page(&buf)?;
        pages += 1;
        if let Some(f) = &a.cursor_file {
            write_cursor(f, &page.cursor)?;
        }
        let moved = cursor.as_deref() != Some(page.cursor.as_str());
        cursor = Some(page.cursor);
        if !page.more_data_available {
            break;
        }
        if !moved {
            fail!(
                "the server says more points wait but its cursor did not move; stopped to avoid a loop"
            );
        }
    }
    let cursor = cursor.unwrap_or_default();
    let kept = match &a.cursor_file {
        Some(f) => format!("; cursor {cursor} kept in {}", f.display()),
        None => format!("; cursor {cursor} (continue with --after {cursor})"),
    };
    let again = if skipped > 0 {
        format!(", {skipped} already in the file skipped")
    } else {
        String::new()
    };
    let summary = serde_json::json!({
        "points": points, "skipped": skipped, "pages": pages, "cursor": cursor,
    });
    match (&sink, ctx.json) {
        // Standard output carries the points: the summary goes to standard error.
        (Sink::File(..), true) => super::context::print_json(&summary),
        _ => {
            eprintln!(
                "Synced {points} point{}{again} in {pages} page{}{kept}.",
                if points == 1 { "" } else { "s" },
                if pages == 1 { "" } else { "s" },
            );
            Ok(())
        }
    }
}

enum Sink {
    Stdout,
    File(File, PathBuf),
}

impl Sink {
    /// Writes a page whole and makes it durable before the cursor moves past
    /// it: fsync'd for a file; for standard output every error counts (a
    /// closed pipe means the points did not arrive).
    fn write_page(&mut self, buf: &[u8]) -> Result<()> {
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(buf)
                    .and_then(|_| o.flush())
                    .map_err(|source| Error::Io {
                        context:
                            "writing standard output (the cursor was not moved past this page)"
                                .into(),
                        source,
                    })
            }
            Sink::File(f, path) => {
                if buf.is_empty() {
                    return Ok(());
                }
                f.write_all(buf)
                    .and_then(|_| f.sync_data())
                    .map_err(|source| Error::Io {
                        context: format!("writing {}", path.display()),
                        source,
                    })
            }
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context: what,
        source,
    }
}

/// Opens the out file for appending; cuts an unfinished last line; returns
/// the `txid` of the last line (points up to it are in the file already).
fn open_out(path: &Path) -> Result<(File, Option<i64>)> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io(format!("reading {}", path.display())))?
        .len();
    let start = len.saturating_sub(MAX_TAIL);
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(start))
        .and_then(|_| (&f).take(MAX_TAIL).read_to_end(&mut tail))
        .map_err(io(format!("reading {}", path.display())))?;
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => fail!(
            "{}: its last {} KiB hold no line end; it is no file `drawbridge data sync` wrote",
            path.display(),
            MAX_TAIL / 1024
        ),
    };
    if complete < tail.len() {
        f.set_len(start + complete as u64)
            .and_then(|_| f.sync_data())
            .map_err(io(format!(
                "cutting the unfinished last line of {}",
                path.display()
            )))?;
        eprintln!(
            "note: cut an unfinished last line of {} (a run stopped while writing); its points come again",
            path.display()
        );
    }
    let lines = &tail[..complete];
    let last_line = lines[..lines.len().saturating_sub(1)]
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    let last_txid = match last_line {
        None => None,
        Some(l) => match serde_json::from_slice::<DataPoint>(l) {
            Ok(p) => Some(p.txid),
            Err(_) => fail!(
                "{}: its last line is no point; append to a file only `drawbridge data sync` writes",
                path.display()
            ),
        },
    };
    Ok((f, last_txid))
}

/// `FILE.lock` next to the cursor file, held while the run lasts: two runs on
/// one cursor would hand the same pages out twice.
fn lock(cursor_file: &Path) -> Result<File> {
    let mut name = cursor_file.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => fail!(
            "another `drawbridge data sync` is using {} (it holds {})",
            cursor_file.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", path.display()))(e)),
    }
}

fn check_cursor(c: &str) -> Result<()> {
    if c.is_empty() || c.len() > MAX_CURSOR || !c.bytes().all(|b| b.is_ascii_graphic()) {
        fail!(
            "the server sent a cursor this client cannot keep ({} bytes)",
            c.len()
        );
    }
    Ok(())
}

/// The cursor kept in `path`; None when the file does not exist or is empty (start from the oldest point).
fn read_cursor(path: &Path) -> Result<Option<String>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let mut text = String::new();
    f.take(MAX_CURSOR as u64 + 2)
        .read_to_string(&mut text)
        .map_err(io(format!("reading {}", path.display())))?;
    let c = text.trim();
    if c.is_empty() {
        return Ok(None);
    }
    if check_cursor(c).is_err() {
        fail!(
            "{} holds no cursor (a cursor file holds one line, e.g. t12345)",
            path.display()
        );
    }
    Ok(Some(c.to_string()))
}

/// Replaces the cursor file atomically: a temporary file beside it, fsync'd,
/// renamed over it, and the directory fsync'd so the rename survives a power loss.
fn write_cursor(path: &Path, cursor: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_else(|| "cursor".as_ref()));
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{cursor}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(io(format!("writing the cursor to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(txid: i64) -> String {
        format!(
            r#"{{"txid":{txid},"device_id":"d","device":"press","tag":"t","time_ms":1,"value":1.0,"quality":{{"quality":"good"}}}}"#
        ) + "\n"
    }

    #[test]
    fn the_cursor_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cursor");
        assert_eq!(read_cursor(&f).unwrap(), None);
        write_cursor(&f, "t41").unwrap();
        write_cursor(&f, "t42").unwrap();
        assert_eq!(read_cursor(&f).unwrap().as_deref(), Some("t42"));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "t42\n");
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&f, "not a cursor at all\n").unwrap();
        assert!(read_cursor(&f).is_err());
        std::fs::write(&f, "x".repeat(10_000)).unwrap();
        assert!(read_cursor(&f).is_err());
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(read_cursor(&f).unwrap(), None);
    }

    #[test]
    fn an_unfinished_last_line_is_cut_and_the_last_txid_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("points.jsonl");
        let (_, last) = open_out(&p).unwrap();
        assert_eq!(last, None);
        let whole = format!("{}{}", line(7), line(9));
        std::fs::write(&p, format!("{whole}{{\"txid\":10,\"dev")).unwrap();
        let (mut f, last) = open_out(&p).unwrap();
        assert_eq!(last, Some(9));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), whole);
        // Appends go after the cut.
        f.write_all(line(10).as_bytes()).unwrap();
        drop(f);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with(&line(10)));
        // A torn first line only: the file is emptied.
        std::fs::write(&p, "{\"txid\":1").unwrap();
        assert_eq!(open_out(&p).unwrap().1, None);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        // Somebody else's file is not appended to.
        std::fs::write(&p, "hello\n").unwrap();
        assert!(open_out(&p).is_err());
    }

    #[test]
    fn one_cursor_file_serves_one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cursor");
        let held = lock(&f).unwrap();
        let e = lock(&f).unwrap_err().to_string();
        assert!(e.contains("another"), "{e}");
        drop(held);
        lock(&f).unwrap();
    }

    #[test]
    fn cursors_that_cannot_be_kept_are_refused() {
        assert!(check_cursor("t123").is_ok());
        for bad in ["", "t 1", "t\n1", &"t".repeat(200)] {
            assert!(check_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
