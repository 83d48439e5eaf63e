//! What every command shares: the resolved connection ([`Ctx`]), name
//! resolution (ids, exact and case-insensitive names) and output (tables,
//! `--json`, confirmations).

use super::args::{Global, TOKEN_ENV, parse_device_spec};
use crate::config::{self, Credentials};
use crate::table::Table;
use crate::{Error, Result, fail};
use drawbridge_api_client::{self as api, Client};
use drawbridge_proto::api::*;
use drawbridge_proto::{ErrorCode, Name, SessionState};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;

pub(crate) fn name(s: &str, what: &str) -> Result<Name> {
    Name::try_from(s).map_err(|e| Error::user(format!("{what} {s:?}: {e}")))
}

/// Resolved connection for a command: the client and how to print.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) json: bool,
    /// The stored login in use (none when DRAWBRIDGE_TOKEN is used).
    pub(crate) stored: Option<Credentials>,
}

fn env_token() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub(crate) fn connect(g: &Global) -> Result<Ctx> {
    let stored = config::load()?;
    let server = match (&g.server, &stored) {
        (Some(s), _) => api::normalize_server(s)?,
        (None, Some(c)) => c.server.clone(),
        (None, None) => fail!(
            "not logged in: run `drawbridge login --server URL --account ACCOUNT --user USER`"
        ),
    };
    let same_server = stored.as_ref().filter(|c| c.server == server);
    let ca_file = g
        .ca_file
        .clone()
        .or_else(|| same_server.and_then(|c| c.ca_file.clone()));
    let client = Client::new(&server, ca_file.as_deref())?;
    if let Some(token) = env_token() {
        return Ok(Ctx {
            client: client.with_token(token),
            json: g.json,
            stored: None,
        });
    }
    let Some(creds) = same_server.cloned() else {
        fail!(
            "not logged in to {server}: run `drawbridge login --server {server} --account ACCOUNT --user USER`"
        );
    };
    Ok(Ctx {
        client: client.with_token(creds.token.clone()),
        json: g.json,
        stored: Some(creds),
    })
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("API types serialise");
    out(&format!("{s}\n"))
}

pub(crate) fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        // `drawbridge devices | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(Error::Io {
            context: "writing standard output".into(),
            source,
        }),
    }
}

pub(crate) fn print_table(t: &Table, none: &str) -> Result<()> {
    if t.is_empty() {
        eprintln!("{none}");
        Ok(())
    } else {
        out(&t.render())
    }
}

/// Either the JSON of `v`, or the human text `f` makes.
pub(crate) fn emit<T: Serialize>(ctx: &Ctx, v: &T, f: impl FnOnce() -> String) -> Result<()> {
    if ctx.json { print_json(v) } else { out(&f()) }
}

// ------------------------------------------------------------------ name resolution

/// Picks one item by exact id, exact name, or case-insensitive unique name.
pub(crate) fn pick<'a, T>(
    items: &'a [T],
    input: &str,
    kind: &str,
    list_cmd: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    if let Some(x) = items.iter().find(|x| id(x) == input) {
        return Ok(x);
    }
    let exact: Vec<&T> = items.iter().filter(|x| name(x) == input).collect();
    let matches = if exact.is_empty() {
        items
            .iter()
            .filter(|x| name(x).eq_ignore_ascii_case(input))
            .collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => fail!("no {kind} {input:?} (see `drawbridge {list_cmd}`)"),
        many => fail!(
            "{} {kind}s are named {input:?}; use an id: {}",
            many.len(),
            many.iter().map(|x| id(x)).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// When the caller may not list (e.g. a `user` asking for groups), the input is taken as an id.
pub(crate) fn listing_refused(e: &api::Error) -> bool {
    matches!(e.code(), Some(ErrorCode::Forbidden))
}

impl Ctx {
    pub(crate) async fn device(&self, input: &str) -> Result<Device> {
        let mut all = self.client.devices().await?;
        if !all
            .iter()
            .any(|d| d.id == input || d.name.as_str().eq_ignore_ascii_case(input))
        {
            // Archived devices are hidden from the list but can still be named.
            all.extend(self.client.archived_devices().await.unwrap_or_default());
        }
        Ok(pick(
            &all,
            input,
            "device",
            "devices",
            |d| &d.id,
            |d| d.name.as_str(),
        )?
        .clone())
    }

    pub(crate) async fn device_id(&self, input: &str) -> Result<String> {
        Ok(self.device(input).await?.id)
    }

    pub(crate) async fn user_id(&self, input: &str) -> Result<String> {
        match self.client.users().await {
            Ok(all) => Ok(pick(
                &all,
                input,
                "user",
                "users",
                |u| &u.id,
                |u| u.username.as_str(),
            )?
            .id
            .clone()),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn group_id(&self, input: &str) -> Result<String> {
        match self.client.groups().await {
            Ok(all) => Ok(pick(
                &all,
                input,
                "group",
                "groups",
                |g| &g.id,
                |g| g.name.as_str(),
            )?
            .id
            .clone()),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn pool_id(&self, input: &str) -> Result<String> {
        match self.client.pools().await {
            Ok(all) => Ok(
                pick(&all, input, "pool", "pools", |p| &p.id, |p| p.name.as_str())?
                    .id
                    .clone(),
            ),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    /// A session by id, or by name (preferring the one that has not ended).
    pub(crate) async fn session_id(&self, input: &str) -> Result<String> {
        let all = self.client.sessions(None).await?;
        if all.iter().any(|s| s.id == input) {
            return Ok(input.to_string());
        }
        let named: Vec<&Session> = all.iter().filter(|s| s.name.as_str() == input).collect();
        let live: Vec<&Session> = named
            .iter()
            .copied()
            .filter(|s| s.state != SessionState::Ended)
            .collect();
        match (named.as_slice(), live.as_slice()) {
            ([one], _) | (_, [one]) => Ok(one.id.clone()),
            ([], _) => fail!("no session {input:?} (see `drawbridge sessions`)"),
            (many, _) => fail!(
                "{} sessions are named {input:?}; use an id: {}",
                many.len(),
                many.iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Names for ids, best effort (a `user` cannot list everything).
    pub(crate) async fn device_names(&self) -> HashMap<String, String> {
        self.client
            .devices()
            .await
            .map(|v| v.into_iter().map(|d| (d.id, d.name.to_string())).collect())
            .unwrap_or_default()
    }

    pub(crate) async fn user_names(&self) -> HashMap<String, String> {
        self.client
            .users()
            .await
            .map(|v| {
                v.into_iter()
                    .map(|u| (u.id, u.username.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) async fn session_devices(&self, specs: &[String]) -> Result<Vec<SessionDevice>> {
        let all = self.client.devices().await?;
        let mut out = Vec::new();
        for spec in specs {
            let (dev, targets) = parse_device_spec(spec).map_err(Error::User)?;
            let d = pick(
                &all,
                &dev,
                "device",
                "devices",
                |d| &d.id,
                |d| d.name.as_str(),
            )?;
            let targets = match targets {
                Some(t) => t,
                None if d.firewall.is_empty() => fail!(
                    "device {} allows nothing in its firewall; name the targets: --device {}=tcp:ADDRESS:PORT",
                    d.name,
                    d.name
                ),
                None => d.firewall.clone(),
            };
            out.push(SessionDevice {
                device_id: d.id.clone(),
                targets,
            });
        }
        Ok(out)
    }
}

pub(crate) fn name_of(map: &HashMap<String, String>, id: &str) -> String {
    map.get(id).cloned().unwrap_or_else(|| id.to_string())
}

/// A confirmation: a message, or with --json `{"ok": true}`.
pub(crate) fn done(ctx: &Ctx, msg: &str) -> Result<()> {
    if ctx.json {
        print_json(&serde_json::json!({ "ok": true }))
    } else {
        eprintln!("{msg}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_by_id_name_and_case() {
        let items = vec![("id1", "Press"), ("id2", "press"), ("id3", "Lathe")];
        let p = |s: &str| pick(&items, s, "device", "devices", |x| x.0, |x| x.1).map(|x| x.0);
        assert_eq!(p("id3").unwrap(), "id3");
        assert_eq!(p("Press").unwrap(), "id1");
        assert_eq!(p("lathe").unwrap(), "id3");
        assert!(p("PRESS").unwrap_err().to_string().contains("2 devices"));
        assert!(
            p("mill")
                .unwrap_err()
                .to_string()
                .contains("drawbridge devices")
        );
    }
}
