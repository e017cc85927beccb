#!/usr/bin/env bash
# Build the Secure Boot variant of the Debian image (images/debian): the same root file system
# (rootfs.sh, customize.sh; cloud-init, generalized) plus mokutil, booting under UEFI Secure Boot
# with Microsoft's keys enrolled (OVMF_CODE_4M.ms.fd, sigvirt's Trusted Launch) through the
# signed chain Debian ships:
#   \EFI\BOOT\BOOTX64.EFI  shim (shim-signed: signed by Microsoft's UEFI CA, holds Debian's key)
#   \EFI\BOOT\grubx64.efi  GRUB (grub-efi-amd64-signed: signed by Debian), also \EFI\debian\
#   \EFI\BOOT\mmx64.efi    MokManager (shim-helpers-amd64-signed), which shim wants beside it
#   /vmlinuz               the signed cloud kernel (linux-image-cloud-amd64), /initrd.img
#   grub.cfg               files/grub.cfg with the debian recipe's command line
# shim, GRUB and MokManager are unpacked from their .debs on the host, not installed in the
# guest (their maintainer scripts would run grub-install); no packages are downloaded inside
# the guest. BIOS still boots through syslinux (the same FAT partition as images/debian).
#
#   bash images/debian-sb/build.sh OUT.qcow2 [WORKDIR]
#
# Disk (MBR, id 0x5167deb2): p1 FAT16 128 MiB, bootable, "DEBSBBOOT" | p2 ext4 "debroot", the
# rest of 2 GiB. Shared: images/lib/common.sh and images/debian (rootfs.sh, customize.sh, files/).
# shellcheck disable=SC2086
# (word lists such as $BOOT_PKGS are split on purpose)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
debian=$here/../debian
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=../debian/rootfs.sh
. "$debian/rootfs.sh"
build_begin debian-sb "$@"
[ "$(id -u)" -eq 0 ] || { log "run as root (mmdebstrap --mode=root)"; exit 1; }
require_tools mmdebstrap

ROOT_UUID=6d0e5a3c-1f2b-4c3d-8e4f-5a6b7c8d9e2f
HASH_SEED=7a8b9c0d-1e2f-4031-8243-54657687980b
SB_PKGS="shim-signed grub-efi-amd64-signed shim-helpers-amd64-signed"

fetch_debs $BOOT_PKGS $SB_PKGS
extract_debs $BOOT_PKGS $SB_PKGS

r=$stage/rootfs
pkgs=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,cloud-init,cloud-guest-utils,qemu-guest-agent,iproute2,procps,sudo,zstd
pkgs+=,mokutil
debian_rootfs "$r" "$pkgs" "$debian/customize.sh"
debian_kernel "$r"

# 1 MiB gap | p1 128 MiB FAT16, bootable | p2 1919 MiB Linux = 2 GiB
cmdline=$(cat "$debian/files/cmdline")
boot_files debian "$cmdline" "$kernel" "$initrd" initrd.img "$r/etc/os-release"
boot_fat "$stage/boot.img" 128 DEBSBBOOT 5deb5b00
# UEFI: shim in place of the UKI (unsigned: Secure Boot would refuse it), GRUB and its config
sed "s|@CMDLINE@|$cmdline|" "$here/files/grub.cfg" > "$stage/grub.cfg"
cp "$x/usr/lib/shim/shimx64.efi.signed" "$stage/BOOTX64.EFI"
cp "$x/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$stage/grubx64.efi"
cp "$x/usr/lib/shim/mmx64.efi.signed" "$stage/mmx64.efi"
touch -d "@$SOURCE_DATE_EPOCH" "$stage/grub.cfg" "$stage"/*.efi "$stage/BOOTX64.EFI"
mcopy -o -m -i "$stage/boot.img" "$stage/BOOTX64.EFI" "$stage/grubx64.efi" "$stage/mmx64.efi" \
  "$stage/grub.cfg" ::/EFI/BOOT/
mmd -i "$stage/boot.img" ::/EFI/debian
mcopy -m -i "$stage/boot.img" "$stage/grubx64.efi" "$stage/grub.cfg" ::/EFI/debian/
root_ext4 "$r" "$stage/root.img" 1919 debroot "$ROOT_UUID" "$HASH_SEED"
disk_qcow2 0x5167deb2 "$stage/boot.img" 128 "$stage/root.img" 1919
build_done "kernel ${kernel##*/vmlinuz-}, shim $(dpkg-deb -f "$(debfile shim-signed)" Version)"
