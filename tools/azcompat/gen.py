"""Writes docs/az-compat.md: az's parameters per command against sigvirt's --help.

    python tools/azcompat/gen.py     (from the checkout, with sigvirt's venv python)

The tables below are the az side (from the Azure CLI reference, see head.md) and what sigvirt
does with each parameter; each command's --help is read to mark what sigvirt declares.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent

PY = sys.executable
GENERIC = {"--resource-group", "--ids", "--yes", "--tags", "--no-wait", "--set", "--add",
           "--remove", "--force-string"}

def sigvirt_options(cmd):
    env = dict(os.environ, COLUMNS="400")
    p = subprocess.run([PY, "-m", "sigvirt", *cmd.split(), "--help"], capture_output=True,
                       text=True, env=env, cwd=CHECKOUT, timeout=60)
    if "No such command" in p.stdout + p.stderr:
        return None
    opts = set()
    for line in p.stdout.splitlines():
        m = re.match(r"^│\s+\*?\s*((?:--?[\w-]+)(?:[ ,]+--?[\w-]+)*)", line)
        if m:
            opts.update(re.findall(r"--?[\w-]+", m.group(1)))
    return opts

A, I, R, P, N = "supported", "accepted, ignored", "refused", "planned", "not yet"

# (az names, status when sigvirt lacks it, note, note when sigvirt has it)
NET = "sigvirt is not a network manager: a guest's NIC comes from its region's `network` in regions.yaml"
FWD = ("guests are reached through loopback forwards (user-forward networks: a port on the "
       "host's 127.0.0.1, tunnelled over SSH for remote regions) or the bridge regions.yaml names")
NOIDENT = "no Azure AD / managed identities on a lab host; access is Unix groups (`sig share`)"
NOKV = "no Key Vault or disk encryption sets: replicas are plain qcow2 files that many clones read"
WIN = ("Windows provisioning (unattend, WinRM, Windows Update) is not implemented: sigvirt "
       "provisions guests through cloud-init NoCloud")
NOMARKET = "no marketplace: images come from galleries only"
NOSPOT = "no Spot capacity, prices or evictions on a lab host"

RG = (["--resource-group", "-g"], A, "a name only: it goes into the resource ids sigvirt prints "
      "(`sigvirt` when omitted); sigvirt has no resource groups to create or check")
IDS = (["--ids"], A, "Azure-style ids as sigvirt prints them (any subscription, any group: "
       "names only); several after one `--ids`")
NOWAIT = (["--no-wait"], A, "returns at once; `wait` (or `show`) follows")
TAGS = (["--tags"], A, "stored with the resource, printed as `tags`; `\"\"` clears them")
SETS = [(["--set"], A, "generic update: PATH=VALUE on the az-shaped resource (tags.KEY=VALUE, "
         "description=..., the properties the command's own options change)"),
        (["--add"], A, "generic update: add to a list property"),
        (["--remove"], A, "generic update: remove a property or list item"),
        (["--force-string"], A, "with --set/--add: keep the value a string")]
YES = (["--yes", "-y"], A, "sigvirt never prompts")

COMMANDS = []
def cmd(az, sv, rows, intro=""):
    COMMANDS.append((az, sv, rows, intro))

# ---------------------------------------------------------------- az sig
cmd("sig create", "sig create", [
    (["--gallery-name", "-r"], A, "gallery name (`[A-Za-z0-9]`, `_`/`.` inside, at most 80)"),
    RG,
    (["--location", "-l"], A, "the gallery's home region: where new versions are imported "
     "(az takes the resource group's location when omitted; sigvirt, which keeps no groups, "
     "takes `local`)"),
    (["--description"], A, ""),
    TAGS,
    (["--permissions"], R, "Private, Groups, Community: sharing with subscriptions, tenants or "
     "the public has no meaning on a lab host; share with Unix groups: `sigvirt sig share add`"),
    (["--eula"], R, "community-gallery info (Community sharing) - see --permissions"),
    (["--public-name-prefix"], R, "community-gallery info - see --permissions"),
    (["--publisher-email", "--publisher-contact"], R, "community-gallery info - see --permissions"),
    (["--publisher-uri"], R, "community-gallery info - see --permissions"),
    (["--soft-delete"], A, "true: deleted versions and definitions go to the gallery's recycle "
     "bin with their replicas (`image-version undelete` restores them, `list-soft-deleted` "
     "shows them) until `sig gc` purges them after `--soft-delete-retention-days` (default 7, "
     "Azure's); unlike Azure's newest API, a soft-deleted version can't be deployed by name"),
    (["--mi-system-assigned", "--system-assigned"], R, NOIDENT + " (newer az)"),
    (["--mi-user-assigned", "--user-assigned"], R, NOIDENT + " (newer az)"),
    NOWAIT,
])
cmd("sig list", "sig list", [
    (["--resource-group", "-g"], A, "az lists that group's galleries only; without it, all"),
])
cmd("sig show", "sig show", [
    (["--gallery-name", "-r"], A, ""), RG, IDS,
    (["--sharing-groups"], A, "adds who the gallery is shared with (Unix groups and roles)"),
    (["--select"], I, "az's `$select=Permissions` narrows sharingProfile; sigvirt prints it whole"),
])
cmd("sig update", "sig update", [
    (["--gallery-name", "-r"], A, ""), RG, IDS,
    (["--description"], A, ""), TAGS, *SETS,
    (["--permissions"], R, "see `sig create`; sharing: `sigvirt sig share add|remove`"),
    (["--eula"], R, "community-gallery info - see `sig create`"),
    (["--public-name-prefix"], R, "community-gallery info"),
    (["--publisher-email", "--publisher-contact"], R, "community-gallery info"),
    (["--publisher-uri"], R, "community-gallery info"),
    (["--soft-delete"], A, "see `sig create`; turning it off leaves what is in the bin there "
     "until its retention ends"),
    (["--soft-delete-retention-period", "--soft-delete-retention"], R, "sigvirt's retention is "
     "`--soft-delete-retention-days` (days)"),
    (["--soft-delete-grace-period", "--soft-delete-grace"], R, "sigvirt's retention is "
     "`--soft-delete-retention-days` (days)"),
    (["--select"], I, "see `sig show`"),
    NOWAIT,
])
cmd("sig delete", "sig delete", [
    (["--gallery-name", "-r"], A, "deleting a gallery is refused (exit 6) while it has image "
     "definitions, as in Azure, soft-deleted ones included (until gc purges them)"),
    RG, IDS, NOWAIT, YES,
])
# ---------------------------------------------------------------- image-definition
cmd("sig image-definition create", "sig image-definition create", [
    (["--gallery-name", "-r"], A, ""),
    (["--gallery-image-definition", "-i"], A, ""),
    RG,
    (["--publisher", "-p"], A, "publisher/offer/sku unique within the gallery, as in Azure"),
    (["--offer", "-f"], A, ""),
    (["--sku", "-s"], A, ""),
    (["--os-type"], A, "Linux or Windows (Windows: no seed, Hyper-V enlightenments, SATA, "
     "e1000e, VNC on 127.0.0.1, no SSH wait)"),
    (["--os-state"], A, "Generalized (cloud-init seeds hostname, user, key) or Specialized "
     "(no seed; the identity flags of `vm create` are refused)"),
    (["--hyper-v-generation"], A, "V1 = BIOS (SeaBIOS), V2 = UEFI (OVMF)"),
    (["--architecture"], A, "x64 or Arm64 (Arm64: an aarch64 `virt` guest under "
     "qemu-system-aarch64, AAVMF UEFI, TCG on x86 hosts; a region may declare the "
     "architectures it runs)"),
    (["--minimum-cpu-core"], A, "checked at `vm create` (`--force` overrides)"),
    (["--maximum-cpu-core"], A, "checked at `vm create`"),
    (["--minimum-memory"], A, "sigvirt reads MiB; az's help says MB (one of its examples says GB) and the API gives "
     "`recommended.memory` no unit"),
    (["--maximum-memory"], A, "as --minimum-memory"),
    (["--end-of-life-date"], A, ""),
    (["--eula"], A, ""),
    (["--release-note-uri"], A, ""),
    (["--privacy-statement-uri"], A, ""),
    (["--description"], A, ""),
    TAGS,
    (["--location", "-l"], I, "a definition has no region of its own in sigvirt; versions "
     "carry regions"),
    (["--features"], A, "Name=Value pairs in Azure's spelling, checked (unknown names refused "
     "with a did-you-mean): DiskControllerTypes lets `vm create --disk-controller-type` put the "
     "OS disk on virtio-scsi or NVMe; IsAcceleratedNetworkSupported=True gives virtio-net a "
     "queue per vCPU on network/bridge regions (QEMU user networking has one); SecurityType "
     "TrustedLaunch: Secure Boot (OVMF, Microsoft keys, SMM) + vTPM 2.0 (swtpm), "
     "TrustedLaunchSupported: on request, ConfidentialVM: stored, `vm create` refuses; "
     "IsHibernateSupported is stored only"),
    (["--disallowed-disk-types"], N, "could be checked against pool storage types"),
    (["--plan-name"], R, NOMARKET),
    (["--plan-product"], R, NOMARKET),
    (["--plan-publisher"], R, NOMARKET),
])
cmd("sig image-definition list", "sig image-definition list", [
    (["--gallery-name", "-r"], A, ""), RG,
])
cmd("sig image-definition show", "sig image-definition show", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""), RG, IDS,
])
cmd("sig image-definition update", "sig image-definition update", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""), RG, IDS,
    *SETS,
    NOWAIT,
], intro="az updates a definition through --set/--add/--remove only (e.g. `--set "
          "recommended.vCPUs.min=2 description=...`); sigvirt takes those and also has its own "
          "flags for the same properties (--minimum-cpu-core ... --description, --tags), and "
          "`--features` with `--allow-update-image true` (Azure's allowUpdateImage): the list is "
          "replaced; new VMs follow it.")
cmd("sig image-definition delete", "sig image-definition delete", [
    (["--gallery-name", "-r"], A, ""),
    (["--gallery-image-definition", "-i"], A, "deleting is refused (exit 6) while the definition "
     "has versions, as in Azure; with the gallery's soft delete on it goes to the recycle bin "
     "(`image-definition undelete`)"),
    RG, IDS, NOWAIT, YES,
])
# ---------------------------------------------------------------- image-version
TR = (["--target-regions"], A, "`name`, `name=count`, `name=count=storage_type`, several after "
      "one flag; regions are regions.yaml's (Azure display names such as \"West Central US\" "
      "find `westcentralus`); the source region is always a target; a zoned region's count "
      "is spread over its zones")
cmd("sig image-version create", "sig image-version create", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""),
    (["--gallery-image-version", "-e"], A, "Major.Minor.Patch, 32-bit parts"),
    RG,
    (["--managed-image"], A, "sigvirt's --source under az's name: a qcow2/raw file, "
     "`pool/volume`, `vm:NAME`, `box:FILE.box`; every source goes through the import gate"),
    (["--virtual-machine"], A, "a sigvirt VM (name or id), its disk flattened: shut off for "
     "a Generalized definition; for a Specialized one it may run (libvirt backup job, "
     "crash-consistent)"),
    (["--image-version"], A, "another version's id: its bytes are copied"),
    (["--os-snapshot"], N, "no snapshots in sigvirt; `--managed-image POOL/VOLUME` takes a "
     "libvirt volume"),
    (["--data-snapshots"], R, "versions have one (OS) disk: no data-disk images"),
    (["--data-snapshot-luns"], R, "no data-disk images"),
    (["--os-vhd-uri"], R, "no storage accounts or blob URIs; give a file path"),
    (["--os-vhd-storage-account"], R, "no storage accounts"),
    (["--data-vhds-uris"], R, "no data-disk images, no blob URIs"),
    (["--data-vhds-luns"], R, "no data-disk images"),
    (["--data-vhds-sa", "--data-vhds-storage-accounts"], R, "no storage accounts"),
    TR,
    (["--replica-count"], A, "replicas of each target region given without a count"),
    (["--storage-account-type"], A, "storage type of regions given without one: replicas go to "
     "pools labelled with it (`storage_type` in regions.yaml)"),
    (["--replication-mode"], A, "Full, or Shallow (the source region only)"),
    (["--location", "-l"], A, "source region (default: the gallery's)"),
    (["--exclude-from-latest"], A, ""),
    (["--end-of-life-date"], A, ""),
    TAGS,
    NOWAIT,
    (["--target-region-encryption"], R, NOKV),
    (["--target-region-cvm-encryption"], R, NOKV),
    (["--target-edge-zones"], R, "no edge zones: a region is a libvirt host"),
    (["--target-edge-zone-encryption", "--zone-encryption"], R, "no edge zones, " + NOKV),
    (["--allow-replicated-location-deletion"], A, "true/false (default false): "
     "safetyProfile.allowDeletionOfReplicatedLocations; without it an `update --target-regions` "
     "that leaves out a region holding completed replicas is refused (exit 28), naming them"),
    (["--block-deletion-before-end-of-life"], A, "true/false: safetyProfile."
     "blockDeletionBeforeEndOfLife; `delete` (and `retire`) before --end-of-life-date is "
     "refused (exit 28) with the date; needs an --end-of-life-date"),
])
cmd("sig image-version list", "sig image-version list", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""), RG,
])
cmd("sig image-version show", "sig image-version show", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""),
    (["--gallery-image-version", "-e"], A, ""), RG, IDS,
    (["--expand"], A, "ReplicationStatus: adds `replicationStatus` (aggregatedState, summary[] "
     "per region with state, details, progress)"),
])
cmd("sig image-version update", "sig image-version update", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""),
    (["--gallery-image-version", "-e"], A, ""), RG, IDS,
    (TR[0], A, "adds, removes or recounts regions and resumes whatever is missing; replicas "
     "that clones depend on are never removed"),
    (["--replica-count"], A, ""),
    *SETS,
    NOWAIT,
    (["--allow-replicated-location-deletion"], A, "see `create`; given in the same update it "
     "counts (az's update sends both); also `--set safetyProfile.allowDeletionOfReplicatedLocations=true`"),
    (["--block-deletion-before-end-of-life"], A, "see `create`; also `--set safetyProfile."
     "blockDeletionBeforeEndOfLife=false`"),
    (["--target-edge-zones"], R, "no edge zones"),
], intro="az's examples use `--set publishingProfile.excludeFromLatest=true`, `--set "
          "publishingProfile.endOfLifeDate=...` and `--add publishingProfile.targetRegions "
          "name=REGION regionalReplicaCount=N`; sigvirt also has --exclude-from-latest/"
          "--include-in-latest and --end-of-life-date.")
cmd("sig image-version delete", "sig image-version delete", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""),
    (["--gallery-image-version", "-e"], A, "deleting is refused (exit 6) while VMs' clones "
     "depend on its replicas (`sigvirt sig image-version dependents`); with the gallery's soft "
     "delete on it goes to the recycle bin with its replicas; a region that doesn't answer keeps "
     "its replicas, pending, until `sig gc` reaches it"),
    RG, IDS, NOWAIT, YES,
])
cmd("sig image-version wait", "sig image-version wait", [
    (["--gallery-name", "-r"], A, ""), (["--gallery-image-definition", "-i"], A, ""),
    (["--gallery-image-version", "-e"], A, ""), RG, IDS,
    (["--created"], A, "until provisioningState is Succeeded"),
    (["--updated"], A, "until no replica is pending or copying"),
    (["--deleted"], A, ""), (["--exists"], A, ""),
    (["--custom"], A, "a JMESPath condition on the az-shaped version"),
    (["--interval"], A, "az's default is 30 s, sigvirt's 5 s"),
    (["--timeout"], A, "seconds (default 3600, as az)"),
    (["--expand"], I, "the condition sees replicationStatus either way"),
])
# ---------------------------------------------------------------- vm
VM_CREATE = set('''--name --resource-group --accelerated-networking --accept-term --admin-password --admin-username --asgs --assign-identity --attach-data-disks --attach-os-disk --authentication-type --availability-set --boot-diagnostics-storage --capacity-reservation-group --computer-name --count --custom-data --data-disk-caching --data-disk-delete-option --data-disk-encryption-sets --data-disk-sizes-gb --disable-integrity-monitoring --disk-controller-type --edge-zone --enable-agent --enable-auto-update --enable-hibernation --enable-hotpatching --enable-secure-boot --enable-vtpm --encryption-at-host --ephemeral-os-disk --ephemeral-os-disk-placement --eviction-policy --generate-ssh-keys --host --host-group --image --license-type --location --max-price --nic-delete-option --nics --no-wait --nsg --nsg-rule --os-disk-caching --os-disk-delete-option --os-disk-encryption-set --os-disk-name --os-disk-size-gb --os-type --patch-mode --plan-name --plan-product --plan-promotion-code --plan-publisher --platform-fault-domain --ppg --priority --private-ip-address --public-ip-address --public-ip-address-allocation --public-ip-address-dns-name --public-ip-sku --role --scope --secrets --security-type --size --specialized --ssh-dest-key-path --ssh-key-name --ssh-key-values --storage-account --storage-container-name --storage-sku --subnet --subnet-address-prefix --tags --ultra-ssd-enabled --use-unmanaged-disk --user-data --v-cpus-available --v-cpus-per-core --validate --vmss --vnet-address-prefix --vnet-name --workspace --zone'''.split())
VMSS_CREATE = set('''--name --resource-group --accelerated-networking --accept-term --admin-password --admin-username --app-gateway --app-gateway-capacity --app-gateway-sku --app-gateway-subnet-address-prefix --asgs --assign-identity --authentication-type --automatic-repairs-action --automatic-repairs-grace-period --backend-pool-name --backend-port --capacity-reservation-group --computer-name-prefix --custom-data --data-disk-caching --data-disk-encryption-sets --data-disk-iops --data-disk-mbps --data-disk-sizes-gb --disable-integrity-monitoring --disable-overprovision --disk-controller-type --dns-servers --edge-zone --enable-agent --enable-auto-update --enable-cross-zone-upgrade --enable-secure-boot --enable-spot-restore --enable-vtpm --encryption-at-host --ephemeral-os-disk --ephemeral-os-disk-placement --eviction-policy --generate-ssh-keys --health-probe --host-group --image --instance-count --lb --lb-nat-pool-name --lb-sku --license-type --location --max-batch-instance-percent --max-price --max-unhealthy-instance-percent --max-unhealthy-upgraded-instance-percent --network-api-version --no-wait --nsg --orchestration-mode --os-disk-caching --os-disk-encryption-set --os-disk-name --os-disk-size-gb --os-type --patch-mode --pause-time-between-batches --plan-name --plan-product --plan-promotion-code --plan-publisher --platform-fault-domain-count --ppg --prioritize-unhealthy-instances --priority --public-ip-address --public-ip-address-allocation --public-ip-address-dns-name --public-ip-per-vm --role --scale-in-policy --scope --secrets --security-type --single-placement-group --specialized --spot-restore-timeout --ssh-dest-key-path --ssh-key-values --storage-container-name --storage-sku --subnet --subnet-address-prefix --tags --terminate-notification-time --ultra-ssd-enabled --upgrade-policy-mode --use-unmanaged-disk --user-data --v-cpus-available --v-cpus-per-core --validate --vm-domain-name --vm-sku --vnet-address-prefix --vnet-name --zones'''.split())
def vm_create_rows(scale_set):
    rows = [
        (["--name", "-n"], A, "also the hostname" + (" prefix: instances are NAME-0, NAME-1, ..."
                                                     if scale_set else "")),
        RG,
        (["--image"], A, "GALLERY/DEFINITION[/VERSION] or the Azure id of a version or of a "
         "definition (latest); URN aliases (Ubuntu2204...), marketplace URNs, managed images "
         "and VHD URIs are refused: " + NOMARKET),
        (["--location", "-l"], A, "region (default: the first of the gallery's location, the "
         "version's source region, its targets, that has a completed replica)"),
        (["--size"] if not scale_set else ["--vm-sku"], A,
         "Azure size names (Standard_B1s ...) and Lab_* sizes map to vCPUs/memory; sigvirt "
         "also takes --vcpus/--memory" if not scale_set else "as `vm create --size`"),
        (["--admin-username"], A, "default: your user name (root -> azureuser, as az)"
         "; refused (exit 18) for a Specialized or Windows image: it boots without a seed"),
        (["--ssh-key-values", "--ssh-key-value"], A, "a public key file or the key itself"
         "; refused (exit 18) for a Specialized or Windows image: it boots without a seed"),
        (["--generate-ssh-keys"], A, "sigvirt makes ~/.ssh/id_ed25519 (az makes id_rsa) when "
         "there is no key; refused (exit 18) for a Specialized or Windows image: it boots without a seed"),
        (["--authentication-type"], I, "`ssh` is the only kind: password/all are refused"),
        (["--admin-password"], R, "sigvirt's Linux guests take SSH keys only (exit 21); with a "
         "Specialized or Windows image it is refused with the other identity flags (exit 18)"),
        (["--custom-data"], A, "cloud-init user data (#cloud-config or #!) on the NoCloud seed; "
         "sigvirt takes a file path, az also takes the text itself; refused (exit 18) for a Specialized or Windows image: it boots without a seed"),
        (["--user-data"], R, "no instance metadata service to serve it from; use --custom-data"),
        (["--no-wait"], A, "returns once the guest is started, before SSH answers"),
        TAGS,
        (["--os-type"], I, "the image definition's osType decides: Windows boots without a "
         "seed in a Windows domain; create returns once it runs and prints its VNC display"),
        (["--specialized"], I, "the image definition's osState decides: Specialized boots "
         "without a seed (the image's own hostname, users, keys; osProfile null)"),
        (["--accelerated-networking"], I, "guests get virtio-net; there is no SR-IOV to ask "
         "for; the definition's IsAcceleratedNetworkSupported=True gives virtio-net multiqueue (a "
         "queue per vCPU) on network/bridge regions; QEMU user networking has one queue"),
        (["--disk-controller-type"], A, "SCSI: the OS disk on virtio-scsi (/dev/sda); NVMe: on "
         "QEMU's NVMe controller (/dev/nvme0n1, libvirt >= 8.2); only types the definition's "
         "DiskControllerTypes lists, V2 definitions only (as in Azure); default virtio-blk"),
        (["--accept-term"], I, "no marketplace terms to accept"),
        (["--license-type"], I, "no licensing or billing"),
        (["--enable-agent"], I, "no Azure VM agent: provisioning is cloud-init NoCloud"),
        (["--boot-diagnostics-storage"], I, "every guest has a serial-console log volume "
         "(shown when a guest fails to come up); no storage account"),
        (["--os-disk-caching"], I, "QEMU's cache mode is sigvirt's choice"),
        (["--os-disk-name"], I, "the overlay volume is named after the VM"),
        (["--os-disk-delete-option"], I, "Delete is what happens; Detach is refused: a kept "
         "overlay would pin its replica"),
        (["--nic-delete-option"], I, "the NIC is part of the domain and goes with it"),
        (["--disable-integrity-monitoring"], I, "there is no guest-attestation extension"),
        (["--nsg-rule"], I, "SSH/NONE: the SSH forward is all there is; RDP is refused"),
        (["--ephemeral-os-disk"], R, "a guest's disk is a persistent qcow2 overlay in its "
         "replica's pool; there is no cache or resource disk"),
        (["--ephemeral-os-disk-placement", "--ephemeral-placement"], R, "see --ephemeral-os-disk"),
        (["--os-disk-size-gb"], N, "the overlay could be given a larger virtual size (cloud-init "
         "grows the root filesystem)"),
        (["--data-disk-sizes-gb"], N, "empty qcow2 volumes beside the OS disk, lun 0 on; in "
         "the guest by serial: /dev/disk/by-id/virtio-sigvirt-lun0, …"),
        (["--data-disk-caching"], N, "with --data-disk-sizes-gb"),
        (["--data-disk-encryption-sets"], R, NOKV),
        (["--os-disk-encryption-set"], R, NOKV),
        (["--encryption-at-host"], R, NOKV),
        (["--storage-sku"], R, "a guest's disk lives in the pool of the replica it clones: pick "
         "storage when replicating (`--target-regions REGION=N=STORAGE_TYPE`)"),
        (["--storage-container-name"], R, "no storage accounts"),
        (["--use-unmanaged-disk"], R, "no storage accounts / unmanaged VHDs"),
        (["--enable-secure-boot"], A, "true only: it means TrustedLaunch (Secure Boot with OVMF's "
         "Microsoft keys, SMM, and a vTPM); false is refused, both are always on in a Trusted "
         "Launch VM here" + ("; a TrustedLaunch definition's instances launch trusted anyway"
                             if scale_set else "")),
        (["--enable-vtpm"], A, "true only: it means TrustedLaunch (a vTPM 2.0 by swtpm, its "
         "state removed with the VM); false is refused"),
        (["--security-type"], A, "Standard or TrustedLaunch (the definition's SecurityType must "
         "allow it; a TrustedLaunch image always launches trusted); ConfidentialVM is refused"),
        (["--enable-auto-update"], R, WIN),
        (["--enable-hotpatching"], R, WIN),
        (["--patch-mode"], R, "no platform-orchestrated guest patching"),
        (["--eviction-policy"], R, NOSPOT),
        (["--max-price"], R, NOSPOT),
        (["--priority"], R, NOSPOT + " (Regular is what every guest is)"),
        (["--capacity-reservation-group", "--crg"], R, "no capacity reservations (a region's "
         "`clones_per_replica` bounds clones)"),
        (["--host"], R, "the region is the host: choose it with --location"),
        (["--host-group"], R, "no dedicated hosts: the region is the host, choose it with --location"),
        (["--ppg"], R, "no proximity placement groups: a region is one host"),
        (["--plan-name"], R, NOMARKET), (["--plan-product"], R, NOMARKET),
        (["--plan-publisher"], R, NOMARKET), (["--plan-promotion-code"], R, NOMARKET),
        (["--assign-identity"], R, NOIDENT), (["--role"], R, NOIDENT), (["--scope"], R, NOIDENT),
        (["--secrets"], R, "no Key Vault"),
        (["--nsg"], R, "no network security groups (see --public-ip-address); `--nsg \"\"` means none: fine"),
        (["--asgs"], R, "no application security groups: " + NET),
        (["--public-ip-address"], R, FWD + "; `--public-ip-address \"\"` (none) is what every "
         "guest has"),
        (["--public-ip-address-allocation"], R, "no public IPs (see --public-ip-address)"),
        (["--public-ip-address-dns-name"], R, "no public IPs or DNS names (see --public-ip-address)"),
        (["--public-ip-sku"], R, "no public IPs (see --public-ip-address)"),
        (["--subnet"], R, "no VNets or subnets: " + NET),
        (["--subnet-address-prefix"], R, NET),
        (["--vnet-name"], R, NET),
        (["--vnet-address-prefix"], R, NET),
        (["--edge-zone"], R, "no edge zones"),
        (["--ultra-ssd-enabled"], R, "no Ultra disks"),
        (["--enable-hibernation"], R, "no hibernation (sigvirt guests are started and stopped)"),
        (["--data-disk-iops"], R, "no per-disk IOPS limits"),
        (["--data-disk-mbps"], R, "no per-disk bandwidth limits"),
        (["--ssh-dest-key-path"], R, "the key goes to the admin user's "
         "~/.ssh/authorized_keys, nowhere else"),
        (["--storage-container-name"], R, "no storage accounts"),
        (["--v-cpus-available"], N, "sigvirt's --vcpus"),
        (["--v-cpus-per-core"], N, "could set the guest CPU topology"),
        (["--validate"], N, "a plan-only run (sigvirt checks everything before it creates "
         "anything, but cannot stop there yet)"),
        (["--workspace"], R, "no Log Analytics"),
    ]
    if not scale_set:
        rows += [
            (["--zone", "-z"], A, "the zone of a zoned region (regions.yaml `zones:`, each zone "
             "a libvirt host): a linked clone of a replica on that zone's host; az's `zones: "
             "[\"2\"]`; refused (exit 18) in a region without zones or for a zone it lacks; "
             "without it, in a zoned region, the zone holding a replica whose host runs the "
             "fewest guests"),
            (["--computer-name"], A, "the guest's hostname through the seed (default: "
             "--name), osProfile.computerName; refused for Specialized and Windows images (no "
             "seed)"),
            (["--count"], N, "N VMs NAME0..NAME(N-1); `vmss create --instance-count` does it "
             "today"),
            (["--attach-os-disk"], R, "a VM's OS disk is always a linked clone of an image "
             "version's replica"),
            (["--attach-data-disks"], N, "existing libvirt volumes could be attached"),
            (["--data-disk-delete-option"], N, "with --data-disk-sizes-gb"),
            (["--availability-set"], R, "no fault or update domains: a region is one host"),
            (["--platform-fault-domain"], R, "no fault domains"),
            (["--nics"], R, "no NIC resources: " + NET),
            (["--private-ip-address"], R, "sigvirt assigns no addresses: user-forward guests "
             "have QEMU's 10.0.2.15, bridged ones the LAN's DHCP"),
            (["--ssh-key-name"], R, "no SSH key resources"),
            (["--storage-account"], R, "no storage accounts"),
            (["--vmss"], R, "scale sets are Uniform here: a VM cannot join one"),
        ]
    else:
        rows += [
            (["--instance-count"], A, "instances boot concurrently, spread over the replicas"),
            (["--zones", "-z"], A, "zones of a zoned region: instances spread over them "
             "evenly, each on a replica on its zone's host; default in a zoned region: all its "
             "zones; a zone that doesn't answer fails its instances alone (exit 13); `vmss "
             "scale` refills in the zones that answer and says which it skipped; refused (exit "
             "18) in a region without zones or for a zone it lacks"),
            (["--computer-name-prefix"], R, "instance hostnames are the instance names "
             "(NAME-0, NAME-1, ...)"),
            (["--orchestration-mode"], I, "sigvirt scale sets behave as Uniform (instance ids, "
             "`list-instances`); newer az defaults to Flexible"),
            (["--upgrade-policy-mode"], A, "stored in the scale set's model: Manual (the "
             "default: `update-instances`, `reimage`), Automatic (a new latest version is "
             "rolled out on its own) or Rolling (`rolling-upgrade start`); case-insensitive"),
            (["--max-batch-instance-percent"], A, "rollingUpgradePolicy, 5..100 (default 20), "
             "not above --max-unhealthy-instance-percent when both are given"),
            (["--max-unhealthy-instance-percent"], A, "5..100 (default 20)"),
            (["--max-unhealthy-upgraded-instance-percent"], A, "0..100 (default 20)"),
            (["--pause-time-between-batches"], A, "ISO 8601 as az takes it (PT30S, PT1M30S) "
             "or seconds; at most a day"),
            (["--prioritize-unhealthy-instances"], A, "unhealthy instances are upgraded first"),
            (["--enable-cross-zone-upgrade"], I, "rolling upgrades batch the whole scale set; "
             "zones don't shape the batches"),
            (["--disable-overprovision"], I, "sigvirt never overprovisions"),
            (["--single-placement-group"], I, "one host per region"),
            (["--platform-fault-domain-count"], I, "no fault domains"),
            (["--network-api-version"], I, "no network resources"),
            (["--scale-in-policy"], I, "`vmss scale` removes the newest instances: Default and "
             "NewestVM are that; OldestVM is refused"),
            (["--automatic-repairs-action"], R, "no health monitoring or automatic repairs"),
            (["--automatic-repairs-grace-period"], R, "no automatic repairs"),
            (["--health-probe"], R, "no load balancers or probes: sigvirt's "
             "--health-probe-command and --health-probe-spec (a testinfra file) say when an "
             "instance is healthy"),
            (["--terminate-notification-time"], R, "no scheduled events"),
            (["--enable-spot-restore"], R, NOSPOT),
            (["--spot-restore-timeout"], R, NOSPOT),
            (["--lb"], R, "no load balancers: each instance has its own SSH forward (see --public-ip-address); `--lb \"\"` means none: fine"),
            (["--lb-sku"], R, "no load balancers"),
            (["--lb-nat-pool-name"], R, "no load balancers: each instance has its own SSH "
             "forward instead of a NAT pool port"),
            (["--backend-pool-name"], R, "no load balancers or application gateways"),
            (["--backend-port"], R, "no load balancers"),
            (["--app-gateway"], R, "no application gateways"),
            (["--app-gateway-capacity"], R, "no application gateways"),
            (["--app-gateway-sku"], R, "no application gateways"),
            (["--app-gateway-subnet-address-prefix"], R, "no application gateways"),
            (["--public-ip-per-vm"], R, "no public IPs (see --public-ip-address)"),
            (["--vm-domain-name"], R, "no public DNS names"),
            (["--dns-servers"], R, NET),
            (["--host-group"], R, "see `vm create --host`"),
        ]
    allowed = VMSS_CREATE if scale_set else VM_CREATE
    rows = [r for r in rows if r[0][0] in allowed]
    missing = allowed - {r[0][0] for r in rows}
    assert not missing, sorted(missing)
    return rows

cmd("vm create", "vm create", vm_create_rows(False))
cmd("vm show", "vm show", [
    (["--name", "-n"], A, ""), RG, IDS,
    (["--show-details", "-d"], I, "sigvirt always prints what -d adds (powerState, publicIps, "
     "privateIps, fqdns, macAddresses) and the exact ssh command"),
    (["--include-user-data", "-u"], I, "custom data is never printed back"),
])
cmd("ssh vm", "vm ssh", [
    (["--name", "-n"], A, ""), RG, IDS,
    (["--local-user"], A, "the image's own user for Specialized VMs (default: the admin user "
     "the VM was created with)"),
    (["--private-key-file", "-i"], A, "default: the key the VM was created with"),
    (["--ip"], N, "sigvirt reaches guests through their loopback forward (see `vm show`)"),
    (["--public-key-file", "-p"], R, "no Azure AD certificates: a key pair is enough"),
    (["--port"], R, "the forward's port is sigvirt's"),
], intro="az's ssh extension; sigvirt runs the system ssh through the VM's forward.")
cmd("vm list", "vm list", [
    (["--resource-group", "-g"], A, "az lists that group's VMs only; without it, all"),
    (["--show-details", "-d"], I, "see `vm show`"),
])
cmd("vm delete", "vm delete", [
    (["--name", "-n"], A, "removes the domain with its overlay, seed and console volumes"),
    RG, IDS, NOWAIT, YES,
    (["--force-deletion"], I, "the domain is always destroyed first"),
])
# ---------------------------------------------------------------- vmss
cmd("vmss create", "vmss create", vm_create_rows(True))
cmd("vmss scale", "vmss scale", [
    (["--name", "-n"], A, ""),
    (["--new-capacity"], A, "adds instances, or removes the newest ones"),
    RG, IDS, NOWAIT,
])
cmd("vmss list-instances", "vmss list-instances", [
    (["--name", "-n"], A, "the table has a `version` column; JSON each instance's "
     "storageProfile.imageReference (the version it runs) and latestModelApplied"), RG, IDS,
    (["--expand"], N, "instanceView (statuses) per instance"),
    (["--filter"], N, "az's three OData filters (power state, latestModelApplied)"),
    (["--select"], N, "instanceView, instanceView/statuses"),
])
cmd("vmss show", "vmss show", [
    (["--name", "-n"], A, ""), RG, IDS,
    (["--instance-id"], N, "one instance, shaped as `list-instances` prints it"),
    (["--include-user-data", "-u"], I, "custom data is never printed back"),
])
cmd("vmss delete", "vmss delete", [
    (["--name", "-n"], A, "removes every instance"), RG, IDS, NOWAIT,
    (["--force-deletion"], I, "instances are always destroyed first"),
])
cmd("vmss update", "vmss update", [
    (["--name", "-n"], A, "changes the model only (its generation goes up when the image or "
     "another instance property changes); instances follow with `update-instances`, "
     "`reimage` or a rolling upgrade"), RG, IDS,
    (["--set"], A, "generic update: `virtualMachineProfile.storageProfile.imageReference.id=ID` "
     "(a version or definition id), `upgradePolicy.mode=...`, "
     "`upgradePolicy.rollingUpgradePolicy.<property>=...`, `tags.KEY=VALUE`"),
    (["--add"], R, "a scale set's model has no list sigvirt can add to"),
    (["--remove"], A, "generic update: `tags.KEY`"),
    (["--force-string"], N, "each --set value is parsed as the property it sets"),
    (["--no-wait"], A, "the model changes at once either way"),
    (["--instance-id"], N, "update one instance"),
    (["--protect-from-scale-in"], N, "`vmss scale` could skip protected instances"),
    (["--protect-from-scale-set-actions"], N, "as --protect-from-scale-in"),
    (["--vm-sku"], N, "resize instances (needs a restart of each guest)"),
    (["--v-cpus-available"], N, "see --vm-sku"),
    (["--v-cpus-per-core"], N, "see `vm create`"),
    (["--enable-secure-boot"], N, "see `vm create`"),
    (["--enable-vtpm"], N, "see `vm create`"),
    (["--scale-in-policy"], I, "see `vmss create`"),
    (["--license-type"], I, "no licensing or billing"),
    (["--max-batch-instance-percent"], A, "see `vmss create`"),
    (["--max-unhealthy-instance-percent"], A, "see `vmss create`"),
    (["--max-unhealthy-upgraded-instance-percent"], A, "see `vmss create`"),
    (["--pause-time-between-batches"], A, "see `vmss create`"),
    (["--prioritize-unhealthy-instances"], A, "see `vmss create`"),
    (["--enable-cross-zone-upgrade"], I, "rolling upgrades batch the whole scale set; zones "
     "don't shape the batches"),
    (["--force-deletion"], I, "instances are always destroyed first"),
    (["--ephemeral-os-disk-placement", "--ephemeral-placement"], R, "see `vm create`"),
    (["--automatic-repairs-action"], R, "no automatic repairs"),
    (["--automatic-repairs-grace-period"], R, "no automatic repairs"),
    (["--enable-automatic-repairs"], R, "no automatic repairs"),
    (["--enable-terminate-notification"], R, "no scheduled events"),
    (["--terminate-notification-time"], R, "no scheduled events"),
    (["--enable-spot-restore"], R, NOSPOT), (["--spot-restore-timeout"], R, NOSPOT),
    (["--max-price"], R, NOSPOT), (["--priority"], R, NOSPOT),
    (["--capacity-reservation-group", "--crg"], R, "no capacity reservations"),
    (["--ppg"], R, "no proximity placement groups"),
    (["--ultra-ssd-enabled"], R, "no Ultra disks"),
    (["--user-data"], R, "no instance metadata service"),
], intro="The image is checked (it exists and is published) before the model changes; the "
         "scale set is printed as az prints it, with `upgradePolicy.rollingUpgradePolicy` and "
         "the model's `virtualMachineProfile.storageProfile.imageReference.id`. Under an "
         "Automatic or Rolling policy, instances not on the new image then move by a rolling "
         "upgrade in the background, as Azure applies a model change under those policies.")
cmd("vmss reimage", "vmss reimage", [
    (["--name", "-n"], A, "each instance gets a fresh OS disk of the model's version (same "
     "name, hostname, SSH port, admin user, keys and data disks), boots and must pass the "
     "health probe; one that fails is put back on its old disk and version (exit 26)"),
    RG, IDS,
    (["--instance-ids"], A, "instance ids (all when omitted)"),
    (["--no-wait"], A, "runs in a detached sigvirt process; `list-instances` follows"),
    (["--force-update-os-disk-for-ephemeral"], I, "OS disks are never ephemeral here"),
])
cmd("vmss update-instances", "vmss update-instances", [
    (["--name", "-n"], A, "applies the model: instances whose version or model generation "
     "differ are reimaged (health-checked, rolled back on failure), the others take the "
     "model's generation"),
    RG, IDS,
    (["--instance-ids"], A, "`*` or instance ids"),
    (["--no-wait"], A, "runs in a detached sigvirt process"),
])
cmd("vmss rolling-upgrade start", "vmss rolling-upgrade start", [
    (["--name", "-n"], A, "instances not on the model's image (a definition: its latest in the "
     "scale set's region) are reimaged batch by batch per rollingUpgradePolicy, each "
     "health-checked; a batch over maxUnhealthyUpgradedInstancePercent is rolled back and the "
     "upgrade ends Faulted (exit 25); run again after a killed upgrade, it finishes it"),
    RG, IDS,
    (["--no-wait"], A, "runs in a detached sigvirt process; `get-latest` follows"),
])
cmd("vmss rolling-upgrade cancel", "vmss rolling-upgrade cancel", [
    (["--name", "-n"], A, "stops after the batch under way (Cancelled)"), RG, IDS,
    (["--no-wait"], A, "returns once the cancel is recorded"),
])
cmd("vmss rolling-upgrade get-latest", "vmss rolling-upgrade get-latest", [
    (["--name", "-n"], A, "az's RollingUpgradeStatusInfo (policy, runningStatus, progress, "
     "error); batches and each instance's state and reason under `sigvirt`"), RG, IDS,
])
cmd("vmss get-instance-view", "vmss get-instance-view", [
    (["--name", "-n"], A, "per instance `vmHealth.status.code` HealthState/healthy or "
     "HealthState/unhealthy (the reason in `message`): SSH answers and the health probe "
     "passes"),
    RG, IDS,
    (["--instance-id"], A, "one instance's view; without it, the scale set's with every "
     "instance's under `sigvirt.instances`"),
])

def fmt_names(names):
    return " ".join(f"`{n}`" for n in names)

def render():
    out = []
    for az, sv, rows, intro in COMMANDS:
        have = sigvirt_options(sv)
        out.append(f"### `az {az}`\n")
        if intro:
            out.append(intro + "\n")
        if have is None and "does not exist" not in intro:
            out.append(f"**`sigvirt {sv}` does not exist yet.**\n")
        out.append("| az parameter | status | notes |")
        out.append("| --- | --- | --- |")
        seen = set()
        for names, status, note in rows:
            key = tuple(names)
            if key in seen:
                continue
            seen.add(key)
            in_help = bool(have and any(n in have for n in names))
            generic = names[0] in GENERIC
            if in_help:
                absent = [n for n in names if n not in have]
                if absent:
                    taken = " ".join(f"`{n}`" for n in names if n in have)
                    note = (note + "; " if note else "") + f"sigvirt takes {taken} only"
            if have is None:
                st = status
            elif in_help and status == I:
                st = I
            elif in_help or (generic and status == A):
                st = A
            else:
                st = status
                if st == A:  # claimed but absent: say so
                    st, note = N, (note + "; " if note else "") + "not in `--help` yet"
                elif st == I and have is not None:
                    note = note + " †"
            if in_help and status == R:
                note = "(sigvirt takes it) " + note
            note = note.replace("|", "\\|")
            out.append(f"| {fmt_names(names)} | {st} | {note} |")
        if have:
            az_names = {n for names, _, _ in rows for n in names}
            extras = sorted(o for o in have - az_names - {"--help", "--output", "-o"}
                            if o.startswith("--"))
            if extras:
                out.append(f"\nsigvirt-only: {', '.join('`'+e+'`' for e in extras)}.")
        out.append("")
    return "\n".join(out)

if __name__ == "__main__":
    body = render()
    head = (HERE / "head.md").read_text()
    out = CHECKOUT / "docs" / "az-compat.md"
    out.write_text(head.rstrip() + "\n\n" + body.rstrip() + "\n")
