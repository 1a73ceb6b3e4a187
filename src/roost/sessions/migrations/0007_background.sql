-- Roost session store, PostgreSQL schema v7: work that outlives a request (roost.background).
--
-- The durable run queue: one row per queued run (its record is in runs, status 'queued',
-- unowned). Claimed with FOR UPDATE SKIP LOCKED, lowest fair rank first among the due rows
-- (rank: start-time fair queuing between tenants, see roost/background/store.py).
CREATE TABLE run_queue (
    tenant      text COLLATE "C" NOT NULL,
    run_id      text COLLATE "C" NOT NULL,
    not_before  float8 NOT NULL,
    enqueued_at float8 NOT NULL,
    rank        float8 NOT NULL,
    PRIMARY KEY (tenant, run_id)
);
CREATE INDEX run_queue_by_rank ON run_queue (rank, enqueued_at);
CREATE INDEX run_queue_by_tenant_rank ON run_queue (tenant, rank);
CREATE INDEX run_queue_by_due ON run_queue (not_before);

-- Schedules: a cron expression that starts runs of an agent.
CREATE TABLE schedules (
    tenant      text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    agent       text COLLATE "C" NOT NULL,
    record      jsonb NOT NULL,
    created_at  float8 NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX schedules_by_agent ON schedules (tenant, agent, created_at);

-- One row per fired tick: the put-if-absent that makes a tick fire once across the fleet.
CREATE TABLE schedule_ticks (
    tenant      text COLLATE "C" NOT NULL,
    schedule_id text COLLATE "C" NOT NULL,
    tick        float8 NOT NULL,
    run_id      text NOT NULL,
    PRIMARY KEY (tenant, schedule_id, tick)
);
CREATE INDEX schedule_ticks_by_tick ON schedule_ticks (tick);
