//! Historian ingestion of points without a value: a bad-quality sample (a
//! timeout, an exception) carries no value, and is stored (value NULL, its
//! quality kept) and synced like any other, whatever came before it on the
//! same statement — over the real edge channel, both stores.

use crate::common;
use crate::live_harness;

use axum::http::Method;
use common::TestApp;
use drawbridge_proto::TagName;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use drawbridge_proto::data::{BadReason, BufferStatus, Quality, Record, RecordBody};
use live_harness::*;
use serde_json::Value;
use std::time::Duration;

store_tests!(points_without_a_value_are_stored_and_synced_with_their_quality);

/// Point `seq`: every fourth one from the first is bad, without a value, so
/// that in messages of three the value-less point moves through every
/// position, and the very first statement is prepared with one.
fn point(seq: u64) -> Record {
    let (value, quality) = match seq % 8 {
        1 => (
            None,
            Quality::Bad {
                reason: BadReason::Timeout,
            },
        ),
        5 => (
            None,
            Quality::Bad {
                reason: BadReason::Exception { code: 2 },
            },
        ),
        _ => (Some(seq as f64 + 0.25), Quality::Good),
    };
    Record {
        seq,
        time_ms: 1_800_000_000_000 + seq as i64 * 1000,
        tag: TagName::try_from("pressure").unwrap(),
        body: RecordBody::Point { value, quality },
    }
}

/// Sends records and returns the acknowledged seq (or the error message).
async fn push(ws: &mut Ws, records: Vec<Record>) -> Result<u64, String> {
    send(
        ws,
        &EdgeToServer::Records {
            buffer: BufferStatus {
                stream: "s1".into(),
                pending: 0,
                dropped: 0,
            },
            records,
        },
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match recv::<ServerToEdge>(ws).await {
                Some(m @ (ServerToEdge::RecordsAck { .. } | ServerToEdge::Error { .. })) => {
                    return Some(m);
                }
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    match answer {
        Some(ServerToEdge::RecordsAck { seq, .. }) => Ok(seq),
        Some(ServerToEdge::Error { message, .. }) => Err(message),
        other => Err(format!("no answer to records (channel closed?): {other:?}")),
    }
}

async fn points_without_a_value_are_stored_and_synced_with_their_quality(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    // 40 messages of 3 points, the ones without a value moving through every
    // position, so that every pooled connection meets the same statement with
    // and without a value in the same place (sqlx caches it per connection).
    let mut seq = 0;
    for _ in 0..40 {
        let batch: Vec<Record> = (seq + 1..=seq + 3).map(point).collect();
        assert_eq!(push(&mut ws, batch).await, Ok(seq + 3), "after seq {seq}");
        seq += 3;
    }
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(c) => format!("/api/v1/data/sync?limit=50&after={c}"),
            None => "/api/v1/data/sync?limit=50".to_string(),
        };
        let page = l.app.ok(Method::GET, &q, &acct.admin, None).await;
        got.extend(page["points"].as_array().unwrap().iter().cloned());
        after = Some(page["cursor"].as_str().unwrap().to_string());
        if !page["more_data_available"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(got.len(), 120);
    for (p, seq) in got.iter().zip(1u64..) {
        let want = point(seq);
        let RecordBody::Point { value, quality } = want.body else {
            unreachable!()
        };
        assert_eq!(p["time_ms"], want.time_ms, "{p}");
        assert_eq!(p["value"].as_f64(), value, "{p}");
        assert_eq!(
            serde_json::from_value::<Quality>(p["quality"].clone()).unwrap(),
            quality,
            "{p}"
        );
    }
    // Stored as NULL, not as a stand-in number.
    let stored: Vec<(Option<f64>, String)> =
        sqlx::query_as("SELECT value, quality FROM data_points WHERE quality <> 'good'")
            .fetch_all(&l.app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(
        stored.len(),
        got.iter().filter(|p| p["value"] == Value::Null).count()
    );
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|(v, _)| v.is_none()), "{stored:?}");
}
