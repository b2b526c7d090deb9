#!/usr/bin/env bash
# A libvirtd of its own for one node, so that several nodes on one machine are several hosts to
# libvirt (live migration refuses to migrate a guest "to the same host"): its own config, sockets,
# state, logs and host UUID, in a mount namespace of its own where those are bind-mounted over
# /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt — the
# paths a root libvirtd has compiled in. Its virtlogd runs in the same namespace. The socket is
# outside those mounts, so every process (agents, peers' libvirtds) reaches it.
#
# Usage: [MIGRATION_PORTS=MIN-MAX] [TLS_CA=DIR [TLS_PORT=N]] scripts/node-libvirtd.sh start NAME
#          prints the connection URI (its local socket), and with TLS_CA a second line: the URI
#          its peers reach it by, over TLS on 127.0.0.1
#        scripts/node-libvirtd.sh stop NAME
# TLS_CA names a directory with a CA (ca-cert.pem, ca-key.pem; made there when absent) that
# signs this node's certificate, which it shows both as a server (to peers' libvirtds, and its
# QEMUs to incoming migration streams) and as a client: /etc/pki in its namespace is its own,
# laid out as libvirt and QEMU look for it (/etc/pki/CA, /etc/pki/libvirt, /etc/pki/qemu).
# Where incoming migrations listen is not configured here: libvirt refuses a local address as
# `migration_address`/`migration_host`, so Converge's source agent names the target node's
# migration address in each migration (its listen address and URI).
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
cmd=${1:?start or stop}
name=${2:?node name}
case "$name" in *[!a-z0-9-]*|'') echo "node-libvirtd: bad name $name" >&2; exit 2 ;; esac
root=/run/converge-libvirt/$name
uri="qemu+unix:///system?socket=$root/sock/libvirt-sock"

stop() {
  for pidfile in "$root/run/libvirtd.pid" "$root/run/virtlogd.pid"; do
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      as_root kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do as_root kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      as_root kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

case "$cmd" in
  stop) stop; as_root rm -rf "$root"; exit 0 ;;
  start) ;;
  *) echo "node-libvirtd: start or stop" >&2; exit 2 ;;
esac

announce() { echo "$uri"; if [ -f "$root/tls-uri" ]; then cat "$root/tls-uri"; fi; }
if virsh -c "$uri" version >/dev/null 2>&1; then announce; exit 0; fi
stop
# A stale socket of a dead daemon would be found by the next virtlogd and removed under it.
as_root rm -rf "$root/run" "$root/sock" "$root/pki" "$root/tls-uri"
as_root mkdir -p "$root"/{etc/qemu,run,lib/qemu,lib/images,lib/boot,cache,log,sock}
as_root mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
# A stable host UUID per node name: libvirt compares them to refuse a migration to itself.
uuid=$(printf '%s' "converge-node-$name" | md5sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
as_root tee "$root/etc/libvirtd.conf" >/dev/null <<CONF
unix_sock_dir = "$root/sock"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "$uuid"
CONF
as_root cp /etc/libvirt/qemu.conf "$root/etc/qemu.conf"
# Ports of its own for incoming guests and their disks (libvirt's default 49152-49215 is every
# libvirtd's: two on one machine would pick the same port, and the second QEMU fails to bind it):
# MIGRATION_PORTS=MIN-MAX, else a slot from the name; out of the kernel's ephemeral range and
# Kubernetes' node ports.
slot=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 300 ))
ports=${MIGRATION_PORTS:-$((20000 + 32 * slot))-$((20031 + 32 * slot))}
case "$ports" in *[!0-9-]*|-*|*-) echo "node-libvirtd: MIGRATION_PORTS is MIN-MAX" >&2; exit 2 ;; esac
printf 'migration_port_min = %d\nmigration_port_max = %d\n' "${ports%-*}" "${ports#*-}" \
  | as_root tee -a "$root/etc/qemu.conf" >/dev/null
as_root cp /etc/libvirt/virtlogd.conf "$root/etc/virtlogd.conf"
listen=() pki_mount=""
if [ -n "${TLS_CA:-}" ]; then
  tls_port=${TLS_PORT:-$((16600 + slot))}
  case "$tls_port" in *[!0-9]*|'') echo "node-libvirtd: TLS_PORT is a number" >&2; exit 2 ;; esac
  as_root mkdir -p "$TLS_CA"
  if [ ! -f "$TLS_CA/ca-key.pem" ]; then
    as_root openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/O=Converge/CN=converge node libvirtd CA" -keyout "$TLS_CA/ca-key.pem" -out "$TLS_CA/ca-cert.pem" 2>/dev/null
  fi
  pki=$root/pki
  as_root mkdir -p "$pki"/{CA,libvirt/private,qemu}
  as_root openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=Converge/CN=$name" \
    -keyout "$pki/node-key.pem" -out "$pki/node.csr" 2>/dev/null
  printf 'subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:%s\nextendedKeyUsage = serverAuth, clientAuth\n' "$name" \
    | as_root tee "$pki/node.ext" >/dev/null
  as_root openssl x509 -req -in "$pki/node.csr" -CA "$TLS_CA/ca-cert.pem" -CAkey "$TLS_CA/ca-key.pem" \
    -CAcreateserial -days 30 -extfile "$pki/node.ext" -out "$pki/node-cert.pem" 2>/dev/null
  as_root cp "$TLS_CA/ca-cert.pem" "$pki/CA/cacert.pem"
  as_root cp "$TLS_CA/ca-cert.pem" "$pki/qemu/ca-cert.pem"
  for role in server client; do
    as_root cp "$pki/node-cert.pem" "$pki/libvirt/${role}cert.pem"
    as_root cp "$pki/node-key.pem" "$pki/libvirt/private/${role}key.pem"
    as_root cp "$pki/node-cert.pem" "$pki/qemu/$role-cert.pem"
    as_root cp "$pki/node-key.pem" "$pki/qemu/$role-key.pem"
  done
  # QEMU opens its keys itself, as the user libvirt runs it as.
  qemu_group=$(id -gn libvirt-qemu 2>/dev/null || echo root)
  as_root chgrp "$qemu_group" "$pki"/qemu/*-key.pem
  as_root chmod 0640 "$pki"/qemu/*-key.pem
  as_root chmod 0600 "$pki"/node-key.pem "$pki"/libvirt/private/*.pem
  as_root tee -a "$root/etc/libvirtd.conf" >/dev/null <<CONF
listen_tls = 1
listen_tcp = 0
listen_addr = "127.0.0.1"
tls_port = "$tls_port"
CONF
  listen=(--listen)
  pki_mount="mkdir -p /etc/pki && mount --bind '$pki' /etc/pki"
  echo "qemu+tls://127.0.0.1:$tls_port/system" | as_root tee "$root/tls-uri" >/dev/null
fi
[ -f /etc/libvirt/libvirt.conf ] && as_root cp /etc/libvirt/libvirt.conf "$root/etc/"
as_root setsid unshare --mount --propagation private sh -c "
  mount --bind '$root/etc' /etc/libvirt
  mount --bind '$root/run' /run/libvirt
  mount --bind '$root/lib' /var/lib/libvirt
  mount --bind '$root/cache' /var/cache/libvirt
  mount --bind '$root/log' /var/log/libvirt
  $pki_mount
  virtlogd -d -p /run/libvirt/virtlogd.pid
  exec libvirtd ${listen[*]} --config /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
" </dev/null >"$root/libvirtd.log" 2>&1 &
for _ in $(seq 150); do
  if virsh -c "$uri" version >/dev/null 2>&1; then announce; exit 0; fi
  sleep 0.2
done
echo "node-libvirtd: libvirtd of $name did not answer on $uri" >&2
tail -5 "$root/libvirtd.log" >&2 || true
exit 1
