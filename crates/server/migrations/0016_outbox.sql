-- Notifications by e-mail and webhook (issue 15): a durable outbox that commits with
-- the change it reports, and the accounts' recipients and webhooks.

-- A user's e-mail address (the default recipients: admins, approvers).
ALTER TABLE users ADD COLUMN email TEXT;

-- Per account: extra recipients per event kind (JSON object kind -> [address]) and
-- after how many minutes offline a device is reported (0: never).
CREATE TABLE notification_settings (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    recipients TEXT NOT NULL,
    device_offline_minutes BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- An account's webhook endpoints. secret: sealed (`webhooks.secret:<id>`).
-- failing_since: the first failure of the current run of failures (NULL after a
-- success); an endpoint failing for too long is disabled (disabled_at, reason).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    failing_since BIGINT,
    last_success_at BIGINT,
    last_error TEXT,
    disabled_at BIGINT,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_account ON webhooks (account_id);

-- One event to tell (what happened); its id is the webhooks' `webhook-id`.
-- attachment: base64 of the bytes (a CSV report), of type attachment_type.
CREATE TABLE outbox_events (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    attachment_name TEXT,
    attachment_type TEXT,
    attachment TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX outbox_events_created ON outbox_events (created_at);

-- One delivery of an event: an e-mail to one address, or one webhook call.
-- state: pending | sent | failed | dropped. A worker claims a pending delivery
-- by setting lease_until; one whose lease ran out (its replica died) is claimed again.
CREATE TABLE outbox_deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES outbox_events(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    lease_until BIGINT,
    lease_owner TEXT,
    last_error TEXT,
    sent_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (state, next_at);
CREATE INDEX outbox_deliveries_event ON outbox_deliveries (event_id);
CREATE INDEX outbox_deliveries_target ON outbox_deliveries (channel, target, state);

-- Events that happen once (a device's offline period, an account's monthly
-- report): inserted with the event, so replicas racing each other queue it once.
CREATE TABLE outbox_once (
    account_id TEXT NOT NULL,
    once_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, once_key)
);
