//! Notifications by e-mail and webhook (admins): the account's recipients per
//! event kind and offline threshold, users' e-mail addresses, and webhooks. Every
//! change is on the audit chain; deliveries are not.

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::outbox::settings::{self, NotificationSettings};
use crate::outbox::webhooks::{self, CreateWebhook, CreatedWebhook, UpdateWebhook, Webhook};
use crate::outbox::{EventKind, ssrf};
use crate::records;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::{Action, ApiError};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(get_settings, put_settings))
        .routes(routes!(get_email, put_email))
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
}

/// An account's notification settings, and whether this server sends e-mail.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationsView {
    #[serde(flatten)]
    pub settings: NotificationSettings,
    /// The server has an SMTP server configured (else only webhooks are sent).
    pub email_configured: bool,
    /// Every event kind there is.
    pub kinds: Vec<EventKind>,
}

/// A user's e-mail address (null: none).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEmail {
    #[schema(max_length = 254)]
    pub email: Option<String>,
}

async fn admin(state: &AppState, caller: &Caller, what: &str) -> AppResult<()> {
    caller.require(state, Action::ManageUsers, what).await
}

/// The account's notification settings: extra e-mail recipients per event kind and
/// the offline threshold (admins).
#[utoipa::path(get, path = "/api/v1/account/notifications", tag = "notifications",
    responses((status = 200, body = NotificationsView), (status = 403, body = ApiError)))]
async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<NotificationsView>> {
    admin(&state, &caller, "notifications.read").await?;
    let mut conn = state.store.pool.acquire().await?;
    let settings = settings::load_conn(&mut conn, &caller.account_id).await?;
    Ok(Json(view(&state, settings)))
}

fn view(state: &AppState, settings: NotificationSettings) -> NotificationsView {
    NotificationsView {
        settings,
        email_configured: state.notify.get().mailer.is_some(),
        kinds: EventKind::ALL.to_vec(),
    }
}

/// Replace the account's notification settings (admins). Each kind's list holds
/// at most 50 addresses; the kind's default group (admins, approvers) is told too.
#[utoipa::path(put, path = "/api/v1/account/notifications", tag = "notifications",
    request_body = NotificationSettings,
    responses((status = 200, body = NotificationsView), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<NotificationSettings>,
) -> AppResult<Json<NotificationsView>> {
    admin(&state, &caller, "notifications.update").await?;
    let new = req.checked().map_err(AppError::invalid)?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = settings::load(&mut tx, &caller.account_id).await?;
    settings::save(&mut tx, &caller.account_id, &new, now).await?;
    let ev = caller
        .event(
            "notifications.update",
            &format!("account:{}", caller.account_id),
        )
        .details(serde_json::json!({
            "username": caller.username, "before": before, "after": new,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(view(&state, new)))
}

/// A user's e-mail address (admins).
#[utoipa::path(get, path = "/api/v1/users/{id}/email", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = UserEmail), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_email(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<UserEmail>> {
    admin(&state, &caller, "user.email").await?;
    let email: Option<Option<String>> =
        sqlx::query_scalar("SELECT email FROM users WHERE id = $1 AND account_id = $2")
            .bind(&id)
            .bind(&caller.account_id)
            .fetch_optional(&state.store.pool)
            .await?;
    let email = email.ok_or_else(|| AppError::not_found("user"))?;
    Ok(Json(UserEmail { email }))
}

/// Set or clear a user's e-mail address (admins): where the user is told what
/// their role's default notifications say (admins: lockouts, reports, disabled
/// webhooks; admins and session admins: sessions waiting for approval).
#[utoipa::path(put, path = "/api/v1/users/{id}/email", tag = "notifications", params(("id" = String, Path)),
    request_body = UserEmail,
    responses((status = 200, body = UserEmail), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn put_email(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UserEmail>,
) -> AppResult<Json<UserEmail>> {
    admin(&state, &caller, "user.email").await?;
    let email = req
        .email
        .as_deref()
        .map(settings::parse_address)
        .transpose()
        .map_err(AppError::invalid)?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let user = records::user(&mut tx, &caller.account_id, &id).await?;
    let before: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE users SET email = $1 WHERE id = $2 AND account_id = $3")
        .bind(email.as_deref())
        .bind(&id)
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    let ev = caller
        .event("user.email", &format!("user:{id}"))
        .details(serde_json::json!({
            "username": caller.username, "target_user": user.username, "before": before, "after": email,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(UserEmail { email }))
}

/// The account's webhooks (admins); secrets are not shown.
#[utoipa::path(get, path = "/api/v1/account/webhooks", tag = "notifications",
    responses((status = 200, body = Vec<Webhook>), (status = 403, body = ApiError)))]
async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<Webhook>>> {
    admin(&state, &caller, "webhook.list").await?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(webhooks::list(&mut conn, &caller.account_id).await?))
}

/// Add a webhook (admins; at most 20 per account). The answer holds its signing
/// secret, shown this once. The URL must be https to a public address unless the
/// server allows private ones (`--webhook-allow-private`).
#[utoipa::path(post, path = "/api/v1/account/webhooks", tag = "notifications",
    request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> AppResult<(StatusCode, Json<CreatedWebhook>)> {
    admin(&state, &caller, "webhook.create").await?;
    let url =
        ssrf::check_url(&req.url, state.notify.get().allow_private).map_err(AppError::invalid)?;
    let events = webhooks::check_events(&req.events).map_err(AppError::invalid)?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let created = match webhooks::create(
        &mut tx,
        &state.store,
        &caller.account_id,
        url.as_str(),
        &events,
        now,
    )
    .await
    {
        Ok(c) => c,
        Err(webhooks::CreateError::TooMany) => {
            return Err(AppError::conflict(format!(
                "an account has at most {} webhooks",
                webhooks::MAX_WEBHOOKS
            )));
        }
        Err(webhooks::CreateError::Db(e)) => return Err(e.into()),
    };
    let ev = caller
        .event(
            "webhook.create",
            &format!("webhook:{}", created.webhook.id),
        )
        .details(serde_json::json!({
            "username": caller.username, "url": created.webhook.url, "events": created.webhook.events,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One webhook (admins).
#[utoipa::path(get, path = "/api/v1/account/webhooks/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = Webhook), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Webhook>> {
    admin(&state, &caller, "webhook.read").await?;
    let mut conn = state.store.pool.acquire().await?;
    webhooks::get(&mut conn, &caller.account_id, &id)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::not_found("webhook"))
}

/// Change a webhook's URL or events, or disable or enable it (admins). Enabling
/// clears its failure record; disabling drops what is queued for it.
#[utoipa::path(patch, path = "/api/v1/account/webhooks/{id}", tag = "notifications", params(("id" = String, Path)),
    request_body = UpdateWebhook,
    responses((status = 200, body = Webhook), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateWebhook>,
) -> AppResult<Json<Webhook>> {
    admin(&state, &caller, "webhook.update").await?;
    let url = req
        .url
        .as_deref()
        .map(|u| ssrf::check_url(u, state.notify.get().allow_private))
        .transpose()
        .map_err(AppError::invalid)?;
    let events = req
        .events
        .as_deref()
        .map(webhooks::check_events)
        .transpose()
        .map_err(AppError::invalid)?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = webhooks::get(&mut tx, &caller.account_id, &id)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    webhooks::update(
        &mut tx,
        &id,
        url.as_ref().map(|u| u.as_str()),
        events.as_deref(),
        req.enabled,
    )
    .await?;
    let after = webhooks::get(&mut tx, &caller.account_id, &id)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    let ev = caller
        .event("webhook.update", &format!("webhook:{id}"))
        .details(serde_json::json!({
            "username": caller.username,
            "before": { "url": before.url, "events": before.events, "enabled": before.enabled },
            "after": { "url": after.url, "events": after.events, "enabled": after.enabled },
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Delete a webhook (admins); what is queued for it is dropped.
#[utoipa::path(delete, path = "/api/v1/account/webhooks/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    admin(&state, &caller, "webhook.delete").await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = webhooks::get(&mut tx, &caller.account_id, &id)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    webhooks::delete(&mut tx, &id).await?;
    let ev = caller
        .event("webhook.delete", &format!("webhook:{id}"))
        .details(serde_json::json!({ "username": caller.username, "url": before.url }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
