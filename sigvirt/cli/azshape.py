"""Catalog records as `az` prints them: the keys of Azure's REST resources (galleries,
gallery images, gallery image versions), flattened the way az flattens `properties`, with
sigvirt's own facts under one extra key, `sigvirt`.

A script written against az reads the same paths here (`id`, `publishingProfile.
targetRegions[].name`, `replicationStatus.aggregatedState`, …); tables for people are made
elsewhere (sig.py's rows). Keys follow tests/data/azure/ (taken from the REST reference).
"""

from __future__ import annotations

from typing import Any

from sigvirt.catalog import azureid, eol, features, latest
from sigvirt.catalog.records import (
    BootTest,
    Definition,
    Gallery,
    ImageVersion,
    StoredSpec,
    VersionState,
    aggregate,
)

GiB = 1 << 30
_PROVISIONING = {
    VersionState.CREATING: "Creating",
    VersionState.SUCCEEDED: "Succeeded",
    VersionState.FAILED: "Failed",
    VersionState.DELETING: "Deleting",
    # In the recycle bin the version is whole (undelete restores it as it was); the
    # `sigvirt.state` key says where it is.
    VersionState.SOFT_DELETED: "Succeeded",
    VersionState.PENDING_DELETION: "Deleting",
}
# Azure's ReplicationState has no "pending": a replica waiting its turn is replicating.
_REGION_STATE = {"Completed": "Completed", "Replicating": "Replicating", "Failed": "Failed",
                 "Pending": "Replicating"}  # fmt: skip


def gallery(rec: Gallery) -> dict[str, Any]:
    return {
        "id": azureid.gallery_id(rec.resource_group, rec.name),
        "name": rec.name,
        "type": azureid.GALLERY_TYPE,
        "location": rec.location,
        "resourceGroup": rec.resource_group or azureid.DEFAULT_GROUP,
        "tags": dict(rec.tags),
        "description": rec.description,
        "identifier": {"uniqueName": f"{azureid.SUBSCRIPTION}-{rec.name.upper()}"},
        "provisioningState": "Succeeded",
        "sharingProfile": None,
        "softDeletePolicy": {"isSoftDeleteEnabled": rec.soft_delete},
        "sigvirt": {
            "ownerGroup": rec.owner_group,
            "created": rec.created,
            "softDeleteRetentionDays": rec.soft_delete_retention_days,
            # what a version past its end of life may do, for definitions that set none
            "eolPolicy": rec.eol_policy or eol.WARN,
        },
    }


def definition(
    rec: Definition, group: str, location: str, gallery: Gallery | None = None
) -> dict[str, Any]:
    """`gallery` (its gallery's record) lets the eol policy in force be shown, and where it
    is set."""
    return {
        "id": azureid.definition_id(group, rec.gallery, rec.name),
        "name": rec.name,
        "type": azureid.DEFINITION_TYPE,
        "location": location,
        "resourceGroup": group or azureid.DEFAULT_GROUP,
        "tags": dict(rec.tags),
        "identifier": {"publisher": rec.publisher, "offer": rec.offer, "sku": rec.sku},
        "osType": rec.os_type,
        "osState": rec.os_state,
        "hyperVGeneration": rec.hyper_v_generation,
        "architecture": rec.architecture,
        "recommended": {
            # az's own spelling of the key (its SDK serializes vCPUs so)
            "vCPUs": {"min": rec.min_vcpus, "max": rec.max_vcpus},
            "memory": {"min": rec.min_memory_mib, "max": rec.max_memory_mib},
        },
        "endOfLifeDate": rec.end_of_life,
        "eula": rec.eula or None,
        "releaseNoteUri": rec.release_note_uri or None,
        "privacyStatementUri": rec.privacy_statement_uri or None,
        "description": rec.description or None,
        "features": features.to_azure(rec.features),
        "disallowed": None,
        "purchasePlan": None,
        "provisioningState": "Succeeded",
        "sigvirt": {
            "gallery": rec.gallery,
            "created": rec.created,
            "testSpec": _spec(rec.test_spec),
            "eolPolicy": rec.eol_policy or None,  # its own; None: the gallery's
            **(_eol_in_force(rec, gallery) if gallery is not None else {}),
        },
    }


def _eol_in_force(rec: Definition, gallery: Gallery) -> dict[str, Any]:
    policy = eol.policy_of(gallery, rec)
    return {"effectiveEolPolicy": policy.policy, "eolPolicyOrigin": policy.origin}


def _spec(spec: StoredSpec | None) -> dict[str, Any] | None:
    """The boot-test spec a definition carries: what identifies it, never its code."""
    if spec is None:
        return None
    return {
        "sha256": spec.spec_sha256,
        "owner": spec.owner,
        "size": spec.size,
        "stored": spec.stored or None,
        "file": spec.file_name,
    }


def boot_test(test: BootTest) -> dict[str, Any]:
    """A version's boot-test status (the gate before latest), as it stands: a `running`
    whose runner is gone shows `pending`."""
    return {
        "state": str(test.state),
        "failures": list(test.failures),
        "tests": test.tests,
        "specSha256": test.spec_sha256 or None,
        "started": test.started or None,
        "finished": test.finished or None,
        "seconds": test.seconds,
        "vm": test.vm or None,
    }


def version(rec: ImageVersion, group: str) -> dict[str, Any]:
    agg, rows = aggregate(rec)
    default_type = "Standard_LRS"
    regions = [
        {
            "name": region,
            "regionalReplicaCount": count,
            "storageAccountType": rec.storage_types.get(region, default_type),
            "excludeFromLatest": region in rec.excluded_regions,
            "encryption": None,
        }
        for region, count in rec.target_regions.items()
    ]
    return {
        "id": azureid.version_id(group, rec.gallery, rec.definition, rec.name),
        "name": rec.name,
        "type": azureid.VERSION_TYPE,
        "location": rec.source_region,
        "resourceGroup": group or azureid.DEFAULT_GROUP,
        "tags": dict(rec.tags),
        "provisioningState": _PROVISIONING[rec.state],
        "publishingProfile": {
            "targetRegions": regions,
            "replicaCount": rec.replica_count,
            "excludeFromLatest": rec.exclude_from_latest,
            "endOfLifeDate": rec.end_of_life,
            "publishedDate": rec.published or None,
            "storageAccountType": rec.storage_types.get(rec.source_region, default_type),
            "replicationMode": rec.replication_mode,
        },
        "replicationStatus": {
            "aggregatedState": agg,
            "summary": [
                {
                    "region": r.region,
                    "state": _REGION_STATE[r.state],
                    "progress": r.progress,
                    "details": r.details or None,
                }
                for r in rows
            ],
        },
        "storageProfile": {
            "osDiskImage": {
                "sizeInGB": -(-rec.virtual_size // GiB),
                "hostCaching": "ReadOnly",
                "source": None,
            },
            "dataDiskImages": [],
            "source": {"id": _source_id(rec, group)},
        },
        "safetyProfile": {
            "allowDeletionOfReplicatedLocations": rec.allow_replicated_location_deletion,
            "blockDeletionBeforeEndOfLife": rec.block_deletion_before_end_of_life,
            "reportedForPolicyViolation": False,
            "policyViolations": [],
        },
        "sigvirt": {
            "state": str(rec.state),
            "sha256": rec.sha256,
            "virtualSize": rec.virtual_size,
            "allocatedSize": rec.allocated_size,
            "format": rec.format,
            "source": rec.source,
            "sourceRegion": rec.source_region,
            "created": rec.created,
            "warnings": list(rec.warnings),
            "reason": rec.reason or None,
            "test": boot_test(latest.boot_test_now(rec.boot_test)),
            "replicas": [
                {
                    "region": r.region,
                    **({"zone": r.zone} if r.zone else {}),  # a zoned region's replicas only
                    "pool": r.pool,
                    "volume": r.volume,
                    "path": r.path,
                    "state": str(r.state),
                    "progress": r.progress,
                    "reason": r.reason or None,
                    "verified": r.verified or None,
                }
                for r in rec.replicas
            ],
        },
    }


def _source_id(rec: ImageVersion, group: str) -> str:
    """What the version was made from, as an id where az would have one."""
    kind, _, ref = rec.source.partition(":")
    if kind == "version":
        g, d, v = ref.split("/")
        return azureid.version_id(group, g, d, v)
    if kind == "vm":
        return azureid.vm_id(group, ref)
    return ref  # a file or a pool volume: its path or pool/name
