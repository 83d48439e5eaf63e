-- Portable DDL: this file runs unchanged on SQLite and PostgreSQL.
-- Ids are application-generated UUID strings; times are unix seconds (BIGINT).

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE setup_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    settings TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    username TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    password_changed_at BIGINT NOT NULL,
    totp_secret TEXT,
    totp_pending_secret TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, username)
);

CREATE TABLE password_history (
    user_id TEXT NOT NULL REFERENCES users(id),
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX password_history_user ON password_history (user_id, created_at);

-- Login sessions and API tokens. kind: login | api. stage: complete | totp_required |
-- totp_enrollment_required | password_change_required.
CREATE TABLE auth_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    name TEXT,
    read_only BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX auth_tokens_user ON auth_tokens (user_id);

CREATE TABLE groups_ (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups_(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id),
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    serial TEXT,
    lan_subnets TEXT NOT NULL,
    nat TEXT NOT NULL,
    firewall TEXT NOT NULL,
    public_key TEXT UNIQUE,
    certificate TEXT,
    enrolled BIGINT NOT NULL DEFAULT 0,
    pending_approval BIGINT NOT NULL DEFAULT 0,
    online BIGINT NOT NULL DEFAULT 0,
    switch_on BIGINT NOT NULL DEFAULT 0,
    agent_version TEXT,
    last_seen BIGINT,
    public_endpoint TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE activation_keys (
    key_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE fleet_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE pool_devices (
    pool_id TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (pool_id, device_id)
);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    group_id TEXT NOT NULL REFERENCES groups_(id) ON DELETE CASCADE,
    pool_id TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    level TEXT NOT NULL,
    targets TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (group_id, pool_id)
);

CREATE TABLE logbook (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    author_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX logbook_device ON logbook (device_id, created_at);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    adhoc BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    started_at BIGINT,
    started_by TEXT,
    ended_at BIGINT,
    ended_by TEXT,
    end_reason TEXT
);
CREATE INDEX sessions_account_state ON sessions (account_id, state);

CREATE TABLE session_devices (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices(id),
    targets TEXT NOT NULL,
    PRIMARY KEY (session_id, device_id)
);

CREATE TABLE session_users (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id),
    PRIMARY KEY (session_id, user_id)
);

-- One row per client join of an active session (filled by the tunnel work).
CREATE TABLE tunnels (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    session_id TEXT NOT NULL REFERENCES sessions(id),
    device_id TEXT NOT NULL REFERENCES devices(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    client_public_key TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    path TEXT,
    bytes_to_device BIGINT NOT NULL DEFAULT 0,
    bytes_from_device BIGINT NOT NULL DEFAULT 0,
    end_reason TEXT
);
CREATE INDEX tunnels_session ON tunnels (session_id);

-- Append-only, hash-chained per account. The head row serialises appends per
-- account (its UPDATE takes the row lock on PostgreSQL).
CREATE TABLE audit_heads (
    account_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE audit_log (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    result TEXT NOT NULL,
    source TEXT NOT NULL,
    device_id TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
CREATE INDEX audit_log_ts ON audit_log (account_id, ts);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_account ON notifications (account_id, created_at);
