-- Data services (DESIGN §7): PLC tags polled by the edges, the historian's points,
-- live KPI values, alarms.

-- A device's tags as an admin wrote them (`spec` is the TagSpec JSON).
CREATE TABLE tags (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    account_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    kpi BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, name)
);

-- Each edge historian stream: the last sequence number stored (records at or
-- below it are acknowledged again and never stored twice) and the buffer's state.
CREATE TABLE data_streams (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    pending BIGINT NOT NULL DEFAULT 0,
    dropped BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, stream)
);

-- The next transaction id to hand out. Ingestion takes its ids from this one row
-- inside its transaction, so ids become visible in order: a reader that has seen
-- id N never sees an id below N appear later (the mailbox cursor relies on it).
CREATE TABLE data_counter (
    id BIGINT PRIMARY KEY,
    next_txid BIGINT NOT NULL
);
INSERT INTO data_counter (id, next_txid) VALUES (1, 1);

-- Historian points; `txid` is the mailbox cursor.
CREATE TABLE data_points (
    txid BIGINT PRIMARY KEY,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    value DOUBLE PRECISION,
    quality TEXT NOT NULL
);
CREATE INDEX data_points_account ON data_points (account_id, txid);
CREATE INDEX data_points_series ON data_points (device_id, tag, time_ms);
CREATE INDEX data_points_age ON data_points (account_id, time_ms);

-- The latest value of each KPI tag, written by the replica holding the edge while
-- someone watches, read by the viewers' replicas.
CREATE TABLE tag_live (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    value DOUBLE PRECISION,
    quality TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);

-- Who watches a device's KPIs now (renewed every few seconds by each open view).
CREATE TABLE kpi_watchers (
    watcher TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (watcher, device_id)
);
CREATE INDEX kpi_watchers_device ON kpi_watchers (device_id, expires_at);

-- Alarms as Ewon's model has them: alarm → acknowledged and/or returned → ended.
CREATE TABLE alarms (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_ms BIGINT NOT NULL,
    raised_value DOUBLE PRECISION,
    returned_ms BIGINT,
    returned_value DOUBLE PRECISION,
    acked_at BIGINT,
    acked_by TEXT,
    ack_comment TEXT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX alarms_device ON alarms (device_id, state);
CREATE INDEX alarms_account ON alarms (account_id, state);

CREATE TABLE alarm_history (
    id TEXT PRIMARY KEY,
    alarm_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    value DOUBLE PRECISION,
    user_id TEXT,
    comment TEXT
);
CREATE INDEX alarm_history_device ON alarm_history (device_id, time_ms);
