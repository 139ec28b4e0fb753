-- What each node measured it can run (`vfarm doctor`'s report, JSON), from its heartbeat.
-- NULL: the node is older than the report or has not sent one yet.
ALTER TABLE hosts ADD COLUMN checks TEXT;
