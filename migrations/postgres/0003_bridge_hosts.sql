-- /bridge/v1 provisioning records: one row per host request, its steps beside it. Rows are kept
-- after the host is deleted (state Deleted) as the record of what was made and undone.
CREATE TABLE bridge_hosts (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The principal's subject and the client's Idempotency-Key; '' when the request had none.
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    request TEXT NOT NULL,
    -- The answer given (HTTP code and body), replayed for the same key; 0 / '' until there is one.
    response_code BIGINT NOT NULL DEFAULT 0,
    response TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    -- The serve process working on the record; another one takes over only after a restart.
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX bridge_hosts_key ON bridge_hosts (idempotency_key) WHERE idempotency_key <> '';
-- One live host per name; failed and deleted records stay beside a new one.
CREATE UNIQUE INDEX bridge_hosts_live ON bridge_hosts (namespace, name) WHERE state NOT IN ('Failed', 'Deleted');
CREATE INDEX bridge_hosts_state ON bridge_hosts (state);

CREATE TABLE bridge_host_steps (
    host_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    object_name TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL DEFAULT 0,
    finished_at BIGINT NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (host_id, position)
);

-- Each serving process's last sign of life: an unfinished record is taken over from its owner
-- only once the owner has gone quiet.
CREATE TABLE bridge_servers (
    owner TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);
