#!/usr/bin/env bash
# Host-side tests of the tiny image's cloud-init stand-in (no VM needed, a few seconds):
#  1. files/yaml.awk against PyYAML on every *.yaml / *.json here (busybox awk and, if present,
#     mawk and gawk), via flatten.py;
#  2. tiny-cloud-init applied to a scratch root directory (TCI_ROOT) for several seeds, checking
#     passwd/group/shadow, authorized_keys (content, modes, owners), hostname, write_files, plan.
# Usage: bash images/tiny/tests/run.sh   (env BUSYBOX=/path/to/busybox, PYTHON=python with PyYAML)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
files=$here/../files
tmp=$(mktemp -d /var/tmp/tiny-tests.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# busybox: the guest's awk/sh are busybox's, so test with the same one
bb=${BUSYBOX:-$(command -v busybox || true)}
if [ -z "$bb" ]; then
  (cd "$tmp" && apt-get download -q busybox-static >/dev/null 2>&1) || { echo "need busybox (apt-get download busybox-static failed)"; exit 1; }
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/bbx"
  bb=$tmp/bbx/bin/busybox
fi
mkdir -p "$tmp/bin"
for a in $("$bb" --list); do ln -sf "$bb" "$tmp/bin/$a"; done

py=${PYTHON:-}
if [ -z "$py" ]; then
  for c in /opt/sigvirt/venv/bin/python python3; do
    if "$c" -c 'import yaml' 2>/dev/null; then py=$c; break; fi
  done
fi

pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { # DESC COMMAND...
  local d=$1; shift
  if "$@"; then ok; else bad "$d"; fi
}

# ---- 1. parser vs PyYAML ---------------------------------------------------------------------
norm() { awk -F'\t' -v OFS='\t' '{ v = tolower($2); if (v == "true" || v == "false") $2 = v; print }'; }
if [ -n "$py" ]; then
  awks=("$bb awk")
  command -v mawk >/dev/null && awks+=(mawk)
  command -v gawk >/dev/null && awks+=(gawk)
  for f in "$here"/*.yaml "$here"/*.json; do
    "$py" "$here/flatten.py" "$f" > "$tmp/ref"
    for a in "${awks[@]}"; do
      $a -f "$files/yaml.awk" "$f" | norm > "$tmp/got"
      if diff -u "$tmp/ref" "$tmp/got" > "$tmp/diff"; then ok; else bad "yaml.awk ($a) differs from PyYAML on $(basename "$f")"; cat "$tmp/diff"; fi
    done
  done
else
  echo "note: no python with PyYAML, parser cross-check skipped"
fi

# ---- 2. applying seeds to a scratch root -----------------------------------------------------
newroot() {
  rm -rf "$tmp/root" "$tmp/run" "$tmp/seed"; mkdir -p "$tmp/root/etc" "$tmp/root/bin" "$tmp/root/root" "$tmp/run" "$tmp/seed"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$tmp/root/etc/passwd"
  printf 'root:x:0:\nadm:x:4:\nusers:x:100:\n' > "$tmp/root/etc/group"
  printf 'root:*:19000:0:99999:7:::\n' > "$tmp/root/etc/shadow"
  printf '127.0.0.1\tlocalhost\n' > "$tmp/root/etc/hosts"
  ln -s "$bb" "$tmp/root/bin/sh"
}
apply() { # META USERDATA  (file names in this directory, or absolute paths)
  local md=$1 ud=$2
  case "$md" in /*) ;; *) md=$here/$md ;; esac
  case "$ud" in /*|"") ;; *) ud=$here/$ud ;; esac
  cp "$md" "$tmp/seed/meta-data"
  if [ -n "$ud" ]; then cp "$ud" "$tmp/seed/user-data"; fi
  PATH=$tmp/bin TCI_ROOT=$tmp/root TCI_SEED_DIR=$tmp/seed TCI_LIB=$files TCI_RUN=$tmp/run \
    TCI_CONSOLE=$tmp/console TCI_NOEXEC=1 "$bb" sh "$files/tiny-cloud-init"
}
pwline() { awk -F: -v n="$1" '$1 == n' "$tmp/root/etc/passwd"; }
grmembers() { awk -F: -v n="$1" '$1 == n { print $4 }' "$tmp/root/etc/group"; }
mode() { stat -c %a "$1"; }
owner() { stat -c %u:%g "$1"; }

# smoke seed: user with key, shell fallback, groups (existing + new), hostname from meta-data
newroot; apply md-basic.yaml ud-smoke.yaml
check "smoke: console marker" grep -qx 'sigvirt-tiny: seed applied hostname=smoke-ab12cd users=labuser' "$tmp/console"
check "smoke: passwd line" test "$(pwline labuser)" = "labuser:x:1000:1000:labuser:/home/labuser:/bin/sh"
check "smoke: shadow '*'" grep -qx 'labuser:\*:[0-9]*:0:99999:7:::' "$tmp/root/etc/shadow"
check "smoke: own group" grep -qx 'labuser:x:1000:' "$tmp/root/etc/group"
check "smoke: adm member" test "$(grmembers adm)" = labuser
check "smoke: sudo group created" test "$(grmembers sudo)" = labuser
k=$tmp/root/home/labuser/.ssh/authorized_keys
check "smoke: key" grep -qx 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 lab@host' "$k"
check "smoke: .ssh 700" test "$(mode "${k%/*}")" = 700
check "smoke: keys 600" test "$(mode "$k")" = 600
check "smoke: keys owner" test "$(owner "$k")" = 1000:1000
check "smoke: home owner" test "$(owner "$tmp/root/home/labuser")" = 1000:1000
check "smoke: hostname file" test "$(cat "$tmp/root/etc/hostname")" = smoke-ab12cd
check "smoke: hosts" grep -q '^127.0.1.1	smoke-ab12cd$' "$tmp/root/etc/hosts"
check "smoke: runcmd 1 file" test "$(cat "$tmp/run/rc.0")" = 'echo ok > /var/tmp/runcmd-ok'
check "smoke: runcmd argv quoted" test "$(cat "$tmp/run/rc.1")" = "'sh' '-c' 'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"' \"quoted\" > /var/tmp/argv'"
check "smoke: runcmd argv runs" test "$(cd "$tmp" && "$bb" sh -c "echo() { printf '%s|' \"\$@\"; }; sh() { printf '%s|' \"\$@\"; }; $(cat "$tmp/run/rc.1")")" = "-c|echo 'it''s' \"quoted\" > /var/tmp/argv|"
check "smoke: instance state" test "$(cat "$tmp/root/var/lib/tiny-cloud-init/instance-id")" = iid-local01
# second boot, same seed: nothing duplicated
apply md-basic.yaml ud-smoke.yaml
check "smoke: reboot no dup user" test "$(grep -c '^labuser:' "$tmp/root/etc/passwd")" = 1
check "smoke: reboot no dup key" test "$(wc -l < "$k")" = 1
check "smoke: reboot no dup member" test "$(grmembers adm)" = labuser
check "smoke: reboot marker" test "$(grep -c 'seed applied' "$tmp/console")" = 2

# write_files, hostname from user-data, root keys
newroot; apply md-basic.yaml ud-writefiles.yaml
check "wf: marker" grep -qx 'sigvirt-tiny: seed applied hostname=wf-host users=' "$tmp/console"
check "wf: motd" test "$(cat "$tmp/root/etc/motd"; echo x)" = "$(printf 'Welcome to the lab.\n\n  Indented line, with a # hash\nlast line\nx')"
check "wf: hello 755" test "$(mode "$tmp/root/usr/local/bin/hello")" = 755
check "wf: hello content" test "$(cat "$tmp/root/usr/local/bin/hello"; echo x)" = "$(printf '#!/bin/sh\necho "hello: $1"x')"
check "wf: folded" test "$(cat "$tmp/root/etc/folded.txt"; echo x)" = "$(printf 'folded text joins lines\nnew paragraph\nx')"
check "wf: b64" test "$(cat "$tmp/root/etc/b64.txt")" = "hello base64"
check "wf: b64 600" test "$(mode "$tmp/root/etc/b64.txt")" = 600
check "wf: default 644" test "$(mode "$tmp/root/etc/motd")" = 644
check "wf: append" test "$(cat "$tmp/root/etc/append.txt")" = "one line"
check "wf: root key" grep -qx 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRootKey root@host' "$tmp/root/root/.ssh/authorized_keys"
check "wf: multi-line runcmd" test "$(cat "$tmp/run/rc.0")" = "$(printf 'set -e\necho multi-line\ntouch /var/tmp/multi\n')"
# append again on a new instance id: appended twice
sed 's/iid-local01/iid-local02/' "$here/md-basic.yaml" > "$tmp/md2.yaml"
apply "$tmp/md2.yaml" ud-writefiles.yaml
check "wf: new instance appends" test "$(cat "$tmp/root/etc/append.txt" | wc -l)" = 2
apply md-basic.yaml ud-writefiles.yaml
check "wf: new instance again" test "$(cat "$tmp/root/etc/append.txt" | wc -l)" = 3

# flow style, JSON meta-data with public-keys
newroot; apply md-json.json ud-flow.yaml
check "flow: marker" grep -qx 'sigvirt-tiny: seed applied hostname=flow-host users=alice' "$tmp/console"
check "flow: alice key" grep -qx 'ssh-ed25519 AAAAalice alice@h' "$tmp/root/home/alice/.ssh/authorized_keys"
check "flow: wheel" test "$(grmembers wheel)" = alice
check "flow: users" test "$(grmembers users)" = alice
check "flow: md public-keys -> root" grep -qx 'ssh-ed25519 AAAAjson json@host' "$tmp/root/root/.ssh/authorized_keys"
check "flow: runcmd list" test "$(cat "$tmp/run/rc.0")" = "'touch' '/tmp/a'"

# documentation examples
newroot; apply md-basic.yaml ud-docs-users.yaml
check "docs: marker" grep -qx 'sigvirt-tiny: seed applied hostname=smoke-ab12cd users=foobar,barfoo,cloudy,fizzbuzz,nosshlogins' "$tmp/console"
check "docs: foobar passwd hash kept (lock_passwd false)" grep -q '^foobar:\$6\$j212wezy\$' "$tmp/root/etc/shadow"
check "docs: barfoo locked" grep -q '^barfoo:\*:' "$tmp/root/etc/shadow"
check "docs: barfoo 2 keys" test "$(wc -l < "$tmp/root/home/barfoo/.ssh/authorized_keys")" = 2
check "docs: admin group" test "$(grmembers admin)" = barfoo
check "docs: admingroup members" test "$(grmembers admingroup)" = root,sys
check "docs: cloud-users" grep -q '^cloud-users:x:' "$tmp/root/etc/group"
check "docs: fizzbuzz shell fallback" test "$(pwline fizzbuzz | cut -d: -f7)" = /bin/sh

newroot; apply md-basic.yaml ud-edge.yaml
check "edge: marker" grep -qx 'sigvirt-tiny: seed applied hostname=edge users=quoted-name,late' "$tmp/console"
check "edge: uid 2001" test "$(pwline late | cut -d: -f3)" = 2001
check "edge: keys" test "$(cat "$tmp/root/home/quoted-name/.ssh/authorized_keys")" = "$(printf "ssh-ed25519 AAAA1 one@h\nssh-ed25519 AAAA2 it's@h")"
check "edge: keep" test "$(cat "$tmp/root/etc/keep.txt"; echo x)" = "$(printf 'kept\n\nx')"
check "edge: strip" test "$(cat "$tmp/root/etc/strip.txt"; echo x)" = "folded strippedx"
check "edge: space path + escapes" test "$(cat "$tmp/root/etc/with space.txt"; echo x)" = "$(printf 'a\tb\\c\nx')"
check "edge: 0600 unquoted" test "$(mode "$tmp/root/etc/with space.txt")" = 600
check "edge: empty file" test -f "$tmp/root/etc/empty" -a ! -s "$tmp/root/etc/empty"

newroot; apply md-basic.yaml ud-crlf.yaml
check "crlf: marker" grep -qx 'sigvirt-tiny: seed applied hostname=crlf-host users=winuser' "$tmp/console"
check "crlf: key" grep -qx 'ssh-ed25519 AAAAcrlf w@h' "$tmp/root/home/winuser/.ssh/authorized_keys"

newroot; apply md-basic.yaml ud-script.sh
check "script: marker" grep -qx 'sigvirt-tiny: seed applied hostname=smoke-ab12cd users=' "$tmp/console"
check "script: kept" test -x "$tmp/root/var/lib/tiny-cloud-init/scripts/user-data"

newroot; apply md-basic.yaml ""
check "meta only: marker" grep -qx 'sigvirt-tiny: seed applied hostname=smoke-ab12cd users=' "$tmp/console"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
