//! The control API (`/api/v1`): routing, OpenAPI document, JSON in and out.
//!
//! Handlers are thin: they parse (typed, bounded request bodies), check the
//! caller's rights, run one transaction that changes the data and appends the
//! audit entry, and answer.

mod account;
mod audit_routes;
pub(crate) mod data;
pub(crate) mod devices;
pub(crate) mod enroll;
mod groups;
mod me;
mod outbox;
mod sessions;
mod setup;
mod tokens;
mod users;

use crate::error::AppError;
use crate::extract::MAX_BODY;
use crate::state::AppState;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use drawbridge_proto::ErrorCode;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Drawbridge control API", description = "Accounts, users, rights, devices, sessions and audit. Every error is `{code, message}`."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Every API route, and the OpenAPI document describing exactly those routes.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let router = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi());
    let router = setup::routes(router);
    let router = me::routes(router);
    let router = tokens::routes(router);
    let router = account::routes(router);
    let router = users::routes(router);
    let router = groups::routes(router);
    let router = devices::routes(router);
    let router = enroll::routes(router);
    let router = sessions::routes(router);
    let router = audit_routes::routes(router);
    let router = outbox::routes(router);
    let router = data::routes(router);
    let router = crate::live::edge::routes(router);
    let router = crate::live::client::routes(router);
    let router = crate::web::routes(router);
    let router = crate::desktop::routes(router);
    let router = crate::syslog::routes(router);
    let router = crate::sso::routes(router);
    let router = crate::updates::api::routes(router);
    let router = meta_routes(router);
    router.split_for_parts()
}

/// The whole HTTP application: API, OpenAPI document, health check, JSON
/// errors for unknown routes and oversized bodies.
pub fn app(state: AppState) -> Router {
    let (api, _) = routes();
    let relay = drawbridge_relay::router(state.relay.clone());
    let feed = crate::relay_feed::router(state.clone());
    let portal_key = state.portal_key.clone();
    let web_state = state.clone();
    let api: Router = Router::new()
        .merge(api)
        .layer(axum::middleware::from_fn(object_bodies_only))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state);
    // The portal renders pages by calling this same API in-process.
    let portal = drawbridge_portal::router(api.clone(), &portal_key);
    api.merge(portal)
        .merge(relay)
        .merge(feed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            web_state,
            crate::web::by_host,
        ))
}

/// Every request body the API accepts is a JSON object with named fields.
///
/// serde maps a JSON array onto a struct by position (`["x"]` would be a
/// `CreateDevice` named "x"), and routes without a body would ignore whatever
/// was sent. This layer sees every API request before its handler: a non-empty
/// body that is not one JSON object is refused with `bad_request`, so no handler
/// runs and nothing changes. Empty bodies pass (routes that take no body).
async fn object_bodies_only(req: Request, next: axum::middleware::Next) -> Response {
    // HTTP to a device carries whatever the device takes, streamed.
    if req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|m| m.as_str() == crate::web::HTTP_ROUTE)
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return AppError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    if !bytes.is_empty()
        && let Err(e) = check_object(&bytes)
    {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// `Ok` when `body` is exactly one JSON object (values are not looked at here;
/// the route's typed extractor checks them).
fn check_object(body: &[u8]) -> Result<(), AppError> {
    use serde::de::IgnoredAny;
    use serde_json::error::Category;
    match serde_json::from_slice::<std::collections::HashMap<String, IgnoredAny>>(body) {
        Ok(_) => Ok(()),
        Err(e) if e.classify() == Category::Data => {
            let got = match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => "an array",
                Some(b'"') => "a string",
                Some(b'n') => "null",
                Some(b't' | b'f') => "a boolean",
                _ => "a number",
            };
            Err(AppError::bad_request(format!(
                "the request body must be a JSON object with named fields, not {got}"
            )))
        }
        Err(_) => Err(AppError::bad_request("the request body is not valid JSON")),
    }
}

fn meta_routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(healthz)).routes(routes!(openapi_json))
}

/// Liveness and database reachability. With PostgreSQL it answers at once
/// from a probe on a connection of its own (see `health`), so a replica busy
/// with requests is not reported dead.
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "ok"), (status = 503, description = "database unreachable")))]
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let ok = match state.health.cached() {
        Some(ok) => ok,
        None => match sqlx::query("SELECT 1").execute(&state.store.pool).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "health check: database unreachable");
                false
            }
        },
    };
    if ok {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "database unreachable"})),
        )
            .into_response()
    }
}

/// This OpenAPI 3 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "the OpenAPI document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(|| routes().1).clone())
}

async fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound, "no such route")
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert("x-content-type-options", "nosniff".parse().expect("static"));
    h.insert("cache-control", "no-store".parse().expect("static"));
    h.insert("referrer-policy", "no-referrer".parse().expect("static"));
    h.insert("x-frame-options", "DENY".parse().expect("static"));
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_a_data_only_token_may_call_is_a_get_route_of_the_api() {
        let (_, doc) = super::routes();
        for route in super::data::DATA_SCOPE {
            let item = doc
                .paths
                .paths
                .get(*route)
                .unwrap_or_else(|| panic!("{route} is not an API route"));
            assert!(item.get.is_some(), "{route} has no GET");
        }
    }
}
