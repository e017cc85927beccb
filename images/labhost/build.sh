#!/usr/bin/env bash
# Build a lab host: the Debian 12 image of images/debian (systemd, networkd DHCP, openssh, the
# cloud kernel, generalized) without cloud-init, plus libvirt and QEMU, so that the machine is a
# libvirt host sigvirt reaches over qemu+ssh as one region (vagrant/lab/).
#
#   bash images/labhost/build.sh OUT.qcow2 [WORKDIR]
#
# Added to Debian's system: libvirt-daemon-system (libvirtd enabled at boot; its virt-ssh-helper
# is what a qemu+ssh client runs on this side), qemu-system-x86, qemu-utils; a dir pool
# `sigvirt-lab` at /var/lib/sigvirt/pools/lab (autostarted, owned by the vagrant user); user
# `vagrant` with Vagrant's insecure key, passwordless sudo and the libvirt group. libvirt's
# `default` NAT network is removed. No packages are downloaded inside the guest.
# No cloud-init: the machines boot as Vagrant boxes, and everything instance-specific is made at
# first boot without it (the SSH host key by ssh.service's drop-in, the machine id by systemd,
# the hostname by Vagrant); under TCG cloud-init's four Python stages would cost ~60 s per boot.
#
# Disk (MBR, id 0x5167deb1): p1 FAT16 128 MiB "LABBOOT" | p2 ext4 "debroot" (Debian's fstab and
# command line), the rest of 4 GiB: room for replicas in the pool.
#
# Shared: images/lib/common.sh (prelude, boot partition, disk) and images/debian (rootfs.sh: the
# mmdebstrap call; customize.sh: Debian's configuration and generalization, run before ours).
# shellcheck disable=SC2086
# (word lists such as $BOOT_PKGS are split on purpose)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
debian=$here/../debian
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=../debian/rootfs.sh
. "$debian/rootfs.sh"
build_begin labhost "$@"
[ "$(id -u)" -eq 0 ] || { log "run as root (mmdebstrap --mode=root)"; exit 1; }
require_tools mmdebstrap

ROOT_UUID=6d0e5a3c-1f2b-4c3d-8e4f-5a6b7c8d9e1f
HASH_SEED=7a8b9c0d-1e2f-4031-8243-54657687980a

fetch_debs $BOOT_PKGS
extract_debs $BOOT_PKGS

r=$stage/rootfs
pkgs=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,iproute2,procps,sudo,zstd
pkgs+=,libvirt-daemon-system,qemu-system-x86,qemu-utils
debian_rootfs "$r" "$pkgs" "$debian/customize.sh" "$here/customize.sh"
debian_kernel "$r"

# 1 MiB gap | p1 128 MiB FAT16, bootable | p2 3967 MiB Linux = 4 GiB
cmdline=$(cat "$debian/files/cmdline")
boot_files labhost "$cmdline" "$kernel" "$initrd" initrd.img "$r/etc/os-release"
boot_fat "$stage/boot.img" 128 LABBOOT 1ab0b000
root_ext4 "$r" "$stage/root.img" 3967 debroot "$ROOT_UUID" "$HASH_SEED"
disk_qcow2 0x5167deb1 "$stage/boot.img" 128 "$stage/root.img" 3967
build_done "kernel ${kernel##*/vmlinuz-}"
