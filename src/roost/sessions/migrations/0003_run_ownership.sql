-- Roost session store, PostgreSQL schema v3: a fleet of instances sharing the store.
-- Run ownership (who runs it, until when), events by run, idempotency keys, agent states.
--
-- Nullable columns without a default: ADD COLUMN is a catalog change, no table rewrite.
-- Runs written before it read back with owner and lease_expires_at NULL (unowned).
ALTER TABLE runs ADD COLUMN owner text COLLATE "C";
ALTER TABLE runs ADD COLUMN lease_expires_at float8;  -- on the database clock

-- renew_ownership: the runs of one instance. Only owned runs are indexed.
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
-- claimable_runs, polled by every instance every second or so: the expired leases, oldest
-- first. Partial, so the index holds only the runs in flight, not the whole history.
CREATE INDEX runs_by_lease ON runs (lease_expires_at)
    WHERE status IN ('queued', 'running') AND lease_expires_at IS NOT NULL;
CREATE INDEX runs_interrupted ON runs (lease_expires_at NULLS FIRST) WHERE status = 'interrupted';

-- read_run_events: one run's events without reading the rest of its session's log.
CREATE INDEX events_by_run ON events (tenant, session_id, run_id, seq) WHERE run_id IS NOT NULL;

-- renew_ownership renews the session leases of one instance too.
CREATE INDEX leases_by_owner ON leases (owner);

-- Client idempotency keys: put-if-absent per (tenant, scope, key); expires_at on the
-- database clock; expire_sessions deletes the expired ones.
CREATE TABLE idempotency_keys (
    tenant      text COLLATE "C" NOT NULL,
    scope       text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    fingerprint text NOT NULL,
    value       text NOT NULL,
    created_at  float8 NOT NULL,
    expires_at  float8 NOT NULL,
    PRIMARY KEY (tenant, scope, key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);

-- The lifecycle state of agents, for every instance; scope is '*' or a tenant.
CREATE TABLE agent_states (
    scope       text COLLATE "C" NOT NULL,
    agent       text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    updated_at  float8 NOT NULL,
    PRIMARY KEY (scope, agent)
);
