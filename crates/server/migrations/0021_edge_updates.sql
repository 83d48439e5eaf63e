-- Signed edge updates. Releases belong to the server (its operator adds them
-- with `drawbridge-server release add`); each account's admins roll them out
-- to their own devices. Signatures are verified by the server when a release
-- is added and again, against the root each edge pinned, by the edge.

-- The release roots, oldest first: the first is set by the operator, each
-- later one by a rotation signed by the one before it.
CREATE TABLE release_roots (
    seq BIGINT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    -- The signed rotation that introduced it (NULL for the first).
    rotation TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    -- The signed metadata as `drawbridge-release sign` wrote it.
    signed TEXT NOT NULL,
    downgrade BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (version, target)
);

-- The binary, base64 in chunks of 1 MiB (the stores share no binary type).
CREATE TABLE release_chunks (
    release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (release_id, seq)
);

CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    release_id TEXT NOT NULL REFERENCES releases(id),
    -- running | paused | done | cancelled
    state TEXT NOT NULL,
    -- canary | all
    stage TEXT NOT NULL,
    -- When the canaries last changed (the soak counts from the last success).
    stage_changed_at BIGINT NOT NULL,
    soak_secs BIGINT NOT NULL,
    failure_threshold BIGINT NOT NULL,
    -- Minutes of the UTC day; both NULL: any time.
    window_start BIGINT,
    window_end BIGINT,
    downgrade BIGINT NOT NULL,
    paused_reason TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX rollouts_account ON rollouts (account_id, created_at);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices(id),
    canary BIGINT NOT NULL,
    -- pending (not offered yet) | offered | waiting | downloading | installing
    -- | succeeded | failed | rolled_back | refused | cancelled
    state TEXT NOT NULL,
    from_version TEXT,
    message TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id, state);
