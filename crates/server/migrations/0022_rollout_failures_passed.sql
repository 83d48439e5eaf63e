-- A device's failure that the admins resumed a rollout past: it stays on
-- record but no longer counts toward pausing the rollout.
ALTER TABLE rollout_devices ADD COLUMN forgiven BIGINT NOT NULL DEFAULT 0;
