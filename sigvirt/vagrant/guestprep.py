"""What runs inside the guest that becomes a box: the seed's preparation and the
generalization before power-off. Plain POSIX sh, for cloud-init images and for the tiny
image's busybox alike.

The seed creates user `vagrant` with Vagrant's insecure key and the export's own key, and
runs `prepare` once as root (cloud-init's runcmd, or tiny-cloud-init's). `prepare` fills in
what Vagrant needs and an image may lack: on an image without sudo (the tiny one) the
`vagrant` user becomes a second name for uid 0 and `sudo` a stand-in that runs the command
as it is (passwordless sudo amounts to that anyway); on an image without scp, a sink-only
`scp` (Vagrant uploads its replacement key and provisioner scripts with scp). It leaves a
marker in /run when done. `generalize` then removes the export's key, cloud-init's state,
the machine id's content, the SSH host keys and the preparation script.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

import yaml

# Vagrant's well-known insecure key pair (keys/vagrant.pub in every Vagrant release): boxes
# ship it, and `vagrant up` replaces it with a key of the machine's own at the first boot.
INSECURE_PUBLIC_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNlt"
    "GEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8d"
    "JSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAm"
    "CP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK"
    "8jlqm8tehUc9c9WhQ== vagrant insecure public key"
)
USER = "vagrant"
PREPARE_PATH = "/var/lib/sigvirt-box/prepare.sh"
MARKER = "/run/sigvirt-box.prepared"
KEY_TAG = "sigvirt-box-export"  # the comment of the export's own key: what generalize removes

SUDO_SHIM = r"""#!/bin/sh
# sudo for an image that has none (written by sigvirt's export-box): the vagrant user is
# uid 0 here, so the command runs as it is. Takes the options Vagrant and testinfra pass.
home=
while [ $# -gt 0 ]; do
    case "$1" in
        -u) [ "$2" = root ] || [ "$2" = 0 ] || { echo "sudo: only root here" >&2; exit 1; }
            shift 2 ;;
        -H|-i) home=1; shift ;;
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "sudo: not allowed on this image" >&2; exit 1; }
[ -z "$home" ] || export HOME=/root
[ $# -gt 0 ] || exec /bin/sh -l
exec "$@"
"""

SCP_SHIM = r"""#!/bin/sh
# The sink side of scp (`scp -t DEST`, files only), written by sigvirt's export-box for an
# image without scp: Vagrant uploads its own key and provisioner scripts this way.
dest=
for a in "$@"; do case "$a" in -*) ;; *) dest=$a ;; esac; done
ack() { printf '\000'; }
ack
while IFS= read -r line; do
    case "$line" in
        C*) set -- $line
            size=$2 name=$3
            case "$size" in ''|*[!0-9]*) printf '\001bad size\n'; exit 1 ;; esac
            target=$dest
            [ -d "$dest" ] && target=$dest/$name
            : > "$target" || { printf '\001cannot write %s\n' "$target"; exit 1; }
            chmod "${1#C}" "$target" 2>/dev/null
            ack
            blocks=$((size / 4096)) rest=$((size % 4096))
            { [ "$blocks" -eq 0 ] || dd bs=4096 count="$blocks" iflag=fullblock 2>/dev/null
              [ "$rest" -eq 0 ] || dd bs=1 count="$rest" 2>/dev/null; } > "$target"
            dd bs=1 count=1 of=/dev/null 2>/dev/null
            ack ;;
        T*) ack ;;
        *) printf '\001unsupported: %s\n' "${line%% *}"; exit 1 ;;
    esac
done
exit 0
"""

PREPARE = f"""#!/bin/sh
# Run once as root by the seed (sigvirt export-box): make this guest ready for Vagrant.
home=$(awk -F: '$1 == "{USER}" {{ print $6 }}' /etc/passwd)
[ -n "$home" ] || {{ echo "sigvirt-box: no user {USER}" >&2; exit 1; }}
if command -v sudo >/dev/null 2>&1; then
    mkdir -p /etc/sudoers.d
    echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}
    chmod 0440 /etc/sudoers.d/{USER}
else
    awk -F: -v OFS=: '$1 == "{USER}" {{ $3 = 0; $4 = 0 }} {{ print }}' /etc/passwd \\
        > /etc/passwd.sigvirt && cat /etc/passwd.sigvirt > /etc/passwd
    rm -f /etc/passwd.sigvirt
    chown -R 0:0 "$home"
    printf '%s' {shlex.quote(SUDO_SHIM)} > /usr/bin/sudo && chmod 0755 /usr/bin/sudo
fi
if ! command -v scp >/dev/null 2>&1; then
    printf '%s' {shlex.quote(SCP_SHIM)} > /usr/bin/scp && chmod 0755 /usr/bin/scp
fi
touch {MARKER}
"""


def seed_user_data(prepare: str = PREPARE) -> bytes:
    """The seed's custom data: the preparation script (base64: one line for every YAML
    reader, tiny-cloud-init's included) and the runcmd that runs it once."""
    doc = {
        "write_files": [
            {
                "path": PREPARE_PATH,
                "permissions": "0700",
                "encoding": "b64",
                "content": base64.b64encode(prepare.encode()).decode(),
            }
        ],
        "runcmd": [f"sh {PREPARE_PATH}"],
    }
    return ("#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1 << 20)).encode()


FACTS = (
    "for p in bash sudo scp rsync cloud-init systemctl; do "
    "command -v $p >/dev/null 2>&1 && echo have=$p; done; "
    "sed -n 's/^PRETTY_NAME=/os=/p; s/^ID=/id=/p' /etc/os-release 2>/dev/null; true"
)

# os-release IDs Vagrant 2.3 detects as a guest of their own (plugins/guests/*); any other
# Linux is given `config.vm.guest = :linux` by the box, or Vagrant stops at "the guest
# operating system of the machine could not be detected".
KNOWN_GUESTS = frozenset(
    {
        "alpine", "alt", "amzn", "arch", "centos", "coreos", "debian", "elementary", "fedora",
        "funtoo", "gentoo", "kali", "linuxmint", "mint", "nixos", "ol", "opensuse",
        "opensuse-leap", "opensuse-tumbleweed", "photon", "pld", "rhel", "rocky", "almalinux",
        "sles", "slackware", "suse", "trisquel", "ubuntu",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Facts:
    have: frozenset[str]  # programs found: bash, sudo, scp, rsync, cloud-init, systemctl
    os_name: str  # PRETTY_NAME
    os_id: str  # ID

    @property
    def vagrant_knows(self) -> bool:
        return self.os_id in KNOWN_GUESTS


def parse_facts(text: str) -> Facts:
    """What FACTS printed."""
    lines = text.splitlines()

    def value(prefix: str) -> str:
        found = (ln[len(prefix) :] for ln in lines if ln.startswith(prefix))
        return next(found, "").strip().strip('"')

    have = frozenset(ln[5:] for ln in lines if ln.startswith("have="))
    return Facts(have, value("os="), value("id="))


def generalize_script() -> str:
    """As root, last thing before power-off: what made this boot this instance goes."""
    return f"""set -u
home=$(awk -F: '$1 == "{USER}" {{ print $6 }}' /etc/passwd)
ids=$(awk -F: '$1 == "{USER}" {{ print $3 ":" $4 }}' /etc/passwd)
mkdir -p "$home/.ssh"
echo {shlex.quote(INSECURE_PUBLIC_KEY)} > "$home/.ssh/authorized_keys"
chmod 0700 "$home/.ssh" && chmod 0600 "$home/.ssh/authorized_keys"
chown -R "$ids" "$home/.ssh"
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
    [ -f "$f" ] && sed -i '/{KEY_TAG}/d' "$f"
done
if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs || exit 1; fi
rm -rf /var/lib/tiny-cloud-init /var/log/tiny-cloud-init.log
# emptied, not removed: without the file systemd-firstboot waits at a console prompt
[ -e /etc/machine-id ] && : > /etc/machine-id
dbus=/var/lib/dbus/machine-id
[ -f "$dbus" ] && [ ! -L "$dbus" ] && rm -f "$dbus"
rm -f /etc/ssh/ssh_host_*key /etc/ssh/ssh_host_*key.pub /etc/dropbear/dropbear_*_host_key
rm -f /var/lib/systemd/random-seed /root/.ash_history /root/.bash_history \\
    "$home/.ash_history" "$home/.bash_history" {PREPARE_PATH} {MARKER}
rmdir {PREPARE_PATH.rsplit("/", 1)[0]} 2>/dev/null
sync
"""
