//! Reading passwords and codes from the terminal, standard input or files.

use crate::{Error, Result, fail};
use std::io::{BufRead, Write};
use std::path::Path;

fn strip_newline(mut s: String) -> String {
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
    s
}

/// One line of standard input, or `None` at its end.
pub fn stdin_line() -> Result<Option<String>> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| Error::Io {
            context: "reading standard input".into(),
            source,
        })?;
    Ok((n > 0).then(|| strip_newline(line)))
}

/// A secret from the first line of standard input.
pub fn secret_from_stdin(what: &str) -> Result<String> {
    match stdin_line()? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => fail!("no {what} on standard input"),
    }
}

/// A secret from the first line of a file.
pub fn secret_from_file(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading the {what} from {}", path.display()),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        fail!("{} holds no {what} on its first line", path.display());
    }
    Ok(line)
}

/// Asks for a visible value (such as a one-time code) on standard error and
/// reads it from standard input.
pub fn line(prompt: &str, what: &str) -> Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    match stdin_line()? {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => fail!("no {what} given"),
    }
}

/// Asks for a secret on the terminal without echo.
pub fn secret(prompt: &str, what: &str) -> Result<String> {
    match rpassword::prompt_password(prompt) {
        Ok(s) if !s.is_empty() => Ok(s),
        Ok(_) => fail!("no {what} given"),
        Err(e) => fail!(
            "cannot ask for the {what} without a terminal ({e}); see --help for reading it from standard input or a file"
        ),
    }
}

/// Asks for a new password twice.
pub fn new_password(what: &str) -> Result<String> {
    let first = secret(&format!("New {what}: "), what)?;
    let second = secret(&format!("Repeat the new {what}: "), what)?;
    if first != second {
        fail!("the two {what}s differ");
    }
    Ok(first)
}
