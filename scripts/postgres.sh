# Source me: start the machine's PostgreSQL cluster, make the `converge` role, and export
# CONVERGE_TEST_POSTGRES for the store tests.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$1"; else sudo -u postgres sh -c "$1"; fi; }

cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  as_root pg_createcluster "$version" main >/dev/null
  cluster="$version main"
fi
# shellcheck disable=SC2086
as_root pg_ctlcluster $cluster start 2>/dev/null || true
port=$(pg_lsclusters --no-header | awk -v c="$cluster" '$1" "$2==c {print $3}')
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$port"
if ! as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'converge'\"" | grep -q 1; then
  as_postgres "psql -p $port -qc \"CREATE ROLE converge LOGIN SUPERUSER PASSWORD 'converge'\""
fi
export CONVERGE_TEST_POSTGRES="postgres://converge:converge@127.0.0.1:${port}/postgres"
echo "postgres: $CONVERGE_TEST_POSTGRES"
