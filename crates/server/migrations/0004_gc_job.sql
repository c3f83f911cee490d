-- The registry's periodic garbage collection: one replica at a time.
INSERT INTO jobs (name, until_ms) VALUES ('registry-gc', 0);
