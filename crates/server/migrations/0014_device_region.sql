-- Where a machine is (a relay region); a new session prefers relays of that
-- region while its edge has measured none.
ALTER TABLE devices ADD COLUMN region TEXT;
