//! The live channels: the edge channel (one WebSocket per edge, authenticated
//! by the device's identity key) and the client channel (one WebSocket per
//! joined session, authenticated by the user's token). Messages are JSON text
//! frames, tagged by `type`, versioned by the route (`/api/v1/...`).
//!
//! The server always sends an edge its complete desired state (`sessions`);
//! the edge reconciles. Candidates travel as opaque `signal` blobs produced and
//! consumed by the tunnel engine.

use crate::data::{BufferStatus, LiveValue, Record, TagSpec};
use crate::model::{NatMapping, SessionState, Target};
use crate::wgkey::WgKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest text frame either side accepts on a channel.
pub const MAX_CHANNEL_FRAME: usize = 256 * 1024;
/// Largest signal blob (base64).
pub const MAX_SIGNAL_LEN: usize = 4096;

/// The edge signs `EDGE_AUTH_CONTEXT || nonce || device_id` with its identity key.
pub const EDGE_AUTH_CONTEXT: &[u8] = b"drawbridge-edge-auth-v1\0";

/// What an edge reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeStatus {
    /// The on-site remote-access switch.
    pub switch_on: bool,
    pub agent_version: String,
    /// Public UDP endpoints learnt by STUN (`ip:port`), at most 8.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Round-trip times to the relays the server named ([`RelayProbe`]), at most
    /// [`MAX_RELAY_PROBES`]: the server gives a session the relay nearest its edge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_rtt: Vec<RelayRtt>,
}

/// Most relays an edge is asked to measure.
pub const MAX_RELAY_PROBES: usize = 16;

/// A relay an edge measures its round-trip time to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayProbe {
    pub name: String,
    /// The relay's `wss://host:port/relay/v1`.
    pub url: String,
}

/// One measured round-trip time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayRtt {
    pub relay: String,
    /// Milliseconds (the best of a few TCP connects).
    pub rtt_ms: u32,
}

/// Per-tunnel figures an edge or client reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TunnelReport {
    pub session_id: String,
    /// The other end's WireGuard public key (base64).
    pub peer: WgKey,
    /// `direct` or `relay`.
    pub path: String,
    /// Why that path, in words (`direct ok`, `symmetric NAT on both sides`, …).
    #[serde(default)]
    pub reason: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EdgeToServer {
    /// Answer to `challenge`.
    Auth {
        device_id: String,
        signature: String,
    },
    Status(EdgeStatus),
    /// The edge's WireGuard public key (base64) for one session; it makes a fresh key per session.
    SessionKey {
        session_id: String,
        public_key: WgKey,
    },
    /// Path candidates for the client with key `peer`.
    Signal {
        session_id: String,
        peer: WgKey,
        data: String,
    },
    /// On-site approval or refusal of a session waiting for it (dual control).
    Decision {
        session_id: String,
        approve: bool,
    },
    Tunnel(TunnelReport),
    /// Historian records in order of `seq` (at most
    /// [`crate::data::MAX_RECORDS_PER_MESSAGE`]), starting after the last
    /// acknowledged one; answered by `records_ack`.
    Records {
        buffer: BufferStatus,
        records: Vec<Record>,
    },
    /// Latest KPI values (at most [`crate::data::MAX_KPIS_PER_DEVICE`]), sent
    /// while the server says someone watches.
    Live {
        values: Vec<LiveValue>,
    },
    /// Where the edge is with the update it was offered.
    Update(crate::update::UpdateReport),
}

/// One client allowed into a session on this edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgePeer {
    /// The client's WireGuard public key (base64).
    pub public_key: WgKey,
    /// The client's overlay address (inner source of its packets).
    pub overlay_ip: String,
    pub user: String,
    /// A standard WireGuard client (an exported wg-quick config) that reaches the
    /// edge through the relay's UDP bridge; it speaks plain WireGuard only.
    #[serde(default)]
    pub bridged: bool,
}

/// A desktop open in a browser through the session (the server's own peer
/// bridges it), so that the site sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgeDesktop {
    /// Who has it.
    pub user: String,
    /// The VNC server, `ip:port` on the machine's LAN.
    pub target: String,
    /// Input is dropped (a monitor grant).
    pub view_only: bool,
    /// Unix seconds.
    pub since: i64,
    /// It is being recorded.
    pub recorded: bool,
}

/// A session as the edge must run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgeSession {
    pub session_id: String,
    pub name: String,
    pub state: SessionState,
    /// Unix seconds; the edge ends the session's tunnels then, even when the control plane is unreachable.
    pub valid_until: i64,
    /// The released targets (real LAN addresses).
    pub targets: Vec<Target>,
    pub nat: Vec<NatMapping>,
    pub peers: Vec<EdgePeer>,
    /// `wss://…/relay/v1`.
    pub relay_url: String,
    /// Relay token for the edge's session key, once the edge has announced it.
    #[serde(default)]
    pub relay_token: Option<String>,
    /// STUN servers (`host:port`).
    #[serde(default)]
    pub stun: Vec<String>,
    /// Who started the session (user name), for the site deciding on it.
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Desktops open through the session on this device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub desktops: Vec<EdgeDesktop>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerToEdge {
    Challenge {
        nonce: String,
    },
    Welcome {
        device_id: String,
        account_id: String,
    },
    /// The complete set of sessions this edge must run or hold for approval, and
    /// the relays to measure.
    Sessions {
        sessions: Vec<EdgeSession>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        relays: Vec<RelayProbe>,
    },
    Signal {
        session_id: String,
        peer: WgKey,
        data: String,
    },
    Error {
        code: String,
        message: String,
    },
    /// The device's complete tag list (sent after `welcome` and on every change);
    /// the edge polls exactly these.
    Tags {
        tags: Vec<TagSpec>,
    },
    /// Every record of `stream` up to `seq` is stored: the edge may forget them.
    RecordsAck {
        stream: String,
        seq: u64,
    },
    /// Someone watches this device's KPIs: send `live` values for the next
    /// `for_ms` milliseconds (0: stop now). Renewed while they watch.
    Watch {
        for_ms: u32,
    },
    /// The release this edge is to install now (sent after `welcome` and on
    /// every change); `None` withdraws an offer (the rollout was paused or
    /// cancelled): an edge that has not yet swapped its binary stops.
    Update {
        offer: Option<crate::update::UpdateOffer>,
    },
}

/// What a client needs to bring a tunnel up to one device of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinDevice {
    pub device_id: String,
    pub name: String,
    /// The edge's WireGuard key for this session (base64), once the edge announced it.
    #[serde(default)]
    pub edge_public_key: Option<WgKey>,
    /// The addresses the client routes into the tunnel (virtual addresses where 1:1 NAT applies).
    pub targets: Vec<Target>,
    pub online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The client's fresh WireGuard public key for this session (base64).
    pub public_key: WgKey,
    /// The key belongs to a standard WireGuard client (`session export-wireguard`)
    /// that reaches the edges through the relay's UDP bridge.
    #[serde(default)]
    pub standard_client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub tunnel_id: String,
    pub session_id: String,
    pub state: SessionState,
    /// The client's overlay address.
    pub overlay_ip: String,
    pub relay_url: String,
    /// Relay token for the client's key, naming the session's edge keys.
    #[serde(default)]
    pub relay_token: Option<String>,
    pub stun: Vec<String>,
    pub devices: Vec<JoinDevice>,
    pub valid_until: i64,
    /// The relay's UDP bridge for standard WireGuard clients (`host:port`), if it runs.
    #[serde(default)]
    pub bridge_endpoint: Option<String>,
    /// The relays a client measures (at most [`MAX_RELAY_PROBES`]) and reports
    /// with [`ClientToServer::RelayRtt`]: this user's next sessions get the
    /// relay nearest their edges and their clients. Empty from servers that do
    /// not take such reports.
    #[serde(default)]
    pub relays: Vec<RelayProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientToServer {
    Signal {
        device_id: String,
        data: String,
    },
    Tunnel(TunnelReport),
    /// Round-trip times to the relays the server named in `JoinResponse.relays`
    /// (sent only when it named some; at most [`MAX_RELAY_PROBES`]).
    RelayRtt {
        relay_rtt: Vec<RelayRtt>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerToClient {
    /// The current join data (sent at connect and whenever it changes, e.g. an edge key arrives).
    Update(JoinResponse),
    Signal {
        device_id: String,
        data: String,
    },
    /// The session ended; tear the tunnel down.
    Ended {
        reason: String,
    },
}
