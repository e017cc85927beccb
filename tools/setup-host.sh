#!/usr/bin/env bash
# Prepare a Debian 12 lab host for sigvirt, idempotently: packages, daemons, /dev/kvm, venv.
# Runs as root. On a host booted with systemd the system's own units run libvirt; without
# systemd (containers, CI sandboxes) the daemons are started here, once.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SIGVIRT_VENV:-/opt/sigvirt/venv}

apt_packages=(
  # hypervisor and tools
  qemu-system-x86 qemu-utils ovmf libvirt-daemon-system libvirt-clients
  # building libvirt-python, the venv
  libvirt-dev pkg-config gcc python3-venv python3-dev
  # guest image recipes (images/)
  syslinux syslinux-common mtools fdisk dosfstools e2fsprogs mmdebstrap cpio fakeroot
  # sharing (ACLs), the second-host lab (sshd on loopback), misc
  acl openssh-server openssh-client iproute2 make
)

log() { printf 'setup-host: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run as root (sudo $0)"; exit 1
fi

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# /dev/kvm: what udev would do. At 0600 root:root libvirt re-probes QEMU on every lookup
# (a define then takes over a minute), and QEMU run as libvirt-qemu could not use KVM at all.
if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

if [ -d /run/systemd/system ]; then
  systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || systemctl start libvirtd
else
  pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
  if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"; libvirtd -d
  fi
fi
for _ in $(seq 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null

# The venv is made from Debian's python3 so that users other than root can run the CLI
# (a pyenv Python under /root is not readable by them).
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp="$venv/.sigvirt-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  log "installing sigvirt (editable) with test extras into $venv"
  "$venv/bin/pip" install -q -e "$here[test]"
  touch "$stamp"
fi
chmod -R a+rX "$(dirname "$venv")"
log "ready: $venv/bin/sigvirt"
