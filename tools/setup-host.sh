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
  # Arm64 guests (image definitions with --architecture Arm64): qemu-system-aarch64, AAVMF
  qemu-system-arm qemu-efi-aarch64
  # Trusted Launch (SecurityType=TrustedLaunch): the vTPM 2.0 emulator and its setup tools
  swtpm swtpm-tools
  # building libvirt-python, the venv
  libvirt-dev pkg-config gcc python3-venv python3-dev
  # guest image recipes (images/)
  syslinux syslinux-common mtools fdisk dosfstools e2fsprogs mmdebstrap cpio fakeroot binutils
  # sharing (ACLs, the sudo rule for the ACL helper), the second-host lab, misc
  acl sudo openssh-server openssh-client iproute2 make
)
# Vagrant labs (vagrant/, tests marked vagrant): SIGVIRT_WITH_VAGRANT=1, as CI sets it.
# Without recommends: 67 packages instead of 230 (which upgrade perl under running processes).
if [ "${SIGVIRT_WITH_VAGRANT:-0}" = 1 ]; then apt_packages+=(vagrant vagrant-libvirt); fi

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

# swtpm's local CA (Trusted Launch's vTPM certificates): libvirt runs swtpm as 'tss' when
# that user existed at its start, as root when swtpm-tools came later; a CA root once made
# then locks tss out ("Need read/write rights on .../.lock.swtpm-localca"). tss owns it.
if id tss >/dev/null 2>&1 && [ -d /var/lib/swtpm-localca ]; then
  chown -R tss:root /var/lib/swtpm-localca
fi

# Lab hosts let members of the 'libvirt' group use qemu:///system (what polkit grants on
# systemd hosts; without polkit the socket must say so itself).
conf=/etc/libvirt/libvirtd.conf
changed=0
for kv in 'unix_sock_group = "libvirt"' 'unix_sock_rw_perms = "0770"' 'auth_unix_rw = "none"'; do
  key=${kv%% =*}
  if ! grep -qx "$kv" "$conf"; then
    sed -i "/^$key\b/d" "$conf"
    echo "$kv" >> "$conf"
    changed=1
  fi
done

if [ -d /run/systemd/system ]; then
  systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || systemctl start libvirtd
  [ "$changed" = 1 ] && systemctl restart libvirtd
else
  pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
  main_pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
  if [ "$changed" = 1 ] && [ -n "$main_pid" ] && kill -0 "$main_pid" 2>/dev/null; then
    # Running guests survive a libvirtd restart; the socket settings need one.
    log "restarting libvirtd ($main_pid) for the socket settings"
    kill "$main_pid"
    for _ in $(seq 50); do kill -0 "$main_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  main_pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
  if [ -z "$main_pid" ] || ! kill -0 "$main_pid" 2>/dev/null; then
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
# The venv is shared by checkouts on this host: reinstall when another checkout (or a
# changed pyproject.toml) was installed last.
stamp="$venv/.sigvirt-installed"
want="$here $(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing sigvirt (editable, from $here) with test extras into $venv"
  "$venv/bin/pip" install -q -e "$here[test]"
  echo "$want" > "$stamp"
fi
chmod -R a+rX "$(dirname "$venv")"

# For everyone on the lab host: the command on PATH, and the one root helper every user may
# run (it only makes a gallery's file ACLs match what the gallery's owners wrote).
ln -sf "$venv/bin/sigvirt" /usr/local/bin/sigvirt
rule="ALL ALL=(root) NOPASSWD: $venv/bin/sigvirt-access-sync"
if [ ! -f /etc/sudoers.d/sigvirt ] || [ "$(cat /etc/sudoers.d/sigvirt)" != "$rule" ]; then
  echo "$rule" > /etc/sudoers.d/sigvirt.tmp
  chmod 0440 /etc/sudoers.d/sigvirt.tmp
  visudo -cf /etc/sudoers.d/sigvirt.tmp >/dev/null
  mv /etc/sudoers.d/sigvirt.tmp /etc/sudoers.d/sigvirt
fi
mkdir -p /var/lib/sigvirt
# The shipped regions.yaml (one region: this machine) becomes the host's, unless it has one.
if [ ! -e /etc/sigvirt/regions.yaml ]; then
  install -D -m 0644 "$here/regions.yaml" /etc/sigvirt/regions.yaml
  log "installed /etc/sigvirt/regions.yaml (edit it to add regions)"
fi
log "ready: $venv/bin/sigvirt"
