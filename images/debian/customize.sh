#!/usr/bin/env bash
# mmdebstrap hooks of the Debian image (run on the host, $2 = the root directory being built).
#   customize.sh essential ROOT   before the --include packages: initramfs settings
#   customize.sh customize ROOT   at the end: configuration and generalization
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
f=$here/files
stage=$1
r=${2:-}
[ -n "$r" ] && [ -d "$r" ] && [ "$(cd "$r" && pwd -P)" != / ] || { echo "customize.sh: bad root '$r'" >&2; exit 1; }

if [ "$stage" = essential ]; then
  # read by update-initramfs when linux-image-* is installed next
  install -D -m 0644 "$f/initramfs-sigvirt.conf" "$r/etc/initramfs-tools/conf.d/sigvirt.conf"
  install -D -m 0644 "$f/initramfs-modules" "$r/usr/share/initramfs-tools/modules.d/sigvirt"
  exit 0
fi
[ "$stage" = customize ] || { echo "usage: $0 essential|customize ROOT" >&2; exit 2; }

# ---- boot: fstab, hostname ------------------------------------------------------------------------
printf '# <fs>\t<mount>\t<type>\t<options>\t<dump>\t<pass>\nLABEL=debroot\t/\text4\trw,errors=remount-ro\t0\t1\n' > "$r/etc/fstab"
echo debian > "$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n' > "$r/etc/hosts"

# ---- cloud-init, network, ssh, readiness marker --------------------------------------------------------
# (a recipe built on this one without cloud-init, images/labhost, has no /etc/cloud)
[ ! -d "$r/etc/cloud" ] || install -m 0644 "$f/90-sigvirt.cfg" "$r/etc/cloud/cloud.cfg.d/90-sigvirt.cfg"
install -D -m 0644 "$f/80-sigvirt-dhcp.network" "$r/etc/systemd/network/80-sigvirt-dhcp.network"
install -D -m 0644 "$f/wait-online-any.conf" "$r/etc/systemd/system/systemd-networkd-wait-online.service.d/sigvirt.conf"
install -D -m 0644 "$f/ssh-sigvirt.conf" "$r/etc/systemd/system/ssh.service.d/sigvirt.conf"
install -m 0644 "$f/sigvirt-ready.service" "$r/etc/systemd/system/sigvirt-ready.service"
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }; }
quiet chroot "$r" systemctl enable systemd-networkd.service sigvirt-ready.service
# no guest-initiated traffic or background I/O from timers
quiet chroot "$r" systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
  dpkg-db-backup.timer dpkg-db-backup.service fstrim.timer fstrim.service \
  e2scrub_all.timer e2scrub_all.service e2scrub_reap.service
# First-boot work cloud-init would redo for every instance, done once here (measured under TCG,
# issue 18). The seed's ssh_pwauth: false: Debian's cloud-init writes it to this drop-in and
# restarts sshd when the file changes (1.3-2.6 s of cloud-config, and sshd gone for a moment just
# after it first answered); already there, nothing changes and sshd keeps running. cc_locale finds
# LANG=C.UTF-8 already set and runs no update-locale (0.8-2.4 s).
if [ -d "$r/etc/cloud" ]; then
  printf 'PasswordAuthentication no\n' > "$r/etc/ssh/sshd_config.d/50-cloud-init.conf"
  printf 'LANG=C.UTF-8\n' > "$r/etc/default/locale"
fi
# the serial console: a getty without clearing the screen
mkdir -p "$r/etc/systemd/system/serial-getty@ttyS0.service.d"
printf '[Service]\nTTYVTDisallocate=no\n' > "$r/etc/systemd/system/serial-getty@ttyS0.service.d/sigvirt.conf"

# force-unsafe-io only speeds up the build; the guest's own dpkg keeps syncing
sed -i '/^force-unsafe-io$/d' "$r/etc/dpkg/dpkg.cfg.d/99mmdebstrap" 2>/dev/null || true

# ---- generalize ----------------------------------------------------------------------------------------
rm -f "$r"/etc/ssh/ssh_host_*
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id" "$r/var/lib/systemd/random-seed" "$r/var/lib/systemd/credential.secret"
rm -rf "$r/var/lib/cloud"/* "$r/var/log/cloud-init"*.log
find "$r/var/log" -type f -exec truncate -s 0 {} +
rm -f "$r/etc/resolv.conf"; : > "$r/etc/resolv.conf"
# (apt lists and caches are cleaned by mmdebstrap itself after this hook. Never touch $r/tmp
# here: mmdebstrap keeps its apt configuration there, and apt run without it works on the host.)
rm -f "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r/root/.bash_history"
