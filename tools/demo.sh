#!/usr/bin/env bash
# The demo: a guest image built from Debian packages → gallery → definition → version with
# two replicas → a VM and a scale set on linked clones → SSH into them → everything removed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
S=${SIGVIRT:-/opt/sigvirt/venv/bin/sigvirt}
PY=${PYTHON:-/opt/sigvirt/venv/bin/python}

work=$(mktemp -d /var/tmp/sigvirt-demo.XXXXXX)
chmod 755 "$work"
tag=$(basename "$work" | tr -dc 'a-z0-9' | tail -c 6)
export HOME="$work/home" SIGVIRT_GALLERY_ROOT="$work/galleries" SIGVIRT_REGIONS="$work/regions.yaml"
mkdir -p "$HOME"
cat > "$SIGVIRT_REGIONS" <<YAML
regions:
  local:
    uri: qemu:///system
    description: this machine
    pools:
      - name: demo-$tag-a
        path: $work/pools/a
      - name: demo-$tag-b
        path: $work/pools/b
YAML

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  step "cleaning up"
  $S vmss delete --name demo-web >/dev/null 2>&1 || true
  $S vm delete --name demo-vm >/dev/null 2>&1 || true
  $S sig image-version delete -r demoGallery -i debian12 -e 1.0.0 >/dev/null 2>&1 || true
  $S sig image-definition delete -r demoGallery -i debian12 >/dev/null 2>&1 || true
  $S sig delete -r demoGallery >/dev/null 2>&1 || true
  for p in demo-$tag-a demo-$tag-b; do
    virsh -q pool-destroy "$p" >/dev/null 2>&1 || true
    virsh -q pool-undefine "$p" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
  echo "removed VMs, scale set, version, replicas, pools and $work"
}
trap cleanup EXIT

step "guest image from Debian packages (cached by a hash of the recipe)"
image=$($S image build debian -o json | $PY -c 'import json,sys; print(json.load(sys.stdin)["path"])')
echo "$image"

step "gallery, image definition, image version (2 replicas in region local)"
run $S sig create --gallery-name demoGallery --description "sigvirt demo"
run $S sig image-definition create --gallery-name demoGallery --gallery-image-definition debian12 \
  --publisher sigvirt --offer debian --sku 12-cloud --os-type Linux --minimum-memory 256
run $S sig image-version create --gallery-name demoGallery --gallery-image-definition debian12 \
  --gallery-image-version 1.0.0 --source "$image" --target-regions local=2
run $S sig image-version show -r demoGallery -i debian12 -e 1.0.0 --expand ReplicationStatus

step "a VM from the latest version (key generated, seeded through cloud-init)"
run $S vm create --name demo-vm --image demoGallery/debian12 --memory 512 --generate-ssh-keys
run $S vm show --name demo-vm
run $S vm ssh --name demo-vm -- 'echo "hello from $(hostname)"; cloud-init status; uname -r'

step "a scale set of 2 on linked clones spread over the 2 replicas"
run $S vmss create --name demo-web --image demoGallery/debian12/1.0.0 --instance-count 2 --memory 512
run $S vmss list-instances --name demo-web
run $S sig image-version delete -r demoGallery -i debian12 -e 1.0.0 || echo "(refused while clones depend on it, as it should be)"

step "where the disk space went: replicas, the clones on them, the pools (from the files)"
run $S sig space demoGallery
