-- Roost session store, PostgreSQL schema v10: child runs (an agent called as a tool by
-- another agent's run: roost.tools.agent_tool) name the run that called them.
--
-- Nullable, no default: ADD COLUMN is a catalog change, no table rewrite; runs written
-- before it read back with parent_run_id NULL (no parent).
ALTER TABLE runs ADD COLUMN parent_run_id text COLLATE "C";

-- A parent's children (for operators, and a future runs filter); only child runs
-- are indexed.
CREATE INDEX runs_by_parent ON runs (tenant, parent_run_id) WHERE parent_run_id IS NOT NULL;
