-- SIEM streaming: syslog receivers (the server's, account_id '', and each
-- account's own), held by one replica at a time (a lease), and how far each
-- got in each account's audit chain.
CREATE TABLE syslog_targets (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_sent_at BIGINT,
    last_error TEXT
);
CREATE INDEX syslog_targets_account ON syslog_targets (account_id);

CREATE TABLE syslog_cursors (
    target_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (target_id, account_id)
);
