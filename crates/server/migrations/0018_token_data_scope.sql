-- An API token may be limited to reading data (the historian, KPIs, alarms,
-- tag lists and the device list); such a token is also read-only.
ALTER TABLE auth_tokens ADD COLUMN data_only BIGINT NOT NULL DEFAULT 0;
