-- Browser access to device web UIs: one origin per (session, device, target, user),
-- entered through a one-time handoff token that becomes a cookie of that origin.
CREATE TABLE web_origins (
    label TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- The device's real LAN address, `ip:port` (dialled at its virtual one under 1:1 NAT).
    target TEXT NOT NULL,
    scheme TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX web_origins_session ON web_origins (session_id);
CREATE UNIQUE INDEX web_origins_one ON web_origins (session_id, device_id, target, user_id);

-- One-time entry links (hash of the token), each taken once before it expires; several
-- may wait for one origin (a user opening it twice at once gets two working links).
CREATE TABLE web_handoffs (
    handoff_hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    token_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_handoffs_expiry ON web_handoffs (expires_at);

-- A browser's cookie for one origin: the stored hash, and the login it was opened with
-- (revoking that login, or the user, closes the origin too).
CREATE TABLE web_cookies (
    cookie_hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    token_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX web_cookies_label ON web_cookies (label);

-- Requests proxied to a session's devices (browser access and the API's device HTTP
-- route) and their bytes both ways, added up by the replicas that served them.
ALTER TABLE sessions ADD COLUMN web_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN web_bytes BIGINT NOT NULL DEFAULT 0;

-- Web UIs marked on a device's released targets (JSON list of {target, scheme, path}),
-- and where an opened origin starts.
ALTER TABLE devices ADD COLUMN web_services TEXT NOT NULL DEFAULT '[]';
ALTER TABLE web_origins ADD COLUMN path TEXT NOT NULL DEFAULT '/';

-- HTTPS device web services: the certificate seen first is trusted for the target
-- (SHA-256 of the leaf); another one is refused and kept as pending until an admin
-- accepts it.
CREATE TABLE web_pins (
    device_id TEXT NOT NULL,
    target TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    pinned_at BIGINT NOT NULL,
    pending_sha256 TEXT,
    pending_at BIGINT,
    PRIMARY KEY (device_id, target)
);
