//! Static files, compiled into the binary (sites are air-gapped: no CDN).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const STYLE: &str = include_str!("../assets/style.css");
const ICON: &str = include_str!("../assets/icon.svg");
/// The live KPI tiles' poller (the only script the portal serves).
const KPI_JS: &str = include_str!("../assets/kpi.js");

pub async fn serve(Path(name): Path<String>) -> Response {
    let (body, ctype) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        "kpi.js" => (KPI_JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
