-- Virtual API keys: only a SHA-256 hash of each key is stored; the key is shown once.
CREATE TABLE virtual_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX virtual_keys_tenant ON virtual_keys (tenant);
