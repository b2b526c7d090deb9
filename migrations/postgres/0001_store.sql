-- The object store: one row per object, a log of changes for watches, and side tables.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('rv', 0), ('compacted_rv', 0), ('mac_cursor', 0);

CREATE TABLE objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    rv BIGINT NOT NULL,
    deleting BIGINT NOT NULL DEFAULT 0,
    labels TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE UNIQUE INDEX objects_uid ON objects (uid);
CREATE INDEX objects_deleting ON objects (deleting);

CREATE TABLE owner_refs (
    owner_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (owner_uid, kind, namespace, name)
);
CREATE INDEX owner_refs_dependent ON owner_refs (kind, namespace, name);

CREATE TABLE watch_events (
    rv BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    event_type TEXT NOT NULL,
    prev_labels TEXT,
    body TEXT NOT NULL
);
CREATE INDEX watch_events_kind ON watch_events (kind, rv);

CREATE TABLE mac_leases (
    mac BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL
);
CREATE INDEX mac_leases_owner ON mac_leases (kind, namespace, name);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    namespaces TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
