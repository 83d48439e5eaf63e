//! The edge's side of a rollout: the offer its channel carries, the reports
//! it sends back, and the download of the binary (signed by the device's
//! identity key, over the same outbound HTTPS as its channel).

use super::rollouts::OFFER_STATES;
use super::store;
use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::update::{
    FETCH_DEVICE_HEADER, FETCH_SIGNATURE_HEADER, FETCH_TIME_HEADER, MAX_REPORT_MESSAGE,
    UpdateOffer, UpdateReport, UpdateState, fetch_message,
};
use ring::signature::{ED25519, UnparsedPublicKey};
use sqlx::Row;

/// What the device's edge is to install now, if anything: its row of a
/// running rollout that was offered to it and is not over.
pub async fn offer_for(state: &AppState, device_id: &str) -> AppResult<Option<UpdateOffer>> {
    let row = sqlx::query(&format!(
        "SELECT r.id, rel.id, rel.version, rel.size, rel.sha256, rel.signed, r.downgrade
         FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
         JOIN releases rel ON rel.id = r.release_id
         WHERE rd.device_id = $1 AND r.state = 'running' AND rd.state IN {OFFER_STATES}
         ORDER BY r.created_at DESC LIMIT 1"
    ))
    .bind(device_id)
    .fetch_optional(&state.store.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let Some(roots) = store::roots(&state.store).await? else {
        return Ok(None);
    };
    Ok(Some(UpdateOffer {
        rollout_id: row.try_get(0)?,
        release_id: row.try_get(1)?,
        version: row.try_get(2)?,
        size: row.try_get::<i64, _>(3)?.max(0) as u64,
        sha256: row.try_get(4)?,
        signed: row.try_get(5)?,
        root: roots.first.to_string(),
        rotations: roots.rotations,
        downgrade: row.try_get::<i64, _>(6)? != 0,
    }))
}

/// An edge's report on its update: the device's row moves (never out of a
/// final state), every step goes on the audit chain, and a failure may pause
/// the rollout at once.
pub async fn on_report(
    state: &AppState,
    account_id: &str,
    device_id: &str,
    report: &UpdateReport,
) -> AppResult<()> {
    if report.rollout_id.len() > 64
        || report.release_id.len() > 64
        || report.running.len() > 64
        || report.message.len() > MAX_REPORT_MESSAGE
    {
        return Err(AppError::invalid("update report out of bounds"));
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = sqlx::query(
        "SELECT rd.state, r.release_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
         WHERE rd.rollout_id = $1 AND rd.device_id = $2 AND r.account_id = $3",
    )
    .bind(&report.rollout_id)
    .bind(device_id)
    .bind(account_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(AppError::not_found("rollout"));
    };
    let current: String = row.try_get(0)?;
    let release: String = row.try_get(1)?;
    if release != report.release_id {
        return Err(AppError::invalid("the report names another release"));
    }
    let final_ = current == "cancelled"
        || current
            .parse::<UpdateState>()
            .is_ok_and(UpdateState::is_final);
    // A rollback or success after the offer was withdrawn still counts: the
    // edge swapped its binary before it heard. Otherwise a withdrawn (pending,
    // cancelled) or finished row stays as it is.
    let late_final = report.state.is_final() && matches!(current.as_str(), "pending" | "cancelled");
    if (final_ && !late_final) || current == report.state.as_str() {
        return Ok(());
    }
    if current == "pending" && !report.state.is_final() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE rollout_devices SET state = $1, message = $2, updated_at = $3,
             from_version = COALESCE(from_version, $4)
         WHERE rollout_id = $5 AND device_id = $6 AND state = $7",
    )
    .bind(report.state.as_str())
    .bind((!report.message.is_empty()).then_some(report.message.as_str()))
    .bind(now)
    .bind(&report.running)
    .bind(&report.rollout_id)
    .bind(device_id)
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    let result = if report.state.is_failure() {
        "failed"
    } else {
        "ok"
    };
    let ev = Event::new(
        account_id,
        &format!("device:{device_id}"),
        &format!("update.{}", report.state.as_str()),
        &format!("rollout:{}", report.rollout_id),
    )
    .device(device_id)
    .result(result)
    .details(serde_json::json!({
        "release": report.release_id, "running": report.running, "message": report.message,
    }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    if report.state.is_final() {
        super::rollouts::advance(state).await?;
    }
    Ok(())
}

fn refused() -> AppError {
    AppError::unauthenticated()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().filter(|v| v.len() <= 128)
}

/// A release's binary, for an edge it is offered to (signed headers, see
/// [`drawbridge_proto::update::fetch_message`]).
#[utoipa::path(get, path = "/api/v1/edge/releases/{id}", tag = "updates", security(()),
    params(("id" = String, Path)),
    responses((status = 200, description = "the binary", content_type = "application/octet-stream"),
        (status = 401, body = drawbridge_proto::ApiError), (status = 404, body = drawbridge_proto::ApiError)))]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let now = state.now();
    let (Some(device), Some(time), Some(sig)) = (
        header(&headers, FETCH_DEVICE_HEADER),
        header(&headers, FETCH_TIME_HEADER),
        header(&headers, FETCH_SIGNATURE_HEADER),
    ) else {
        return Err(refused());
    };
    let time: i64 = time.parse().map_err(|_| refused())?;
    if (now - time).abs() > 300 || id.len() > 64 || device.len() > 64 {
        return Err(refused());
    }
    let row = sqlx::query(
        "SELECT public_key FROM devices WHERE id = $1 AND enrolled = 1 AND disabled = 0 AND archived = 0",
    )
    .bind(device)
    .fetch_optional(&state.store.pool)
    .await?
    .ok_or_else(refused)?;
    let key: Option<String> = row.try_get(0)?;
    let key = STANDARD
        .decode(key.ok_or_else(refused)?)
        .map_err(|_| refused())?;
    let sig = STANDARD.decode(sig).map_err(|_| refused())?;
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&fetch_message(device, &id, time), &sig)
        .map_err(|_| refused())?;
    // Only a release offered to this device in a running rollout.
    let offered: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT rd.canary FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
         WHERE rd.device_id = $1 AND r.release_id = $2 AND r.state = 'running' AND rd.state IN {OFFER_STATES}
         LIMIT 1"
    ))
    .bind(device)
    .bind(&id)
    .fetch_optional(&state.store.pool)
    .await?;
    if offered.is_none() {
        return Err(AppError::not_found("release"));
    }
    let release = store::get(&state.store, &id)
        .await?
        .ok_or_else(|| AppError::not_found("release"))?;
    let chunks: i64 = sqlx::query_scalar("SELECT chunks FROM releases WHERE id = $1")
        .bind(&id)
        .fetch_one(&state.store.pool)
        .await?;
    // Chunk by chunk, so that a large binary is never whole in memory.
    let store = state.store.clone();
    let stream = futures_util::stream::unfold(0i64, move |seq| {
        let store = store.clone();
        let id = id.clone();
        async move {
            if seq >= chunks {
                return None;
            }
            let item = match store::chunk(&store, &id, seq).await {
                Ok(Some(c)) => Ok(bytes::Bytes::from(c)),
                Ok(None) => Err(std::io::Error::other("a release chunk is missing")),
                Err(e) => Err(std::io::Error::other(e.message)),
            };
            Some((item, seq + 1))
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, release.size.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
