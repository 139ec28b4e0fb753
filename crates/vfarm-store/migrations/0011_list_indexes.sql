-- Lists answer with pages (issue 16): `ORDER BY created, id` from a cursor, optionally for one
-- owner, reads an index in order instead of sorting the whole table.
-- IF NOT EXISTS: a test that steps the schema back re-runs the later migrations.
CREATE INDEX IF NOT EXISTS instances_created_id ON instances(created, id);
CREATE INDEX IF NOT EXISTS instances_owner_created_id ON instances(owner, created, id);
