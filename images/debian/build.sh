#!/usr/bin/env bash
# Build a generalized Debian 12 (bookworm) cloud image: systemd, cloud-init (NoCloud only),
# openssh-server, qemu-guest-agent, Debian's cloud kernel. No SSH key, no host keys, empty
# machine-id: everything instance-specific comes from the cloud-init seed at first boot.
#
#   bash images/debian/build.sh OUT.qcow2 [WORKDIR]
#
# Disk (MBR, id 0x5167deb0): p1 FAT16 128 MiB, bootable, "DEBBOOT": syslinux (BIOS: vmlinuz +
# initrd.img + syslinux.cfg) and \EFI\BOOT\BOOTX64.EFI (UEFI: a unified kernel image = systemd's
# EFI stub + the same kernel, initrd and command line) | p2 ext4 "debroot", the rest of 2 GiB.
# The qcow2 is zlib-compressed. No mounts, no loop devices: mmdebstrap --mode=root into a
# directory, mke2fs -d, mkfs.fat + mtools, sfdisk, dd. Boot files are copies taken at build time:
# a kernel upgrade inside a guest does not update the FAT partition.
# Extra .debs (syslinux, systemd-boot-efi's stub) go to WORKDIR/debs (kept if WORKDIR is given).
set -euo pipefail

usage() { echo "usage: $0 OUT.qcow2 [WORKDIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
t0=$(date +%s.%N)
if [ $# -eq 2 ]; then
  work=$2; mkdir -p "$work"; work=$(cd "$work" && pwd); keep_work=1
else
  work=$(mktemp -d /var/tmp/debian-build.XXXXXX); keep_work=0
fi
stage=$work/stage
cleanup() {
  rm -rf "$stage" "$out.tmp.$$"
  [ "$keep_work" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$stage"; mkdir -p "$work/debs" "$stage"

log() { printf 'debian-build: %s\n' "$*" >&2; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
[ "$(id -u)" -eq 0 ] || { log "run as root (mmdebstrap --mode=root)"; exit 1; }
for tool in mmdebstrap apt-get dpkg-deb mkfs.fat mcopy mmd mke2fs sfdisk objcopy objdump qemu-img; do
  command -v "$tool" >/dev/null || { log "missing host tool: $tool (see images/README.md)"; exit 1; }
done

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}   # 2025-01-01, file times on the FAT
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
ROOT_UUID=6d0e5a3c-1f2b-4c3d-8e4f-5a6b7c8d9e0f
HASH_SEED=7a8b9c0d-1e2f-4031-8243-546576879809

# ---- boot loader files (host side, not installed in the guest) ---------------------------------------
aptopts=(-o "Dir::Cache::pkgcache=$stage/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=$stage/apt-srcpkgcache.bin")
(cd "$work/debs" && apt-get "${aptopts[@]}" -q -o APT::Sandbox::User=root download syslinux syslinux-common systemd-boot-efi >/dev/null)
x=$stage/x; mkdir -p "$x"
for p in syslinux syslinux-common systemd-boot-efi; do
  deb=$(ls "$work/debs/${p}_"*.deb | sort -V | tail -n 1)
  dpkg-deb -x "$deb" "$x"
done

# ---- root filesystem -----------------------------------------------------------------------------
r=$stage/rootfs
pkgs=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,cloud-init,cloud-guest-utils,qemu-guest-agent,iproute2,procps,sudo,zstd
log "mmdebstrap bookworm: $pkgs"
mmdebstrap --variant=apt --mode=root ${MMDEBSTRAP_VERBOSE:---quiet} \
  --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='force-unsafe-io' \
  --include="$pkgs" \
  --essential-hook="\"$here/customize.sh\" essential \"\$1\"" \
  --customize-hook="\"$here/customize.sh\" customize \"\$1\"" \
  bookworm "$r" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
log "rootfs done ($(elapsed) s): $(du -sm "$r" | cut -f1) MB"
kernel=$(readlink -f "$r/vmlinuz" 2>/dev/null || true)
[ -f "$kernel" ] || kernel=$(ls "$r"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$r/boot/initrd.img-${kernel##*/vmlinuz-}
[ -f "$kernel" ] && [ -f "$initrd" ] || { log "no kernel/initrd in $r/boot"; exit 1; }

# ---- boot partition: syslinux for BIOS, a unified kernel image for UEFI -----------------------------------
b=$stage/boot; mkdir -p "$b"
cmdline=$(cat "$here/files/cmdline")
printf 'DEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' "$cmdline" > "$b/syslinux.cfg"
printf '%s' "$cmdline" > "$b/cmdline.txt"
cp "$kernel" "$b/vmlinuz"; cp "$initrd" "$b/initrd.img"
stub=$x/usr/lib/systemd/boot/efi/linuxx64.efi.stub
vma=0
while read -r size addr; do e=$(( 0x$addr + 0x$size )); [ $e -gt $vma ] && vma=$e; done \
  < <(objdump -h "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
align() { echo $(( ($1 + 0xffff) & ~0xffff )); }
v_osrel=$(align "$vma"); v_cmd=$(align $((v_osrel + $(stat -c %s "$r/etc/os-release"))))
v_linux=$(align $((v_cmd + ${#cmdline}))); v_initrd=$(align $((v_linux + $(stat -c %s "$b/vmlinuz"))))
objcopy \
  --add-section .osrel="$(readlink -f "$r/etc/os-release")" --change-section-vma .osrel="$(printf 0x%x "$v_osrel")" \
  --add-section .cmdline="$b/cmdline.txt" --change-section-vma .cmdline="$(printf 0x%x "$v_cmd")" \
  --add-section .linux="$b/vmlinuz" --change-section-vma .linux="$(printf 0x%x "$v_linux")" \
  --add-section .initrd="$b/initrd.img" --change-section-vma .initrd="$(printf 0x%x "$v_initrd")" \
  "$stub" "$b/BOOTX64.EFI"
# objcopy stamps the PE header with the current time: TimeDateStamp := SOURCE_DATE_EPOCH and
# CheckSum := 0 (PE32+: e_lfanew + 8 and + 88; UEFI does not check the PE checksum)
le32() { local v=$1; printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)))"; }
lfanew=$(od -An -tu4 -j60 -N4 "$b/BOOTX64.EFI" | tr -d ' ')
le32 "$SOURCE_DATE_EPOCH" | dd of="$b/BOOTX64.EFI" bs=1 seek=$((lfanew + 8)) conv=notrunc status=none
le32 0 | dd of="$b/BOOTX64.EFI" bs=1 seek=$((lfanew + 88)) conv=notrunc status=none
touch -d "@$SOURCE_DATE_EPOCH" "$b"/*
mkfs.fat -F 16 -n DEBBOOT -i 5deb0000 --invariant -C "$stage/boot.img" $((128 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -m -i "$stage/boot.img" "$b/vmlinuz" "$b/initrd.img" "$b/syslinux.cfg" ::/
mmd -i "$stage/boot.img" ::/EFI ::/EFI/BOOT
mcopy -m -i "$stage/boot.img" "$b/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
"$x/usr/bin/syslinux" --install "$stage/boot.img"

# ---- root filesystem image and disk ----------------------------------------------------------------
# 1 MiB gap | p1 128 MiB FAT16 (0x0e), bootable | p2 1919 MiB Linux = 2 GiB
mke2fs -q -t ext4 -L debroot -U "$ROOT_UUID" -E "root_owner=0:0,hash_seed=$HASH_SEED" -d "$r" "$stage/root.img" 1919M >/dev/null
truncate -s 2G "$stage/disk.raw"
printf 'label: dos\nlabel-id: 0x5167deb0\nstart=2048, size=262144, type=e, bootable\nstart=264192, size=3930112, type=83\n' |
  sfdisk -q "$stage/disk.raw"
dd if="$x/usr/lib/syslinux/mbr/mbr.bin" of="$stage/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$stage/boot.img" of="$stage/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$stage/root.img" of="$stage/disk.raw" bs=1M seek=129 conv=notrunc,sparse status=none
mkdir -p "$(dirname "$out")"
qemu-img convert -q -c -f raw -O qcow2 "$stage/disk.raw" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
log "$out: $(stat -c %s "$out") bytes, kernel ${kernel##*/vmlinuz-}, built in $(elapsed) s"
