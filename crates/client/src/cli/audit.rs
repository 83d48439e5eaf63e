//! `audit export` and `audit verify`.

use super::args::AuditCmd;
use super::context::{Ctx, out, print_json};
use crate::{Error, Result, fail};
use drawbridge_proto::api::*;
use std::io::Write;
use std::path::Path;

pub(super) async fn audit(ctx: &Ctx, cmd: AuditCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        AuditCmd::Export {
            format,
            from,
            to,
            actor,
            device,
            action,
            limit,
            page_size,
            output,
        } => {
            let actor = match actor {
                Some(a) if a.contains(':') || a == "system" || a == "anonymous" => Some(a),
                Some(name) => Some(format!("user:{}", ctx.user_id(&name).await?)),
                None => None,
            };
            let device = match device {
                Some(d) => Some(ctx.device_id(&d).await?),
                None => None,
            };
            let format = if ctx.json { "json".to_string() } else { format };
            let q = AuditQuery {
                from,
                to,
                actor,
                device,
                action,
                format: Some(format),
                limit,
                after_seq: None,
                order: None,
            };
            let body = c.audit_export(&q, page_size).await?;
            match output {
                Some(path) => write_file(&path, &body),
                None => {
                    let mut o = std::io::stdout().lock();
                    match o.write_all(&body).and_then(|_| o.flush()) {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
                            context: "writing standard output".into(),
                            source: e,
                        }),
                        _ => Ok(()),
                    }
                }
            }
        }
        AuditCmd::Verify => {
            let v = c.audit_verify().await?;
            if ctx.json {
                print_json(&v)?;
            }
            match (v.ok, v.first_broken_seq) {
                (true, _) => {
                    if !ctx.json {
                        out(&format!(
                            "Audit log intact: {} entries, hash chain verified.\n",
                            v.entries
                        ))?;
                    }
                    Ok(())
                }
                (false, Some(seq)) => fail!(
                    "the audit log's hash chain is BROKEN at sequence number {seq} ({} entries)",
                    v.entries
                ),
                (false, None) => fail!(
                    "the audit log's hash chain is BROKEN ({} entries)",
                    v.entries
                ),
            }
        }
    }
}

fn write_file(path: &Path, body: &[u8]) -> Result<()> {
    std::fs::write(path, body).map_err(|source| Error::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    eprintln!("Wrote {} bytes to {}.", body.len(), path.display());
    Ok(())
}
