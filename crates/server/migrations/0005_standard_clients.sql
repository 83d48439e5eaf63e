-- A tunnel whose client is a standard WireGuard client (an exported wg-quick
-- config) reaching the edges through the relay's UDP bridge.
ALTER TABLE tunnels ADD COLUMN standard_client BIGINT NOT NULL DEFAULT 0;
