-- When each pool hostname was last given back (issue 18): a released name stays out of the
-- pool for the site's `hostname_quarantine`, while DNS caches still name the old instance.
CREATE TABLE IF NOT EXISTS hostname_released (
    name TEXT COLLATE "C" PRIMARY KEY,
    released TEXT COLLATE "C" NOT NULL
);
