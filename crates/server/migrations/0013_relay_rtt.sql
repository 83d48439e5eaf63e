-- Round-trip times an edge measured to the relays (JSON object: relay name → ms);
-- a session gets the relay nearest its edges.
ALTER TABLE devices ADD COLUMN relay_rtt TEXT;
