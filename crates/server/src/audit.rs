//! The audit log: append-only, hash-chained per account.
//!
//! Each entry's hash covers its own fields and the previous entry's hash, so a
//! changed, removed or reordered entry breaks the chain from that point on.
//! `audit_heads` holds each chain's last sequence number and hash; appending
//! updates it first, which serialises appends per account on PostgreSQL (row
//! lock) and SQLite (single writer), and detects truncation on verify.

use crate::clock::from_unix;
use crate::db::{Store, Tx};
use drawbridge_proto::api::{AuditEntry, AuditQuery, AuditRepeated, AuditVerify};
use ring::digest;
use sqlx::Row;

/// The chain of events that belong to no account (e.g. a login naming an unknown account).
pub const SYSTEM_ACCOUNT: &str = "system";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    pub account_id: String,
    /// `user:<id>`, `device:<id>`, `api:<token id>` or `system`.
    pub actor: String,
    /// Dotted verb, e.g. `login.ok`, `device.create`, `session.end`.
    pub action: String,
    /// What it was done to, e.g. `device:<id>`.
    pub object: String,
    /// `ok`, `denied` or `failed`.
    pub result: String,
    /// Remote address of the request, or `local` for the CLI.
    pub source: String,
    pub device_id: Option<String>,
    pub details: serde_json::Value,
}

impl Event {
    pub fn new(account_id: &str, actor: &str, action: &str, object: &str) -> Self {
        Event {
            account_id: account_id.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            object: object.to_string(),
            result: "ok".into(),
            source: "local".into(),
            device_id: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn result(mut self, r: &str) -> Self {
        self.result = r.into();
        self
    }
    pub fn source(mut self, s: &str) -> Self {
        self.source = s.into();
        self
    }
    pub fn device(mut self, id: &str) -> Self {
        self.device_id = Some(id.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

#[allow(clippy::too_many_arguments)]
fn entry_hash(
    account_id: &str,
    seq: i64,
    ts: i64,
    actor: &str,
    action: &str,
    object: &str,
    result: &str,
    source: &str,
    device_id: Option<&str>,
    details: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([
        account_id, seq, ts, actor, action, object, result, source, device_id, details, prev_hash
    ])
    .to_string();
    hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// Makes sure the account's chain has a head row.
pub async fn ensure_chain(tx: &mut Tx<'_>, account_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_heads (account_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(GENESIS)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends inside the caller's transaction, so the change and its record
/// commit together or not at all. Returns the new sequence number.
pub async fn append(tx: &mut Tx<'_>, now: i64, ev: &Event) -> Result<i64, sqlx::Error> {
    ensure_chain(tx, &ev.account_id).await?;
    // Bump first: on PostgreSQL this takes the row lock that orders concurrent appends.
    sqlx::query("UPDATE audit_heads SET seq = seq + 1 WHERE account_id = $1")
        .bind(&ev.account_id)
        .execute(&mut **tx)
        .await?;
    let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE account_id = $1")
        .bind(&ev.account_id)
        .fetch_one(&mut **tx)
        .await?;
    let seq: i64 = row.try_get(0)?;
    let prev: String = row.try_get(1)?;
    let details = ev.details.to_string();
    let hash = entry_hash(
        &ev.account_id,
        seq,
        now,
        &ev.actor,
        &ev.action,
        &ev.object,
        &ev.result,
        &ev.source,
        ev.device_id.as_deref(),
        &details,
        &prev,
    );
    sqlx::query(
        "INSERT INTO audit_log (account_id, seq, ts, actor, action, object, result, source, device_id, details, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&ev.account_id)
    .bind(seq)
    .bind(now)
    .bind(&ev.actor)
    .bind(&ev.action)
    .bind(&ev.object)
    .bind(&ev.result)
    .bind(&ev.source)
    .bind(ev.device_id.as_deref())
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_heads SET hash = $2 WHERE account_id = $1")
        .bind(&ev.account_id)
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    // Subscribers to this kind of record (webhooks, e-mail) are told with it.
    crate::outbox::producers::from_audit(tx, ev, seq, now).await?;
    Ok(seq)
}

/// A refused enrolment is recorded at most once per device (activation key) or
/// account (fleet key) in this many seconds (`api::enroll`).
pub const ENROLL_REFUSAL_WINDOW: i64 = 600;

/// A failed or refused edge authentication is recorded at most once per device
/// and result in this many seconds (`live::edge`).
pub const EDGE_AUTH_REFUSAL_WINDOW: i64 = 600;

/// Appends unless an entry with the same action, object and result was made in
/// the last `window_secs` (then returns `None`): for events a stranger can cause
/// at will (refused enrolments, failed edge authentications), so they cannot
/// flood an account's log; a skipped repeat adds one to the entry's count
/// ([`coalesced_count`]). The chain's head row is locked first, so concurrent
/// callers see each other's entry.
pub async fn append_coalesced(
    tx: &mut Tx<'_>,
    now: i64,
    ev: &Event,
    window_secs: i64,
) -> Result<Option<i64>, sqlx::Error> {
    ensure_chain(tx, &ev.account_id).await?;
    sqlx::query("UPDATE audit_heads SET seq = seq WHERE account_id = $1")
        .bind(&ev.account_id)
        .execute(&mut **tx)
        .await?;
    let recent: Option<i64> = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE account_id = $1 AND action = $2 AND object = $3 AND result = $4 AND ts > $5 LIMIT 1",
    )
    .bind(&ev.account_id)
    .bind(&ev.action)
    .bind(&ev.object)
    .bind(&ev.result)
    .bind(now - window_secs)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(seq) = recent {
        sqlx::query(
            "INSERT INTO audit_coalesced (account_id, seq, count, last_ts) VALUES ($1, $2, 2, $3)
             ON CONFLICT (account_id, seq) DO UPDATE SET count = audit_coalesced.count + 1, last_ts = $3",
        )
        .bind(&ev.account_id)
        .bind(seq)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    }
    let seq = append(tx, now, ev).await?;
    sqlx::query("INSERT INTO audit_coalesced (account_id, seq, count) VALUES ($1, $2, 1)")
        .bind(&ev.account_id)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(Some(seq))
}

/// How many events the entry `seq` of an account stands for: 1 for an entry
/// written by [`append`], more for one written by [`append_coalesced`] whose
/// repeats within its window were counted instead of written.
pub async fn coalesced_count(
    store: &Store,
    account_id: &str,
    seq: i64,
) -> Result<i64, sqlx::Error> {
    let n: Option<i64> =
        sqlx::query_scalar("SELECT count FROM audit_coalesced WHERE account_id = $1 AND seq = $2")
            .bind(account_id)
            .bind(seq)
            .fetch_optional(&store.pool)
            .await?;
    Ok(n.unwrap_or(1))
}

/// Appends in a transaction of its own (for events with no other change).
pub async fn record(store: &Store, now: i64, ev: &Event) -> Result<i64, sqlx::Error> {
    let mut tx = store.begin().await?;
    let seq = append(&mut tx, now, ev).await?;
    tx.commit().await?;
    Ok(seq)
}

const COLUMNS: &str = "account_id, seq, ts, actor, action, object, result, source, device_id, details, prev_hash, hash";

struct Raw {
    account_id: String,
    seq: i64,
    ts: i64,
    actor: String,
    action: String,
    object: String,
    result: String,
    source: String,
    device_id: Option<String>,
    details: String,
    prev_hash: String,
    hash: String,
}

fn raw(row: &sqlx::any::AnyRow) -> Result<Raw, sqlx::Error> {
    Ok(Raw {
        account_id: row.try_get(0)?,
        seq: row.try_get(1)?,
        ts: row.try_get(2)?,
        actor: row.try_get(3)?,
        action: row.try_get(4)?,
        object: row.try_get(5)?,
        result: row.try_get(6)?,
        source: row.try_get(7)?,
        device_id: row.try_get(8)?,
        details: row.try_get(9)?,
        prev_hash: row.try_get(10)?,
        hash: row.try_get(11)?,
    })
}

/// Checks the whole of an account's hash chain, from its first entry.
pub async fn verify(store: &Store, account_id: &str) -> Result<AuditVerify, sqlx::Error> {
    verify_from(store, account_id, None).await.map(|(v, _)| v)
}

/// Where a check found the chain intact: the last entry's sequence number and hash.
pub type VerifiedHead = (i64, String);

/// Checks an account's chain from `from` (a head an earlier check found intact:
/// only the entries after it are read) or from the first entry, and the chain
/// head. Returns the result and, when intact, the head to start from next time.
pub async fn verify_from(
    store: &Store,
    account_id: &str,
    from: Option<VerifiedHead>,
) -> Result<(AuditVerify, Option<VerifiedHead>), sqlx::Error> {
    let (checked_seq, mut prev) = from.unwrap_or((0, GENESIS.to_string()));
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE account_id = $1 AND seq > $2 ORDER BY seq"
    ))
    .bind(account_id)
    .bind(checked_seq)
    .fetch_all(&store.pool)
    .await?;
    let mut expected_seq = checked_seq + 1;
    let mut broken = None;
    for row in &rows {
        let r = raw(row)?;
        let recomputed = entry_hash(
            &r.account_id,
            r.seq,
            r.ts,
            &r.actor,
            &r.action,
            &r.object,
            &r.result,
            &r.source,
            r.device_id.as_deref(),
            &r.details,
            &r.prev_hash,
        );
        if r.seq != expected_seq {
            broken = Some(expected_seq);
            break;
        }
        if r.prev_hash != prev || recomputed != r.hash {
            broken = Some(r.seq);
            break;
        }
        prev = r.hash;
        expected_seq += 1;
    }
    if broken.is_none() {
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&store.pool)
            .await?;
        if let Some(head) = head {
            let seq: i64 = head.try_get(0)?;
            let hash: String = head.try_get(1)?;
            if seq != expected_seq - 1 || (seq > 0 && hash != prev) {
                // Entries at the end were removed (or the head was tampered with).
                broken = Some(expected_seq);
            }
        }
    }
    let verified = AuditVerify {
        ok: broken.is_none(),
        entries: checked_seq + rows.len() as i64,
        first_broken_seq: broken,
    };
    let head = broken.is_none().then_some((expected_seq - 1, prev));
    Ok((verified, head))
}

/// The heads this process found intact, per account, so that a page view checks
/// only the entries written since (`verify_from`). Bounded by the number of
/// accounts; a broken result is never kept.
#[derive(Default)]
pub struct VerifiedHeads(std::sync::Mutex<std::collections::HashMap<String, VerifiedHead>>);

impl VerifiedHeads {
    /// Checks the account's chain from its cached head (or in full when `full`
    /// or nothing is cached) and caches the new head when intact.
    pub async fn verify(
        &self,
        store: &Store,
        account_id: &str,
        full: bool,
    ) -> Result<AuditVerify, sqlx::Error> {
        let from = if full {
            None
        } else {
            self.lock().get(account_id).cloned()
        };
        let (v, head) = verify_from(store, account_id, from).await?;
        let mut heads = self.lock();
        match head {
            Some(h) => {
                // Two checks at once: keep the further one.
                let further = heads.get(account_id).is_none_or(|(seq, _)| h.0 >= *seq);
                if further {
                    heads.insert(account_id.to_string(), h);
                }
            }
            None => {
                heads.remove(account_id);
            }
        }
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, VerifiedHead>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every chain in the database: (account id, result).
pub async fn verify_all(store: &Store) -> Result<Vec<(String, AuditVerify)>, sqlx::Error> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT account_id FROM audit_heads ORDER BY account_id")
            .fetch_all(&store.pool)
            .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let v = verify(store, &id).await?;
        out.push((id, v));
    }
    Ok(out)
}

/// Most entries one query returns.
pub const MAX_EXPORT: u32 = 10_000;

/// One page of entries and the cursor (`after_seq`) of the next, if more match.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<AuditEntry>,
    pub next_after_seq: Option<i64>,
}

/// `order` of an [`AuditQuery`]: newest first?
pub fn newest_first(q: &AuditQuery) -> Result<bool, String> {
    match q.order.as_deref() {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(_) => Err("order is asc or desc".into()),
    }
}

/// Entries of one account matching the filter, one page (at most `limit`, by
/// default [`MAX_EXPORT`]) in the query's order, after its cursor. Nothing is cut
/// silently: when more match, the page says where the next one starts.
pub async fn query_page(
    store: &Store,
    account_id: &str,
    q: &AuditQuery,
) -> Result<Page, sqlx::Error> {
    let limit = q.limit.unwrap_or(MAX_EXPORT).clamp(1, MAX_EXPORT) as usize;
    let mut entries = query(store, account_id, q).await?;
    add_repeats(store, account_id, &mut entries).await?;
    let next_after_seq = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Page {
        entries,
        next_after_seq,
    })
}

/// Every entry matching the filter (all pages), in the query's order; for exports
/// that must be complete (the server's `audit export`).
pub async fn query_all(
    store: &Store,
    account_id: &str,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let mut q = q.clone();
    q.limit = Some(MAX_EXPORT);
    let mut all = Vec::new();
    loop {
        let page = query_page(store, account_id, &q).await?;
        all.extend(page.entries);
        match page.next_after_seq {
            Some(next) => q.after_seq = Some(next),
            None => return Ok(all),
        }
    }
}

/// Entries of one account matching the filter, in the query's order after its
/// cursor: at most `limit` + 1 (the one more tells [`query_page`] a next page exists).
async fn query(
    store: &Store,
    account_id: &str,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let desc = newest_first(q).unwrap_or(false);
    let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE account_id = $1");
    let mut n = 1;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if q.from.is_some() {
        sql += &format!(" AND ts >= {}", next());
    }
    if q.to.is_some() {
        sql += &format!(" AND ts < {}", next());
    }
    if q.actor.is_some() {
        sql += &format!(" AND actor = {}", next());
    }
    if q.device.is_some() {
        sql += &format!(" AND device_id = {}", next());
    }
    if q.action.is_some() {
        sql += &format!(" AND action LIKE {} ESCAPE '\\'", next());
    }
    if q.after_seq.is_some() {
        sql += &format!(" AND seq {} {}", if desc { "<" } else { ">" }, next());
    }
    let limit = q.limit.unwrap_or(MAX_EXPORT).clamp(1, MAX_EXPORT) + 1;
    let dir = if desc { "DESC" } else { "ASC" };
    sql += &format!(" ORDER BY seq {dir} LIMIT {limit}");
    let mut query = sqlx::query(&sql).bind(account_id);
    if let Some(f) = q.from {
        query = query.bind(f.unix_timestamp());
    }
    if let Some(t) = q.to {
        query = query.bind(t.unix_timestamp());
    }
    if let Some(a) = &q.actor {
        query = query.bind(a.clone());
    }
    if let Some(d) = &q.device {
        query = query.bind(d.clone());
    }
    if let Some(a) = &q.action {
        // Prefix match; LIKE's wildcards in the input are taken literally
        // (escaped: `web.certificate_changed` has an underscore of its own).
        let mut pattern = String::with_capacity(a.len() + 1);
        for c in a.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        query = query.bind(pattern);
    }
    if let Some(s) = q.after_seq {
        query = query.bind(s);
    }
    let rows = query.fetch_all(&store.pool).await?;
    rows.iter()
        .map(|row| {
            let r = raw(row)?;
            Ok(AuditEntry {
                account_id: r.account_id,
                seq: r.seq,
                time: from_unix(r.ts),
                actor: r.actor,
                action: r.action,
                object: r.object,
                result: r.result,
                source: r.source,
                details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
                hash: r.hash,
                repeated: None,
            })
        })
        .collect()
}

/// Fills in [`AuditEntry::repeated`] for the entries of one page that stand
/// for several events (counted by [`append_coalesced`]).
async fn add_repeats(
    store: &Store,
    account_id: &str,
    entries: &mut [AuditEntry],
) -> Result<(), sqlx::Error> {
    let (Some(lo), Some(hi)) = (
        entries.iter().map(|e| e.seq).min(),
        entries.iter().map(|e| e.seq).max(),
    ) else {
        return Ok(());
    };
    let rows: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT seq, count, last_ts FROM audit_coalesced
         WHERE account_id = $1 AND seq >= $2 AND seq <= $3 AND count > 1",
    )
    .bind(account_id)
    .bind(lo)
    .bind(hi)
    .fetch_all(&store.pool)
    .await?;
    let counts: std::collections::HashMap<i64, (i64, Option<i64>)> = rows
        .into_iter()
        .map(|(seq, count, last)| (seq, (count, last)))
        .collect();
    for e in entries.iter_mut() {
        if let Some((count, last)) = counts.get(&e.seq) {
            e.repeated = Some(AuditRepeated {
                count: *count,
                first: e.time,
                last: last.map(from_unix).unwrap_or(e.time),
            });
        }
    }
    Ok(())
}

/// JSON lines: one entry per line.
pub fn to_jsonl(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        out += &serde_json::to_string(e).unwrap_or_default();
        out.push('\n');
    }
    out
}

/// CSV with a header row.
pub fn to_csv(entries: &[AuditEntry]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "account_id",
        "seq",
        "time",
        "actor",
        "action",
        "object",
        "result",
        "source",
        "details",
        "hash",
        "repeated",
        "repeated_last",
    ]);
    for e in entries {
        let time = e
            .time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let _ = w.write_record([
            e.account_id.as_str(),
            &e.seq.to_string(),
            &time,
            &e.actor,
            &e.action,
            &e.object,
            &e.result,
            &e.source,
            &e.details.to_string(),
            &e.hash,
            &e.repeated
                .as_ref()
                .map(|r| r.count.to_string())
                .unwrap_or_default(),
            &e.repeated
                .as_ref()
                .and_then(|r| {
                    r.last
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}
