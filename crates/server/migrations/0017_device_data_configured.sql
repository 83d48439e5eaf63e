-- A device that ever had a tag: its edge may hold historian records of tags
-- deleted since, so it is sent a tag list (even an empty one) at every connect
-- and pushes what it holds.
ALTER TABLE devices ADD COLUMN data_configured BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET data_configured = 1 WHERE id IN (SELECT device_id FROM tags)
    OR id IN (SELECT device_id FROM data_streams);
