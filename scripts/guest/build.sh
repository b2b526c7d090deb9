#!/usr/bin/env bash
# Builds the test guests from Debian packages only, once, into a cache directory:
#   vmlinuz        the Debian kernel (bzImage)
#   initramfs.gz   busybox root whose init prints a marker on the serial console, brings up DHCP on
#                  eth0 and runs a shell there; `poweroff -f` at that shell powers the guest off
#   disk.qcow2     a disk that boots by itself: FAT + syslinux holding the same kernel and initramfs
#   halt.img       a 512-byte boot sector that prints a marker and halts (costs no CPU once booted)
#   oci-disk/      disk.qcow2 as a containerDisk image (OCI layout, the disk under /disk),
#                  reference converge.dev/test/guest-disk:v1
#   oci-kernel/    vmlinuz and initramfs.gz under /boot, for kernelBoot,
#                  reference converge.dev/test/guest-kernel:v1
#   oci-halt/      halt.img as a containerDisk, reference converge.dev/test/halt:v1
# Usage: scripts/guest/build.sh [CACHE_DIR]   (default: $CONVERGE_GUEST_DIR or target/guest)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${CONVERGE_GUEST_DIR:-$here/../../target/guest}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stamp="$out/.built-v10"
[ -f "$stamp" ] && { echo "$out"; exit 0; }

need=()
for tool in busybox:busybox-static syslinux:syslinux mcopy:mtools mkfs.vfat:dosfstools cpio:cpio qemu-img:qemu-utils; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')"
apt-get download "$kpkg" >&2
dpkg-deb -x ./*.deb kernel
kver="${kpkg#linux-image-}"
cp kernel/boot/vmlinuz-"$kver" "$out/vmlinuz"

# The root: busybox, a few modules for virtio disks and NICs, and an init.
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc,lib/modules,usr/share/udhcpc}
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"; done
mods="$work/kernel/lib/modules/$kver/kernel"
# Debian builds virtio itself as modules: the core, the PCI transport, then the drivers.
modules="drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_legacy_dev
  drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover
  drivers/net/virtio_net drivers/block/virtio_blk"
for m in $modules; do
  for f in "$mods/$m".ko*; do [ -f "$f" ] && cp "$f" "$root/lib/modules/"; done
done
cat > "$root/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "CONVERGE-GUEST-DHCP $interface $ip" > /dev/console ;;
esac
SCRIPT
chmod +x "$root/usr/share/udhcpc/default.script"
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Which virtio module needs which moves between Debian kernels (6.1.0-56 moved symbols into
# virtio_ring): a few passes load them all in whatever order they need.
for _ in 1 2 3; do
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk; do
    grep -q "^$m " /proc/modules && continue
    for f in /lib/modules/$m.ko*; do [ -f "$f" ] && insmod "$f" 2>/dev/null; done
  done
done
hostname converge-guest
echo "CONVERGE-GUEST-READY"
# The NIC appears a moment after its driver loads.
for _ in 1 2 3 4 5 6 7 8 9 10; do ip link show eth0 >/dev/null 2>&1 && break; sleep 0.3; done
if ip link show eth0 >/dev/null 2>&1; then
  ip link set lo up; ip link set eth0 up
  udhcpc -b -q -t 5 -i eth0 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
fi
while true; do
  setsid cttyhack sh -l
done
INIT
chmod +x "$root/init"
echo 'PS1="guest# "' > "$root/etc/profile"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.gz"

# A disk that boots by itself: an unpartitioned FAT volume with syslinux in its boot sector.
truncate -s 64M boot.img
mkfs.vfat -n CONVERGE boot.img >/dev/null
syslinux --install boot.img
cat > syslinux.cfg <<'CFG'
DEFAULT linux
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0 quiet
CFG
mcopy -i boot.img "$out/vmlinuz" ::vmlinuz
mcopy -i boot.img "$out/initramfs.gz" ::initrd.gz
mcopy -i boot.img syslinux.cfg ::syslinux.cfg
qemu-img convert -q -O qcow2 boot.img "$out/disk.qcow2"

# The halting boot sector: prints CONVERGE-HALT-READY on COM1, then cli; hlt.
python3 - "$out/halt.img" <<'PY'
import sys
msg = b"CONVERGE-HALT-READY\r\n"
code = bytearray([0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0, 0, 0xba, 0xf8, 0x03])
loop = len(code)
code += bytes([0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, (loop - (len(code) + 8)) & 0xff])
code += bytes([0xf4, 0xeb, 0xfd])
code[6:8] = (0x7C00 + len(code)).to_bytes(2, "little")
code += msg + b"\0"
# Padded to 1 MiB: firmware will not boot a disk of a single sector.
open(sys.argv[1], "wb").write((bytes(code) + bytes(510 - len(code)) + b"\x55\xaa").ljust(1 << 20, b"\0"))
PY

# The same files as container images, in OCI image layout.
python3 "$here/oci_layout.py" "$out/oci-disk" converge.dev/test/guest-disk:v1 "$out/disk.qcow2:disk/disk.qcow2"
python3 "$here/oci_layout.py" "$out/oci-kernel" converge.dev/test/guest-kernel:v1 \
  "$out/vmlinuz:boot/vmlinuz" "$out/initramfs.gz:boot/initramfs.gz"
python3 "$here/oci_layout.py" "$out/oci-halt" converge.dev/test/halt:v1 "$out/halt.img:disk/halt.img"
touch "$stamp"
echo "$out"
