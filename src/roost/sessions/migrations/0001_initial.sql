-- Roost session store, PostgreSQL schema v1.
--
-- Runs inside the migration transaction with search_path set to the target schema, so names
-- are unqualified here. Conventions:
-- * timestamps are float8 epoch seconds, exactly the floats the records carry (no timestamptz
--   round trip, which would lose the sub-microsecond bits);
-- * key and id columns use COLLATE "C": byte order equals code point order in UTF-8, so
--   "newest first, then id descending" pages identically on every backend, and btree
--   comparisons skip the locale machinery;
-- * no foreign keys: an append inserts several events per call, and a per-row RI trigger
--   would tax the hot path. delete_session and expire_sessions remove the children explicitly.

CREATE TABLE sessions (
    tenant      text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    agent       text COLLATE "C" NOT NULL,
    user_id     text COLLATE "C",
    state       jsonb NOT NULL DEFAULT '{}',
    metadata    jsonb NOT NULL DEFAULT '{}',
    version     bigint NOT NULL DEFAULT 0,
    last_seq    bigint NOT NULL DEFAULT 0,
    created_at  float8 NOT NULL,
    updated_at  float8 NOT NULL,
    expires_at  float8,
    PRIMARY KEY (tenant, id)
);

-- list_sessions: newest first by (created_at, id) within a tenant, optionally one agent / user.
CREATE INDEX sessions_by_created ON sessions (tenant, created_at, id);
CREATE INDEX sessions_by_agent ON sessions (tenant, agent, created_at, id);
CREATE INDEX sessions_by_user ON sessions (tenant, user_id, created_at, id)
    WHERE user_id IS NOT NULL;
-- expire_sessions: only sessions with a TTL are indexed.
CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE events (
    tenant      text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    run_id      text,
    data        jsonb NOT NULL,
    ts          float8 NOT NULL,
    PRIMARY KEY (tenant, session_id, seq)
);

CREATE TABLE runs (
    tenant      text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    agent       text NOT NULL,
    status      text COLLATE "C" NOT NULL,
    input       text NOT NULL,
    output      text,
    deadline    float8,
    attempt     integer NOT NULL,
    usage       jsonb NOT NULL,
    error       jsonb,
    created_at  float8 NOT NULL,
    updated_at  float8 NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE INDEX runs_by_session ON runs (tenant, session_id, created_at, id);
CREATE INDEX runs_by_tenant ON runs (tenant, created_at, id);
CREATE INDEX runs_by_status ON runs (tenant, status, created_at, id);

-- One active run per session across processes. expires_at is on the database clock.
CREATE TABLE leases (
    tenant      text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    owner       text COLLATE "C" NOT NULL,
    expires_at  float8 NOT NULL,
    PRIMARY KEY (tenant, session_id)
);
