#!/usr/bin/env bash
# Build the "tiny" guest image for arm64 (aarch64): the same guest as images/tiny (busybox +
# dropbear + Debian's cloud kernel + the cloud-init stand-in in ../tiny/files/), from Debian's
# arm64 packages, booted by UEFI (AAVMF) through an arm64 unified kernel image.
#
#   bash images/tiny-arm64/build.sh OUT.qcow2 [WORKDIR]
#
# Disk (MBR, id 0x5167a1b4, no boot code: UEFI only): p1 FAT16 48 MiB "TINYBOOT" holding only
# \EFI\BOOT\BOOTAA64.EFI (systemd-boot-efi arm64's linuxaa64.efi.stub + .osrel, .cmdline,
# .linux = the kernel's uncompressed Image, .initrd) | p2 ext4 "tinyroot" 464 MiB.
# The arm64 packages are downloaded and unpacked (dpkg-deb -x), never executed: no binfmt,
# qemu-user or chroot. apt sees arm64 through a private apt state (apt_foreign below), not the
# host's configuration. Programs the build runs (busybox --list-full, busybox depmod) are the
# host's amd64 busybox-static, fetched the same way. The UKI is assembled by pe-add-sections.py
# because the host's x86-64 binutils has no aarch64 PE target.
#
# Shared prelude and disk helpers: images/lib/common.sh; the root file system and the guest files:
# images/tiny/rootfs.sh and images/tiny/files/ (the recipe BUILDS_ON tiny in
# sigvirt/hosts/recipes.py, so they are part of the cache key).
# shellcheck disable=SC2086,SC2015
# (word lists such as $pkgs, $modules are split on purpose; `A && B || { log ...; exit 1; }`
# is an assertion)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
# shellcheck source=../tiny/rootfs.sh
. "$here/../tiny/rootfs.sh"
build_begin tiny-arm64 "$@"
require_tools apt-cache apt-config debugfs cpio gzip readelf python3

# Reproducibility (besides SOURCE_DATE_EPOCH): fixed UUIDs and seeds (the root UUID differs from
# the amd64 image's so both can sit on one host's disks without findfs confusion)
ROOT_UUID=5f1b6a7e-7b64-4d1e-9f3c-0c1d2e3f4aa4
HASH_SEED=2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f8a4
deb_arch=$(dpkg --print-architecture)

# debfile PACKAGE (replaces common.sh's): the newest $work/debs/PACKAGE_*_{$deb_arch,all}.deb,
# so the host's amd64 busybox and the guest's arm64 packages can share $work/debs.
debfile() {
  local f
  f=$(find "$work/debs" -maxdepth 1 \( -name "${1}_*_${deb_arch}.deb" -o -name "${1}_*_all.deb" \) | sort -V | tail -n 1)
  [ -n "$f" ] || { log "no .deb for $1 ($deb_arch)"; exit 1; }
  echo "$f"
}

# apt_foreign ARCH
#   Makes the apt calls of this build (aptopts: apt-cache, fetch_debs) see Debian's ARCH packages
#   instead of the host's, without touching the host's apt configuration: a private apt state in
#   $work/apt-ARCH (kept with WORKDIR; `apt-get update` into it is incremental) with copies of
#   the host's sources (where apt-config says they are; a source limited to other architectures
#   is simply skipped), an empty dpkg status, no preferences, APT::Architecture(s) = ARCH. The
#   host's keyrings and apt.conf.d (proxies) still apply. Sets deb_arch = ARCH.
apt_foreign() {
  local arch=$1 a=$work/apt-$1 f SL="" SP=""
  eval "$(apt-config shell SL Dir::Etc::SourceList/f SP Dir::Etc::SourceParts/d)"
  rm -rf "${a:?}/etc"
  mkdir -p "$a/etc/sources.list.d" "$a/etc/preferences.d" "$a/lists/partial" "$a/archives/partial"
  : > "$a/status"; : > "$a/etc/sources.list"
  [ -f "$SL" ] && cp "$SL" "$a/etc/sources.list"
  for f in "$SP"*.list "$SP"*.sources; do [ -f "$f" ] && cp "$f" "$a/etc/sources.list.d/"; done
  aptopts+=(-o "APT::Architecture=$arch" -o "APT::Architectures=$arch"
    -o "Dir::State::Lists=$a/lists" -o "Dir::State::status=$a/status"
    -o "Dir::Cache::archives=$a/archives"
    -o "Dir::Etc::SourceList=$a/etc/sources.list" -o "Dir::Etc::SourceParts=$a/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$a/etc/preferences" -o "Dir::Etc::PreferencesParts=$a/etc/preferences.d")
  deb_arch=$arch
  apt-get "${aptopts[@]}" -q -o APT::Sandbox::User=root update >"$stage/apt-$arch.log" 2>&1 ||
    { cat "$stage/apt-$arch.log" >&2; log "apt-get update for $arch failed"; exit 1; }
  compgen -G "$a/lists/*binary-${arch}_Packages*" >/dev/null ||
    { log "no source of the host has $arch packages"; exit 1; }
}

# ---- the host's busybox (runs here: applet list, depmod) ---------------------------------------
fetch_debs busybox-static
hostx=$stage/hostbb; mkdir -p "$hostx"
dpkg-deb -x "$(debfile busybox-static)" "$hostx"
hostbb=$hostx/bin/busybox

# ---- arm64 packages ----------------------------------------------------------------------------
apt_foreign arm64
kpkg=$(apt-cache "${aptopts[@]}" depends linux-image-cloud-arm64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-arm64"; exit 1; }
kver=${kpkg#linux-image-}
libdeps() { apt-cache "${aptopts[@]}" depends "$@" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }' | sort -u; }
l1=$(libdeps dropbear-bin openssh-sftp-server)
l2=$(libdeps $l1)
pkgs=$(printf '%s\n' busybox-static dropbear-bin openssh-sftp-server systemd-boot-efi $l1 $l2 | sort -u)
log "kernel $kver; downloading: $kpkg" $pkgs
fetch_debs "$kpkg" $pkgs
kdeb=$(debfile "$kpkg")
kmdirs="drivers/virtio drivers/block drivers/net drivers/char drivers/cdrom drivers/acpi drivers/input drivers/scsi fs/isofs fs/fat fs/nls net/core"
kpatterns=("./boot/vmlinuz-$kver")
for d in $kmdirs; do kpatterns+=("./lib/modules/$kver/kernel/$d/*"); done
(dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" --wildcards "${kpatterns[@]}" 2>/dev/null) &
kpid=$!
extract_debs $pkgs
wait "$kpid" || true   # a pattern with no match (a directory this kernel lacks) is not an error
bb=$x/bin/busybox
kmods=$x/lib/modules/$kver
[ -f "$x/boot/vmlinuz-$kver" ] && [ -d "$kmods" ] || { log "kernel $kver not found in the package"; exit 1; }
# Debian's arm64 vmlinuz is a gzip-compressed Image; the EFI stub loads the PE image inside an
# uncompressed Image (this kernel has no EFI zboot), so the UKI carries the decompressed one.
if gzip -t "$x/boot/vmlinuz-$kver" 2>/dev/null; then
  gzip -dc "$x/boot/vmlinuz-$kver" > "$stage/Image"
else
  cp "$x/boot/vmlinuz-$kver" "$stage/Image"
fi
[ "$(head -c 2 "$stage/Image")" = MZ ] || { log "the kernel Image has no EFI (PE) header"; exit 1; }

# ---- initramfs: busybox + modules ---------------------------------------------------------------
# virtio over PCI (the virt machine's PCIe root) and over MMIO, block/SCSI, net, rng, console, the
# seed's filesystems (isofs + cdrom, vfat + fat + nls) and the ACPI power button where they are
# modules; whatever this kernel has built in (`modules.builtin`) is skipped.
modules="virtio_pci virtio_mmio virtio_blk virtio_scsi sd_mod virtio_net virtio-rng virtio_console isofs nls_utf8 nls_cp437 nls_ascii nls_iso8859-1 vfat button evdev"
ird=$stage/initrd; mkdir -p "$ird/bin" "$ird/etc" "$ird/lib/modules/$kver"
cp "$bb" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
install -m 0755 "$tiny_files/init" "$ird/init"
# modules.builtin is not among the extracted patterns: get it from the package
dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" "./lib/modules/$kver/modules.builtin"
declare -A kmpath=() kmdone=() builtin=()
while read -r f; do n=${f##*/}; n=${n%.ko}; kmpath[${n//-/_}]=${f#"$kmods"/}; done < <(find "$kmods/kernel" -name '*.ko')
while read -r f; do n=${f##*/}; n=${n%.ko}; builtin[${n//-/_}]=1; done < "$kmods/modules.builtin"
loaded=
addmod() {
  local n=${1//-/_} f dep
  [ -n "${kmdone[$n]:-}" ] && return 0
  kmdone[$n]=1
  f=${kmpath[$n]:-}
  if [ -z "$f" ]; then
    [ -n "${builtin[$n]:-}" ] && return 0
    log "module $1 neither under kernel/{$kmdirs} nor built into $kver"; exit 1
  fi
  mkdir -p "$ird/lib/modules/$kver/$(dirname "$f")"
  cp "$kmods/$f" "$ird/lib/modules/$kver/$f"
  for dep in $(tr '\0' '\n' < "$kmods/$f" | sed -n 's/^depends=//p' | tr ',' ' '); do addmod "$dep"; done
}
for m in $modules; do
  n=${m//-/_}
  addmod "$m"
  [ -n "${kmpath[$n]:-}" ] && loaded="$loaded $m"
done
printf '%s\n' $loaded > "$ird/etc/modules"
cp "$kmods/modules.builtin" "$ird/lib/modules/$kver/"
"$hostbb" depmod -b "$ird" "$kver"
find "$ird" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible -R 0:0 | gzip -9 -n) > "$stage/initrd.gz"

# ---- root filesystem (../tiny/rootfs.sh) -------------------------------------------------------------
# tiny_rootfs's CHECK: these binaries do not run here (no run check as in images/tiny), so check
# that they are aarch64 instead
is_aarch64() { readelf -h "$1/usr/sbin/dropbear" | grep -q 'AArch64' || { log "dropbear is not an AArch64 binary"; exit 1; }; }
r=$stage/rootfs
tiny_rootfs "$r" aarch64-linux-gnu "$hostbb" "$here/inittab" "sigvirt tiny arm64" is_aarch64

# ---- boot partition (UKI only) and disk -----------------------------------------------------------
b=$stage/boot; mkdir -p "$b"
cmdline=$(cat "$here/cmdline")
printf '%s' "$cmdline" > "$b/cmdline.txt"
python3 "$here/pe-add-sections.py" "$x/usr/lib/systemd/boot/efi/linuxaa64.efi.stub" "$b/BOOTAA64.EFI" \
  .osrel="$(readlink -f "$r/etc/os-release")" .cmdline="$b/cmdline.txt" .linux="$stage/Image" \
  .initrd="$stage/initrd.gz"
touch -d "@$SOURCE_DATE_EPOCH" "$b/BOOTAA64.EFI"
mkfs.fat -F 16 -n TINYBOOT -i 5a1b00a4 --invariant -C "$stage/boot.img" $((48 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$stage/boot.img" ::/EFI ::/EFI/BOOT
mcopy -m -i "$stage/boot.img" "$b/BOOTAA64.EFI" ::/EFI/BOOT/BOOTAA64.EFI
# disk_qcow2 writes syslinux's mbr.bin as boot code: an empty file here (UEFI reads no MBR code)
mkdir -p "$x/usr/lib/syslinux/mbr"; : > "$x/usr/lib/syslinux/mbr/mbr.bin"
disk_qcow2 0x5167a1b4 "$stage/boot.img" 48 "$stage/root.img" 464
build_done "kernel $kver (arm64)"
