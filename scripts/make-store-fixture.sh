#!/usr/bin/env bash
# Writes tests/fixtures/store-schema-N/: a store made by this converge (SQLite: converge.db.gz;
# PostgreSQL: postgres.sql.gz, a pg_dump) with objects of many kinds, for tests/upgrade.rs to
# open with every later converge. Run it once per released schema version, and commit the result;
# never regenerate an existing version's fixture.
#   scripts/make-store-fixture.sh [PATH-TO-CONVERGE [COMMIT-IT-WAS-BUILT-FROM]]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/converge}"
# shellcheck source=scripts/postgres.sh
. scripts/postgres.sh >/dev/null
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

manifest='
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team-a, labels: {app: web}}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: cloud-init, namespace: team-a}
stringData: {userdata: "#cloud-config\npassword: fixture\n"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team-a}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineInstancetype
metadata: {name: small, namespace: team-a}
spec: {cpu: {guest: 1}, memory: {guest: 128Mi}}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: blank, namespace: team-a}
spec: {source: {blank: {}}, storage: {resources: {requests: {storage: 16Mi}}}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: halted, namespace: team-a, labels: {app: web}}
spec:
  runStrategy: Halted
  instancetype: {name: small, kind: VirtualMachineInstancetype}
  template:
    spec:
      domain: {devices: {interfaces: [{name: default, masquerade: {}}]}}
      networks: [{name: default, pod: {}}]
      volumes:
      - {name: root, containerDisk: {image: registry.local/busybox}}
      - {name: data, dataVolume: {name: blank}}
      - {name: ci, cloudInitNoCloud: {secretRef: {name: cloud-init}}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: always, namespace: team-a}
spec:
  runStrategy: Always
  template:
    spec:
      domain: {devices: {}, resources: {requests: {memory: 128Mi}}}
      volumes: [{name: root, containerDisk: {image: registry.local/busybox}}]
'

make_store() { # DATA_DIR [--database URL]
  local dir="$1"; shift
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" --no-node "$@" >"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do [ -s "$dir/kubeconfig" ] && break; sleep 0.1; done
  export KUBECONFIG="$dir/kubeconfig"
  echo "$manifest" | kubectl apply -f - >/dev/null
  kubectl wait -n team-a dv/blank --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null
  kubectl wait -n team-a vmi/always --for=jsonpath='{.status.phase}'=Scheduling --timeout=60s >/dev/null 2>&1 || true
  "$bin" token create --data-dir "$dir" --role view --namespace team-a --ttl 24h >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=
}

version=$(ls migrations/sqlite | sed -n 's/^0*\([0-9]*\)_.*/\1/p' | sort -n | tail -1)
out="tests/fixtures/store-schema-$version"
mkdir -p "$out"
mkdir "$work/sqlite"
make_store "$work/sqlite"
sqlite3 "$work/sqlite/converge.db" "PRAGMA wal_checkpoint(TRUNCATE); VACUUM;" >/dev/null
gzip -9 -n -c "$work/sqlite/converge.db" >"$out/converge.db.gz"

db="converge_fixture_$$"
psql "$CONVERGE_TEST_POSTGRES" -qc "CREATE DATABASE $db"
url="${CONVERGE_TEST_POSTGRES%/*}/$db"
mkdir "$work/pg"
make_store "$work/pg" --database "$url"
pg_dump --no-owner --no-privileges "$url" | gzip -9 -n >"$out/postgres.sql.gz"
psql "$CONVERGE_TEST_POSTGRES" -qc "DROP DATABASE $db"
"$bin" version >"$out/made-by.txt"
echo "built from ${2:-$(git rev-parse --short HEAD)}" >>"$out/made-by.txt"
ls -l "$out"
