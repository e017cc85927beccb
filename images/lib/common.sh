# shellcheck shell=bash
# Shared part of the image recipes (images/*/build.sh): the prelude (arguments, work dir, clean-up,
# logging, host tools, reproducible time stamps, .deb downloads) and the boot partition + disk
# assembly (syslinux for BIOS, a unified kernel image for UEFI, one MBR disk, qcow2). Sourced by
# the recipes, which keep only what is specific to their image. Sourcing it sets `set -euo pipefail`,
# COMMON_TOOLS and BOOT_PKGS and defines functions; the other globals come from build_begin and
# boot_files. Any change here changes every recipe's cache key (sigvirt/hosts/recipes.py hashes
# images/lib/ too).
#
# Usage in a recipe:
#   here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
#   . "$here/../lib/common.sh"
#   build_begin NAME "$@"                 # NAME: log prefix and temp dir name
#   require_tools TOOL...                 # the recipe's own extra host tools
#   ... root file system in "$stage/..." ...
#   boot_files ENTRY "$cmdline" KERNEL INITRD INITRD_NAME OS_RELEASE
#   boot_fat "$stage/boot.img" SIZE_MIB LABEL VOLUME_ID
#   root_ext4 ROOT_DIR "$stage/root.img" SIZE_MIB LABEL UUID HASH_SEED
#   disk_qcow2 LABEL_ID "$stage/boot.img" BOOT_MIB "$stage/root.img" ROOT_MIB
#   build_done "kernel $kver"
#
# The layout is the same for every recipe: MBR (syslinux mbr.bin) | 1 MiB gap | p1 FAT16 (type
# 0x0e: FAT16 LBA), bootable, vmlinuz + initrd + syslinux.cfg + ldlinux.sys + \EFI\BOOT\BOOTX64.EFI
# | p2 ext4 (type 0x83), the root file system. No mounts and no loop devices anywhere.
set -euo pipefail

# Host tools the functions below use (build_begin checks them).
COMMON_TOOLS="apt-get dpkg-deb mkfs.fat mcopy mmd mke2fs sfdisk objcopy objdump od qemu-img"
# Boot loader packages, fetched with apt-get download and unpacked into $x (not the host's own).
# shellcheck disable=SC2034  # used by the recipes
BOOT_PKGS="syslinux syslinux-common systemd-boot-efi"

# ---- prelude -----------------------------------------------------------------------------------

# build_begin NAME ARGS...
#   Takes the recipe's command line (OUT.qcow2 [WORKDIR]; else prints the usage and exits 2).
#   Sets (globals for the recipe):
#     out        absolute path of the qcow2 to write (atomically, via "$out.tmp.$$")
#     work       WORKDIR (kept) or a temp dir /var/tmp/NAME-build.XXXXXX (removed on exit)
#     stage      $work/stage, emptied now and removed on exit: everything but the .debs
#     x          $stage/x, where extract_debs unpacks packages
#     aptopts    apt options that keep a package cache in $stage for this build
#     t0         start time (for elapsed / build_done)
#     SOURCE_DATE_EPOCH (exported; default 2025-01-01) and E2FSPROGS_FAKE_TIME = it
#   Installs the EXIT trap (cleanup), makes $work/debs, checks COMMON_TOOLS.
build_begin() {
  build_name=$1; shift
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: $0 OUT.qcow2 [WORKDIR]" >&2; exit 2; fi
  out=$1
  case "$out" in /*) ;; *) out=$PWD/$out ;; esac
  t0=$(date +%s.%N)
  if [ $# -eq 2 ]; then
    work=$2; mkdir -p "$work"; work=$(cd "$work" && pwd); keep_work=1
  else
    work=$(mktemp -d "/var/tmp/$build_name-build.XXXXXX"); keep_work=0
  fi
  stage=$work/stage
  trap cleanup EXIT
  rm -rf "$stage"; mkdir -p "$work/debs" "$stage"
  x=$stage/x; mkdir -p "$x"
  # shellcheck disable=SC2086  # a word list
  require_tools $COMMON_TOOLS
  # Reproducibility: fixed timestamps (file times on the FAT, ext4 times, the UKI's PE header)
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}   # 2025-01-01
  export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
  # apt here may be configured without a package cache (Dir::Cache::pkgcache ""), which makes
  # every apt call rebuild it (1.5 s): keep one for this build.
  aptopts=(-o "Dir::Cache::pkgcache=$stage/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=$stage/apt-srcpkgcache.bin")
}

# cleanup: the EXIT trap. Removes $stage and a partial output; $work too unless it was given.
cleanup() {
  rm -rf "$stage" "$out.tmp.$$"
  [ "$keep_work" = 1 ] || rm -rf "$work"
}

# log MESSAGE...: "NAME-build: MESSAGE" on stderr.
log() { printf '%s-build: %s\n' "$build_name" "$*" >&2; }

# elapsed: seconds since build_begin, one decimal.
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# require_tools TOOL...: exits 1 naming the first one that is not on PATH.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { log "missing host tool: $tool (see images/README.md)"; exit 1; }
  done
}

# ---- packages ----------------------------------------------------------------------------------

# fetch_debs PACKAGE...: apt-get download into $work/debs (already present versions are kept).
fetch_debs() {
  (cd "$work/debs" && apt-get "${aptopts[@]}" -q -o APT::Sandbox::User=root download "$@" >/dev/null)
}

# debfile PACKAGE: prints the path of the newest $work/debs/PACKAGE_*.deb (exits 1 if none).
debfile() {
  local f
  f=$(find "$work/debs" -maxdepth 1 -name "${1}_*.deb" | sort -V | tail -n 1)
  [ -n "$f" ] || { log "no .deb for $1"; exit 1; }
  echo "$f"
}

# extract_debs PACKAGE...: unpacks each package's newest .deb into $x.
extract_debs() {
  local p
  for p in "$@"; do dpkg-deb -x "$(debfile "$p")" "$x"; done
}

# ---- boot partition: syslinux for BIOS, a unified kernel image for UEFI ---------------------------
# UEFI: syslinux.efi needs >= 224 MiB of guest RAM under OVMF ("Failed to allocate memory for
# kernel image") and boots slower; systemd-boot 252 raises #UD under OVMF/TCG. The UKI (systemd-
# boot-efi's linuxx64.efi.stub + .osrel/.cmdline/.linux/.initrd sections) boots with >= 160 MiB.
# Needs BOOT_PKGS unpacked in $x (fetch_debs + extract_debs).

# boot_files ENTRY CMDLINE KERNEL INITRD INITRD_NAME OS_RELEASE
#   Fills $stage/boot with the files of the FAT partition, all dated SOURCE_DATE_EPOCH:
#     vmlinuz       copy of KERNEL
#     INITRD_NAME   copy of INITRD (e.g. initrd.gz, initrd.img)
#     syslinux.cfg  one entry, label ENTRY: KERNEL /vmlinuz, INITRD /INITRD_NAME, APPEND CMDLINE
#     BOOTX64.EFI   UKI: the EFI stub + OS_RELEASE (a symlink is followed), CMDLINE, the same
#                   kernel and initrd; PE TimeDateStamp = SOURCE_DATE_EPOCH, CheckSum = 0
#   (and cmdline.txt, which boot_fat does not copy). Sets boot_initrd_name = INITRD_NAME.
boot_files() {
  local entry=$1 cmdline=$2 kernel=$3 initrd=$4 initrd_name=$5 osrel b=$stage/boot
  osrel=$(readlink -f "$6")
  boot_initrd_name=$initrd_name
  mkdir -p "$b"
  printf 'DEFAULT %s\nPROMPT 0\nTIMEOUT 0\nLABEL %s\n  KERNEL /vmlinuz\n  INITRD /%s\n  APPEND %s\n' \
    "$entry" "$entry" "$initrd_name" "$cmdline" > "$b/syslinux.cfg"
  printf '%s' "$cmdline" > "$b/cmdline.txt"
  cp "$kernel" "$b/vmlinuz"; cp "$initrd" "$b/$initrd_name"
  local stub=$x/usr/lib/systemd/boot/efi/linuxx64.efi.stub vma=0 size addr e
  # section addresses: after the stub's own sections, 64 KiB aligned
  while read -r size addr; do e=$(( 0x$addr + 0x$size )); [ $e -gt $vma ] && vma=$e; done \
    < <(objdump -h "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
  local v_osrel v_cmd v_linux v_initrd
  v_osrel=$(_align "$vma"); v_cmd=$(_align $((v_osrel + $(stat -c %s "$osrel"))))
  v_linux=$(_align $((v_cmd + ${#cmdline}))); v_initrd=$(_align $((v_linux + $(stat -c %s "$b/vmlinuz"))))
  objcopy \
    --add-section .osrel="$osrel" --change-section-vma .osrel="$(printf 0x%x "$v_osrel")" \
    --add-section .cmdline="$b/cmdline.txt" --change-section-vma .cmdline="$(printf 0x%x "$v_cmd")" \
    --add-section .linux="$b/vmlinuz" --change-section-vma .linux="$(printf 0x%x "$v_linux")" \
    --add-section .initrd="$b/$initrd_name" --change-section-vma .initrd="$(printf 0x%x "$v_initrd")" \
    "$stub" "$b/BOOTX64.EFI"
  # objcopy stamps the PE header with the current time: TimeDateStamp := SOURCE_DATE_EPOCH and
  # CheckSum := 0 (PE32+: e_lfanew + 8 and + 88; UEFI does not check the PE checksum)
  local lfanew
  lfanew=$(od -An -tu4 -j60 -N4 "$b/BOOTX64.EFI" | tr -d ' ')
  _le32 "$SOURCE_DATE_EPOCH" | dd of="$b/BOOTX64.EFI" bs=1 seek=$((lfanew + 8)) conv=notrunc status=none
  _le32 0 | dd of="$b/BOOTX64.EFI" bs=1 seek=$((lfanew + 88)) conv=notrunc status=none
  touch -d "@$SOURCE_DATE_EPOCH" "$b"/*
}

# boot_fat IMG SIZE_MIB LABEL VOLUME_ID
#   Writes IMG: FAT16 of SIZE_MIB MiB, volume LABEL, serial VOLUME_ID (8 hex digits, --invariant),
#   holding vmlinuz, $boot_initrd_name and syslinux.cfg from $stage/boot (made by boot_files) at
#   the root and BOOTX64.EFI as \EFI\BOOT\BOOTX64.EFI; then syslinux --install (ldlinux.sys,
#   ldlinux.c32, boot sector).
boot_fat() {
  local img=$1 mib=$2 label=$3 volid=$4 b=$stage/boot sysl
  mkfs.fat -F 16 -n "$label" -i "$volid" --invariant -C "$img" $((mib * 1024)) >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mcopy -m -i "$img" "$b/vmlinuz" "$b/$boot_initrd_name" "$b/syslinux.cfg" ::/
  mmd -i "$img" ::/EFI ::/EFI/BOOT
  mcopy -m -i "$img" "$b/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  sysl=$x/usr/bin/syslinux
  [ -x "$sysl" ] || sysl=$(command -v syslinux)
  "$sysl" --install "$img"
}

_align() { echo $(( ($1 + 0xffff) & ~0xffff )); }
# _le32 N: N as 4 little-endian bytes on stdout
_le32() {
  local v=$1
  # shellcheck disable=SC2059  # the format is the byte string
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)))"
}

# ---- root file system and disk ---------------------------------------------------------------------

# root_ext4 DIR IMG SIZE_MIB LABEL UUID HASH_SEED
#   Writes IMG: ext4 of SIZE_MIB MiB populated from DIR (mke2fs -d, owner root of /), with the
#   given label, file system UUID and directory hash seed (fixed for reproducible images).
#   Inode tables and journal are zeroed here, once (lazy_*_init=0): left lazy, every guest's
#   kernel zeroes them after its first mount (ext4lazyinit: ~75 write requests per tiny guest
#   in the seconds after it answers SSH, into its linked clone, beside the next guests' boots).
#   The zeros cost nothing in the image: qemu-img convert leaves zero clusters unallocated.
root_ext4() {
  mke2fs -q -t ext4 -L "$4" -U "$5" \
    -E "root_owner=0:0,hash_seed=$6,lazy_itable_init=0,lazy_journal_init=0" \
    -d "$1" "$2" "$3M" >/dev/null
}

# disk_qcow2 LABEL_ID BOOT_IMG BOOT_MIB ROOT_IMG ROOT_MIB
#   Assembles $stage/disk.raw of 1 + BOOT_MIB + ROOT_MIB MiB: MBR disk id LABEL_ID (0x........)
#   with syslinux's mbr.bin (from $x) as boot code, p1 at 1 MiB: BOOT_IMG (type 0x0e, bootable),
#   p2 right after it: ROOT_IMG (type 0x83); then converts it to a zlib-compressed qcow2 and
#   renames that to $out.
disk_qcow2() {
  local label_id=$1 boot_img=$2 boot_mib=$3 root_img=$4 root_mib=$5 raw=$stage/disk.raw
  truncate -s $((1 + boot_mib + root_mib))M "$raw"
  printf 'label: dos\nlabel-id: %s\nstart=2048, size=%d, type=e, bootable\nstart=%d, size=%d, type=83\n' \
    "$label_id" $((boot_mib * 2048)) $((2048 + boot_mib * 2048)) $((root_mib * 2048)) |
    sfdisk -q "$raw"
  dd if="$x/usr/lib/syslinux/mbr/mbr.bin" of="$raw" bs=440 count=1 conv=notrunc status=none
  dd if="$boot_img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$root_img" of="$raw" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
  mkdir -p "$(dirname "$out")"
  qemu-img convert -q -c -f raw -O qcow2 "$raw" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
}

# build_done DETAILS: logs "$out: SIZE bytes, DETAILS, built in N s".
build_done() { log "$out: $(stat -c %s "$out") bytes, $*, built in $(elapsed) s"; }
