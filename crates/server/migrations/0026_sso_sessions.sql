-- Single sign-on logins kept in step with the provider: the provider's refresh
-- token of a login (sealed, context sso_sessions.refresh_token:<token id>), used
-- every 15 minutes to read the user's groups again (or end the login when the
-- provider refuses it).
CREATE TABLE sso_sessions (
    token_id TEXT PRIMARY KEY REFERENCES auth_tokens(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    identity_id TEXT NOT NULL REFERENCES sso_identities(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    next_refresh_at BIGINT NOT NULL
);
CREATE INDEX sso_sessions_due ON sso_sessions (next_refresh_at);
