//! `login`, `logout`, `whoami`, `password` and `totp`: the caller's own login.

use super::args::{Global, LoginArgs, PasswordArgs, parse_time};
use super::context::{Ctx, emit, out, print_json};
use crate::config::{self, Credentials};
use crate::show::{self, Fields};
use crate::{Error, Result, fail, prompt};
use drawbridge_api_client::{self as api, Client};
use drawbridge_proto::ErrorCode;
use drawbridge_proto::api::*;
use std::io::Write;

pub(super) async fn login(g: &Global, args: LoginArgs) -> Result<()> {
    let previous = config::load()?;
    let server = match (&g.server, &previous) {
        (Some(s), _) => api::normalize_server(s)?,
        (None, Some(c)) => c.server.clone(),
        (None, None) => fail!("which server? pass --server URL"),
    };
    let same = previous.as_ref().filter(|c| c.server == server);
    let account = match (args.account.clone(), same) {
        (Some(a), _) => a,
        (None, Some(c)) => c.account.clone(),
        (None, None) => fail!("which account? pass --account NAME"),
    };
    let ca_file = match g
        .ca_file
        .clone()
        .or_else(|| same.and_then(|c| c.ca_file.clone()))
    {
        Some(p) => Some(std::path::absolute(&p).map_err(|source| Error::Io {
            context: format!("resolving {}", p.display()),
            source,
        })?),
        None => None,
    };
    let mut client = Client::new(&server, ca_file.as_deref())?;
    if args.sso {
        let resp = sso_device_login(&client, &account).await?;
        let resp = walk_stages(&mut client, resp, &args, None).await?;
        return finish_login(g, previous, server, ca_file, client, resp).await;
    }
    let user = match (args.user.clone(), same) {
        (Some(u), _) => u,
        (None, Some(c)) => c.user.clone(),
        (None, None) => fail!("which user? pass --user NAME"),
    };
    // Fail on an untrusted certificate before asking for a password.
    if !args.password_stdin {
        probe(&client).await?;
    }
    let password = if args.password_stdin {
        prompt::secret_from_stdin("password")?
    } else {
        prompt::secret(&format!("Password for {user}@{account}: "), "password")?
    };
    let resp = client
        .login(&LoginRequest {
            account: account.clone(),
            username: user.clone(),
            password: password.clone(),
            totp: args.totp.clone(),
        })
        .await?;
    let resp = walk_stages(&mut client, resp, &args, Some(&password)).await?;
    finish_login(g, previous, server, ca_file, client, resp).await
}

/// Walks a login's stages (second factor, password change, TOTP set-up)
/// until it is complete; `password` is the one just used (None for SSO).
async fn walk_stages(
    client: &mut Client,
    mut resp: LoginResponse,
    args: &LoginArgs,
    password: Option<&str>,
) -> Result<LoginResponse> {
    // Walk the stages until the login is complete.
    for _ in 0..6 {
        client.set_token(resp.token.clone());
        resp = match resp.stage {
            LoginStage::Complete => break,
            LoginStage::TotpRequired => {
                // A password login sent --totp already; single sign-on sends it here.
                let code = match (&args.totp, password) {
                    (Some(c), None) => c.clone(),
                    _ => prompt::line(
                        "Code from your authenticator app: ",
                        "TOTP code (pass it with --totp CODE)",
                    )?,
                };
                client.login_totp(&code).await?
            }
            LoginStage::PasswordChangeRequired => {
                eprintln!("Your password has expired; choose a new one.");
                let Some(password) = password else {
                    fail!(
                        "the server asks for a password change after single sign-on; log in with your password"
                    );
                };
                let new = match &args.new_password_file {
                    Some(f) => prompt::secret_from_file(f, "new password")?,
                    None => prompt::new_password("password")?,
                };
                client.change_password(password, &new).await?
            }
            LoginStage::TotpEnrollmentRequired => {
                eprintln!("Your account requires a second factor; set it up now.");
                let e = client.totp_enroll().await?;
                print_totp_secret(&e)?;
                let code = prompt::line("Code from your authenticator app: ", "TOTP code")?;
                client.totp_confirm(&code).await?
            }
        };
    }
    if resp.stage != LoginStage::Complete {
        fail!("the login did not complete");
    }
    Ok(resp)
}

/// Stores a complete login (replacing and ending the previous one) and says so.
async fn finish_login(
    g: &Global,
    previous: Option<Credentials>,
    server: String,
    ca_file: Option<std::path::PathBuf>,
    mut client: Client,
    resp: LoginResponse,
) -> Result<()> {
    client.set_token(resp.token.clone());
    let me = client.me().await?;
    let creds = Credentials {
        server: server.clone(),
        ca_file,
        account: me.account.name.to_string(),
        user: me.user.username.to_string(),
        token: resp.token.clone(),
        expires_at: resp
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
    };
    let path = config::save(&creds)?;
    // The login this one replaces is ended on the server, best effort.
    if let Some(old) = previous.as_ref().filter(|c| c.token != creds.token)
        && let Ok(c) = Client::new(&old.server, old.ca_file.as_deref())
    {
        let _ = c.with_token(old.token.clone()).logout().await;
    }
    if g.json {
        return print_json(&me);
    }
    eprintln!(
        "Logged in to {server} as {} ({}) in account {}; login stored in {}.",
        me.user.username,
        me.user.role,
        me.account.name,
        path.display()
    );
    Ok(())
}

/// `login --sso`: the device authorization grant through the server. Prints
/// the provider's page and code, then polls until the user approved there,
/// the provider refused, the code expired, or Ctrl-C.
async fn sso_device_login(client: &Client, account: &str) -> Result<LoginResponse> {
    let start = match client.sso_device_start(account).await {
        Err(api::Error::Api {
            code: ErrorCode::LoginFailed,
            message,
            ..
        }) => fail!(
            "single sign-on is not available for the account {account:?} ({message}); log in with --user and a password"
        ),
        r => r?,
    };
    eprintln!(
        "To sign in, open {} and enter the code {}",
        start.verification_uri, start.user_code
    );
    if let Some(u) = &start.verification_uri_complete {
        eprintln!("(or open {u})");
    }
    eprintln!("Waiting for you to sign in at the identity provider… (Ctrl-C stops)");
    let stop = drawbridge_tunnel::shutdown_signal();
    tokio::pin!(stop);
    let mut wait = std::time::Duration::from_secs(u64::from(start.interval.clamp(1, 60)));
    loop {
        tokio::select! {
            () = &mut stop => fail!("stopped; not logged in"),
            () = tokio::time::sleep(wait) => {}
        }
        let poll = tokio::select! {
            () = &mut stop => fail!("stopped; not logged in"),
            r = client.sso_device_poll(&start.poll_token) => r,
        };
        match poll {
            Ok(api::sso::DevicePoll::Pending(secs)) => {
                wait = std::time::Duration::from_secs(u64::from(secs.clamp(1, 60)));
            }
            Ok(api::sso::DevicePoll::Done(login)) => return Ok(*login),
            Err(api::Error::Api {
                code: ErrorCode::LoginFailed,
                message,
                ..
            }) => {
                let reason = message
                    .strip_prefix("single sign-on refused: ")
                    .unwrap_or(&message);
                let why = match reason {
                    "flow_expired" => "the code expired before it was approved; run the command again".to_string(),
                    r if r.starts_with("token_error:access_denied") => "the sign-in was refused at the identity provider".to_string(),
                    r if r.starts_with("token_error:expired_token") => "the code expired before it was approved; run the command again".to_string(),
                    "not_provisioned" => "your identity is not linked to a user of this account (and the account does not create users at first sign-in); ask an admin".to_string(),
                    "user_disabled" => "your user is disabled".to_string(),
                    other => format!("single sign-on refused: {other}"),
                };
                fail!("{why}")
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An unauthenticated request that only proves the TLS connection works.
async fn probe(client: &Client) -> Result<()> {
    match client.me().await {
        Ok(_) => Ok(()),
        Err(api::Error::Api { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn print_totp_secret(e: &TotpEnrollResponse) -> Result<()> {
    out(&format!(
        "Add this key to your authenticator app (TOTP, SHA-1, 6 digits, 30 s):\n  secret: {}\n  uri:    {}\n",
        e.secret, e.otpauth_uri
    ))
}

pub(super) async fn logout(g: &Global) -> Result<()> {
    let Some(creds) = config::load()? else {
        eprintln!("Not logged in.");
        return Ok(());
    };
    let ca = g.ca_file.clone().or_else(|| creds.ca_file.clone());
    let ended = match Client::new(&creds.server, ca.as_deref()) {
        Ok(c) => c.with_token(creds.token.clone()).logout().await,
        Err(e) => Err(e),
    };
    config::remove()?;
    match ended {
        Ok(())
        | Err(api::Error::Api {
            code: ErrorCode::Unauthenticated,
            ..
        }) => {
            eprintln!("Logged out of {}.", creds.server);
        }
        Err(e) => eprintln!(
            "Removed the stored login, but could not end it on {}: {e}",
            creds.server
        ),
    }
    Ok(())
}

pub(super) async fn whoami(ctx: &Ctx) -> Result<()> {
    let me = ctx.client.me().await?;
    emit(ctx, &me, || {
        let mut f = Fields::new();
        f.add("User", format!("{} ({})", me.user.username, me.user.role))
            .add("User ID", &me.user.id)
            .add(
                "Account",
                format!("{} ({})", me.account.name, me.account.id),
            )
            .add("Server", ctx.client.server())
            .add(
                "Via",
                if me.via == "api_token" {
                    "API token"
                } else {
                    "login"
                },
            )
            .add("2FA", if me.user.totp_enabled { "on" } else { "off" });
        if let Some(t) = ctx
            .stored
            .as_ref()
            .and_then(|c| c.expires_at.as_deref())
            .and_then(|exp| parse_time(exp).ok())
        {
            f.add("Login ends", show::time(&t));
        }
        f.render()
    })
}

pub(super) async fn password(ctx: &Ctx, args: PasswordArgs) -> Result<()> {
    let current = match &args.current_password_file {
        Some(f) => prompt::secret_from_file(f, "current password")?,
        None => prompt::secret("Current password: ", "current password")?,
    };
    let new = match &args.new_password_file {
        Some(f) => prompt::secret_from_file(f, "new password")?,
        None => prompt::new_password("password")?,
    };
    let resp = ctx.client.change_password(&current, &new).await?;
    replace_stored_token(ctx, &resp)?;
    eprintln!("Password changed. Your other logins and API tokens were ended.");
    Ok(())
}

/// After a password change or TOTP set-up the server answers with a fresh login.
fn replace_stored_token(ctx: &Ctx, resp: &LoginResponse) -> Result<()> {
    if let Some(mut creds) = ctx.stored.clone() {
        creds.token = resp.token.clone();
        creds.expires_at = resp
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        config::save(&creds)?;
    }
    if resp.stage != LoginStage::Complete {
        eprintln!("Log in again with `drawbridge login` to finish the next step.");
    }
    Ok(())
}

pub(super) async fn totp_enable(ctx: &Ctx, code: Option<String>) -> Result<()> {
    let code = match code {
        Some(c) => c,
        None => {
            // A new key, kept on the server (not active) until a code confirms it.
            let e = ctx.client.totp_enroll().await?;
            if ctx.json {
                print_json(&e)?;
            } else {
                print_totp_secret(&e)?;
            }
            eprint!("Code from your authenticator app: ");
            let _ = std::io::stderr().flush();
            match prompt::stdin_line()? {
                Some(c) if !c.trim().is_empty() => c.trim().to_string(),
                _ => {
                    eprintln!(
                        "\nNot enabled yet: the key waits on the server until you confirm it with \
                         `drawbridge totp enable --code CODE` (a code from your app)."
                    );
                    return Ok(());
                }
            }
        }
    };
    let resp = match ctx.client.totp_confirm(&code).await {
        Err(e) if e.code() == Some(ErrorCode::Conflict) => {
            if ctx.client.me().await.is_ok_and(|me| me.user.totp_enabled) {
                fail!("a second factor is already active; an admin can reset it");
            }
            fail!(
                "no key is waiting for a code ({}): run `drawbridge totp enable` without --code first to get one",
                api_message(&e)
            )
        }
        Err(e) if e.code() == Some(ErrorCode::InvalidCode) => fail!(
            "the code does not match the key waiting on the server: use the newest key from \
             `drawbridge totp enable` and check the time on the device running the app"
        ),
        r => r?,
    };
    replace_stored_token(ctx, &resp)?;
    eprintln!("Second factor enabled: logins now ask for a code from your app.");
    Ok(())
}

/// The server's message of an API error (or the whole error).
fn api_message(e: &api::Error) -> String {
    match e {
        api::Error::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
