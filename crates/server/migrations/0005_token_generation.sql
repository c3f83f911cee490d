-- Bumped on every API token insert and delete: replicas poll this one row
-- and read the tokens only when it moved.
INSERT INTO counters (name, value) VALUES ('tokens', 0);
