#!/usr/bin/env bash
# mmdebstrap hook of the lab host image, run after images/debian/customize.sh (which set up
# networking, sshd and the generalization): $2 = the root directory being built.
#   customize.sh essential ROOT   nothing (Debian's initramfs settings are enough)
#   customize.sh customize ROOT   libvirt at boot, its pool, the vagrant user
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
f=$here/files
stage=$1
r=${2:-}
if [ -z "$r" ] || [ ! -d "$r" ] || [ "$(cd "$r" && pwd -P)" = / ]; then echo "customize.sh: bad root '$r'" >&2; exit 1; fi
if [ "$stage" = essential ]; then exit 0; fi
[ "$stage" = customize ] || { echo "usage: $0 essential|customize ROOT" >&2; exit 2; }
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }; }

echo labhost > "$r/etc/hostname"

# ---- libvirt: started at boot, no network of its own, one dir pool ------------------------------
quiet chroot "$r" systemctl enable libvirtd.service virtlogd.socket
# Debian's unit starts libvirtd with --timeout 120 (exit when idle, socket activation brings it
# back); /etc/default/libvirtd overrides the unit's Environment=: a lab host's daemon stays up,
# so a region check or a copy never waits for it to start again
printf '# sigvirt labhost: no idle timeout\nLIBVIRTD_ARGS=""\n' >> "$r/etc/default/libvirtd"
# libvirt-daemon-config-network defines and autostarts `default`, a NAT network on
# 192.168.122.0/24: sigvirt never creates networks on private ranges, and lab hosts reach their
# guests through 127.0.0.1 forwards (user-mode NICs) as every sigvirt host does.
rm -f "$r/etc/libvirt/qemu/networks/autostart/default.xml" "$r/etc/libvirt/qemu/networks/default.xml"
install -d -m 0755 "$r/etc/libvirt/storage/autostart"
install -m 0644 "$f/pool-sigvirt-lab.xml" "$r/etc/libvirt/storage/sigvirt-lab.xml"
ln -sf ../sigvirt-lab.xml "$r/etc/libvirt/storage/autostart/sigvirt-lab.xml"

# ---- the vagrant user: Vagrant's insecure key (vagrant up replaces it), passwordless sudo, and
# the libvirt group (qemu:///system over qemu+ssh, through virt-ssh-helper) --------------------------
quiet chroot "$r" useradd --create-home --shell /bin/bash --groups libvirt,sudo vagrant
quiet chroot "$r" usermod --password '*' vagrant
install -d -m 0700 "$r/home/vagrant/.ssh"
install -m 0600 "$f/vagrant.pub" "$r/home/vagrant/.ssh/authorized_keys"
install -m 0440 "$f/sudoers-vagrant" "$r/etc/sudoers.d/vagrant"
install -d -m 0755 "$r/var/lib/sigvirt" "$r/var/lib/sigvirt/pools" "$r/var/lib/sigvirt/pools/lab"
uid=$(chroot "$r" id -u vagrant); gid=$(chroot "$r" id -g vagrant)
chown -R "$uid:$gid" "$r/home/vagrant" "$r/var/lib/sigvirt/pools/lab"
