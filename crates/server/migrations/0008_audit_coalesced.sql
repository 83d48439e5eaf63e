-- How many events an audit entry written by `audit::append_coalesced` stands
-- for (itself and the repeats within its window that were not written). Kept
-- beside the hash chain: entries are immutable, the count grows after them.
CREATE TABLE audit_coalesced (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
