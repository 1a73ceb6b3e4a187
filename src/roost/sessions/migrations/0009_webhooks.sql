-- Roost session store, PostgreSQL schema v9: the webhook outbox (roost.webhooks).
--
-- One row per run given a webhook, from before the turn is acknowledged; `doc` is the
-- delivery (roost/webhooks/records.py). Claimed with a lease per row (owner, lease_until).
CREATE TABLE webhook_deliveries (
    tenant      text COLLATE "C" NOT NULL,
    run_id      text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    next_at     float8 NOT NULL,
    owner       text,
    lease_until float8 NOT NULL DEFAULT 0,
    doc         jsonb NOT NULL,
    PRIMARY KEY (tenant, run_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE state IN ('armed', 'pending');

-- The tenants' signing secrets (HMAC needs the secret itself: see docs/webhooks.md).
CREATE TABLE webhook_secrets (
    tenant      text COLLATE "C" PRIMARY KEY,
    secret      text NOT NULL,
    updated_at  float8 NOT NULL
);
