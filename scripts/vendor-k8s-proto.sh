#!/usr/bin/env bash
# Refresh api/proto/: the message definitions of the Kubernetes kinds Converge takes protobuf
# bodies for, from k8s.io/api and k8s.io/apimachinery (the Go module proxy), comments stripped.
# The server reads field numbers and names from them (api/src/protobuf/); nothing is compiled.
set -euo pipefail
version="${1:-v0.32.3}"
out="$(cd "$(dirname "$0")/.." && pwd)/api/proto"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init vendor-proto >/dev/null 2>&1
api="$(go mod download -json "k8s.io/api@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
machinery="$(go mod download -json "k8s.io/apimachinery@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
strip() { # keep the licence header, drop every other comment and blank line
  awk 'NR<=15 || !/^[[:space:]]*(\/\/|$)/' "$1" > "$out/$2"
}
mkdir -p "$out"
strip "$api/core/v1/generated.proto" core-v1.proto
strip "$api/apps/v1/generated.proto" apps-v1.proto
strip "$api/storage/v1/generated.proto" storage-v1.proto
strip "$api/discovery/v1/generated.proto" discovery-v1.proto
strip "$api/authorization/v1/generated.proto" authorization-v1.proto
strip "$api/authentication/v1/generated.proto" authentication-v1.proto
strip "$machinery/pkg/apis/meta/v1/generated.proto" meta-v1.proto
strip "$machinery/pkg/api/resource/generated.proto" resource.proto
strip "$machinery/pkg/util/intstr/generated.proto" intstr.proto
strip "$machinery/pkg/runtime/generated.proto" runtime.proto
echo "k8s.io/api and k8s.io/apimachinery $version" > "$out/VERSION"
