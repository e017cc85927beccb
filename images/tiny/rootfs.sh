# The tiny guest's root file system, for both of its recipes (tiny/build.sh for amd64,
# tiny-arm64/build.sh): sourced by them after images/lib/common.sh, whose globals it uses
# ($x: the unpacked packages, $stage, $SOURCE_DATE_EPOCH, log, root_ext4).
# shellcheck shell=bash disable=SC2086,SC2015
# (word lists are split on purpose; `A && B || { log ...; exit 1; }` is an assertion)
tiny_files=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/files

# tiny_rootfs R TRIPLET LIST_BB INITTAB NAME CHECK
#   Fills directory R and writes it to $stage/root.img (ext4 "tinyroot" 464 MiB, $ROOT_UUID,
#   $HASH_SEED, every timestamp $SOURCE_DATE_EPOCH): $bb (the guest's busybox) with a link per
#   applet that LIST_BB (a busybox that runs here) lists, dropbear, dropbearkey and sftp-server
#   with their shared-library closure (readelf NEEDED, from $x's lib/TRIPLET directories,
#   copied as real files) and their ELF interpreter, the guest files of tiny/files/, INITTAB
#   and /etc's basics; os-release's PRETTY_NAME is NAME (busybox, dropbear, Debian kernel
#   $kver). CHECK R LIB LDSO is run on the copies before anything else is written: the build
#   fails where it does.
tiny_rootfs() {
  local r=$1 triplet=$2 listbb=$3 inittab=$4 name=$5 check=$6 ldso a f need src d libdirs
  # the ELF interpreter's directory (amd64: /lib64) is made with the rest, in the same order
  ldso=$(readelf -l "$x/usr/sbin/dropbear" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
  [ -n "$ldso" ] || { log "dropbear has no ELF interpreter"; exit 1; }
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/dropbear,etc/acpi/PWRF,dev,proc,sys,run,tmp,root,home,mnt} \
           "$r"/{var/log,var/lib,var/tmp,usr/share/udhcpc,usr/lib/tiny-cloud-init,usr/lib/openssh,lib/$triplet} \
           "$r$(dirname "$ldso")"
  chmod 1777 "$r/tmp" "$r/var/tmp"; chmod 0700 "$r/root"
  cp "$bb" "$r/bin/busybox"
  for a in $("$listbb" --list-full); do
    [ "$a" = bin/busybox ] && continue
    [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
  done
  cp "$x/usr/sbin/dropbear" "$r/usr/sbin/dropbear"
  cp "$x/usr/bin/dropbearkey" "$r/usr/bin/dropbearkey"
  cp "$x/usr/lib/openssh/sftp-server" "$r/usr/lib/openssh/sftp-server"
  ln -s openssh/sftp-server "$r/usr/lib/sftp-server"        # where Debian's dropbear looks for it
  libdirs="$x/lib/$triplet $x/usr/lib/$triplet"
  local -A seen=()
  local queue=("$r/usr/sbin/dropbear" "$r/usr/bin/dropbearkey" "$r/usr/lib/openssh/sftp-server")
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
  cp -L "$x/lib/$triplet/${ldso##*/}" "$r/lib/$triplet/${ldso##*/}"
  [ "$ldso" = "/lib/$triplet/${ldso##*/}" ] || ln -sf "/lib/$triplet/${ldso##*/}" "$r$ldso"
  "$check" "$r" "$r/lib/$triplet" "$r/lib/$triplet/${ldso##*/}"

  install -m 0755 "$tiny_files/rcS" "$r/etc/init.d/rcS"
  install -m 0755 "$tiny_files/rcK" "$r/etc/init.d/rcK"
  install -m 0644 "$inittab" "$r/etc/inittab"
  install -m 0755 "$tiny_files/udhcpc.script" "$r/usr/share/udhcpc/default.script"
  install -m 0755 "$tiny_files/tiny-cloud-init" "$r/usr/sbin/tiny-cloud-init"
  install -m 0644 "$tiny_files/yaml.awk" "$tiny_files/plan.awk" "$r/usr/lib/tiny-cloud-init/"
  install -m 0755 "$tiny_files/poweroff.acpi" "$r/etc/acpi/PWRF/00000080"
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
  printf 'NAME="sigvirt tiny"\nID=sigvirt-tiny\nVERSION_ID=1\nPRETTY_NAME="%s (busybox, dropbear, Debian kernel %s)"\n' "$name" "$kver" > "$r/etc/os-release"
  find "$r" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  root_ext4 "$r" "$stage/root.img" 464 tinyroot "$ROOT_UUID" "$HASH_SEED"
  # mke2fs copies each file's ctime, which touch cannot set: fix it up with debugfs
  (cd "$r" && find . -mindepth 1) | sed 's|^\.||' |
    awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\n", $0, t }' > "$stage/ctime.debugfs"
  debugfs -w -f "$stage/ctime.debugfs" "$stage/root.img" >/dev/null 2>"$stage/debugfs.err"
  if grep -v '^debugfs [0-9]' "$stage/debugfs.err" >&2; then log "debugfs failed"; exit 1; fi
}
