-- Browser desktops (VNC through the session's tunnel). Each one opened is a
-- recording: what the browser was sent, framed with times, stored in sealed
-- chunks; its SHA-256 goes on the audit chain when it ends.
CREATE TABLE desktop_recordings (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    target TEXT NOT NULL,
    user_id TEXT NOT NULL,
    view_only BIGINT NOT NULL,
    -- live | ended
    state TEXT NOT NULL,
    -- required | best_effort | off, as the account said when it opened;
    -- recorded is 0 once nothing more is stored (off, storage failed, size limit).
    mode TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT,
    bytes BIGINT NOT NULL DEFAULT 0,
    chunks BIGINT NOT NULL DEFAULT 0,
    sha256 TEXT
);
CREATE INDEX desktop_recordings_account ON desktop_recordings (account_id, started_at);
CREATE INDEX desktop_recordings_session ON desktop_recordings (session_id);

CREATE TABLE recording_chunks (
    recording_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (recording_id, seq)
);

-- VNC passwords stored for a device's desktop (sealed), answered by the server
-- so that the engineer never sees them.
CREATE TABLE desktop_passwords (
    device_id TEXT NOT NULL,
    target TEXT NOT NULL,
    sealed TEXT NOT NULL,
    set_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, target)
);

-- Origins that watch or replay a recording (the desktop's own origin has '').
ALTER TABLE web_origins ADD COLUMN recording_id TEXT NOT NULL DEFAULT '';
DROP INDEX web_origins_one;
CREATE UNIQUE INDEX web_origins_one ON web_origins (session_id, device_id, target, user_id, recording_id);
