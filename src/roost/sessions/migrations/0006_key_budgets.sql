-- Roost PostgreSQL schema v6: per-key budgets (roost.auth.keybudgets). A key's limits
-- (JSON: day_tokens, day_cost, month_tokens, month_cost) and what each key with a budget
-- spent per UTC day ('d:2026-12-04') and month ('m:2026-12').
ALTER TABLE api_keys ADD COLUMN budget text;
CREATE TABLE key_spend (
    key_id text COLLATE "C" NOT NULL,
    period text COLLATE "C" NOT NULL,
    tokens bigint NOT NULL DEFAULT 0,
    cost   float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period)
);
