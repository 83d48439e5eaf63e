//! Prometheus metrics on a separate plain-HTTP listener (off unless
//! `--metrics-listen` is given): the relay's and STUN's counters plus the
//! control plane's (logins, connected edges).

use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the Prometheus recorder and serves `/metrics` on `listener`.
pub fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}
