-- Which service made a row that only its own machine can act on: a local instance, an image
-- build, an asynchronous operation, a claimed job. Several `vfarm serve` processes may share
-- one PostgreSQL schema, each with its own data dir; each observes, reconciles and reaps only
-- its own (`<hostname>:<data dir>`). NULL: made before this column existed, by the one
-- service there was.
ALTER TABLE instances ADD COLUMN origin TEXT;
ALTER TABLE builds ADD COLUMN origin TEXT;
ALTER TABLE operations ADD COLUMN origin TEXT;
ALTER TABLE jobs ADD COLUMN origin TEXT;
