-- The latest path candidates per tunnel and direction, so that a channel that
-- connects later (or to another replica) still gets them.
CREATE TABLE tunnel_signals (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    client_key TEXT NOT NULL,
    device_id TEXT NOT NULL,
    from_edge BIGINT NOT NULL,
    data TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, client_key, device_id, from_edge)
);
