-- Addresses handed out from a pool (pod IPs, Service cluster IPs, node ports), one holder each.
CREATE TABLE address_leases (
    pool TEXT NOT NULL,
    address TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (pool, address)
);
CREATE INDEX address_leases_owner ON address_leases (kind, namespace, name);
