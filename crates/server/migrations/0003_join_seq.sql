-- Overlay addresses per session come from a counter bumped under the session's
-- row lock, so concurrent joins never share an address.
ALTER TABLE sessions ADD COLUMN join_seq BIGINT NOT NULL DEFAULT 0;
