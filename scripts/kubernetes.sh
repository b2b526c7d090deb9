#!/usr/bin/env bash
# A real Kubernetes control plane for the tests: kube-apiserver, kube-controller-manager,
# kube-scheduler and etcd, built from the Go module proxy (tests/kubernetes/go.mod pins them).
#
#   scripts/kubernetes.sh build      build once (cached by go.mod/go.sum), print the bin dir
#   scripts/kubernetes.sh run DIR    make certificates in DIR, start the four on loopback, write
#                                    DIR/admin.kubeconfig and DIR/ready, and stop them all when
#                                    stdin closes (the test harness holds it open)
#
# Ports come from the environment: CONVERGE_ETCD_PORT, CONVERGE_ETCD_PEER_PORT and
# CONVERGE_APISERVER_PORT (defaults 23790, 23800, 26443; not ETCD_*, which etcd reads as flags).
# kube-controller-manager gives Nodes /24 pod ranges of CONVERGE_CLUSTER_CIDR (10.124.0.0/16).
# No kubelet runs: the tests play the kubelet's heartbeat for their Nodes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
module="$root/tests/kubernetes"
cache_base="${CONVERGE_KUBERNETES_CACHE:-/var/cache/converge/kubernetes}"
# Bumped when the build itself changes (flags, the set of binaries).
build_rev=1

k8s_version() { awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$module/go.mod"; }

bin_dir() {
  local key
  key="$( (cat "$module/go.mod" "$module/go.sum"; echo "$build_rev") | sha256sum | cut -c1-16)"
  echo "$cache_base/$(k8s_version)-$key/bin"
}

build() {
  local out tmp version minor
  out="$(bin_dir)"
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ] \
      && [ -x "$out/etcd" ]; then
    echo "$out"
    return
  fi
  command -v go >/dev/null 2>&1 || { echo "kubernetes.sh: Go (>= 1.24) is needed to build the control plane" >&2; exit 1; }
  version="$(k8s_version)"
  minor="$(echo "$version" | cut -d. -f2)"
  tmp="$(dirname "$out")/tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "kubernetes.sh: building kube-apiserver, kube-controller-manager, kube-scheduler $version and etcd (once; minutes)" >&2
  local vpkg=k8s.io/component-base/version
  (
    cd "$module"
    GOFLAGS=-buildvcs=false go build -trimpath \
      -ldflags "-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
      -o "$tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler
    GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  ) >&2
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "$out"
}

certs() {
  local dir=$1
  cd "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=converge-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=front-proxy-ca" \
    -keyout front-proxy-ca.key -out front-proxy-ca.crt 2>/dev/null
  leaf() { # name subject ca extensions
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial -days 30 -extfile <(echo "$4") \
      -out "$1.crt" 2>/dev/null
    rm -f "$1.csr"
  }
  leaf apiserver "/CN=kube-apiserver" ca \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1
extendedKeyUsage=serverAuth"
  leaf front-proxy-client "/CN=front-proxy-client" front-proxy-ca "extendedKeyUsage=clientAuth"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  local admin kcm scheduler
  admin="$(openssl rand -hex 24)"
  kcm="$(openssl rand -hex 24)"
  scheduler="$(openssl rand -hex 24)"
  {
    echo "$admin,admin,admin,system:masters"
    echo "$kcm,system:kube-controller-manager,kcm"
    echo "$scheduler,system:kube-scheduler,scheduler"
  } >tokens.csv
  chmod 600 tokens.csv ./*.key
  kubeconfig admin "$admin" >admin.kubeconfig
  kubeconfig kube-controller-manager "$kcm" >kcm.kubeconfig
  kubeconfig kube-scheduler "$scheduler" >scheduler.kubeconfig
}

kubeconfig() { # user token
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$CONVERGE_APISERVER_PORT
    certificate-authority: $PWD/ca.crt
users:
- name: $1
  user:
    token: $2
contexts:
- name: test
  context: {cluster: test, user: $1}
current-context: test
EOF
}

pids=()
alive() {
  local p
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}

run() {
  local dir bin
  dir="$(cd "$1" && pwd)"
  bin="${CONVERGE_KUBERNETES_BIN:-$(build)}"
  : "${CONVERGE_ETCD_PORT:=23790}" "${CONVERGE_ETCD_PEER_PORT:=23800}" "${CONVERGE_APISERVER_PORT:=26443}"
  export CONVERGE_APISERVER_PORT
  (certs "$dir")
  cd "$dir"
  stop() {
    trap - EXIT INT TERM
    local p i
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # kube-apiserver drains its requests first; the tests need it gone, not drained.
    for i in $(seq 1 50); do
      alive || break
      sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The logs stay for a look after a failed test; the store does not.
    rm -rf "$dir/etcd"
  }
  trap stop EXIT INT TERM
  "$bin/etcd" --name test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$CONVERGE_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$CONVERGE_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$CONVERGE_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$CONVERGE_ETCD_PEER_PORT" \
    --initial-cluster "test=http://127.0.0.1:$CONVERGE_ETCD_PEER_PORT" --log-level warn >etcd.log 2>&1 &
  pids+=($!)
  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$CONVERGE_ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$CONVERGE_APISERVER_PORT" \
    --tls-cert-file apiserver.crt --tls-private-key-file apiserver.key --client-ca-file ca.crt \
    --token-auth-file tokens.csv --authorization-mode RBAC --allow-privileged \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file sa.pub \
    --service-account-signing-key-file sa.key --service-cluster-ip-range 10.96.0.0/16 \
    --requestheader-client-ca-file front-proxy-ca.crt --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- --requestheader-uid-headers X-Remote-Uid \
    --proxy-client-cert-file front-proxy-client.crt --proxy-client-key-file front-proxy-client.key \
    --enable-aggregator-routing >apiserver.log 2>&1 &
  pids+=($!)
  local i
  for i in $(seq 1 600); do
    if curl -fsS --cacert ca.crt "https://127.0.0.1:$CONVERGE_APISERVER_PORT/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "${pids[1]}" 2>/dev/null; then
      echo "kubernetes.sh: kube-apiserver exited" >&2
      tail -20 apiserver.log >&2
      exit 1
    fi
    sleep 0.1
  done
  "$bin/kube-controller-manager" --kubeconfig kcm.kubeconfig --authentication-kubeconfig kcm.kubeconfig \
    --authorization-kubeconfig kcm.kubeconfig --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file sa.key --root-ca-file ca.crt --use-service-account-credentials \
    --cluster-signing-cert-file ca.crt --cluster-signing-key-file ca.key \
    --allocate-node-cidrs --cluster-cidr "${CONVERGE_CLUSTER_CIDR:-10.124.0.0/16}" --node-cidr-mask-size 24 \
    >kcm.log 2>&1 &
  pids+=($!)
  "$bin/kube-scheduler" --kubeconfig scheduler.kubeconfig --authentication-kubeconfig scheduler.kubeconfig \
    --authorization-kubeconfig scheduler.kubeconfig --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false >scheduler.log 2>&1 &
  pids+=($!)
  touch ready
  # Until the holder of stdin goes away (or a signal comes).
  cat >/dev/null || true
}

case "${1:-}" in
  build) build ;;
  bin-dir) bin_dir ;;
  run) [ $# -eq 2 ] || { echo "usage: $0 run DIR" >&2; exit 2; }; run "$2" ;;
  *) echo "usage: $0 build | bin-dir | run DIR" >&2; exit 2 ;;
esac
