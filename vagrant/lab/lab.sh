#!/usr/bin/env bash
# The lab of libvirt hosts in this directory's Vagrantfile, from box to regions and back.
#
#   lab.sh box [DIR]      build the labhost image (cached), write DIR/labhost.box (default: a
#                         temp dir) and `vagrant box add` it as $SIGVIRT_LAB_BOX
#   lab.sh up [ARG...]    vagrant up ARG... (vagrant-libvirt brings the machines up in parallel;
#                         --no-parallel: one after the other)
#   lab.sh regions        each machine as a sigvirt region (`sigvirt region add labN --uri
#                         qemu+ssh://vagrant@127.0.0.1:PORT/system?keyfile=…&no_verify=1
#                         --pool sigvirt-lab`), from `vagrant ssh-config`
#   lab.sh unregions      sigvirt region remove labN (refused while replicas live there)
#   lab.sh down           vagrant destroy -f
#   lab.sh unbox          vagrant box remove, and the box's volume left in this host's pool
#
# Environment: as the Vagrantfile's (SIGVIRT_LAB_HOSTS, SIGVIRT_LAB_PORT_BASE, SIGVIRT_LAB_BOX,
# ...), SIGVIRT_REGIONS (the regions.yaml written), SIGVIRT (the sigvirt command), and
# SIGVIRT_LAB_REGION_PREFIX (the regions' names: PREFIX1..PREFIXN, default lab).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
sigvirt=${SIGVIRT:-sigvirt}
box=${SIGVIRT_LAB_BOX:-sigvirt/labhost}
count=${SIGVIRT_LAB_HOSTS:-3}
prefix=${SIGVIRT_LAB_REGION_PREFIX:-lab}

# ssh_config MACHINE KEY: the value of KEY in `vagrant ssh-config MACHINE`
ssh_config() { vagrant ssh-config "$1" | awk -v k="$2" '$1 == k { print $2; exit }'; }

case "${1:-}" in
  box)
    dir=${2:-$(mktemp -d /var/tmp/sigvirt-labhost-box.XXXXXX)}
    file=$dir/labhost.box
    sha=$("$sigvirt" image box labhost --file "$file" --query sha256 -o tsv)
    vagrant box add --name "$box" --checksum-type sha256 --checksum "$sha" "$file"
    echo "$file $sha"
    ;;
  up) shift; vagrant up "$@" ;;
  regions)
    for i in $(seq 1 "$count"); do
      port=$(ssh_config "lab$i" Port)
      key=$(ssh_config "lab$i" IdentityFile)
      key=${key%\"}; key=${key#\"}
      "$sigvirt" region add "$prefix$i" \
        --uri "qemu+ssh://vagrant@127.0.0.1:$port/system?keyfile=$key&no_verify=1" \
        --pool sigvirt-lab --description "vagrant/lab machine lab$i" -o none
      echo "$prefix$i: qemu+ssh://vagrant@127.0.0.1:$port/system"
    done
    ;;
  unregions)
    for i in $(seq 1 "$count"); do "$sigvirt" region remove "$prefix$i" -o none; done
    ;;
  down) vagrant destroy -f ;;
  unbox)
    vagrant box remove --force --all "$box"
    # vagrant-libvirt leaves the box's volume in the pool: `sigvirt doctor` names it
    "$sigvirt" doctor -o tsv --query "[?starts_with(name, 'vagrant box volume')].fix" 2>/dev/null || true
    ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
