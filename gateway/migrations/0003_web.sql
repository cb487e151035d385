-- The web view: browser sessions (the id only as its SHA-256; bound to the
-- token's hash, so a replaced or removed token ends its sessions) and the
-- pool samples the pool charts draw (kept for SAMPLE_RETENTION).
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);

CREATE TABLE pool_samples (
    pool TEXT NOT NULL,
    at BIGINT NOT NULL,
    ready BIGINT NOT NULL,
    running BIGINT NOT NULL,
    consumers BIGINT NOT NULL,
    PRIMARY KEY (pool, at)
);
CREATE INDEX pool_samples_at ON pool_samples (at);
