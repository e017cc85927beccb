#!/usr/bin/env bash
# Build the "tiny" guest image: busybox + dropbear + Debian's cloud kernel, configured at boot from
# a cloud-init NoCloud seed (label cidata) by a small stand-in (files/tiny-cloud-init).
#
#   bash images/tiny/build.sh OUT.qcow2 [WORKDIR]
#
# Disk (MBR, id 0x5167a1b0): p1 FAT16 48 MiB, bootable, "TINYBOOT": syslinux (BIOS: vmlinuz +
# initrd.gz + syslinux.cfg) and \EFI\BOOT\BOOTX64.EFI (UEFI: a unified kernel image = systemd's
# EFI stub + the same kernel, initrd and command line) | p2 ext4 "tinyroot" 464 MiB, the writable
# root filesystem. The qcow2 is zlib-compressed (the UKI repeats the 14 MB kernel).
# No mounts, no loop devices: mkfs.fat + mtools, mke2fs -d, sfdisk and dd on image files.
# Guest packages are fetched with `apt-get download` into WORKDIR (kept if given, and reused on
# the next run; else a temp dir that is removed). Host tools: see images/README.md.
#
# Shared prelude, boot partition and disk assembly: images/lib/common.sh; the root file system
# (shared with tiny-arm64): rootfs.sh.
# shellcheck disable=SC2086,SC2015
# (word lists such as $pkgs, $modules are split on purpose; `A && B || { log ...; exit 1; }`
# is an assertion)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=rootfs.sh
. "$here/rootfs.sh"
build_begin tiny "$@"
require_tools apt-cache debugfs cpio gzip readelf

# Reproducibility (besides SOURCE_DATE_EPOCH): fixed UUIDs and seeds
ROOT_UUID=5f1b6a7e-7b64-4d1e-9f3c-0c1d2e3f4a5b
HASH_SEED=2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809

# ---- packages ---------------------------------------------------------------------------------
kpkg=$(apt-cache "${aptopts[@]}" depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64 (run apt-get update)"; exit 1; }
kver=${kpkg#linux-image-}
# shared libraries of dropbear and sftp-server: their lib* Depends, two levels deep
libdeps() { apt-cache "${aptopts[@]}" depends "$@" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }' | sort -u; }
l1=$(libdeps dropbear-bin openssh-sftp-server)
l2=$(libdeps $l1)
pkgs=$(printf '%s\n' busybox-static dropbear-bin openssh-sftp-server $BOOT_PKGS $l1 $l2 | sort -u)
log "kernel $kver; downloading: $kpkg" $pkgs
fetch_debs "$kpkg" $pkgs
# the kernel package: only the kernel and the module directories the initrd draws from, in the
# background (xz, ~1.5 s) while the small packages are unpacked
kdeb=$(debfile "$kpkg")
kmdirs="drivers/virtio drivers/block drivers/net drivers/char drivers/cdrom drivers/acpi drivers/input drivers/scsi fs/isofs fs/fat fs/nls net/core"
kpatterns=("./boot/vmlinuz-$kver")
for d in $kmdirs; do kpatterns+=("./lib/modules/$kver/kernel/$d/*"); done
(dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" --wildcards "${kpatterns[@]}") &
kpid=$!
extract_debs $pkgs
wait "$kpid" || { log "unpacking $kdeb failed"; exit 1; }
bb=$x/bin/busybox
kmods=$x/lib/modules/$kver
[ -f "$x/boot/vmlinuz-$kver" ] && [ -d "$kmods" ] || { log "kernel $kver not found in the package"; exit 1; }

# ---- initramfs: busybox + modules ---------------------------------------------------------------
# virtio (PCI, block, net, rng, console, SCSI + sd_mod for a root disk on virtio-scsi; NVMe is built
# into the cloud kernel), the seed's filesystems (isofs needs cdrom; vfat needs fat
# and the nls tables for codepage 437 / iocharset ascii|utf8|iso8859-1) and the ACPI power button.
# Dependencies come from each module's own "depends=" (modinfo); load order from busybox depmod.
modules="virtio_pci virtio_blk virtio_scsi sd_mod virtio_net virtio-rng virtio_console isofs nls_utf8 nls_cp437 nls_ascii nls_iso8859-1 vfat button evdev"
ird=$stage/initrd; mkdir -p "$ird/bin" "$ird/etc" "$ird/lib/modules/$kver"
cp "$bb" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
install -m 0755 "$here/files/init" "$ird/init"
declare -A kmpath=() kmdone=()
while read -r f; do n=${f##*/}; n=${n%.ko}; kmpath[${n//-/_}]=${f#"$kmods"/}; done < <(find "$kmods/kernel" -name '*.ko')
addmod() {
  local n=${1//-/_} f dep
  [ -n "${kmdone[$n]:-}" ] && return 0
  f=${kmpath[$n]:-}
  [ -n "$f" ] || { log "module $1 not found under kernel/{$kmdirs} of $kver"; exit 1; }
  kmdone[$n]=1
  mkdir -p "$ird/lib/modules/$kver/$(dirname "$f")"
  cp "$kmods/$f" "$ird/lib/modules/$kver/$f"
  for dep in $(tr '\0' '\n' < "$kmods/$f" | sed -n 's/^depends=//p' | tr ',' ' '); do addmod "$dep"; done
}
for m in $modules; do addmod "$m"; done
printf '%s\n' $modules > "$ird/etc/modules"
"$bb" depmod -b "$ird" "$kver"
find "$ird" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible -R 0:0 | gzip -9 -n) > "$stage/initrd.gz"

# ---- root filesystem (rootfs.sh) ------------------------------------------------------------------
# tiny_rootfs's CHECK: the copied dropbear runs with the copied libraries
runs_here() {
  env -u LD_PRELOAD "$3" --library-path "$2" "$1/usr/bin/dropbearkey" -h 2>&1 | grep -q 'Usage' ||
    { log "copied dropbearkey does not run"; exit 1; }
}
r=$stage/rootfs
tiny_rootfs "$r" x86_64-linux-gnu "$bb" "$here/files/inittab" "sigvirt tiny" runs_here

# ---- boot partition and disk -------------------------------------------------------------------------
# 1 MiB gap | p1 48 MiB FAT16, bootable | p2 464 MiB Linux
cmdline=$(cat "$here/files/cmdline")
boot_files tiny "$cmdline" "$x/boot/vmlinuz-$kver" "$stage/initrd.gz" initrd.gz "$r/etc/os-release"
boot_fat "$stage/boot.img" 48 TINYBOOT 5a1b0000
disk_qcow2 0x5167a1b0 "$stage/boot.img" 48 "$stage/root.img" 464
build_done "kernel $kver"
