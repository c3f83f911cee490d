-- A pool's credentials for other registries and git servers, sealed like
-- run secrets (the password never rests in clear); the commit a git
-- context resolved to.

CREATE TABLE credentials (
    pool TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (pool, kind, host)
);

ALTER TABLE runs ADD COLUMN revision TEXT;
ALTER TABLE runs ADD COLUMN steps TEXT;

-- Secrets tasks read by id (`slipway secret set`), sealed like credentials.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Stored tasks (`slipway task create`): the definition as JSON.
CREATE TABLE tasks (
    name TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    def TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
