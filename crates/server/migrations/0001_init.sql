-- Slipway control plane schema. Portable SQL: it runs on SQLite and
-- PostgreSQL alike (no AUTOINCREMENT/SERIAL, no BLOB/BYTEA, times in ms).

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('run', 0);
INSERT INTO counters (name, value) VALUES ('fence', 0);

CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    count BIGINT NOT NULL,
    network TEXT,
    local BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE agent_tokens (
    sha256 TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    last_seen BIGINT NOT NULL,
    current_run TEXT
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    secret_ids TEXT NOT NULL,
    secrets TEXT,
    submitter TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    fence BIGINT,
    lease_hash TEXT,
    lease_expires BIGINT,
    agent TEXT,
    cancel_reason TEXT,
    log_next BIGINT NOT NULL,
    exit_code BIGINT,
    image_digest TEXT,
    message TEXT
);
CREATE INDEX runs_queue ON runs (pool, state, seq);
CREATE INDEX runs_state ON runs (state, lease_expires);

CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    agent TEXT NOT NULL,
    fence BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome TEXT,
    PRIMARY KEY (run_id, attempt)
);

CREATE TABLE log_chunks (
    run_id TEXT NOT NULL,
    pos BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, pos),
    UNIQUE (run_id, attempt, seq)
);
