-- The revocation feed for standalone relays reads ended sessions in (ended_at, id) order.
CREATE INDEX sessions_ended ON sessions (ended_at, id);
