//! The audit export, read page by page and joined into one document.

use crate::client::Client;
use crate::error::{Error, Result};
use drawbridge_proto::api::{AuditQuery, AuditVerify};
use reqwest::Method;

impl Client {
    /// The export (`json`, `jsonl` or `csv`) in the server's format. With a
    /// `limit`, one page of at most that many entries; without, every page the
    /// server has (it says where the next one starts in `x-next-after-seq`),
    /// joined into one document: one JSON array, JSON lines, or CSV with one header.
    /// `page_size` sets how many entries each request asks for while reading every page.
    pub async fn audit_export(&self, q: &AuditQuery, page_size: Option<u32>) -> Result<Vec<u8>> {
        let fmt_time = |t: &time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &q.from {
            query.push(("from", fmt_time(t)));
        }
        if let Some(t) = &q.to {
            query.push(("to", fmt_time(t)));
        }
        if let Some(v) = &q.actor {
            query.push(("actor", v.clone()));
        }
        if let Some(v) = &q.device {
            query.push(("device", v.clone()));
        }
        if let Some(v) = &q.action {
            query.push(("action", v.clone()));
        }
        if let Some(v) = &q.format {
            query.push(("format", v.clone()));
        }
        if let Some(v) = &q.order {
            query.push(("order", v.clone()));
        }
        if let Some(v) = q.limit.or(page_size) {
            query.push(("limit", v.to_string()));
        }
        let format = q.format.as_deref().unwrap_or("json");
        let mut pages = AuditPages::new(format);
        let mut after = q.after_seq;
        loop {
            let mut page_query = query.clone();
            if let Some(seq) = after {
                page_query.push(("after_seq", seq.to_string()));
            }
            let (_, headers, body) = self
                .send_full(Method::GET, "/audit", &page_query, None)
                .await?;
            pages.push(&body)?;
            let next = headers
                .get(AUDIT_NEXT_AFTER_SEQ)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            match next {
                // A cursor that does not move on would loop forever: stop there.
                Some(seq) if q.limit.is_none() && after != Some(seq) => after = Some(seq),
                _ => break,
            }
        }
        pages.finish()
    }
    pub async fn audit_verify(&self) -> Result<AuditVerify> {
        self.get("/audit/verify").await
    }
}

/// The header in which the server names the cursor of the next audit page.
const AUDIT_NEXT_AFTER_SEQ: &str = "x-next-after-seq";

/// Audit export pages joined into one document of their format.
struct AuditPages {
    format: String,
    out: Vec<u8>,
    entries: Vec<serde_json::Value>,
    pages: usize,
}

impl AuditPages {
    fn new(format: &str) -> AuditPages {
        AuditPages {
            format: format.to_string(),
            out: Vec::new(),
            entries: Vec::new(),
            pages: 0,
        }
    }

    fn push(&mut self, page: &[u8]) -> Result<()> {
        self.pages += 1;
        match self.format.as_str() {
            "json" => {
                let v: Vec<serde_json::Value> =
                    serde_json::from_slice(page).map_err(|_| Error::Unexpected {
                        status: 200,
                        detail: "the audit page is not a JSON array".into(),
                    })?;
                self.entries.extend(v);
            }
            "csv" if self.pages > 1 => {
                // Every page starts with the header line; keep the first one only.
                let body = match page.iter().position(|&b| b == b'\n') {
                    Some(i) => &page[i + 1..],
                    None => &[][..],
                };
                self.out.extend_from_slice(body);
            }
            _ => self.out.extend_from_slice(page),
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        if self.format == "json" {
            return serde_json::to_vec(&self.entries).map_err(|_| Error::Unexpected {
                status: 200,
                detail: "the audit entries do not serialise".into(),
            });
        }
        Ok(self.out)
    }
}
