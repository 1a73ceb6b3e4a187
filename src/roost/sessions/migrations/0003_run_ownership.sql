-- Roost session store, PostgreSQL schema v3: who drives each run, and until when.
--
-- A run that is not terminal names its owning instance and a lease on the database clock
-- (epoch seconds), renewed by the owner in one statement per instance. When the owner dies
-- the lease expires and any instance claims the run (one UPDATE ... RETURNING decides).
ALTER TABLE runs ADD COLUMN owner text;
ALTER TABLE runs ADD COLUMN lease_expires_at float8;

-- Every instance asks "which runs lost their owner?" about once a second, across tenants:
-- a partial index holds only the runs that can be taken over, so the question stays cheap
-- however many finished runs the table keeps.
CREATE INDEX runs_claimable ON runs (lease_expires_at)
    WHERE status IN ('queued', 'running', 'interrupted');
-- renew_ownership: the owner's live runs.
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
-- the session leases an instance holds (renewed in the same batch)
CREATE INDEX leases_by_owner ON leases (owner);
