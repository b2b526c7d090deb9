#!/usr/bin/env bash
# Starts virtlogd and libvirtd when they are not running (machines without systemd), and gives
# /dev/kvm the owner udev would: without it, libvirt sees KVM "appear and vanish" between its
# capability probes and re-probes QEMU on every domain start (over a minute each time).
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  as_root chgrp kvm /dev/kvm
  as_root chmod 0660 /dev/kvm
fi
pgrep -x virtlogd >/dev/null || as_root virtlogd -d
pgrep -x libvirtd >/dev/null || as_root libvirtd -d
for _ in $(seq 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "libvirt: libvirtd did not answer on qemu:///system" >&2
exit 1
