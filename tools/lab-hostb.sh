#!/usr/bin/env bash
# lab-hostb.sh — run a second, independent libvirt "host" (hostB) on this machine.
#
#   tools/lab-hostb.sh [--tcp-port N] [--ssh-port N] start|stop|status|env [STATE_DIR]
#
# hostB is a libvirtd in a private mount namespace whose /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are bind mounts of directories
# under STATE_DIR (default /var/lib/sigvirt-lab/hostb). It is reached at
#   qemu+tcp://127.0.0.1:TCP_PORT/system                     (auth none, loopback only)
#   qemu+ssh://root@127.0.0.1:SSH_PORT/system?keyfile=STATE_DIR/id_ed25519&no_verify=1
# the latter through an OpenSSH sshd (loopback only, key auth only) that runs inside hostB's
# mount namespace, so virt-ssh-helper, `mv` & co. run "on hostB". Ports: --tcp-port/--ssh-port,
# or SIGVIRT_LAB_TCP_PORT/SIGVIRT_LAB_SSH_PORT, else what the last start of this STATE_DIR
# used, else 16510/2023. See docs/lab-second-host.md.
#
# Both daemons share one cgroup tree: give domains on hostB names no domain on the main daemon
# uses (qemu-<id>-<name> would collide). The main daemon is never touched: its runtime dir is
# only ever bind-mounted over inside hostB's namespace, and only hostB's own processes (found
# through its pid files and by seeing STATE_DIR/run at /run/libvirt) are ever signalled.
# status exits 0 when both daemons run and answer, 3 when neither runs, 1 otherwise.
set -euo pipefail

PROG=lab-hostb
DEFAULT_STATE=/var/lib/sigvirt-lab/hostb
DEFAULT_TCP_PORT=16510
DEFAULT_SSH_PORT=2023
WAIT_SECS=${SIGVIRT_LAB_WAIT:-60}
SSHD=/usr/sbin/sshd
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# What hostB gets its own copy of (bind mounts of STATE_DIR/{etc,run,lib,cache,log}).
BIND_POINTS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- arguments
opt_tcp=${SIGVIRT_LAB_TCP_PORT:-}
opt_ssh=${SIGVIRT_LAB_SSH_PORT:-}
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --tcp-port) [ $# -ge 2 ] || usage; opt_tcp=$2; shift 2 ;;
    --tcp-port=*) opt_tcp=${1#*=}; shift ;;
    --ssh-port) [ $# -ge 2 ] || usage; opt_ssh=$2; shift 2 ;;
    --ssh-port=*) opt_ssh=${1#*=}; shift ;;
    -h|--help) usage ;;
    --) shift; args+=("$@"); break ;;
    -*) log "unknown option $1"; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || usage
cmd=${args[0]}
case $cmd in start|stop|status|env) ;; *) usage ;; esac

state_arg=${args[1]:-${SIGVIRT_LAB_HOSTB_DIR:-$DEFAULT_STATE}}
case $state_arg in /*) ;; *) state_arg=$PWD/$state_arg ;; esac
S=$(realpath -m -- "$state_arg")
[ "$S" != / ] || die "STATE_DIR must not be /"
case $S in *[[:space:]\'\"\&\?\;\$\`\\]*) die "STATE_DIR must not contain blanks, quotes or URI/shell specials: $S" ;; esac
for mp in "${BIND_POINTS[@]}" /etc /run /var/lib /var/cache /var/log /proc /sys /dev /tmp; do
  case $S/ in
    "$mp"/) die "STATE_DIR must not be $mp" ;;
  esac
done
for mp in "${BIND_POINTS[@]}"; do
  case $S/ in "$mp"/*) die "STATE_DIR must not be under $mp (it is bind-mounted over in hostB)" ;; esac
done

check_port() {
  case $2 in ''|*[!0-9]*) die "$1 must be a number, got '$2'" ;; esac
  [ "$2" -ge 1 ] && [ "$2" -le 65535 ] || die "$1 out of range: $2"
}

# Ports: option/env > recorded by the last start > defaults.
rec_tcp='' rec_ssh=''
if [ -f "$S/ports" ]; then
  while IFS='=' read -r k v; do
    case $k in TCP_PORT) rec_tcp=$v ;; SSH_PORT) rec_ssh=$v ;; esac
  done <"$S/ports"
fi
TCP_PORT=${opt_tcp:-${rec_tcp:-$DEFAULT_TCP_PORT}}
SSH_PORT=${opt_ssh:-${rec_ssh:-$DEFAULT_SSH_PORT}}
check_port tcp-port "$TCP_PORT"
check_port ssh-port "$SSH_PORT"
[ "$TCP_PORT" != "$SSH_PORT" ] || die "tcp and ssh ports must differ"

KEY=$S/id_ed25519
TCP_URI="qemu+tcp://127.0.0.1:$TCP_PORT/system"
SSH_URI="qemu+ssh://root@127.0.0.1:$SSH_PORT/system?keyfile=$KEY&no_verify=1"
LIBVIRTD_PIDFILE=$S/libvirtd.pid
SSHD_PIDFILE=$S/sshd.pid
SSHD_CONFIG=$S/sshd_config

print_env() {
  printf "SIGVIRT_HOSTB_URI='%s'\n" "$SSH_URI"
  printf "SIGVIRT_HOSTB_TCP_URI='%s'\n" "$TCP_URI"
  printf "SIGVIRT_HOSTB_KEY='%s'\n" "$KEY"
  printf "SIGVIRT_HOSTB_SSH_PORT='%s'\n" "$SSH_PORT"
  printf "SIGVIRT_HOSTB_TCP_PORT='%s'\n" "$TCP_PORT"
  printf "SIGVIRT_HOSTB_STATE_DIR='%s'\n" "$S"
}

if [ "$cmd" = env ]; then
  print_env
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "run as root"

# ---------------------------------------------------------------- process helpers
MY_NS=$(readlink /proc/self/ns/mnt)

read_pid() {  # read_pid FILE -> pid on stdout, or fail
  local p
  [ -s "$1" ] || return 1
  p=$(head -c 32 "$1" 2>/dev/null | tr -cd '0-9')
  [ -n "$p" ] && [ "$p" -gt 1 ] || return 1
  printf '%s\n' "$p"
}

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }
ns_of() { readlink "/proc/$1/ns/mnt" 2>/dev/null || true; }

# The pid of hostB's libvirtd, if it runs (guards against pid reuse: must be a libvirtd
# started with our pid file).
libvirtd_pid() {
  local p
  p=$(read_pid "$LIBVIRTD_PIDFILE") || return 1
  [ -d "/proc/$p" ] || return 1
  case "$(readlink "/proc/$p/exe" 2>/dev/null)" in *libvirtd*) ;; *) return 1 ;; esac
  case " $(cmdline_of "$p") " in *" $LIBVIRTD_PIDFILE "*) ;; *) return 1 ;; esac
  printf '%s\n' "$p"
}

# The pid of hostB's sshd listener (its proctitle keeps "-f STATE_DIR/sshd_config").
sshd_pid() {
  local p
  p=$(read_pid "$SSHD_PIDFILE") || return 1
  [ -d "/proc/$p" ] || return 1
  case "$(readlink "/proc/$p/exe" 2>/dev/null)" in *sshd*) ;; *) return 1 ;; esac
  case " $(cmdline_of "$p") " in *" $SSHD_CONFIG "*) ;; *) return 1 ;; esac
  printf '%s\n' "$p"
}

# hostB's processes are exactly those that see STATE_DIR/run at /run/libvirt (same device and
# inode through /proc/PID/root, i.e. resolved in the process's own mount namespace): its
# libvirtd, its sshd and sessions, and its QEMUs (libvirt gives each QEMU a private mount
# namespace cloned from hostB's, so "same namespace as libvirtd" would miss them). The main
# daemon and its QEMUs see the real /run/libvirt and never match.
run_id() {
  local id
  [ -d "$S/run" ] || return 1
  id=$(stat -c '%d:%i' "$S/run") || return 1
  [ "$id" != "$(stat -c '%d:%i' /run/libvirt 2>/dev/null)" ] || return 1  # never the host's
  printf '%s\n' "$id"
}

sees_hostb() {  # sees_hostb PID RUN_ID
  [ "$(stat -c '%d:%i' "/proc/$1/root/run/libvirt" 2>/dev/null)" = "$2" ]
}

hostb_members() {
  local id p n
  id=$(run_id) || return 0
  # one stat for all processes; lines are "dev:ino /proc/PID/root/run/libvirt"
  { stat -c '%d:%i %n' /proc/[0-9]*/root/run/libvirt 2>/dev/null || true; } | while read -r n p; do
    [ "$n" = "$id" ] || continue
    p=${p#/proc/}; p=${p%%/*}
    if [ "$p" != "$$" ] && [ "$p" != "$BASHPID" ] && alive "$p"; then printf '%s\n' "$p"; fi
  done || true
  return 0
}

# QEMU processes hostB started, from the pid files in its run dir (checked: a QEMU that sees
# hostB's run dir, so a reused pid is never taken for one).
qemu_pids() {
  local f p id
  id=$(run_id) || return 0
  for f in "$S"/run/qemu/*.pid; do
    [ -e "$f" ] || continue
    p=$(read_pid "$f") || continue
    [ -d "/proc/$p" ] || continue
    case "$(readlink "/proc/$p/exe" 2>/dev/null)" in *qemu*) ;; *) continue ;; esac
    sees_hostb "$p" "$id" || continue
    printf '%s\n' "$p"
  done
  return 0
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Dead processes of hostB are re-parented to init; this machine's init reaps them only every
# second or so. Wait (a little) until they are gone from the process table, so that a `ps`
# right after `stop` shows no <defunct> libvirtd/sshd.
wait_reaped() {
  local p i left
  for ((i = 0; i < 50; i++)); do
    left=0
    for p in "$@"; do [ -d "/proc/$p" ] && left=1; done
    [ $left -eq 1 ] || return 0
    sleep 0.1
  done
  return 0
}

# kill_wait SECS PID... : TERM, wait, then KILL what is left.
kill_wait() {
  local secs=$1 p left i
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ $left -eq 1 ] || return 0
    sleep 0.1
  done
  for p in "$@"; do
    if alive "$p"; then
      log "pid $p did not exit on TERM, killing"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 50; i++)); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ $left -eq 1 ] || return 0
    sleep 0.1
  done
  log "warning: still alive after KILL: $*"
}

vsh() {  # vsh URI ARGS... (bounded in time, never prompts)
  local uri=$1
  shift
  timeout 20 env LIBVIRT_DEFAULT_URI= virsh -q -c "$uri" "$@" </dev/null
}

# root's known_hosts: libvirt's ssh transport (no_verify=1 = StrictHostKeyChecking=no) records
# hostB's key there. Keep exactly one current entry for [127.0.0.1]:SSH_PORT while hostB runs
# (so even a URI without no_verify=1 verifies), and none after stop (test runs use random
# ports and fresh keys; stale entries would only produce "host key changed" warnings).
KNOWN_HOSTS=$(getent passwd root | cut -d: -f6)/.ssh/known_hosts
KH_NAME="[127.0.0.1]:$SSH_PORT"

known_hosts_forget() {
  [ -f "$KNOWN_HOSTS" ] || return 0
  ssh-keygen -F "$KH_NAME" -f "$KNOWN_HOSTS" >/dev/null 2>&1 || return 0
  local had_old=0
  [ -e "$KNOWN_HOSTS.old" ] && had_old=1
  ssh-keygen -R "$KH_NAME" -f "$KNOWN_HOSTS" >/dev/null 2>&1 || true
  [ $had_old -eq 1 ] || rm -f "$KNOWN_HOSTS.old"
}

known_hosts_add() {
  known_hosts_forget
  install -d -m 0700 "$(dirname "$KNOWN_HOSTS")"
  local kt kb
  read -r kt kb _ <"$S/ssh_host_ed25519_key.pub"
  printf '%s %s %s\n' "$KH_NAME" "$kt" "$kb" >>"$KNOWN_HOSTS"
}

# After a crash of hostB's libvirtd its domains' cgroups (shared tree, machine/qemu-ID-NAME.
# libvirt-qemu) stay behind. Remove those of domains whose status file is still in hostB's run
# dir and whose QEMU is gone; rmdir only, so a populated cgroup is never touched.
cleanup_cgroups() {
  local f pid id name cg
  for f in "$S"/run/qemu/*.xml; do
    [ -e "$f" ] || continue
    read -r pid id name < <(awk '
      !pid && match($0, /<domstatus [^>]*pid=.[0-9]+/) { s = substr($0, RSTART, RLENGTH); sub(/.*pid=./, "", s); pid = s }
      !id && match($0, /<domain type=.[a-z]+. id=.[0-9]+/) { s = substr($0, RSTART, RLENGTH); sub(/.*id=./, "", s); id = s; next }
      id && !name && match($0, /<name>[A-Za-z0-9_.-]+<\/name>/) { name = substr($0, RSTART + 6, RLENGTH - 13) }
      END { print (pid ? pid : "-"), (id ? id : "-"), (name ? name : "-") }' "$f")
    if [ "$pid" != - ] && alive "$pid"; then continue; fi
    [ "$id" != - ] && [ "$name" != - ] || continue
    for cg in /sys/fs/cgroup/*/machine/"qemu-$id-$name.libvirt-qemu" \
              /sys/fs/cgroup/machine/"qemu-$id-$name.libvirt-qemu"; do
      [ -d "$cg" ] || continue
      find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  done
}

# ---------------------------------------------------------------- stop
do_stop() {
  local lpid spid qpids=() members=() dom
  lpid=$(libvirtd_pid) || lpid=''
  spid=$(sshd_pid) || spid=''

  # 1. Destroy running domains the way a host shutdown would (through hostB only).
  if [ -n "$lpid" ]; then
    while read -r dom; do
      [ -n "$dom" ] || continue
      log "destroying domain $dom on hostB"
      vsh "$TCP_URI" destroy "$dom" >/dev/null 2>&1 || log "warning: destroy $dom failed"
    done < <(vsh "$TCP_URI" list --name --state-running 2>/dev/null || true)
  fi

  # 2. sshd listener, libvirtd, then QEMUs libvirtd did not get to.
  [ -z "$spid" ] || kill_wait 5 "$spid"
  [ -z "$lpid" ] || kill_wait 20 "$lpid"
  mapfile -t qpids < <(qemu_pids)
  if [ ${#qpids[@]} -gt 0 ]; then
    log "killing leftover QEMU processes of hostB: ${qpids[*]}"
    kill_wait 10 "${qpids[@]}"
  fi

  # 3. Anything else of hostB's (ssh sessions, virt-ssh-helper, a QEMU without pid file ...).
  mapfile -t members < <(hostb_members)
  if [ ${#members[@]} -gt 0 ]; then
    log "stopping remaining processes of hostB: ${members[*]}"
    kill_wait 5 "${members[@]}"
  fi

  wait_reaped $lpid $spid ${qpids[@]+"${qpids[@]}"} ${members[@]+"${members[@]}"}

  # 4. Runtime state is gone with the "host" (like a reboot clearing /run).
  cleanup_cgroups
  rm -f "$LIBVIRTD_PIDFILE" "$SSHD_PIDFILE"
  known_hosts_forget
  if [ -d "$S/run" ]; then
    find "$S/run" -mindepth 1 -delete 2>/dev/null || rm -rf "${S:?}/run/"* 2>/dev/null || true
  fi
}

# ---------------------------------------------------------------- start
set_conf() {  # set_conf FILE KEY VALUE : drop every uncommented KEY line, append KEY = VALUE
  local file=$1 key=$2 val=$3
  sed -i -E "/^[[:space:]]*${key}[[:space:]]*=/d" "$file"
  printf '%s = %s\n' "$key" "$val" >>"$file"
}

prepare_state() {
  install -d -m 0755 "$S"
  chmod 0755 "$S"   # QEMU (libvirt-qemu) must traverse it to reach pools under it
  install -d -m 0755 "$S/run" "$S/lib" "$S/cache" "$S/log" "$S/pools"
  install -d -m 0711 "$S/lib/boot" "$S/lib/images" "$S/cache/qemu"
  install -d -m 0700 "$S/lib/sanlock"
  install -d -m 0750 -o libvirt-qemu -g libvirt-qemu "$S/lib/qemu"
  install -d -m 0755 "$S/log/qemu"
  # Seed QEMU's capability cache from the main daemon's (same binaries, same libvirtd; libvirt
  # re-probes by itself if an entry is stale). Saves the ~8 s probe on a fresh STATE_DIR.
  local caps=/var/cache/libvirt/qemu/capabilities
  if [ -d "$caps" ] && [ ! -d "$S/cache/qemu/capabilities" ]; then
    install -d -m 0755 "$S/cache/qemu/capabilities"
    cp -p "$caps"/*.xml "$S/cache/qemu/capabilities/" 2>/dev/null || true
  fi

  # Config: a copy of this machine's /etc/libvirt without its objects, made once (hostB's own
  # definitions live there afterwards, like on a real host).
  if [ ! -f "$S/etc/.sigvirt-lab-hostb" ]; then
    rm -rf "$S/etc" "$S/etc.new"
    cp -a /etc/libvirt "$S/etc.new"
    local e=$S/etc.new
    # No domains, pools, secrets or networks of the main daemon; above all no NAT network
    # that hostB would autostart (no bridges in this lab).
    find "$e/qemu" -maxdepth 1 -name '*.xml' -delete 2>/dev/null || true
    rm -rf "$e/qemu/autostart" "$e/qemu/networks" "$e/qemu/checkpoint" "$e/qemu/snapshot" \
      "$e/storage" "$e/secrets" "$e/lxc" "$e/nwfilter-binding"
    mkdir -p "$e/qemu/networks/autostart" "$e/storage/autostart" "$e/secrets"
    chmod 0700 "$e/secrets"
    touch "$e/.sigvirt-lab-hostb"
    mv "$e" "$S/etc"
  fi
  local c=$S/etc/libvirtd.conf q=$S/etc/qemu.conf
  set_conf "$c" listen_tls 0
  set_conf "$c" listen_tcp 1
  set_conf "$c" tcp_port "\"$TCP_PORT\""
  set_conf "$c" listen_addr '"127.0.0.1"'
  set_conf "$c" auth_tcp '"none"'
  set_conf "$c" log_outputs '"3:file:/var/log/libvirt/libvirtd.log"'
  set_conf "$q" stdio_handler '"file"'   # no virtlogd for hostB

  # Keys: client key (what sigvirt uses), host key; made once, kept across restarts so
  # known_hosts entries stay valid.
  [ -s "$KEY" ] || { rm -f "$KEY" "$KEY.pub"; ssh-keygen -q -t ed25519 -N '' -C "sigvirt-lab-hostb-client" -f "$KEY"; }
  [ -s "$KEY.pub" ] || ssh-keygen -y -f "$KEY" >"$KEY.pub"
  local hk=$S/ssh_host_ed25519_key
  [ -s "$hk" ] || { rm -f "$hk" "$hk.pub"; ssh-keygen -q -t ed25519 -N '' -C "sigvirt-lab-hostb" -f "$hk"; }
  chmod 0600 "$KEY" "$hk"
  install -m 0600 "$KEY.pub" "$S/authorized_keys"

  cat >"$SSHD_CONFIG" <<EOF
# sshd for sigvirt lab hostB (written by tools/lab-hostb.sh; rewritten on every start)
Port $SSH_PORT
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $hk
PidFile $SSHD_PIDFILE
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
AllowAgentForwarding no
PermitTunnel no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 50:30:200
MaxSessions 50
ClientAliveInterval 30
Subsystem sftp internal-sftp
EOF
  chmod 0600 "$SSHD_CONFIG"

  printf 'TCP_PORT=%s\nSSH_PORT=%s\n' "$TCP_PORT" "$SSH_PORT" >"$S/ports"
}

port_busy() {  # is something listening on 127.0.0.1:PORT (or the wildcard)?
  ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

wait_uri() {  # wait_uri URI WHAT
  local i end=$((SECONDS + WAIT_SECS))
  for ((i = 0; ; i++)); do
    if vsh "$1" version >/dev/null 2>"$S/log/wait.err"; then return 0; fi
    [ $SECONDS -lt $end ] || { log "$2 did not answer within ${WAIT_SECS}s:"; cat "$S/log/wait.err" >&2; return 1; }
    sleep 0.2
  done
}

start_libvirtd() {
  local out=$S/log/libvirtd.stderr
  : >"$out"
  # Everything below the unshare runs in the new namespace only; the guard makes sure no
  # bind mount can ever land in the host's namespace (over the main daemon's /run/libvirt).
  # shellcheck disable=SC2016
  env -i PATH="$CLEAN_PATH" HOME=/root LANG=C.UTF-8 HOST_NS="$MY_NS" S="$S" \
    unshare --mount --propagation private -- /bin/sh -ec '
      [ "$(readlink /proc/self/ns/mnt)" != "$HOST_NS" ] || { echo "still in the host mount namespace" >&2; exit 1; }
      mount --bind "$S/etc" /etc/libvirt
      mount --bind "$S/run" /run/libvirt
      mount --bind "$S/lib" /var/lib/libvirt
      mount --bind "$S/cache" /var/cache/libvirt
      mount --bind "$S/log" /var/log/libvirt
      exec libvirtd --daemon --listen --pid-file "$S/libvirtd.pid"
    ' </dev/null >>"$out" 2>&1 || { cat "$out" >&2; die "libvirtd for hostB failed to start (see $S/log)"; }
}

start_sshd() {
  local lpid=$1 out=$S/log/sshd.stderr
  install -d -m 0755 /run/sshd   # sshd's compiled-in privilege separation dir
  "$SSHD" -t -f "$SSHD_CONFIG" || die "sshd config test failed: $SSHD_CONFIG"
  rm -f "$SSHD_PIDFILE"
  env -i PATH="$CLEAN_PATH" HOME=/root LANG=C.UTF-8 \
    nsenter --mount="/proc/$lpid/ns/mnt" -- "$SSHD" -f "$SSHD_CONFIG" -E "$S/log/sshd.log" \
    </dev/null >"$out" 2>&1 || { cat "$out" "$S/log/sshd.log" >&2 2>/dev/null; die "sshd for hostB failed to start"; }
  local i
  for ((i = 0; i < 100; i++)); do
    sshd_pid >/dev/null && return 0
    sleep 0.05
  done
  cat "$S/log/sshd.log" >&2 2>/dev/null || true
  die "sshd for hostB wrote no pid file"
}

do_start() {
  local t0=$SECONDS lpid spid p
  for p in libvirtd virsh unshare nsenter ssh-keygen ssh virt-ssh-helper "$SSHD"; do
    command -v "$p" >/dev/null || die "$p not found (packages: libvirt-daemon-system libvirt-clients openssh-server openssh-client util-linux)"
  done
  lpid=$(libvirtd_pid) || lpid=''
  if [ -n "$lpid" ] && { [ "$TCP_PORT" != "${rec_tcp:-$TCP_PORT}" ] || [ "$SSH_PORT" != "${rec_ssh:-$SSH_PORT}" ]; }; then
    die "hostB in $S runs with tcp port $rec_tcp, ssh port $rec_ssh; stop it before changing ports"
  fi
  if [ -z "$lpid" ]; then
    # Not running: clean up whatever a crash left (QEMUs, sshd, pid files, sockets) first.
    do_stop
    port_busy "$TCP_PORT" && die "tcp port $TCP_PORT is already in use on this machine"
  fi
  spid=$(sshd_pid) || spid=''
  if [ -n "$spid" ] && { [ -z "$lpid" ] || [ "$(ns_of "$spid")" != "$(ns_of "$lpid")" ]; }; then
    kill_wait 5 "$spid"; spid=''
  fi
  if [ -z "$spid" ] && port_busy "$SSH_PORT"; then
    die "ssh port $SSH_PORT is already in use on this machine"
  fi

  prepare_state

  if [ -z "$lpid" ]; then
    log "starting libvirtd (hostB) on 127.0.0.1:$TCP_PORT, state $S"
    start_libvirtd
    for ((p = 0; p < 100; p++)); do
      lpid=$(libvirtd_pid) && break
      sleep 0.05
    done
    [ -n "$lpid" ] || { cat "$S/log/libvirtd.stderr" >&2; die "libvirtd for hostB wrote no pid file"; }
  fi
  [ "$(ns_of "$lpid")" != "$MY_NS" ] || die "hostB's libvirtd (pid $lpid) runs in the host namespace; refusing"
  wait_uri "$TCP_URI" "hostB libvirtd ($TCP_URI)"

  if [ -z "$spid" ]; then
    log "starting sshd (hostB) on 127.0.0.1:$SSH_PORT"
    start_sshd "$lpid"
  fi
  known_hosts_add
  wait_uri "$SSH_URI" "hostB over ssh ($SSH_URI)"
  log "hostB ready in $((SECONDS - t0))s: libvirtd pid $lpid, sshd pid $(sshd_pid || echo '?')"
  print_env
}

do_status() {
  local lpid spid answers=0
  lpid=$(libvirtd_pid) || lpid=''
  spid=$(sshd_pid) || spid=''
  printf 'state_dir: %s\n' "$S"
  if [ -n "$lpid" ]; then
    if vsh "$TCP_URI" version >/dev/null 2>&1; then
      answers=1
      printf 'libvirtd:  running, pid %s, %s answers\n' "$lpid" "$TCP_URI"
    else
      printf 'libvirtd:  running, pid %s, %s does NOT answer\n' "$lpid" "$TCP_URI"
    fi
  else
    printf 'libvirtd:  stopped\n'
  fi
  if [ -n "$spid" ]; then
    printf 'sshd:      running, pid %s, 127.0.0.1:%s\n' "$spid" "$SSH_PORT"
  else
    printf 'sshd:      stopped\n'
  fi
  if [ $answers -eq 1 ]; then
    printf 'domains:   %s\n' "$(vsh "$TCP_URI" list --all --name 2>/dev/null | grep -c . || true)"
  fi
  if [ -z "$lpid" ] && [ -z "$spid" ]; then exit 3; fi
  if [ $answers -eq 1 ] && [ -n "$spid" ]; then exit 0; fi
  exit 1
}

case $cmd in
  start) do_start ;;
  stop)
    if [ ! -d "$S" ]; then log "nothing to stop ($S does not exist)"; exit 0; fi
    do_stop
    log "hostB stopped ($S)"
    ;;
  status) do_status ;;
esac
