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
# Shared prelude and disk helpers: images/lib/common.sh; guest files: images/tiny/files/ (the
# recipe BUILDS_ON tiny in sigvirt/hosts/recipes.py, so they are part of the cache key).
# shellcheck disable=SC2086,SC2015
# (word lists such as $pkgs, $modules are split on purpose; `A && B || { log ...; exit 1; }`
# is an assertion)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
files=$here/../tiny/files
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
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
install -m 0755 "$files/init" "$ird/init"
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

# ---- root filesystem ------------------------------------------------------------------------------
triplet=aarch64-linux-gnu
r=$stage/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/dropbear,etc/acpi/PWRF,dev,proc,sys,run,tmp,root,home,mnt} \
         "$r"/{var/log,var/lib,var/tmp,usr/share/udhcpc,usr/lib/tiny-cloud-init,usr/lib/openssh,lib/$triplet}
chmod 1777 "$r/tmp" "$r/var/tmp"; chmod 0700 "$r/root"
cp "$bb" "$r/bin/busybox"
for a in $("$hostbb" --list-full); do     # the same busybox version, so the same applets
  [ "$a" = bin/busybox ] && continue
  [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done
cp "$x/usr/sbin/dropbear" "$r/usr/sbin/dropbear"
cp "$x/usr/bin/dropbearkey" "$r/usr/bin/dropbearkey"
cp "$x/usr/lib/openssh/sftp-server" "$r/usr/lib/openssh/sftp-server"
ln -s openssh/sftp-server "$r/usr/lib/sftp-server"        # where Debian's dropbear looks for it
# shared library closure (readelf NEEDED reads foreign ELF files), copied as real files
libdirs="$x/lib/$triplet $x/usr/lib/$triplet"
declare -A seen=()
queue=("$r/usr/sbin/dropbear" "$r/usr/bin/dropbearkey" "$r/usr/lib/openssh/sftp-server")
while [ ${#queue[@]} -gt 0 ]; do
  f=${queue[0]}; queue=("${queue[@]:1}")
  for need in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -n "${seen[$need]:-}" ] && continue
    seen[$need]=1
    src=
    for d in $libdirs; do [ -e "$d/$need" ] && { src=$d/$need; break; }; done
    [ -n "$src" ] || { log "library $need (needed by ${f##*/}) not found"; exit 1; }
    cp -L "$src" "$r/lib/$triplet/$need"
    queue+=("$r/lib/$triplet/$need")
  done
done
ldso=$(readelf -l "$r/usr/sbin/dropbear" | sed -n 's/.*interpreter: \(.*\)]/\1/p')   # /lib/ld-linux-aarch64.so.1
[ -n "$ldso" ] || { log "dropbear has no ELF interpreter"; exit 1; }
mkdir -p "$r$(dirname "$ldso")"
cp -L "$x/lib/$triplet/${ldso##*/}" "$r/lib/$triplet/${ldso##*/}"
[ "$ldso" = "/lib/$triplet/${ldso##*/}" ] || ln -sf "/lib/$triplet/${ldso##*/}" "$r$ldso"
# no run check as in images/tiny (these binaries do not run here): check they are aarch64 instead
readelf -h "$r/usr/sbin/dropbear" | grep -q 'AArch64' || { log "dropbear is not an AArch64 binary"; exit 1; }

install -m 0755 "$files/rcS" "$r/etc/init.d/rcS"
install -m 0755 "$files/rcK" "$r/etc/init.d/rcK"
install -m 0644 "$here/inittab" "$r/etc/inittab"
install -m 0755 "$files/udhcpc.script" "$r/usr/share/udhcpc/default.script"
install -m 0755 "$files/tiny-cloud-init" "$r/usr/sbin/tiny-cloud-init"
install -m 0644 "$files/yaml.awk" "$files/plan.awk" "$r/usr/lib/tiny-cloud-init/"
install -m 0755 "$files/poweroff.acpi" "$r/etc/acpi/PWRF/00000080"
echo tiny > "$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
printf 'root:x:0:\nadm:x:4:\ntty:x:5:\nwheel:x:10:\nusers:x:100:\nnogroup:x:65534:\n' > "$r/etc/group"
printf 'root:*:20089:0:99999:7:::\nnobody:*:20089:0:99999:7:::\n' > "$r/etc/shadow"
chmod 0640 "$r/etc/shadow"
printf '/bin/sh\n/bin/ash\n' > "$r/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > "$r/etc/nsswitch.conf"
printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nPS1='"'"'\\u@\\h:\\w\\$ '"'"'\n' > "$r/etc/profile"
: > "$r/etc/resolv.conf"
printf 'NAME="sigvirt tiny"\nID=sigvirt-tiny\nVERSION_ID=1\nPRETTY_NAME="sigvirt tiny arm64 (busybox, dropbear, Debian kernel %s)"\n' "$kver" > "$r/etc/os-release"
find "$r" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
root_ext4 "$r" "$stage/root.img" 464 tinyroot "$ROOT_UUID" "$HASH_SEED"
# mke2fs copies each file's ctime, which touch cannot set: fix it up with debugfs
(cd "$r" && find . -mindepth 1) | sed 's|^\.||' |
  awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\n", $0, t }' > "$stage/ctime.debugfs"
debugfs -w -f "$stage/ctime.debugfs" "$stage/root.img" >/dev/null 2>"$stage/debugfs.err"
if grep -v '^debugfs [0-9]' "$stage/debugfs.err" >&2; then log "debugfs failed"; exit 1; fi

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
