# shellcheck shell=bash
# The Debian recipe's root file system, as a function other recipes build on (images/labhost):
# sourced after images/lib/common.sh. A recipe that sources this names images/debian in its
# cache key (BUILDS_ON in sigvirt/hosts/recipes.py), so a change here rebuilds it too.

# debian_rootfs ROOT PKGS HOOK...
#   mmdebstrap --variant=apt --mode=root of bookworm (+ -updates, -security) into ROOT with the
#   comma-separated PKGS, no Recommends, no docs/man/info/locales/lintian (the dpkg excludes stay
#   for later installs), dpkg's force-unsafe-io for the build only. Each HOOK is a script run as
#   `HOOK essential ROOT` (before PKGS are installed) and `HOOK customize ROOT` (at the end), in
#   the order given (images/debian/customize.sh first: it generalizes the image).
debian_rootfs() {
  local root=$1 pkgs=$2 hook
  shift 2
  local hooks=()
  for hook in "$@"; do
    hooks+=(--essential-hook="\"$hook\" essential \"\$1\"" --customize-hook="\"$hook\" customize \"\$1\"")
  done
  log "mmdebstrap bookworm: $pkgs"
  # shellcheck disable=SC2086  # MMDEBSTRAP_VERBOSE is a word list
  mmdebstrap --variant=apt --mode=root ${MMDEBSTRAP_VERBOSE:---quiet} \
    --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='force-unsafe-io' \
    --include="$pkgs" \
    "${hooks[@]}" \
    bookworm "$root" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  log "rootfs done ($(elapsed) s): $(du -sm "$root" | cut -f1) MB"
}

# debian_kernel ROOT: sets kernel and initrd to the newest kernel's files in ROOT/boot (exits 1
# if there are none).
debian_kernel() {
  local r=$1
  kernel=$(readlink -f "$r/vmlinuz" 2>/dev/null || true)
  [ -f "$kernel" ] || kernel=$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
  initrd=$r/boot/initrd.img-${kernel##*/vmlinuz-}
  if [ ! -f "$kernel" ] || [ ! -f "$initrd" ]; then log "no kernel/initrd in $r/boot"; exit 1; fi
}
