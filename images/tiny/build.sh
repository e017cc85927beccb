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
#
# Shared prelude, boot partition and disk assembly: images/lib/common.sh.
# shellcheck disable=SC2086,SC2015
# (word lists such as $pkgs, $modules are split on purpose; `A && B || { log ...; exit 1; }`
# is an assertion)
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
. "$here/../lib/common.sh"
build_begin tiny "$@"
require_tools apt-cache debugfs cpio gzip readelf

# Reproducibility (besides SOURCE_DATE_EPOCH): fixed UUIDs and seeds
ROOT_UUID=5f1b6a7e-7b64-4d1e-9f3c-0c1d2e3f4a5b
HASH_SEED=2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809

# ---- packages ---------------------------------------------------------------------------------
kpkg=$(apt-cache "${aptopts[@]}" depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64 (run apt-get update)"; exit 1; }
kver=${kpkg#linux-image-}
# shared libraries of dropbear and sftp-server: their lib* Depends, two levels deep
libdeps() { apt-cache "${aptopts[@]}" depends "$@" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^(lib|zlib)/ { print $2 }' | sort -u; }
l1=$(libdeps dropbear-bin openssh-sftp-server)
l2=$(libdeps $l1)
pkgs=$(printf '%s\n' busybox-static dropbear-bin openssh-sftp-server $BOOT_PKGS $l1 $l2 | sort -u)
log "kernel $kver; downloading: $kpkg" $pkgs
fetch_debs "$kpkg" $pkgs
# the kernel package: only the kernel and the module directories the initrd draws from, in the
# background (xz, ~1.5 s) while the small packages are unpacked
kdeb=$(debfile "$kpkg")
kmdirs="drivers/virtio drivers/block drivers/net drivers/char drivers/cdrom drivers/acpi drivers/input drivers/scsi fs/isofs fs/fat fs/nls net/core"
kpatterns=("./boot/vmlinuz-$kver")
for d in $kmdirs; do kpatterns+=("./lib/modules/$kver/kernel/$d/*"); done
(dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" --wildcards "${kpatterns[@]}") &
kpid=$!
extract_debs $pkgs
wait "$kpid" || { log "unpacking $kdeb failed"; exit 1; }
bb=$x/bin/busybox
kmods=$x/lib/modules/$kver
[ -f "$x/boot/vmlinuz-$kver" ] && [ -d "$kmods" ] || { log "kernel $kver not found in the package"; exit 1; }

# ---- initramfs: busybox + modules ---------------------------------------------------------------
# virtio (PCI, block, net, rng, console, SCSI + sd_mod for a root disk on virtio-scsi; NVMe is built
# into the cloud kernel), the seed's filesystems (isofs needs cdrom; vfat needs fat
# and the nls tables for codepage 437 / iocharset ascii|utf8|iso8859-1) and the ACPI power button.
# Dependencies come from each module's own "depends=" (modinfo); load order from busybox depmod.
modules="virtio_pci virtio_blk virtio_scsi sd_mod virtio_net virtio-rng virtio_console isofs nls_utf8 nls_cp437 nls_ascii nls_iso8859-1 vfat button evdev"
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
root_ext4 "$r" "$stage/root.img" 464 tinyroot "$ROOT_UUID" "$HASH_SEED"
# mke2fs copies each file's ctime, which touch cannot set: fix it up with debugfs
(cd "$r" && find . -mindepth 1) | sed 's|^\.||' |
  awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\n", $0, t }' > "$stage/ctime.debugfs"
debugfs -w -f "$stage/ctime.debugfs" "$stage/root.img" >/dev/null 2>"$stage/debugfs.err"
if grep -v '^debugfs [0-9]' "$stage/debugfs.err" >&2; then log "debugfs failed"; exit 1; fi

# ---- boot partition and disk -------------------------------------------------------------------------
# 1 MiB gap | p1 48 MiB FAT16, bootable | p2 464 MiB Linux
cmdline=$(cat "$here/files/cmdline")
boot_files tiny "$cmdline" "$x/boot/vmlinuz-$kver" "$stage/initrd.gz" initrd.gz "$r/etc/os-release"
boot_fat "$stage/boot.img" 48 TINYBOOT 5a1b0000
disk_qcow2 0x5167a1b0 "$stage/boot.img" 48 "$stage/root.img" 464
build_done "kernel $kver"
