//! Data-service helpers: historian records pushed over an edge channel and
//! the mailbox read back through the API.

use super::{Ws, recv, send};
use crate::common::TestApp;
use axum::http::Method;
use drawbridge_proto::TagName;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use drawbridge_proto::data::{BufferStatus, Quality, Record, RecordBody};
use serde_json::Value;
use std::time::Duration;

/// Waits up to `secs` for a message the predicate accepts, skipping others.
pub async fn within<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    ws: &mut Ws,
    secs: u64,
    mut want: impl FnMut(&T) -> bool,
) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match recv::<T>(ws).await {
                Some(m) if want(&m) => return Some(m),
                Some(_) => continue,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

pub fn point(seq: u64, tag: &str, value: f64) -> Record {
    Record {
        seq,
        time_ms: 1_800_000_000_000 + seq as i64 * 1000,
        tag: TagName::try_from(tag).unwrap(),
        body: RecordBody::Point {
            value: Some(value),
            quality: Quality::Good,
        },
    }
}

pub fn buffer(stream: &str) -> BufferStatus {
    BufferStatus {
        stream: stream.into(),
        pending: 0,
        dropped: 0,
    }
}

/// Sends records and returns the acknowledged seq (or the error message).
pub async fn push(ws: &mut Ws, stream: &str, records: Vec<Record>) -> Result<u64, String> {
    send(
        ws,
        &EdgeToServer::Records {
            buffer: buffer(stream),
            records,
        },
    )
    .await;
    // Generous: a loaded CI machine runs many store tests at once.
    match within::<ServerToEdge>(ws, 30, |m| {
        matches!(
            m,
            ServerToEdge::RecordsAck { .. } | ServerToEdge::Error { .. }
        )
    })
    .await
    {
        Some(ServerToEdge::RecordsAck { seq, .. }) => Ok(seq),
        Some(ServerToEdge::Error { message, .. }) => Err(message),
        other => panic!("no answer to records: {other:?}"),
    }
}

pub async fn sync_all(app: &TestApp, token: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(c) => format!("/api/v1/data/sync?limit={limit}&after={c}"),
            None => format!("/api/v1/data/sync?limit={limit}"),
        };
        let page = app.ok(Method::GET, &q, token, None).await;
        out.extend(page["points"].as_array().unwrap().iter().cloned());
        after = Some(page["cursor"].as_str().unwrap().to_string());
        if !page["more_data_available"].as_bool().unwrap() {
            return out;
        }
    }
}
