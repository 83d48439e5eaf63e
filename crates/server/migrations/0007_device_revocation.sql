-- Devices can be taken out of service: a disabled device's edge channel and
-- relay admissions are refused until it is enabled again; an archived device
-- is out of service for good, hidden from the device list and never put in a
-- session, its record, history and logbook kept.
ALTER TABLE devices ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN archived BIGINT NOT NULL DEFAULT 0;
