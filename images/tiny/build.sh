#!/usr/bin/env bash
# Build the "tiny" guest image: busybox + dropbear + Debian's cloud kernel, configured at boot from
# a cloud-init NoCloud seed (label cidata) by a small stand-in (files/tiny-cloud-init).
#
#   bash images/tiny/build.sh OUT.qcow2 [WORKDIR]
#
# Disk (MBR, id 0x5167a1b0): p1 FAT16 48 MiB, bootable, "TINYBOOT": syslinux (BIOS: vmlinuz +
# initrd.gz + syslinux.cfg) and \EFI\BOOT\BOOTX64.EFI (UEFI: a unified kernel image = systemd's
# EFI stub + the same kernel, initrd and command line) | p2 ext4 "tinyroot" 464 MiB, the writable
# root filesystem. The qcow2 is zlib-compressed (the UKI repeats the 14 MB kernel).
# No mounts, no loop devices: mkfs.fat + mtools, mke2fs -d, sfdisk and dd on image files.
# Guest packages are fetched with `apt-get download` into WORKDIR (kept if given, and reused on
# the next run; else a temp dir that is removed). Host tools: see images/README.md.
set -euo pipefail

usage() { echo "usage: $0 OUT.qcow2 [WORKDIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
t0=$(date +%s.%N)

if [ $# -eq 2 ]; then
  work=$2; mkdir -p "$work"; work=$(cd "$work" && pwd); keep_work=1
else
  work=$(mktemp -d /var/tmp/tiny-build.XXXXXX); keep_work=0
fi
stage=$work/stage            # everything but the downloaded .debs is rebuilt on every run
cleanup() {
  rm -rf "$stage" "$out.tmp.$$"
  [ "$keep_work" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$stage"; mkdir -p "$work/debs" "$stage"

log() { printf 'tiny-build: %s\n' "$*" >&2; }
for tool in apt-get apt-cache dpkg-deb mkfs.fat mcopy mmd mke2fs debugfs sfdisk cpio gzip readelf objcopy objdump od qemu-img; do
  command -v "$tool" >/dev/null || { log "missing host tool: $tool (see images/README.md)"; exit 1; }
done

# Reproducibility: fixed timestamps, UUIDs and seeds
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}   # 2025-01-01
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
ROOT_UUID=5f1b6a7e-7b64-4d1e-9f3c-0c1d2e3f4a5b
HASH_SEED=2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809

# ---- packages ---------------------------------------------------------------------------------
# apt here may be configured without a package cache (Dir::Cache::pkgcache ""), which makes every
# apt call rebuild it (1.5 s): keep one for this build.
aptopts=(-o "Dir::Cache::pkgcache=$stage/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=$stage/apt-srcpkgcache.bin")
kpkg=$(apt-cache "${aptopts[@]}" depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64 (run apt-get update)"; exit 1; }
kver=${kpkg#linux-image-}
# shared libraries of dropbear and sftp-server: their lib* Depends, two levels deep
libdeps() { apt-cache "${aptopts[@]}" depends "$@" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }' | sort -u; }
l1=$(libdeps dropbear-bin openssh-sftp-server)
l2=$(libdeps $l1)
pkgs=$(printf '%s\n' busybox-static dropbear-bin openssh-sftp-server syslinux syslinux-common systemd-boot-efi $l1 $l2 | sort -u)
log "kernel $kver; downloading: $kpkg $(echo $pkgs)"
(cd "$work/debs" && apt-get "${aptopts[@]}" -q -o APT::Sandbox::User=root download "$kpkg" $pkgs >/dev/null)
debfile() {
  local f
  f=$(ls "$work/debs/${1}_"*.deb 2>/dev/null | sort -V | tail -n 1)
  [ -n "$f" ] || { log "no .deb for $1"; exit 1; }
  echo "$f"
}
x=$stage/x; mkdir -p "$x"
# the kernel package: only the kernel and the module directories the initrd draws from, in the
# background (xz, ~1.5 s) while the small packages are unpacked
kdeb=$(debfile "$kpkg")
kmdirs="drivers/virtio drivers/block drivers/net drivers/char drivers/cdrom drivers/acpi drivers/input fs/isofs fs/fat fs/nls net/core"
kpatterns=("./boot/vmlinuz-$kver")
for d in $kmdirs; do kpatterns+=("./lib/modules/$kver/kernel/$d/*"); done
(dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" --wildcards "${kpatterns[@]}") &
kpid=$!
for p in $pkgs; do
  dpkg-deb -x "$(debfile "$p")" "$x"
done
wait "$kpid" || { log "unpacking $kdeb failed"; exit 1; }
bb=$x/bin/busybox
kmods=$x/lib/modules/$kver
[ -f "$x/boot/vmlinuz-$kver" ] && [ -d "$kmods" ] || { log "kernel $kver not found in the package"; exit 1; }

# ---- initramfs: busybox + modules ---------------------------------------------------------------
# virtio (PCI, block, net, rng, console), the seed's filesystems (isofs needs cdrom; vfat needs fat
# and the nls tables for codepage 437 / iocharset ascii|utf8|iso8859-1) and the ACPI power button.
# Dependencies come from each module's own "depends=" (modinfo); load order from busybox depmod.
modules="virtio_pci virtio_blk virtio_net virtio-rng virtio_console isofs nls_utf8 nls_cp437 nls_ascii nls_iso8859-1 vfat button evdev"
ird=$stage/initrd; mkdir -p "$ird/bin" "$ird/etc" "$ird/lib/modules/$kver"
cp "$bb" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
install -m 0755 "$here/files/init" "$ird/init"
declare -A kmpath=() kmdone=()
while read -r f; do n=${f##*/}; n=${n%.ko}; kmpath[${n//-/_}]=${f#"$kmods"/}; done < <(find "$kmods/kernel" -name '*.ko')
addmod() {
  local n=${1//-/_} f dep
  [ -n "${kmdone[$n]:-}" ] && return 0
  f=${kmpath[$n]:-}
  [ -n "$f" ] || { log "module $1 not found under kernel/{$kmdirs} of $kver"; exit 1; }
  kmdone[$n]=1
  mkdir -p "$ird/lib/modules/$kver/$(dirname "$f")"
  cp "$kmods/$f" "$ird/lib/modules/$kver/$f"
  for dep in $(tr '\0' '\n' < "$kmods/$f" | sed -n 's/^depends=//p' | tr ',' ' '); do addmod "$dep"; done
}
for m in $modules; do addmod "$m"; done
printf '%s\n' $modules > "$ird/etc/modules"
"$bb" depmod -b "$ird" "$kver"
find "$ird" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible -R 0:0 | gzip -9 -n) > "$stage/initrd.gz"

# ---- root filesystem ------------------------------------------------------------------------------
r=$stage/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/dropbear,etc/acpi/PWRF,dev,proc,sys,run,tmp,root,home,mnt} \
         "$r"/{var/log,var/lib,var/tmp,usr/share/udhcpc,usr/lib/tiny-cloud-init,usr/lib/openssh,lib/x86_64-linux-gnu,lib64}
chmod 1777 "$r/tmp" "$r/var/tmp"; chmod 0700 "$r/root"
cp "$bb" "$r/bin/busybox"
for a in $("$bb" --list-full); do
  [ "$a" = bin/busybox ] && continue
  [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done
cp "$x/usr/sbin/dropbear" "$r/usr/sbin/dropbear"
cp "$x/usr/bin/dropbearkey" "$r/usr/bin/dropbearkey"
cp "$x/usr/lib/openssh/sftp-server" "$r/usr/lib/openssh/sftp-server"
ln -s openssh/sftp-server "$r/usr/lib/sftp-server"        # where Debian's dropbear looks for it
# shared library closure (readelf NEEDED), copied as real files
libdirs="$x/lib/x86_64-linux-gnu $x/usr/lib/x86_64-linux-gnu"
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
    cp -L "$src" "$r/lib/x86_64-linux-gnu/$need"
    queue+=("$r/lib/x86_64-linux-gnu/$need")
  done
done
ldso=$(readelf -l "$r/usr/sbin/dropbear" | sed -n 's/.*interpreter: \(.*\)]/\1/p')   # /lib64/ld-linux-x86-64.so.2
cp -L "$x/lib/x86_64-linux-gnu/${ldso##*/}" "$r/lib/x86_64-linux-gnu/${ldso##*/}"
ln -sf "/lib/x86_64-linux-gnu/${ldso##*/}" "$r$ldso"
# sanity check: the copied dropbear runs with the copied libraries
env -u LD_PRELOAD "$r/lib/x86_64-linux-gnu/${ldso##*/}" --library-path "$r/lib/x86_64-linux-gnu" \
  "$r/usr/bin/dropbearkey" -h 2>&1 | grep -q 'Usage' || { log "copied dropbearkey does not run"; exit 1; }

install -m 0755 "$here/files/rcS" "$r/etc/init.d/rcS"
install -m 0755 "$here/files/rcK" "$r/etc/init.d/rcK"
install -m 0644 "$here/files/inittab" "$r/etc/inittab"
install -m 0755 "$here/files/udhcpc.script" "$r/usr/share/udhcpc/default.script"
install -m 0755 "$here/files/tiny-cloud-init" "$r/usr/sbin/tiny-cloud-init"
install -m 0644 "$here/files/yaml.awk" "$here/files/plan.awk" "$r/usr/lib/tiny-cloud-init/"
install -m 0755 "$here/files/poweroff.acpi" "$r/etc/acpi/PWRF/00000080"
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
printf 'NAME="sigvirt tiny"\nID=sigvirt-tiny\nVERSION_ID=1\nPRETTY_NAME="sigvirt tiny (busybox, dropbear, Debian kernel %s)"\n' "$kver" > "$r/etc/os-release"
find "$r" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mke2fs -q -t ext4 -L tinyroot -U "$ROOT_UUID" -E "root_owner=0:0,hash_seed=$HASH_SEED" -d "$r" "$stage/root.img" 464M >/dev/null
# mke2fs copies each file's ctime, which touch cannot set: fix it up with debugfs
(cd "$r" && find . -mindepth 1) | sed 's|^\.||' |
  awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\n", $0, t }' > "$stage/ctime.debugfs"
debugfs -w -f "$stage/ctime.debugfs" "$stage/root.img" >/dev/null 2>"$stage/debugfs.err"
if grep -v '^debugfs [0-9]' "$stage/debugfs.err" >&2; then log "debugfs failed"; exit 1; fi

# ---- boot partition: syslinux for BIOS, a unified kernel image for UEFI ------------------------------
# UEFI: syslinux.efi was tried first; it needs >= 224 MiB of guest RAM under OVMF ("Failed to
# allocate memory for kernel image") and boots slower. systemd-boot 252 raises #UD under OVMF/TCG.
# The UKI (systemd-boot-efi's linuxx64.efi.stub + .osrel/.cmdline/.linux/.initrd sections) boots
# with >= 160 MiB.
cmdline=$(cat "$here/files/cmdline")
printf 'DEFAULT tiny\nPROMPT 0\nTIMEOUT 0\nLABEL tiny\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND %s\n' "$cmdline" > "$stage/syslinux.cfg"
printf '%s' "$cmdline" > "$stage/cmdline.txt"
cp "$x/boot/vmlinuz-$kver" "$stage/vmlinuz"
stub=$x/usr/lib/systemd/boot/efi/linuxx64.efi.stub
# section addresses: after the stub's own sections, 64 KiB aligned
vma=0
while read -r size addr; do e=$(( 0x$addr + 0x$size )); [ $e -gt $vma ] && vma=$e; done \
  < <(objdump -h "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
align() { echo $(( ($1 + 0xffff) & ~0xffff )); }
v_osrel=$(align "$vma"); v_cmd=$(align $((v_osrel + $(stat -c %s "$r/etc/os-release"))))
v_linux=$(align $((v_cmd + ${#cmdline}))); v_initrd=$(align $((v_linux + $(stat -c %s "$stage/vmlinuz"))))
objcopy \
  --add-section .osrel="$r/etc/os-release" --change-section-vma .osrel="$(printf 0x%x "$v_osrel")" \
  --add-section .cmdline="$stage/cmdline.txt" --change-section-vma .cmdline="$(printf 0x%x "$v_cmd")" \
  --add-section .linux="$stage/vmlinuz" --change-section-vma .linux="$(printf 0x%x "$v_linux")" \
  --add-section .initrd="$stage/initrd.gz" --change-section-vma .initrd="$(printf 0x%x "$v_initrd")" \
  "$stub" "$stage/BOOTX64.EFI"
# objcopy stamps the PE header with the current time: TimeDateStamp := SOURCE_DATE_EPOCH and
# CheckSum := 0 (PE32+: e_lfanew + 8 and + 88; UEFI does not check the PE checksum)
le32() { local v=$1; printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)))"; }
lfanew=$(od -An -tu4 -j60 -N4 "$stage/BOOTX64.EFI" | tr -d ' ')
le32 "$SOURCE_DATE_EPOCH" | dd of="$stage/BOOTX64.EFI" bs=1 seek=$((lfanew + 8)) conv=notrunc status=none
le32 0 | dd of="$stage/BOOTX64.EFI" bs=1 seek=$((lfanew + 88)) conv=notrunc status=none
touch -d "@$SOURCE_DATE_EPOCH" "$stage/syslinux.cfg" "$stage/vmlinuz" "$stage/initrd.gz" "$stage/BOOTX64.EFI"
mkfs.fat -F 16 -n TINYBOOT -i 5a1b0000 --invariant -C "$stage/boot.img" $((48 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -m -i "$stage/boot.img" "$stage/vmlinuz" "$stage/initrd.gz" "$stage/syslinux.cfg" ::/
mmd -i "$stage/boot.img" ::/EFI ::/EFI/BOOT
mcopy -m -i "$stage/boot.img" "$stage/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
sysl=$x/usr/bin/syslinux
[ -x "$sysl" ] || sysl=$(command -v syslinux)
"$sysl" --install "$stage/boot.img"

# ---- disk ------------------------------------------------------------------------------------------
# 1 MiB gap | p1 48 MiB FAT16 (type 0x0e: FAT16 LBA), bootable | p2 464 MiB Linux
truncate -s $((1 + 48 + 464))M "$stage/disk.raw"
printf 'label: dos\nlabel-id: 0x5167a1b0\nstart=2048, size=98304, type=e, bootable\nstart=100352, size=950272, type=83\n' |
  sfdisk -q "$stage/disk.raw"
dd if="$x/usr/lib/syslinux/mbr/mbr.bin" of="$stage/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$stage/boot.img" of="$stage/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$stage/root.img" of="$stage/disk.raw" bs=1M seek=49 conv=notrunc,sparse status=none
mkdir -p "$(dirname "$out")"
qemu-img convert -q -c -f raw -O qcow2 "$stage/disk.raw" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
log "$out: $(stat -c %s "$out") bytes, kernel $kver, built in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
