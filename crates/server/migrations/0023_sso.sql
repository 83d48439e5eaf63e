-- Single sign-on (OpenID Connect, issue 18): each account's provider, the rules
-- mapping its groups to Drawbridge groups and roles, which provider subject is
-- which user, the memberships SSO granted (only those are taken away again), and
-- the login transactions in flight (single use, with an expiry).
CREATE TABLE sso_providers (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- sealed (context sso_providers.client_secret:<account id>)
    client_secret TEXT NOT NULL,
    cli_client_id TEXT,
    label TEXT NOT NULL,
    -- JSON arrays of strings
    scopes TEXT NOT NULL,
    groups_claim TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('off', 'optional', 'required')),
    jit BIGINT NOT NULL DEFAULT 0,
    jit_role TEXT NOT NULL,
    amr_mfa BIGINT NOT NULL DEFAULT 0,
    mfa_amr_values TEXT NOT NULL,
    break_glass_user_id TEXT REFERENCES users(id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE sso_rules (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    claim_value TEXT NOT NULL,
    group_id TEXT REFERENCES groups_(id) ON DELETE CASCADE,
    role TEXT,
    priority BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX sso_rules_account ON sso_rules (account_id);

CREATE TABLE sso_identities (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id),
    email TEXT,
    -- the role a rule set at the last login, and the role the user had before
    -- (restored when no rule grants one any more)
    granted_role TEXT,
    base_role TEXT,
    created_at BIGINT NOT NULL,
    last_login_at BIGINT,
    UNIQUE (account_id, issuer, subject)
);
CREATE INDEX sso_identities_user ON sso_identities (user_id);

CREATE TABLE sso_group_grants (
    user_id TEXT NOT NULL REFERENCES users(id),
    group_id TEXT NOT NULL REFERENCES groups_(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, group_id)
);

CREATE TABLE sso_flows (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    -- 'web' (code flow with PKCE) or 'device' (device grant)
    kind TEXT NOT NULL,
    -- SHA-256 of the state (web) or of the CLI's poll token (device)
    state_hash TEXT NOT NULL UNIQUE,
    -- SHA-256 of the browser's binding cookie (web)
    binding_hash TEXT,
    -- sealed (context sso_flows:<id>): the nonce, the PKCE verifier, the device code
    secrets TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    interval_secs BIGINT NOT NULL DEFAULT 5,
    next_poll_at BIGINT NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    consumed_at BIGINT
);
CREATE INDEX sso_flows_expires ON sso_flows (expires_at);
