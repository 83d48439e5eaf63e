-- Live sessions: the edge's per-session WireGuard key, tunnel details, activity.
ALTER TABLE session_devices ADD COLUMN edge_public_key TEXT;
ALTER TABLE sessions ADD COLUMN last_activity BIGINT;
ALTER TABLE tunnels ADD COLUMN overlay_ip TEXT;
ALTER TABLE tunnels ADD COLUMN path_reason TEXT;
CREATE INDEX tunnels_open ON tunnels (device_id, ended_at);
