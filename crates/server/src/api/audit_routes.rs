//! Reading, exporting and verifying the audit log (admins and auditors).

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use drawbridge_proto::api::{AuditEntry, AuditQuery, AuditVerify};
use drawbridge_proto::{Action, ApiError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(export)).routes(routes!(verify))
}

/// The response header with the next page's `after_seq` when more entries match.
pub const NEXT_AFTER_SEQ: &str = "x-next-after-seq";

/// The account's audit entries, filtered, one page (`limit`, `after_seq`, `order`);
/// as a JSON array, JSON lines or CSV. When more match, the `x-next-after-seq`
/// header holds the cursor of the next page.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>, description = "JSON array; `format=jsonl` gives JSON lines, `format=csv` CSV"), (status = 403, body = ApiError)))]
async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> AppResult<Response> {
    caller
        .require(&state, Action::ReadAudit, "audit.read")
        .await?;
    let format = q.format.clone().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "jsonl" | "csv") {
        return Err(AppError::invalid("format is json, jsonl or csv"));
    }
    audit::newest_first(&q).map_err(AppError::invalid)?;
    let page = audit::query_page(&state.store, &caller.account_id, &q).await?;
    let entries = page.entries;
    // More than one page matches: the cursor of the next one (nothing is cut silently).
    let next = page
        .next_after_seq
        .map(|s| [(NEXT_AFTER_SEQ, s.to_string())]);
    if format != "json" {
        // Exports are themselves on the record.
        let ev = caller.event("audit.export", "audit").details(serde_json::json!({ "username": caller.username, "format": format, "entries": entries.len() }));
        audit::record(&state.store, state.now(), &ev).await?;
    }
    let mut r = match format.as_str() {
        "jsonl" => (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            audit::to_jsonl(&entries),
        )
            .into_response(),
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            audit::to_csv(&entries),
        )
            .into_response(),
        _ => Json(entries).into_response(),
    };
    if let Some([(name, value)]) = next
        && let Ok(v) = header::HeaderValue::from_str(&value)
    {
        r.headers_mut().insert(name, v);
    }
    Ok(r)
}

/// Check the account's hash chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = AuditVerify), (status = 403, body = ApiError)))]
async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> AppResult<Json<AuditVerify>> {
    caller
        .require(&state, Action::ReadAudit, "audit.verify")
        .await?;
    let v = state
        .audit_verified
        .verify(
            &state.store,
            &caller.account_id,
            !q.incremental.unwrap_or(false),
        )
        .await?;
    Ok(Json(v))
}

/// `GET /audit/verify` options.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VerifyQuery {
    /// Check only the entries written since this server last found the chain
    /// intact (what the portal's audit page shows on every view). Without it the
    /// whole chain is checked from its first entry.
    #[serde(default)]
    incremental: Option<bool>,
}
