#!/usr/bin/env bash
# Starts virtlogd and libvirtd when they are not serving (machines without systemd), and gives
# /dev/kvm the owner udev would: without it, libvirt sees KVM "appear and vanish" between its
# capability probes and re-probes QEMU on every domain start (over a minute each time).
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  as_root chgrp kvm /dev/kvm
  as_root chmod 0660 /dev/kvm
fi
# Asked, not looked up by name: a dead daemon's process entry must not count as running.
# virtlogd refuses to start twice (its pid file), so starting it unconditionally is safe.
as_root virtlogd -d 2>/dev/null || true
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1; then
    # Under its own subreaper: an init that reaps orphans late (a container's, a sandbox's: ~2 s
    # here) holds up libvirt's every destroy and every QEMU exit until it does (subreaper.py).
    as_root setsid python3 "$(dirname "$0")/subreaper.py" libvirtd </dev/null >/dev/null 2>&1 &
  else
    as_root libvirtd -d 2>/dev/null || true
  fi
fi
for _ in $(seq 150); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "libvirt: libvirtd did not answer on qemu:///system" >&2
exit 1
