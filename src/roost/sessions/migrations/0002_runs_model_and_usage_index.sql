-- Roost session store, PostgreSQL schema v2: the model that served each run, and an index
-- that answers usage summaries by itself.
--
-- A constant default makes ADD COLUMN a catalog change (no table rewrite, PostgreSQL >= 11);
-- runs written before it read back with model ''.
ALTER TABLE runs ADD COLUMN model text NOT NULL DEFAULT '';

-- usage_summary reads a (tenant, created_at) range and sums usage per agent/model/status.
-- With those columns INCLUDEd the scan can be index-only (on pages vacuum has marked
-- all-visible: the older runs a usage window mostly covers), never reading the wide rows
-- (input, output). It has runs_by_tenant's key, so it also serves list_runs and replaces it:
-- a run write maintains as many indexes as before.
-- Building it blocks writes to runs for the duration (migrations run in one transaction, so
-- CONCURRENTLY is not available): on a large table, run `roost migrate` in a quiet window.
CREATE INDEX runs_by_tenant_usage ON runs (tenant, created_at, id)
    INCLUDE (agent, model, status, usage);
DROP INDEX runs_by_tenant;
