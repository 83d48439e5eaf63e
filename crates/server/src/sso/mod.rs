//! Single sign-on with an account's OpenID provider (issue 18).
//!
//! The admins set the provider (`/account/sso`: issuer, client, sealed secret,
//! mode off/optional/required, just-in-time users, `amr` as second factor),
//! the rules mapping the provider's groups to Drawbridge groups and roles
//! (`/account/sso/rules`) and, without just-in-time users, which existing user
//! is which provider subject (`/account/sso/identities`). Every change is
//! audited; the secret is written, never shown.
//!
//! The logins themselves are in [`login`] (browser code flow with PKCE for the
//! portal) and [`device`] (device grant for the CLI), what they end in (user,
//! rules, second factor, break-glass) in [`users`], the relying party in [`oidc`].

pub mod device;
pub mod login;
pub mod oidc;
pub mod refresh;
pub mod users;

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::records;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::sso::{
    self as api, SsoIdentity, SsoLinkRequest, SsoMode, SsoRule, SsoRuleRequest, SsoSettings,
    SsoSettingsRequest, SsoTestResult,
};
use drawbridge_proto::{Action, ApiError, Role};
use sqlx::{AnyConnection, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let r = r
        .routes(routes!(get_settings, put_settings, delete_settings))
        .routes(routes!(list_rules, create_rule))
        .routes(routes!(delete_rule))
        .routes(routes!(list_identities, link_identity))
        .routes(routes!(unlink_identity))
        .routes(routes!(test_provider));
    let r = device::routes(r);
    login::routes(r)
}

/// Where the provider's client secret is stored.
pub fn secret_context(account_id: &str) -> String {
    format!("sso_providers.client_secret:{account_id}")
}

/// The label shown when the admins set none.
const DEFAULT_LABEL: &str = "single sign-on";

/// An account's provider, its secret opened.
#[derive(Clone)]
pub struct Provider {
    pub account_id: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub cli_client_id: Option<String>,
    pub label: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub mode: SsoMode,
    pub jit: bool,
    pub jit_role: Role,
    pub amr_mfa: bool,
    pub mfa_amr_values: Vec<String>,
    pub break_glass_user_id: Option<String>,
    pub updated_at: i64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("account_id", &self.account_id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn corrupt(what: &str) -> AppError {
    AppError::internal(anyhow::anyhow!(
        "stored sso_providers.{what} does not parse"
    ))
}

/// The account's provider, or None.
pub async fn provider(
    state: &AppState,
    conn: &mut AnyConnection,
    account_id: &str,
) -> AppResult<Option<Provider>> {
    let Some(row) = sqlx::query(
        "SELECT account_id, issuer, client_id, client_secret, cli_client_id, label, scopes, groups_claim,
                mode, jit, jit_role, amr_mfa, mfa_amr_values, break_glass_user_id, updated_at
         FROM sso_providers WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    let sealed: String = row.try_get("client_secret")?;
    Ok(Some(Provider {
        client_secret: state.store.unseal(&secret_context(account_id), &sealed)?,
        account_id: row.try_get("account_id")?,
        issuer: row.try_get("issuer")?,
        client_id: row.try_get("client_id")?,
        cli_client_id: row.try_get("cli_client_id")?,
        label: row.try_get("label")?,
        scopes: records::json_col(&row, "scopes")?,
        groups_claim: row.try_get("groups_claim")?,
        mode: SsoMode::parse(&row.try_get::<String, _>("mode")?).ok_or_else(|| corrupt("mode"))?,
        jit: row.try_get::<i64, _>("jit")? != 0,
        jit_role: row
            .try_get::<String, _>("jit_role")?
            .parse()
            .map_err(|_| corrupt("jit_role"))?,
        amr_mfa: row.try_get::<i64, _>("amr_mfa")? != 0,
        mfa_amr_values: records::json_col(&row, "mfa_amr_values")?,
        break_glass_user_id: row.try_get("break_glass_user_id")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// The redirect URI to register at the provider.
pub fn redirect_uri(state: &AppState) -> String {
    format!(
        "{}{}",
        state.public_url.trim_end_matches('/'),
        api::CALLBACK_PATH
    )
}

fn to_api(state: &AppState, p: &Provider) -> SsoSettings {
    SsoSettings {
        issuer: p.issuer.clone(),
        client_id: p.client_id.clone(),
        client_secret_set: !p.client_secret.is_empty(),
        cli_client_id: p.cli_client_id.clone(),
        label: p.label.clone(),
        scopes: p.scopes.clone(),
        groups_claim: p.groups_claim.clone(),
        mode: p.mode,
        jit: p.jit,
        jit_role: p.jit_role,
        amr_mfa: p.amr_mfa,
        mfa_amr_values: p.mfa_amr_values.clone(),
        break_glass_user_id: p.break_glass_user_id.clone(),
        redirect_uri: redirect_uri(state),
        updated_at: crate::clock::from_unix(p.updated_at),
    }
}

/// What the audit log keeps of the settings (never the secret).
fn audit_view(p: &SsoSettings) -> serde_json::Value {
    serde_json::json!({
        "issuer": p.issuer, "client_id": p.client_id, "cli_client_id": p.cli_client_id,
        "label": p.label, "scopes": p.scopes, "groups_claim": p.groups_claim, "mode": p.mode,
        "jit": p.jit, "jit_role": p.jit_role, "amr_mfa": p.amr_mfa,
        "mfa_amr_values": p.mfa_amr_values, "break_glass_user_id": p.break_glass_user_id,
    })
}

/// The account's OpenID provider (admins; the secret is never shown).
#[utoipa::path(get, path = "/api/v1/account/sso", tag = "sso",
    responses((status = 200, body = SsoSettings), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<SsoSettings>> {
    caller
        .require(&state, Action::ManageUsers, "sso.read")
        .await?;
    let mut conn = state.store.pool.acquire().await?;
    let p = provider(&state, &mut conn, &caller.account_id)
        .await?
        .ok_or_else(|| AppError::not_found("single sign-on provider"))?;
    Ok(Json(to_api(&state, &p)))
}

/// Set the account's OpenID provider (admins). The client secret is required
/// the first time and kept when omitted later. With `mode` `required`, a
/// `break_glass_user_id` (an enabled admin) is required: the one password
/// login left.
#[utoipa::path(put, path = "/api/v1/account/sso", tag = "sso", request_body = SsoSettingsRequest,
    responses((status = 200, body = SsoSettings), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SsoSettingsRequest>,
) -> AppResult<Json<SsoSettings>> {
    caller
        .require(&state, Action::ManageUsers, "sso.update")
        .await?;
    let scopes: Vec<String> = match &req.scopes {
        Some(s) => s.iter().map(|s| s.as_str().to_string()).collect(),
        None => vec!["email".into(), "profile".into()],
    };
    if scopes.len() > api::MAX_SCOPES {
        return Err(AppError::invalid(format!(
            "at most {} scopes",
            api::MAX_SCOPES
        )));
    }
    if req.mfa_amr_values.len() > api::MAX_AMR_VALUES {
        return Err(AppError::invalid(format!(
            "at most {} amr values",
            api::MAX_AMR_VALUES
        )));
    }
    let mut scopes_clean: Vec<String> = Vec::new();
    for s in scopes {
        if s != "openid" && !scopes_clean.contains(&s) {
            scopes_clean.push(s);
        }
    }
    let amr: Vec<String> = req
        .mfa_amr_values
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = provider(&state, &mut tx, &caller.account_id).await?;
    let secret = match (&req.client_secret, &before) {
        (Some(s), _) => s.expose().to_string(),
        (None, Some(b)) => b.client_secret.clone(),
        (None, None) => {
            return Err(AppError::invalid(
                "client_secret is required when the provider is first set",
            ));
        }
    };
    if let Some(id) = &req.break_glass_user_id {
        let u = records::user(&mut tx, &caller.account_id, id)
            .await
            .map_err(|_| AppError::invalid("break_glass_user_id: no such user in this account"))?;
        if u.role != Role::Admin || u.disabled {
            return Err(AppError::invalid(
                "break_glass_user_id must be an enabled admin",
            ));
        }
    } else if req.mode == SsoMode::Required {
        return Err(AppError::invalid(
            "mode required needs a break_glass_user_id (an admin who may still log in with a password)",
        ));
    }
    let label = req
        .label
        .as_ref()
        .map(|l| l.as_str().to_string())
        .unwrap_or_else(|| DEFAULT_LABEL.into());
    let sealed = state
        .store
        .seal(&secret_context(&caller.account_id), &secret);
    let json = |v: &Vec<String>| serde_json::to_string(v).map_err(AppError::internal);
    sqlx::query(
        "INSERT INTO sso_providers (account_id, issuer, client_id, client_secret, cli_client_id, label, scopes,
             groups_claim, mode, jit, jit_role, amr_mfa, mfa_amr_values, break_glass_user_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
         ON CONFLICT (account_id) DO UPDATE SET issuer = $2, client_id = $3, client_secret = $4,
             cli_client_id = $5, label = $6, scopes = $7, groups_claim = $8, mode = $9, jit = $10,
             jit_role = $11, amr_mfa = $12, mfa_amr_values = $13, break_glass_user_id = $14, updated_at = $15",
    )
    .bind(&caller.account_id)
    .bind(req.issuer.as_str())
    .bind(req.client_id.as_str())
    .bind(&sealed)
    .bind(req.cli_client_id.as_ref().map(|c| c.as_str().to_string()))
    .bind(&label)
    .bind(json(&scopes_clean)?)
    .bind(req.groups_claim.as_str())
    .bind(req.mode.as_str())
    .bind(i64::from(req.jit))
    .bind(req.jit_role.as_str())
    .bind(i64::from(req.amr_mfa))
    .bind(json(&amr)?)
    .bind(&req.break_glass_user_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let after = provider(&state, &mut tx, &caller.account_id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("provider vanished")))?;
    let after = to_api(&state, &after);
    let ev = caller
        .event("sso.provider_changed", "account:sso")
        .details(serde_json::json!({
            "username": caller.username,
            "before": before.as_ref().map(|b| audit_view(&to_api(&state, b))),
            "after": audit_view(&after),
            "secret_changed": req.client_secret.is_some(),
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Remove the account's provider (admins): SSO logins end being possible; the
/// users and their links stay (a new provider with the same issuer finds them).
#[utoipa::path(delete, path = "/api/v1/account/sso", tag = "sso",
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_settings(State(state): State<AppState>, caller: Caller) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageUsers, "sso.delete")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query("DELETE FROM sso_providers WHERE account_id = $1")
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::not_found("single sign-on provider"));
    }
    sqlx::query("DELETE FROM sso_flows WHERE account_id = $1")
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        now,
        &caller.event("sso.provider_deleted", "account:sso"),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn rule_from(row: &sqlx::any::AnyRow) -> AppResult<SsoRule> {
    Ok(SsoRule {
        id: row.try_get("id")?,
        claim_value: row.try_get("claim_value")?,
        group_id: row.try_get("group_id")?,
        role: row
            .try_get::<Option<String>, _>("role")?
            .map(|r| r.parse().map_err(|_| corrupt("rules.role")))
            .transpose()?,
        priority: u16::try_from(row.try_get::<i64, _>("priority")?).unwrap_or(u16::MAX),
    })
}

/// The account's mapping rules, in the order they apply.
pub async fn rules(conn: &mut AnyConnection, account_id: &str) -> AppResult<Vec<SsoRule>> {
    let rows = sqlx::query(
        "SELECT id, claim_value, group_id, role, priority FROM sso_rules
         WHERE account_id = $1 ORDER BY priority, created_at, id",
    )
    .bind(account_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(rule_from).collect()
}

/// The rules mapping provider groups to Drawbridge groups and roles (admins).
#[utoipa::path(get, path = "/api/v1/account/sso/rules", tag = "sso",
    responses((status = 200, body = Vec<SsoRule>), (status = 403, body = ApiError)))]
async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<SsoRule>>> {
    caller
        .require(&state, Action::ManageUsers, "sso.rules.read")
        .await?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(rules(&mut conn, &caller.account_id).await?))
}

/// Add a rule (admins): members of the provider group `claim_value` get the
/// group and/or the role at their next SSO login; when the provider stops
/// sending the value, what the rule gave is taken away at the next login.
#[utoipa::path(post, path = "/api/v1/account/sso/rules", tag = "sso", request_body = SsoRuleRequest,
    responses((status = 200, body = SsoRule), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn create_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SsoRuleRequest>,
) -> AppResult<Json<SsoRule>> {
    caller
        .require(&state, Action::ManageUsers, "sso.rules.create")
        .await?;
    if req.group_id.is_none() && req.role.is_none() {
        return Err(AppError::invalid("a rule gives a group_id, a role or both"));
    }
    if req.priority > 10_000 {
        return Err(AppError::invalid("priority is 0 to 10000"));
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sso_rules WHERE account_id = $1")
        .bind(&caller.account_id)
        .fetch_one(&mut *tx)
        .await?;
    if n >= api::MAX_RULES as i64 {
        return Err(AppError::conflict(format!(
            "an account has at most {} rules",
            api::MAX_RULES
        )));
    }
    if let Some(g) = &req.group_id {
        let found: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM groups_ WHERE id = $1 AND account_id = $2")
                .bind(g)
                .bind(&caller.account_id)
                .fetch_one(&mut *tx)
                .await?;
        if found != 1 {
            return Err(AppError::not_found("group"));
        }
    }
    let id = crate::secret::new_id();
    sqlx::query(
        "INSERT INTO sso_rules (id, account_id, claim_value, group_id, role, priority, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(req.claim_value.as_str())
    .bind(&req.group_id)
    .bind(req.role.map(|r| r.as_str()))
    .bind(i64::from(req.priority))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let rule = SsoRule {
        id: id.clone(),
        claim_value: req.claim_value.as_str().to_string(),
        group_id: req.group_id.clone(),
        role: req.role,
        priority: req.priority,
    };
    let ev = caller
        .event("sso.rules_changed", &format!("sso_rule:{id}"))
        .details(serde_json::json!({"username": caller.username, "added": rule}));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(rule))
}

/// Remove a rule (admins); what it gave is taken away at each user's next SSO login.
#[utoipa::path(delete, path = "/api/v1/account/sso/rules/{id}", tag = "sso", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageUsers, "sso.rules.delete")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = sqlx::query(
        "SELECT id, claim_value, group_id, role, priority FROM sso_rules WHERE id = $1 AND account_id = $2",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("rule"))?;
    let rule = rule_from(&row)?;
    sqlx::query("DELETE FROM sso_rules WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let ev = caller
        .event("sso.rules_changed", &format!("sso_rule:{id}"))
        .details(serde_json::json!({"username": caller.username, "removed": rule}));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn identity_from(row: &sqlx::any::AnyRow) -> AppResult<SsoIdentity> {
    Ok(SsoIdentity {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        email: row.try_get("email")?,
        last_login_at: row
            .try_get::<Option<i64>, _>("last_login_at")?
            .map(crate::clock::from_unix),
    })
}

/// Which users are which provider subjects (admins).
#[utoipa::path(get, path = "/api/v1/account/sso/identities", tag = "sso",
    responses((status = 200, body = Vec<SsoIdentity>), (status = 403, body = ApiError)))]
async fn list_identities(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<SsoIdentity>>> {
    caller
        .require(&state, Action::ManageUsers, "sso.identities.read")
        .await?;
    let rows = sqlx::query(
        "SELECT id, user_id, issuer, subject, email, last_login_at FROM sso_identities
         WHERE account_id = $1 ORDER BY created_at, id LIMIT 10000",
    )
    .bind(&caller.account_id)
    .fetch_all(&state.store.pool)
    .await?;
    Ok(Json(
        rows.iter().map(identity_from).collect::<AppResult<_>>()?,
    ))
}

/// Link an existing user to a subject of the account's provider (admins): the
/// user then signs in through the provider (for accounts without just-in-time
/// users, or to take over a user made before SSO). Users are matched by issuer
/// and subject only, never by e-mail.
#[utoipa::path(post, path = "/api/v1/account/sso/identities", tag = "sso", request_body = SsoLinkRequest,
    responses((status = 200, body = SsoIdentity), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn link_identity(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SsoLinkRequest>,
) -> AppResult<Json<SsoIdentity>> {
    caller
        .require(&state, Action::ManageUsers, "sso.identities.link")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let p = provider(&state, &mut tx, &caller.account_id)
        .await?
        .ok_or_else(|| AppError::conflict("set the account's provider first"))?;
    let user = records::user(&mut tx, &caller.account_id, &req.user_id).await?;
    let id = crate::secret::new_id();
    let r = sqlx::query(
        "INSERT INTO sso_identities (id, account_id, issuer, subject, user_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(&p.issuer)
    .bind(req.subject.as_str())
    .bind(&user.id)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("this subject is already linked to a user")
        } else {
            e.into()
        });
    }
    let ev = caller
        .event("sso.mapping_changed", &format!("user:{}", user.id))
        .details(serde_json::json!({
            "username": caller.username, "target_user": user.username,
            "linked": {"issuer": p.issuer, "subject": req.subject.as_str()},
        }));
    audit::append(&mut tx, now, &ev).await?;
    let row = sqlx::query(
        "SELECT id, user_id, issuer, subject, email, last_login_at FROM sso_identities WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    let out = identity_from(&row)?;
    tx.commit().await?;
    Ok(Json(out))
}

/// Remove a user's link to a provider subject (admins).
#[utoipa::path(delete, path = "/api/v1/account/sso/identities/{id}", tag = "sso", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn unlink_identity(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageUsers, "sso.identities.unlink")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = sqlx::query(
        "SELECT id, user_id, issuer, subject, email, last_login_at FROM sso_identities
         WHERE id = $1 AND account_id = $2",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("identity"))?;
    let ident = identity_from(&row)?;
    sqlx::query("DELETE FROM sso_identities WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let ev = caller
        .event("sso.mapping_changed", &format!("user:{}", ident.user_id))
        .details(serde_json::json!({
            "username": caller.username,
            "unlinked": {"issuer": ident.issuer, "subject": ident.subject},
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fetch the provider's discovery document and keys now (admins): what it
/// offers, or why it cannot be used (wrong issuer, unreachable, …).
#[utoipa::path(post, path = "/api/v1/account/sso/test", tag = "sso",
    responses((status = 200, body = SsoTestResult), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn test_provider(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<SsoTestResult>> {
    caller
        .require(&state, Action::ManageUsers, "sso.test")
        .await?;
    let p = {
        let mut conn = state.store.pool.acquire().await?;
        provider(&state, &mut conn, &caller.account_id)
            .await?
            .ok_or_else(|| AppError::not_found("single sign-on provider"))?
    };
    let meta = oidc::discover(&p.issuer, true)
        .await
        .map_err(|e| AppError::invalid(format!("the provider cannot be used: {e}")))?;
    let dev = meta
        .additional_metadata()
        .device_authorization_endpoint
        .as_ref()
        .map(|u| u.as_str().to_string());
    Ok(Json(SsoTestResult {
        issuer: meta.issuer().as_str().to_string(),
        authorization_endpoint: meta.authorization_endpoint().as_str().to_string(),
        token_endpoint: meta.token_endpoint().map(|u| u.as_str().to_string()),
        device_grant: dev.is_some(),
        device_authorization_endpoint: dev,
        signing_algs: meta
            .id_token_signing_alg_values_supported()
            .iter()
            .map(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect(),
    }))
}
