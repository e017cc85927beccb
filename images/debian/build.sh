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
#
# Shared prelude, boot partition and disk assembly: images/lib/common.sh.
# shellcheck disable=SC2086,SC2015
# (word lists such as $BOOT_PKGS are split on purpose; `A && B || { log ...; exit 1; }`
# is an assertion)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=rootfs.sh
. "$here/rootfs.sh"
build_begin debian "$@"
[ "$(id -u)" -eq 0 ] || { log "run as root (mmdebstrap --mode=root)"; exit 1; }
require_tools mmdebstrap

ROOT_UUID=6d0e5a3c-1f2b-4c3d-8e4f-5a6b7c8d9e0f
HASH_SEED=7a8b9c0d-1e2f-4031-8243-546576879809

# ---- boot loader files (host side, not installed in the guest) ---------------------------------------
fetch_debs $BOOT_PKGS
extract_debs $BOOT_PKGS

# ---- root filesystem -----------------------------------------------------------------------------
r=$stage/rootfs
pkgs=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,cloud-init,cloud-guest-utils,qemu-guest-agent,iproute2,procps,sudo,zstd
debian_rootfs "$r" "$pkgs" "$here/customize.sh"
debian_kernel "$r"

# ---- boot partition, root filesystem image and disk ------------------------------------------------
# 1 MiB gap | p1 128 MiB FAT16, bootable | p2 1919 MiB Linux = 2 GiB
cmdline=$(cat "$here/files/cmdline")
boot_files debian "$cmdline" "$kernel" "$initrd" initrd.img "$r/etc/os-release"
boot_fat "$stage/boot.img" 128 DEBBOOT 5deb0000
root_ext4 "$r" "$stage/root.img" 1919 debroot "$ROOT_UUID" "$HASH_SEED"
disk_qcow2 0x5167deb0 "$stage/boot.img" 128 "$stage/root.img" 1919
build_done "kernel ${kernel##*/vmlinuz-}"
