//! Tidy: keeps ARCHITECTURE.md and a few architecture rules true under `cargo test`
//! (after rust-analyzer's `tidy.rs`). Each rule is a function over file names and
//! texts, run once on the real tree and once, in `mod rules`, on small made-up
//! inputs that break it, so a rule that can no longer fail is noticed.
//!
//! (a) every `.rs` file under `crates/*/src` is named in ARCHITECTURE.md, and every
//!     path ARCHITECTURE.md names (in backticks, from `crates/`, `scripts/`, `bench/`,
//!     `docs/` or `.ci/`) exists;
//! (b) the pure code (listed here and in ARCHITECTURE.md's "pure code" invariant, which
//!     must agree) uses no tokio, no sockets, no threads and reads no clock;
//! (c) only `crates/tunnel` names gotatun (its timers run on a mock clock that cargo's
//!     feature unification would impose on any other user);
//! (d) no source file outside tests is over [`MAX_LINES`] lines, except the ones in
//!     [`LONG_FILES`], a list that may only shrink.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Longest source file allowed (tests excepted).
const MAX_LINES: usize = 850;

/// Files over [`MAX_LINES`]: (path, its length when listed, why). Empty since
/// `crates/client/src/api.rs` (883 lines) became `crates/api-client`; an entry must go
/// once its file is split or gone, and a listed file may not grow.
const LONG_FILES: &[(&str, usize, &str)] = &[];

/// The pure code: files, or directories (ending in `/`) whose every `.rs` file counts.
/// ARCHITECTURE.md's "pure code" invariant names exactly these.
const PURE: &[&str] = &[
    "crates/proto/src/",
    "crates/wire/src/",
    "crates/tunnel/src/engine/",
    "crates/relay/src/switchboard.rs",
    "crates/relay/src/switchboard/",
    "crates/relay/src/feed/mod.rs",
    "crates/netstack/src/policy.rs",
    "crates/netstack/src/rewrite.rs",
    "crates/netstack/src/wire.rs",
    "crates/testnet/src/sim.rs",
];

/// What pure code must not contain (outside comments and `#[cfg(test)]` modules).
const IMPURE: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("UdpSocket", "a socket"),
    ("TcpStream", "a socket"),
    ("TcpListener", "a socket"),
    ("socket2", "a socket"),
    ("Instant::now", "a clock read (take the time as an input)"),
    (
        "SystemTime::now",
        "a clock read (take the time as an input)",
    ),
    ("now_utc", "a clock read (take the time as an input)"),
    ("Utc::now", "a clock read (take the time as an input)"),
    ("std::thread", "a thread (spawning or blocking)"),
    ("spawn_blocking", "a thread (spawning or blocking)"),
];

/// Known, accepted uses of an [`IMPURE`] word in pure code: (file, word, reason). An
/// exception that no longer matches anything must be removed.
const PURE_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "crates/testnet/src/sim.rs",
    "Instant::now",
    "the simulation's virtual time needs an origin and std makes an `Instant` only through \
     `now()`; read once in `Sim::new`, time then advances only by the simulation",
)];

/// The only crate that may name gotatun.
const GOTATUN_HOME: &str = "crates/tunnel/";
/// This file names it too, to look for it.
const THIS_FILE: &str = "crates/testnet/tests/tidy.rs";

/// Path prefixes that make a backticked span in ARCHITECTURE.md a path reference.
const PATH_PREFIXES: &[&str] = &["crates/", "scripts/", "bench/", "docs/", ".ci/"];

/// Directories never walked: build output and cargo-fuzz's generated directories.
const SKIP_DIRS: &[&str] = &["target", "corpus", "artifacts", "coverage", ".git"];

// ---------------------------------------------------------------------------------------
// The checks on the real tree.

#[test]
fn architecture_md_maps_every_source_file_and_names_only_real_paths() {
    let root = root();
    let doc = read(&root.join("ARCHITECTURE.md"));
    let sources: Vec<String> = files(&root, "crates")
        .into_iter()
        .filter(|p| is_crate_source(p))
        .collect();
    let problems = map_problems(&sources, &path_refs(&doc), |p| root.join(p).exists());
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn pure_code_uses_no_runtime_sockets_threads_or_clock() {
    let root = root();
    let doc = read(&root.join("ARCHITECTURE.md"));
    let mut problems = pure_list_problems(&doc);
    let texts: Vec<(String, String)> = files(&root, "crates")
        .into_iter()
        .filter(|p| p.ends_with(".rs") && is_pure(p))
        .map(|p| {
            let text = read(&root.join(&p));
            (p, text)
        })
        .collect();
    assert!(
        texts.len() > 20,
        "the pure file list looks wrong: only {} files",
        texts.len()
    );
    problems.extend(purity_problems(&texts, PURE_EXCEPTIONS));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_the_tunnel_crate_names_gotatun() {
    let root = root();
    let mut texts = vec![("Cargo.toml".to_string(), read(&root.join("Cargo.toml")))];
    for p in files(&root, "crates") {
        if p.ends_with(".rs") || p.ends_with("Cargo.toml") {
            let text = read(&root.join(&p));
            texts.push((p, text));
        }
    }
    let problems = gotatun_problems(&texts);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_source_file_outside_tests_is_over_the_limit() {
    let root = root();
    let lengths: Vec<(String, usize)> = files(&root, "crates")
        .into_iter()
        .filter(|p| p.ends_with(".rs") && !is_test_file(p))
        .map(|p| {
            let n = read(&root.join(&p)).lines().count();
            (p, n)
        })
        .collect();
    let problems = length_problems(&lengths, LONG_FILES);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The rules, as functions of names and texts.

/// (a) Source files missing from the map, and paths the map names that do not exist.
fn map_problems(sources: &[String], refs: &[String], exists: impl Fn(&str) -> bool) -> Vec<String> {
    let named: BTreeSet<&str> = refs.iter().map(|r| r.trim_end_matches('/')).collect();
    let mut problems: Vec<String> = sources
        .iter()
        .filter(|s| !named.contains(s.as_str()))
        .map(|s| format!("{s}: not in ARCHITECTURE.md's map (add a row or a mention)"))
        .collect();
    let mut seen = BTreeSet::new();
    for r in refs {
        if seen.insert(r) && !exists(r.trim_end_matches('/')) {
            problems.push(format!(
                "`{r}`: named in ARCHITECTURE.md but does not exist"
            ));
        }
    }
    problems
}

/// Backticked path references in a markdown text (fenced code blocks skipped).
fn path_refs(doc: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && is_path_ref(span) {
                refs.push(span.to_string());
            }
        }
    }
    refs
}

fn is_path_ref(span: &str) -> bool {
    PATH_PREFIXES.iter().any(|p| span.starts_with(p))
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
}

/// (b) The "pure code" invariant in ARCHITECTURE.md must name exactly [`PURE`].
fn pure_list_problems(doc: &str) -> Vec<String> {
    const MARK: &str = "**Architecture Invariant:** the pure code";
    let Some(start) = doc.find(MARK) else {
        return vec![format!(
            "ARCHITECTURE.md has no paragraph starting `{MARK}`"
        )];
    };
    let para = doc[start..].split("\n\n").next().unwrap_or_default();
    let in_doc: BTreeSet<String> = path_refs(para).into_iter().collect();
    let in_test: BTreeSet<String> = PURE.iter().map(|p| p.to_string()).collect();
    let mut problems = Vec::new();
    for p in in_doc.difference(&in_test) {
        problems.push(format!(
            "`{p}`: pure in ARCHITECTURE.md but not in tidy.rs's PURE"
        ));
    }
    for p in in_test.difference(&in_doc) {
        problems.push(format!(
            "`{p}`: in tidy.rs's PURE but not in ARCHITECTURE.md's list"
        ));
    }
    problems
}

fn is_pure(path: &str) -> bool {
    PURE.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        }
    })
}

/// (b) Uses of [`IMPURE`] words in pure code that no exception covers, and stale exceptions.
fn purity_problems(texts: &[(String, String)], exceptions: &[(&str, &str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (path, text) in texts {
        if is_test_file(path) {
            continue;
        }
        for (n, line) in code_lines(text) {
            for (word, what) in IMPURE {
                if !line.contains(word) {
                    continue;
                }
                match exceptions
                    .iter()
                    .position(|(p, w, _)| p == path && w == word)
                {
                    Some(i) => {
                        used.insert(i);
                    }
                    None => problems.push(format!(
                        "{path}:{n}: `{word}` ({what}) in pure code: {}",
                        line.trim()
                    )),
                }
            }
        }
    }
    for (i, (path, word, _)) in exceptions.iter().enumerate() {
        if !used.contains(&i) {
            problems.push(format!(
                "{path}: the exception for `{word}` matches nothing any more; remove it"
            ));
        }
    }
    problems
}

/// The lines of a Rust file that are code: comment lines and `#[cfg(test)]` items
/// (a module or function, up to its closing brace) left out. Line numbers from 1.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut skip_depth: Option<i64> = None; // brace depth inside a skipped test item
    let mut pending_test = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if let Some(depth) = skip_depth.as_mut() {
            *depth += braces(line);
            if *depth <= 0 {
                skip_depth = None;
            }
            continue;
        }
        let t = match t.strip_prefix("#[cfg(test)]") {
            Some(rest) => {
                pending_test = true;
                rest.trim_start()
            }
            None => t,
        };
        if t.is_empty() {
            continue;
        }
        if pending_test && !t.starts_with("#[") {
            pending_test = false;
            let depth = braces(t);
            if depth > 0 {
                skip_depth = Some(depth);
            }
            continue; // a one-line item (`mod tests;`) is skipped as well
        }
        out.push((i + 1, line));
    }
    out
}

fn braces(line: &str) -> i64 {
    line.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// (c) Files outside [`GOTATUN_HOME`] (this checker aside) whose code (comments aside) names gotatun.
fn gotatun_problems(texts: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in texts {
        if path.starts_with(GOTATUN_HOME) || path == THIS_FILE {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let t = line.trim_start();
            let comment = if path.ends_with(".toml") {
                t.starts_with('#')
            } else {
                t.starts_with("//")
            };
            if !comment && line.contains("gotatun") {
                problems.push(format!(
                    "{path}:{}: names gotatun; only {GOTATUN_HOME} may (its mock clock would \
                     freeze gotatun's timers everywhere through feature unification)",
                    n + 1
                ));
            }
        }
    }
    problems
}

/// (d) Files over [`MAX_LINES`] not allowed, allowed files that grew, stale allowances.
fn length_problems(lengths: &[(String, usize)], allowed: &[(&str, usize, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, n) in lengths {
        match allowed.iter().find(|(p, _, _)| p == path) {
            Some((_, max, _)) if n > max => problems.push(format!(
                "{path}: {n} lines, more than the {max} it had when allowed; the allow-list \
                 may only shrink: split the file"
            )),
            Some(_) if *n <= MAX_LINES => problems.push(format!(
                "{path}: now {n} lines, within {MAX_LINES}; remove it from LONG_FILES"
            )),
            Some(_) => {}
            None if *n > MAX_LINES => problems.push(format!(
                "{path}: {n} lines, over {MAX_LINES}; split it (ARCHITECTURE.md: files stay small)"
            )),
            None => {}
        }
    }
    for (path, _, _) in allowed {
        if !lengths.iter().any(|(p, _)| p == path) {
            problems.push(format!("{path}: in LONG_FILES but gone; remove the entry"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// The tree.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `root/dir`, as a `/`-separated path relative to `root`, sorted.
fn files(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_string()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(root.join(&d)).unwrap_or_else(|e| panic!("list {d}: {e}"));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{d}/{name}");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) {
                    stack.push(rel);
                }
            } else if kind.is_file() {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// `crates/NAME/src/**.rs` (a fuzz crate's code lives in `crates/NAME/fuzz/`, not here).
fn is_crate_source(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() >= 4 && parts[0] == "crates" && parts[2] == "src" && path.ends_with(".rs")
}

/// Test code: anything under a `tests/` directory, and in-crate test modules kept in
/// their own file (`tests.rs`, `*_tests.rs`).
fn is_test_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path.split('/').any(|c| c == "tests") || name == "tests.rs" || name.ends_with("_tests.rs")
}

// ---------------------------------------------------------------------------------------
// Each rule fails when broken.

mod rules {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn texts(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn path_refs_take_backticked_paths_only() {
        let doc = "A `crates/a/src/b.rs` and `crates/a/src/c/` row; prose crates/NAME and \
                   `crates/{a,b}/fuzz`, `Node`, `scripts/test`.\n```\n`crates/in/fence.rs`\n```\n";
        assert_eq!(
            path_refs(doc),
            owned(&["crates/a/src/b.rs", "crates/a/src/c/", "scripts/test"])
        );
    }

    #[test]
    fn map_rule_reports_an_unmapped_file_and_a_dead_path() {
        let sources = owned(&["crates/a/src/lib.rs", "crates/a/src/new.rs"]);
        let refs = owned(&[
            "crates/a/src/lib.rs",
            "crates/a/src/gone.rs",
            "crates/a/src/",
        ]);
        let exists = |p: &str| p != "crates/a/src/gone.rs";
        let problems = map_problems(&sources, &refs, exists);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("crates/a/src/new.rs: not in"));
        assert!(problems[1].contains("`crates/a/src/gone.rs`: named in ARCHITECTURE.md"));
        // A directory mention does not map the files inside it.
        let only_dir = owned(&["crates/a/src/"]);
        assert_eq!(map_problems(&sources, &only_dir, |_| true).len(), 2);
        assert!(map_problems(&sources, &sources, |_| true).is_empty());
    }

    #[test]
    fn purity_rule_flags_runtime_sockets_threads_and_clock() {
        let bad = texts(&[
            ("crates/wire/src/a.rs", "use tokio::sync::mpsc;\n"),
            (
                "crates/wire/src/b.rs",
                "fn f() { let s = std::net::UdpSocket::bind(a); }\n",
            ),
            (
                "crates/wire/src/c.rs",
                "fn f() -> Instant { Instant::now() }\n",
            ),
            ("crates/wire/src/d.rs", "fn f() { std::thread::sleep(d) }\n"),
            ("crates/wire/src/e.rs", "let t = SystemTime::now();\n"),
        ]);
        let problems = purity_problems(&bad, &[]);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].starts_with("crates/wire/src/a.rs:1: `tokio`"));
    }

    #[test]
    fn purity_rule_skips_comments_test_modules_and_listed_exceptions() {
        let ok = texts(&[
            (
                "crates/wire/src/a.rs",
                "//! No tokio here.\nfn f(now: Instant) {}\n\n#[cfg(test)]\nmod tests {\n    \
                 fn t() {\n        let now = Instant::now();\n    }\n}\n",
            ),
            (
                "crates/wire/src/b.rs",
                "#[cfg(test)] mod t {\n    fn x() { Instant::now(); }\n}\n",
            ),
            ("crates/wire/src/tests.rs", "let now = Instant::now();\n"),
            ("crates/sim.rs", "let start = Instant::now();\n"),
        ]);
        let exceptions = [("crates/sim.rs", "Instant::now", "origin")];
        assert!(purity_problems(&ok, &exceptions).is_empty());
        // Code after a test module is checked again.
        let after = texts(&[(
            "crates/wire/src/a.rs",
            "#[cfg(test)]\nmod tests {\n    fn t() {}\n}\nfn g() { Instant::now(); }\n",
        )]);
        assert_eq!(purity_problems(&after, &[]).len(), 1);
        // An exception that matches nothing is stale.
        let problems = purity_problems(&ok[..1], &exceptions);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("matches nothing"));
    }

    #[test]
    fn pure_list_must_agree_with_architecture_md() {
        let mut doc = String::from("**Architecture Invariant:** the pure code:");
        for p in PURE {
            doc.push_str(&format!(" `{p}`,"));
        }
        assert!(pure_list_problems(&doc).is_empty());
        let missing = doc.replace(" `crates/wire/src/`,", "");
        assert_eq!(pure_list_problems(&missing).len(), 1);
        let extra = format!("{doc} `crates/relay/src/lib.rs`.\n\nOther `crates/x/`.");
        assert_eq!(pure_list_problems(&extra).len(), 1);
        assert_eq!(pure_list_problems("no such paragraph").len(), 1);
    }

    #[test]
    fn gotatun_rule_flags_any_crate_but_the_tunnel() {
        let t = texts(&[
            ("crates/tunnel/Cargo.toml", "gotatun = \"0.10\"\n"),
            (
                "crates/tunnel/src/engine/wg.rs",
                "use gotatun::noise::Tunn;\n",
            ),
            ("crates/wire/Cargo.toml", "# unlike gotatun\nx = 1\n"),
            ("crates/wire/src/keys.rs", "//! the curve gotatun uses\n"),
            ("crates/edge/Cargo.toml", "gotatun = \"0.10\"\n"),
            ("crates/relay/src/lib.rs", "use gotatun::noise;\n"),
            (
                "Cargo.toml",
                "[workspace.dependencies]\ngotatun = \"0.10\"\n",
            ),
        ]);
        let problems = gotatun_problems(&t);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("crates/edge/Cargo.toml:1:"));
        assert!(problems[2].starts_with("Cargo.toml:2:"));
    }

    #[test]
    fn length_rule_flags_long_files_and_an_allow_list_that_does_not_shrink() {
        let allowed = [("crates/a/src/big.rs", 900, "why")];
        let l = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
            v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
        };
        assert!(
            length_problems(&l(&[("crates/a/src/big.rs", 900), ("x.rs", 850)]), &allowed)
                .is_empty()
        );
        let over = length_problems(&l(&[("crates/a/src/big.rs", 900), ("x.rs", 851)]), &allowed);
        assert_eq!(over.len(), 1, "{over:?}");
        assert!(over[0].starts_with("x.rs: 851 lines"));
        let grew = length_problems(&l(&[("crates/a/src/big.rs", 901)]), &allowed);
        assert!(grew[0].contains("may only shrink"), "{grew:?}");
        let split = length_problems(&l(&[("crates/a/src/big.rs", 400)]), &allowed);
        assert!(split[0].contains("remove it from LONG_FILES"), "{split:?}");
        let gone = length_problems(&l(&[("x.rs", 10)]), &allowed);
        assert!(gone[0].contains("gone"), "{gone:?}");
    }

    #[test]
    fn test_files_and_crate_sources_are_told_apart() {
        assert!(is_test_file("crates/a/tests/x.rs"));
        assert!(is_test_file("crates/a/src/engine/path/tests.rs"));
        assert!(is_test_file("crates/a/src/engine/bridge_tests.rs"));
        assert!(!is_test_file("crates/a/src/engine/mod.rs"));
        assert!(is_crate_source("crates/a/src/bin/x/main.rs"));
        assert!(!is_crate_source("crates/a/fuzz/fuzz_targets/x.rs"));
        assert!(!is_crate_source("crates/a/tests/x.rs"));
    }
}
