-- Dual control per device: each device of a session is approved (or refused,
-- or times out) on its own. `approval` is 'approved', 'pending', 'refused' or
-- 'timed_out'; sessions started before this existed count as approved.
ALTER TABLE session_devices ADD COLUMN approval TEXT NOT NULL DEFAULT 'approved';
ALTER TABLE session_devices ADD COLUMN decided_by TEXT;
ALTER TABLE session_devices ADD COLUMN decided_at BIGINT;
-- "This machine always needs on-site approval": only the edge's local
-- approval counts for the device, whatever the account's dual-control setting.
ALTER TABLE devices ADD COLUMN onsite_approval BIGINT NOT NULL DEFAULT 0;
