-- The time of the last repeat an `audit_coalesced` count stands for (the
-- first is the entry's own time); NULL while the entry stands for itself only.
ALTER TABLE audit_coalesced ADD COLUMN last_ts BIGINT;

-- A WireGuard public key is unique among live peers, enforced by the database
-- as well as by the checks in `join` and the edge's key announcement, so two
-- requests at the same moment cannot both take one key.
--
-- Clients: a join writes one open tunnel row per device of the session, all
-- with the client's key; so (key, device) is unique among open rows. Ended rows
-- may repeat keys. Open rows that repeat a key (left by such a race before this
-- index existed) are ended first, the earliest row kept, so that the index can
-- always be made.
UPDATE tunnels SET ended_at = started_at, end_reason = 'duplicate_key'
WHERE ended_at IS NULL AND EXISTS (
    SELECT 1 FROM tunnels o
    WHERE o.client_public_key = tunnels.client_public_key
      AND o.device_id = tunnels.device_id
      AND o.ended_at IS NULL
      AND o.id < tunnels.id
);
CREATE UNIQUE INDEX tunnels_live_client_key ON tunnels (client_public_key, device_id) WHERE ended_at IS NULL;

-- Edges: one session key per (session, device). A repeated key (kept from
-- before this index) stays on its earliest row and is cleared on the others.
UPDATE session_devices SET edge_public_key = NULL
WHERE edge_public_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM session_devices o
    WHERE o.edge_public_key = session_devices.edge_public_key
      AND (o.session_id < session_devices.session_id
           OR (o.session_id = session_devices.session_id AND o.device_id < session_devices.device_id))
);
CREATE UNIQUE INDEX session_devices_edge_key ON session_devices (edge_public_key) WHERE edge_public_key IS NOT NULL;
