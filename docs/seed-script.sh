#!/usr/bin/env bash
# The az commands of the Shared Image Gallery public-preview announcement
# (/work/shared/seed/shared-image-gallery-announcement.txt), run through sigvirt instead of az.
#
#   docs/seed-script.sh IMAGE.qcow2
#
# SIGVIRT names the command (default `sigvirt`; a test sets SIGVIRT="python -m sigvirt").
# The regions westcentralus, southcentralus and eastus2 must exist in regions.yaml
# ($SIGVIRT_REGIONS). It boots one VM and a two-instance scale set, and removes nothing.
#
# Fixed from the announcement, which would not run as printed:
#   - `--sku myLinux1--os-type Linux` is `--sku myLinux1 --os-type Linux`;
#   - one gallery, definition and version throughout (the announcement switches to gal1/image1
#     and gallery1/gallery-image1/1.0.0 half-way), so the version the VM and the scale set boot
#     is the one created above them, named by the id sigvirt prints for it;
#   - `--managed-image` is the image file given as first argument;
#   - regions by their short names ("West Central US" would find westcentralus too);
#   - `sig create` names its location: az would take it from the resource group, which sigvirt
#     does not keep (`group create` only says so);
#   - `vm create` gets --generate-ssh-keys, as the `vmss create` line has: without a key az
#     stops too.
set -euo pipefail

IMAGE=${1:?usage: seed-script.sh IMAGE.qcow2}
SIGVIRT=${SIGVIRT:-sigvirt}
read -r -a SIGVIRT_ARGV <<<"$SIGVIRT"

sv() {
    printf '+ %s %s\n' "$SIGVIRT" "$*" >&2
    "${SIGVIRT_ARGV[@]}" "$@"
}

RG=myGalleryRG
GALLERY=myGallery
DEFINITION=myImageDefinition
VERSION=1.0.2
SUBSCRIPTION=00000000-0000-0000-0000-000000000000
VERSION_ID=/subscriptions/$SUBSCRIPTION/resourceGroups/$RG/providers/Microsoft.Compute/galleries/$GALLERY/images/$DEFINITION/versions/$VERSION

# Getting started: register the preview feature and the provider (no-ops in sigvirt).
sv feature register --namespace Microsoft.Compute --name GalleryPreview
sv provider register -n Microsoft.Compute
sv provider show -n Microsoft.Compute

# Create an image gallery.
sv group create -n rg -l westcentralus
sv sig create -g "$RG" --gallery-name "$GALLERY" -l westcentralus

# Create an image definition.
sv sig image-definition create -g "$RG" --gallery-name "$GALLERY" \
    --gallery-image-definition "$DEFINITION" --publisher myPublisher --offer myOffer \
    --sku myLinux1 --os-type Linux

# Create an image version: 5 replicas in West Central US, 1 in each of the others.
sv sig image-version create -g "$RG" --gallery-name "$GALLERY" \
    --gallery-image-definition "$DEFINITION" --gallery-image-version "$VERSION" \
    --target-regions westcentralus southcentralus=1 eastus2=1 --replica-count 5 \
    --managed-image "$IMAGE"

# Create a VM.
sv vm create -g rg -n rg-vm --image "$VERSION_ID" --generate-ssh-keys

# Create a VMSS.
sv vmss create --resource-group myResourceGroup --name myScaleSet --admin-username azureuser \
    --generate-ssh-keys --image "$VERSION_ID"

# The queries the Azure docs use on an image version.
show=(sig image-version show -g "$RG" --gallery-name "$GALLERY"
      --gallery-image-definition "$DEFINITION" --gallery-image-version "$VERSION")

id=$(sv "${show[@]}" --query id -o tsv)
printf 'id: %s\n' "$id"

regions=$(sv "${show[@]}" --query "publishingProfile.targetRegions[].{n:name,c:regionalReplicaCount}" -o json)
printf 'target regions: %s\n' "$regions"

state=$(sv "${show[@]}" --expand ReplicationStatus --query replicationStatus.aggregatedState -o tsv)
printf 'replication: %s\n' "$state"
