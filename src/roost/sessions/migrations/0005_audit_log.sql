-- Roost PostgreSQL schema v5: the audit trail (roost.auth), kept auth.audit_retention_s.
CREATE TABLE audit_log (
    seq        bigserial PRIMARY KEY,
    at         float8 NOT NULL,
    action     text NOT NULL,
    outcome    text NOT NULL,
    status     integer NOT NULL,
    tenant     text COLLATE "C",
    principal  text,
    role       text,
    target     text,
    request_id text,
    client     text,
    reason     text,
    suppressed integer NOT NULL DEFAULT 0
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, at);
CREATE INDEX audit_log_by_time ON audit_log (at);
