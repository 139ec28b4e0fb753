-- Who may delete an image: NULL is a public (site) image, made by an admin or the local
-- CLI, deletable only by admins; otherwise the API user who built or imported it. Images
-- that existed before owners become public.
ALTER TABLE images ADD COLUMN owner TEXT;
