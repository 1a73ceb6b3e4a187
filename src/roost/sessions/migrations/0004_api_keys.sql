-- Roost PostgreSQL schema v4: API keys (roost.auth). Only a hash of each secret is stored.
CREATE TABLE api_keys (
    id           text COLLATE "C" PRIMARY KEY,
    tenant       text COLLATE "C" NOT NULL,
    role         text NOT NULL,
    name         text NOT NULL,
    hash         text NOT NULL,
    user_id      text,
    created_at   float8 NOT NULL,
    expires_at   float8,
    revoked_at   float8,
    last_used_at float8
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);
