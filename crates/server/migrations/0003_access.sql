-- Who uploaded each stored context: only that token (an admin, or an agent
-- holding a lease on a run of it) may read it back.
CREATE TABLE context_uploads (
    digest TEXT NOT NULL,
    token_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (digest, token_id)
);

-- The uploaded context a run builds, for the agent's read check. From now
-- on runs.submitter holds the submitting token's unique id, not its name.
ALTER TABLE runs ADD COLUMN context TEXT;
-- A pool's policy: whether its builds may use RUN --security=insecure and
-- its tasks privileged steps (off: refused, as on every pool before).
ALTER TABLE pools ADD COLUMN allow_insecure BIGINT NOT NULL DEFAULT 0;

-- API tokens (hashed), shared by every replica on this database.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    admin BIGINT NOT NULL,
    grants TEXT NOT NULL,
    created BIGINT NOT NULL
);

-- Periodic work only one replica should do at a time (retention): who
-- holds it, until when.
CREATE TABLE jobs (
    name TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
INSERT INTO jobs (name, until_ms) VALUES ('retention', 0);

-- The submitting token's name at submit time, for display only.
ALTER TABLE runs ADD COLUMN submitter_name TEXT;
