-- Krill gateway history, portable between SQLite and PostgreSQL: times are
-- Unix milliseconds (BIGINT), JSON is TEXT, no engine-specific types.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT,
    caller TEXT,
    submitter TEXT,
    worker TEXT,
    sandbox TEXT,
    attempt BIGINT,
    exit_code BIGINT,
    error TEXT,
    blocked TEXT,
    spec TEXT,
    result TEXT,
    submitted_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL,
    size BIGINT NOT NULL
);
CREATE INDEX tasks_pool_updated ON tasks (pool, updated_at);
CREATE INDEX tasks_updated ON tasks (updated_at);

CREATE TABLE task_events (
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT NOT NULL,
    at BIGINT NOT NULL,
    detail TEXT,
    PRIMARY KEY (task_id, state, worker, at)
);

CREATE TABLE idempotency (
    caller TEXT NOT NULL,
    key TEXT NOT NULL,
    task_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    confirmed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);

CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    rights TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
