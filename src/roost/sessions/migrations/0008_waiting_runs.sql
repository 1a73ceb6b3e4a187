-- Roost session store, PostgreSQL schema v8 (issue 15, approvals): runs waiting for a person.
-- A waiting run has no owner; its lease_expires_at is the wait's deadline. claimable_runs
-- finds the expired waits (every instance polls it): partial, so only waiting runs are in it.
CREATE INDEX runs_waiting ON runs (lease_expires_at) WHERE status = 'waiting';
