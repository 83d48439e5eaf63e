//! Stored credentials put into an RDP connection by the gateway, so that the
//! browser (which only ever has placeholders) never sees them. This works
//! with TLS security only: the client's X.224 Connection Request is changed to
//! offer TLS alone (never NLA, whose CredSSP the browser would run with its
//! placeholders), and the Client Info PDU (TS_INFO_PACKET, MS-RDPBCGR
//! 2.2.1.11.1.1) is rebuilt with the stored domain, user name and password,
//! `INFO_AUTOLOGON` set, and the MCS PER length and the TPKT length
//! recomputed. A server that requires NLA refuses the TLS-only request
//! (`HYBRID_REQUIRED_BY_SERVER`), which ends the connection with
//! [`RdpError::NlaRequired`].
//!
//! Every length is checked against the bytes there are; nothing here panics.

use super::{
    INFO_AUTOLOGON, MAX_CONFIRM, MAX_PDU, PROTOCOL_SSL, RdpError, SEC_ENCRYPT, SEC_INFO_PKT,
};
use zeroize::Zeroize;

/// The most UTF-16 code units each of the domain, user name and password may
/// have: a TS_INFO_PACKET field holds at most 512 bytes with its terminator.
pub const MAX_UNITS: usize = 255;
/// Largest Client Info PDU the gateway rebuilds (a real one is under 1 KiB).
pub const MAX_CLIENT_INFO: usize = 4096;

/// TS_INFO_PACKET flags (MS-RDPBCGR 2.2.1.11.1.1).
const INFO_UNICODE: u32 = 0x0000_0010;
const INFO_PASSWORD_IS_SC_PIN: u32 = 0x0004_0000;
/// RDP_NEG_REQ flags asking for CredSSP-only modes (restricted admin,
/// Remote Credential Guard), cleared with NLA.
const NEG_REQ_CREDSSP_MODES: u8 = 0x01 | 0x02;
/// CodePage, flags, then five u16 lengths.
const INFO_HEAD: usize = 4 + 4 + 5 * 2;

/// A domain, user name and password the gateway logs on with. `Debug` shows
/// none of them; the strings are wiped when dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RdpCredentials {
    pub domain: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RdpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RdpCredentials(<redacted>)")
    }
}

impl Drop for RdpCredentials {
    fn drop(&mut self) {
        self.domain.zeroize();
        self.username.zeroize();
        self.password.zeroize();
    }
}

impl RdpCredentials {
    /// Whether each string fits a TS_INFO_PACKET field and has no NUL (which
    /// would end it early on the server).
    pub fn fits(&self) -> bool {
        [&self.domain, &self.username, &self.password]
            .iter()
            .all(|s| s.encode_utf16().count() <= MAX_UNITS && !s.contains('\0'))
    }
}

/// Changes the requested protocols of an X.224 Connection Request (already
/// checked by `parse_connection_request`) to TLS only. The client must have
/// offered TLS, so that the server's choice is one it accepts.
pub(super) fn request_tls_only(cr: &mut [u8]) -> Result<(), RdpError> {
    let len = cr.len();
    if !(19..=MAX_CONFIRM).contains(&len) {
        return Err(RdpError::NoTlsOffered);
    }
    let neg = &mut cr[len - 8..];
    if neg[0] != 1 || neg[2] != 8 || neg[3] != 0 {
        return Err(RdpError::NoTlsOffered);
    }
    let offered = u32::from_le_bytes([neg[4], neg[5], neg[6], neg[7]]);
    if offered & PROTOCOL_SSL == 0 {
        return Err(RdpError::NoTlsOffered);
    }
    neg[1] &= !NEG_REQ_CREDSSP_MODES;
    neg[4..8].copy_from_slice(&PROTOCOL_SSL.to_le_bytes());
    Ok(())
}

/// Whether the MCS user data at `offset` starts with a basic security header
/// flagged SEC_INFO_PKT (a Client Info PDU).
pub(super) fn is_client_info(pdu: &[u8], offset: usize) -> bool {
    u16_at(pdu, offset).is_some_and(|sec| sec & SEC_INFO_PKT != 0)
}

/// `s` in UTF-16LE.
fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The Client Info PDU `pdu` (a whole TPKT holding an MCS Send Data Request
/// whose user data starts at `offset` with the security header) rebuilt with
/// `c`: its domain, user name and password replaced (UTF-16LE, each with its
/// terminator and `cb*` length), `INFO_AUTOLOGON` set, everything else
/// (alternate shell, working directory, extended info) as the client sent it.
pub(super) fn rewrite_client_info(
    pdu: &[u8],
    offset: usize,
    c: &RdpCredentials,
) -> Result<Vec<u8>, RdpError> {
    let bad = || RdpError::BadClientPdu;
    if pdu.len() > MAX_CLIENT_INFO {
        return Err(RdpError::ClientPduTooLong {
            len: pdu.len(),
            limit: MAX_CLIENT_INFO,
        });
    }
    // The PER length (at 13, one byte or two) must be what follows it.
    let l0 = *pdu.get(13).ok_or_else(bad)?;
    let per = match l0 {
        0..=0x7F => usize::from(l0),
        0x80..=0xBF => usize::from(l0 & 0x3F) << 8 | usize::from(*pdu.get(14).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if offset != if l0 < 0x80 { 14 } else { 15 } || pdu.len() != offset + per {
        return Err(bad());
    }
    let data = &pdu[offset..];
    let sec = u16_at(data, 0).ok_or_else(bad)?;
    if sec & SEC_ENCRYPT != 0 {
        // Standard RDP security encrypts the packet: not with TLS.
        return Err(bad());
    }
    let info = data.get(4..).ok_or_else(bad)?;
    let head = info.get(..INFO_HEAD).ok_or_else(bad)?;
    let flags = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if flags & INFO_UNICODE == 0 {
        return Err(RdpError::Unsupported("a Client Info PDU without Unicode"));
    }
    // Five strings, each `cb` bytes and a two-byte terminator.
    let mut at = INFO_HEAD;
    let mut fields = [0..0, 0..0, 0..0, 0..0, 0..0];
    for (i, f) in fields.iter_mut().enumerate() {
        let cb = usize::from(u16_at(head, 8 + 2 * i).ok_or_else(bad)?);
        if cb > 2 * MAX_UNITS + 2 {
            return Err(bad());
        }
        let end = at + cb + 2;
        if end > info.len() {
            return Err(bad());
        }
        *f = at..end;
        at = end;
    }
    let extra = &info[at..];
    if !c.fits() {
        return Err(RdpError::BadCredentials);
    }
    let mut strings = [
        utf16le(&c.domain),
        utf16le(&c.username),
        utf16le(&c.password),
    ];
    let mut user_data = Vec::with_capacity(pdu.len() + 3 * 2 * MAX_UNITS);
    user_data.extend_from_slice(&data[..4]);
    user_data.extend_from_slice(&head[..4]);
    let flags = (flags | INFO_AUTOLOGON) & !INFO_PASSWORD_IS_SC_PIN;
    user_data.extend_from_slice(&flags.to_le_bytes());
    for s in &strings {
        user_data.extend_from_slice(&(s.len() as u16).to_le_bytes());
    }
    user_data.extend_from_slice(&head[14..INFO_HEAD]);
    for s in &strings {
        user_data.extend_from_slice(s);
        user_data.extend_from_slice(&[0, 0]);
    }
    strings.iter_mut().for_each(Zeroize::zeroize);
    user_data.extend_from_slice(&info[fields[3].start..fields[4].end]);
    user_data.extend_from_slice(extra);
    let mut out = Vec::with_capacity(user_data.len() + 16);
    out.extend_from_slice(&pdu[..4]);
    out.extend_from_slice(&pdu[4..13]);
    let n = user_data.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x4000 {
        out.extend_from_slice(&(0x8000 | n as u16).to_be_bytes());
    } else {
        return Err(bad());
    }
    out.extend_from_slice(&user_data);
    user_data.zeroize();
    let total = out.len();
    if total > MAX_PDU {
        out.zeroize();
        return Err(bad());
    }
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests;
