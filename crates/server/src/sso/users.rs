//! Who an SSO login is, and what it may: the user found by (issuer, subject)
//! only (never by e-mail), created just in time when the account allows, a
//! disabled or locked user refused whatever the provider says, the group rules
//! applied (SSO-granted memberships and role follow the provider's groups at
//! every login), the second factor decided (the provider's `amr` may stand in
//! for TOTP), and an ordinary login token; all on the audit chain.
//!
//! With `mode` `required`, password logins are refused except for the
//! break-glass admin ([`password_login`]), whose every password login is an
//! `auth.break_glass` entry and a notification for the admins.

use super::login::{clip, refuse};
use super::{Provider, oidc};
use crate::audit::{self, Event};
use crate::auth;
use crate::db::Tx;
use crate::error::AppResult;
use crate::records::{self, UserRow};
use crate::secret;
use crate::state::AppState;
use drawbridge_proto::Role;
use drawbridge_proto::api::{LoginResponse, LoginStage};
use drawbridge_proto::sso::SsoMode;
use sqlx::Row;
use std::collections::BTreeSet;

/// A user name for a user created at the first login: the provider's
/// `preferred_username`, else the e-mail's local part, else `sso-…`; only
/// `[A-Za-z0-9._@-]`, at most 56 characters (room for a `-N` suffix).
fn username_hint(claims: &oidc::IdTokenClaims) -> String {
    let raw = claims
        .preferred_username()
        .map(|u| u.as_str().to_string())
        .or_else(|| {
            claims
                .email()
                .map(|e| e.as_str().split('@').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        .take(56)
        .collect();
    if clean.is_empty() {
        let h = secret::token_hash(claims.subject().as_str());
        format!("sso-{}", &h[..10])
    } else {
        clean
    }
}

async fn free_username(tx: &mut Tx<'_>, account_id: &str, hint: &str) -> AppResult<String> {
    for n in 0..50 {
        let name = if n == 0 {
            hint.to_string()
        } else {
            format!("{hint}-{}", n + 1)
        };
        let taken: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE account_id = $1 AND username = $2",
        )
        .bind(account_id)
        .bind(&name)
        .fetch_one(&mut **tx)
        .await?;
        if taken == 0 {
            return Ok(name);
        }
    }
    Ok(format!("{hint}-{}", &secret::new_token("")[..6]))
}

/// The stored password hash of users made by SSO: it never verifies, so they
/// have no password until an admin sets one.
pub const NO_PASSWORD: &str = "!sso-no-password";

/// How an SSO login came in: the flow's kind, the client that got the tokens
/// and the provider's refresh token, if it gave one.
pub(super) struct Via<'a> {
    pub kind: &'a str,
    pub client_id: &'a str,
    pub refresh_token: Option<String>,
}

/// Ends every SSO login: user, mapping, second factor, token; all on the record.
/// A complete login with a refresh token is kept in step with the provider
/// ([`super::refresh`]).
pub(super) async fn finish(
    state: &AppState,
    p: &Provider,
    claims: oidc::IdTokenClaims,
    via: Via<'_>,
    source: &str,
) -> AppResult<LoginResponse> {
    let kind = via.kind;
    let now = state.now();
    let issuer = claims.issuer().as_str().to_string();
    let subject = claims.subject().as_str().to_string();
    if issuer != p.issuer || subject.is_empty() || subject.len() > 256 {
        return Err(refuse(
            state,
            Some(&p.account_id),
            None,
            "wrong_issuer",
            serde_json::json!({"iss": clip(&issuer, 200)}),
            source,
        )
        .await);
    }
    let email = claims.email().map(|e| clip(e.as_str(), 256));
    let groups = oidc::groups(&claims, &p.groups_claim);
    let amr = oidc::amr(&claims);
    let ident = serde_json::json!({"issuer": issuer, "subject": subject, "amr": amr, "kind": kind});
    let mut tx = state.store.begin().await?;
    let account = records::account(&mut tx, &p.account_id).await?;
    let found = sqlx::query(
        "SELECT id, user_id, granted_role, base_role FROM sso_identities
         WHERE account_id = $1 AND issuer = $2 AND subject = $3",
    )
    .bind(&p.account_id)
    .bind(&issuer)
    .bind(&subject)
    .fetch_optional(&mut *tx)
    .await?;
    let (user, ident_id, granted_role, base_role, created) = match found {
        Some(r) => {
            let user =
                records::user(&mut tx, &p.account_id, &r.try_get::<String, _>("user_id")?).await?;
            (
                user,
                r.try_get::<String, _>("id")?,
                r.try_get::<Option<String>, _>("granted_role")?,
                r.try_get::<Option<String>, _>("base_role")?,
                false,
            )
        }
        None if p.jit => {
            let name = free_username(&mut tx, &p.account_id, &username_hint(&claims)).await?;
            let user_id = secret::new_id();
            sqlx::query(
                "INSERT INTO users (id, account_id, username, role, password_hash, password_changed_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(&user_id)
            .bind(&p.account_id)
            .bind(&name)
            .bind(p.jit_role.as_str())
            .bind(NO_PASSWORD)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let ident_id = secret::new_id();
            sqlx::query(
                "INSERT INTO sso_identities (id, account_id, issuer, subject, user_id, email, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&ident_id)
            .bind(&p.account_id)
            .bind(&issuer)
            .bind(&subject)
            .bind(&user_id)
            .bind(&email)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let ev = Event::new(&p.account_id, "system", "sso.user_created", &format!("user:{user_id}"))
                .source(source)
                .details(serde_json::json!({
                    "username": name, "role": p.jit_role, "issuer": issuer, "subject": subject, "email": email,
                }));
            audit::append(&mut tx, now, &ev).await?;
            let user = records::user(&mut tx, &p.account_id, &user_id).await?;
            (user, ident_id, None, None, true)
        }
        None => {
            drop(tx);
            return Err(refuse(
                state,
                Some(&p.account_id),
                None,
                "not_provisioned",
                serde_json::json!({"issuer": issuer, "subject": subject, "email": email}),
                source,
            )
            .await);
        }
    };
    let actor = format!("user:{}", user.id);
    // A user disabled in Drawbridge stays out, whatever the provider says. (A
    // lockout is about guessing passwords here and does not stop SSO: else
    // anyone could lock an SSO user out with a few wrong passwords.)
    if user.disabled {
        let reason = "user_disabled";
        drop(tx);
        return Err(refuse(
            state,
            Some(&p.account_id),
            Some(&actor),
            reason,
            serde_json::json!({"username": user.username, "issuer": issuer, "subject": subject}),
            source,
        )
        .await);
    }
    let (user, touched) = apply_rules(
        &mut tx,
        p,
        &user,
        &ident_id,
        (granted_role, base_role),
        &groups,
        source,
        now,
    )
    .await?;
    // The provider's second factor may stand in for TOTP.
    let mfa_by_amr = p.amr_mfa && amr.iter().any(|a| p.mfa_amr_values.contains(a));
    let needs_second = (account.settings.require_totp || user.totp_secret.is_some()) && !mfa_by_amr;
    let stage = if !needs_second {
        LoginStage::Complete
    } else if user.totp_secret.is_some() {
        LoginStage::TotpRequired
    } else {
        LoginStage::TotpEnrollmentRequired
    };
    sqlx::query("UPDATE sso_identities SET last_login_at = $1, email = $2 WHERE id = $3")
        .bind(now)
        .bind(&email)
        .bind(&ident_id)
        .execute(&mut *tx)
        .await?;
    let login = auth::issue_login_token(&mut tx, &user, &account.settings, stage, now).await?;
    if stage == LoginStage::Complete
        && let Some(rt) = &via.refresh_token
    {
        super::refresh::keep(
            &mut tx,
            state,
            &login.token,
            &p.account_id,
            &ident_id,
            via.client_id,
            rt,
            now,
        )
        .await?;
    }
    let mut details = ident;
    if let Some(d) = details.as_object_mut() {
        d.insert("username".into(), user.username.clone().into());
        d.insert("jit".into(), created.into());
        d.insert("mfa_by_amr".into(), mfa_by_amr.into());
        d.insert(
            "stage".into(),
            serde_json::to_value(stage).unwrap_or_default(),
        );
    }
    let ev = Event::new(&p.account_id, &actor, "sso.login", &actor)
        .source(source)
        .details(details);
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    metrics::counter!("sso_logins_total", "result" => "ok").increment(1);
    crate::live::notify_sessions(state, &touched).await?;
    Ok(login)
}

/// Applies the account's rules to the groups the provider sent: SSO-granted
/// memberships follow the claim (added and removed; memberships an admin gave
/// stay), and the role follows the best matching rule, back to the role from
/// before when no rule grants one any more. Returns the user as now stored and
/// the sessions a narrowing touched.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_rules(
    tx: &mut Tx<'_>,
    p: &Provider,
    user: &UserRow,
    ident_id: &str,
    (granted_role, base_role): (Option<String>, Option<String>),
    groups: &[String],
    source: &str,
    now: i64,
) -> AppResult<(UserRow, Vec<String>)> {
    let rules = super::rules(tx, &p.account_id).await?;
    let matching: Vec<_> = rules
        .iter()
        .filter(|r| groups.contains(&r.claim_value))
        .collect();
    let desired: BTreeSet<String> = matching.iter().filter_map(|r| r.group_id.clone()).collect();
    // Rules come ordered by priority: the first with a role wins.
    let desired_role = matching.iter().find_map(|r| r.role);
    let members: BTreeSet<String> =
        sqlx::query_scalar("SELECT group_id FROM group_members WHERE user_id = $1")
            .bind(&user.id)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let granted: BTreeSet<String> =
        sqlx::query_scalar("SELECT group_id FROM sso_group_grants WHERE user_id = $1")
            .bind(&user.id)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let mut added = Vec::new();
    for g in desired.difference(&members) {
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
            .bind(g)
            .bind(&user.id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO sso_group_grants (user_id, group_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&user.id)
        .bind(g)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        added.push(g.clone());
    }
    let mut removed = Vec::new();
    for g in granted.difference(&desired) {
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(g)
            .bind(&user.id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM sso_group_grants WHERE user_id = $1 AND group_id = $2")
            .bind(&user.id)
            .bind(g)
            .execute(&mut **tx)
            .await?;
        removed.push(g.clone());
    }
    let parse_role = |s: &Option<String>| s.as_deref().and_then(|r| r.parse::<Role>().ok());
    let (new_role, new_granted, new_base) = match (desired_role, &granted_role) {
        (Some(r), Some(_)) => (r, Some(r), parse_role(&base_role)),
        (Some(r), None) => (r, Some(r), Some(user.role)),
        (None, Some(_)) => (parse_role(&base_role).unwrap_or(p.jit_role), None, None),
        (None, None) => (user.role, None, None),
    };
    let mut role_to = new_role;
    let mut kept_last_admin = false;
    if user.role == Role::Admin && new_role != Role::Admin {
        let admins: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE account_id = $1 AND role = 'admin' AND disabled = 0",
        )
        .bind(&p.account_id)
        .fetch_one(&mut **tx)
        .await?;
        if admins <= 1 {
            role_to = Role::Admin;
            kept_last_admin = true;
        }
    }
    sqlx::query("UPDATE sso_identities SET granted_role = $1, base_role = $2 WHERE id = $3")
        .bind(new_granted.map(|r| r.as_str()))
        .bind(new_base.map(|r| r.as_str()))
        .bind(ident_id)
        .execute(&mut **tx)
        .await?;
    let role_changed = role_to != user.role;
    if role_changed {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role_to.as_str())
            .bind(&user.id)
            .execute(&mut **tx)
            .await?;
        // New rights, new logins (the one being made follows).
        auth::revoke_all(tx, &user.id, now).await?;
    }
    let mut touched = Vec::new();
    if role_changed || !added.is_empty() || !removed.is_empty() || kept_last_admin {
        let ev = Event::new(
            &p.account_id,
            "system",
            "sso.mapping_changed",
            &format!("user:{}", user.id),
        )
        .source(source)
        .details(serde_json::json!({
            "username": user.username,
            "added": added, "removed": removed,
            "role_from": user.role, "role_to": role_to,
            "kept_last_admin": kept_last_admin,
            "claim_values": groups.iter().take(50).collect::<Vec<_>>(),
        }));
        audit::append(tx, now, &ev).await?;
    }
    if role_changed || !removed.is_empty() {
        touched = crate::live::revoke::revalidate(
            tx,
            &p.account_id,
            "system",
            "sso.mapping_changed",
            now,
        )
        .await?;
    }
    let user = records::user(tx, &p.account_id, &user.id).await?;
    Ok((user, touched))
}

/// Whether a user whose password checked out may log in with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordLogin {
    Allowed,
    /// SSO is required and this is the break-glass admin: allowed, loudly.
    BreakGlass,
    /// SSO is required.
    Refused,
}

/// The password rule of the user's account.
pub async fn password_login(tx: &mut Tx<'_>, user: &UserRow) -> AppResult<PasswordLogin> {
    let row =
        sqlx::query("SELECT mode, break_glass_user_id FROM sso_providers WHERE account_id = $1")
            .bind(&user.account_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = row else {
        return Ok(PasswordLogin::Allowed);
    };
    if row.try_get::<String, _>("mode")? != SsoMode::Required.as_str() {
        return Ok(PasswordLogin::Allowed);
    }
    let bg: Option<String> = row.try_get("break_glass_user_id")?;
    Ok(if bg.as_deref() == Some(user.id.as_str()) {
        PasswordLogin::BreakGlass
    } else {
        PasswordLogin::Refused
    })
}

/// Puts a break-glass password login on the record and tells the admins.
pub async fn record_break_glass(
    tx: &mut Tx<'_>,
    user: &UserRow,
    source: &str,
    now: i64,
) -> AppResult<()> {
    let actor = format!("user:{}", user.id);
    let ev = Event::new(&user.account_id, &actor, "auth.break_glass", &actor)
        .source(source)
        .details(serde_json::json!({
            "username": user.username,
            "warning": "password login while single sign-on is required (break-glass admin)",
        }));
    audit::append(tx, now, &ev).await?;
    let message = format!(
        "Break-glass login: {} logged in with a password from {source} while single sign-on is required.",
        user.username
    );
    crate::notifications::add(tx, &user.account_id, "break_glass", &message, now).await?;
    tracing::warn!(account = %user.account_id, user = %user.username, %source, "break-glass password login");
    Ok(())
}
