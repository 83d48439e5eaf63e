-- The relay tier: every relay instance the control plane hears from (standalone
-- relays through their feed heartbeat, each replica's embedded relay through its
-- own), and the relay each session uses. A relay whose heartbeat is older than a
-- few seconds is taken as down and its sessions move to a live one.
CREATE TABLE relays (
    name TEXT PRIMARY KEY,
    -- This one instance's WebSocket URL (wss://host:port/relay/v1).
    url TEXT NOT NULL,
    region TEXT NOT NULL,
    -- JSON list of host:port.
    stun TEXT NOT NULL,
    bridge TEXT,
    -- The relay says it is stopping.
    draining INTEGER NOT NULL DEFAULT 0,
    -- An operator drained it (drawbridge-server relays drain NAME).
    drain_requested INTEGER NOT NULL DEFAULT 0,
    -- Takes sessions only when no other relay is alive.
    standby INTEGER NOT NULL DEFAULT 0,
    connections BIGINT NOT NULL DEFAULT 0,
    heartbeat_at BIGINT NOT NULL
);

ALTER TABLE sessions ADD COLUMN relay TEXT;
CREATE INDEX sessions_relay ON sessions (relay);
