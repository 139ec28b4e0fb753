-- Identities carry their issuer (issue 24): a certificate user is `<subject> issuer=<issuer>`,
-- so the same subject from two CAs is two owners. Owners recorded before (a bare one-line DN)
-- did not say which CA issued them: they become `<subject> issuer=unknown`, which the service
-- matches for that subject under any CA its client CA directory trusts for it (as before the
-- change), while everything new is bound to its issuer. Token users and login names (not
-- starting with `/`) are unchanged. The audit log is history and keeps what it recorded.
UPDATE instances SET owner = owner || ' issuer=unknown' WHERE owner LIKE '/%';
UPDATE jobs SET owner = owner || ' issuer=unknown' WHERE owner LIKE '/%';
UPDATE images SET owner = owner || ' issuer=unknown' WHERE owner LIKE '/%';
UPDATE tokens SET user = user || ' issuer=unknown' WHERE user LIKE '/%';
UPDATE hostname_leases SET owner = owner || ' issuer=unknown' WHERE owner LIKE '/%';
UPDATE quota_reservations SET owner = owner || ' issuer=unknown' WHERE owner LIKE '/%';
