"""What `latest` means: the highest published version not excluded from it and not held by
the boot-test gate (a version whose definition had a test spec when it was published is
eligible only once its test passed), and why each version is or isn't (show-latest
--explain). A damaged version record is never latest: it is skipped, and explained as damaged.

In a region, latest is the highest such version that has a completed replica there and is
not excluded from latest there (Azure's targetRegions[].excludeFromLatest): `vm create -l R
--image G/D` takes it, where the global latest may not have reached R yet.

Under an eol policy `deny` (catalog/eol.py), a version past its end of life is never latest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sigvirt.catalog import eol
from sigvirt.catalog.dates import past_end_of_life
from sigvirt.catalog.liveness import tag_alive
from sigvirt.catalog.names import ImageRef, Version
from sigvirt.catalog.records import BootTest, BootTestState, ImageVersion, VersionState
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.errors import EndOfLife, InvalidName, NotFound


@dataclass(frozen=True)
class Candidate:
    version: str
    chosen: bool
    why: str
    end_of_life: str | None = None  # its own date, or its definition's (", its definition's")
    eol_policy: str = ""  # "deny (gallery G)", "warn (default)": what its end of life means


def _unfit(v: ImageVersion, region: str | None, policy: eol.Policy | None = None) -> str | None:
    """Why `v` can't be latest (in `region`, if given); None when it can."""
    if v.state != VersionState.SUCCEEDED:
        return f"not published (state {v.state})"
    if v.exclude_from_latest:
        return "excluded from latest"
    if policy is not None and (expired := policy.unfit(v)) is not None:
        return expired
    if v.boot_test.gated:
        return gate_reason(v.boot_test)
    if region is not None:
        if region in v.excluded_regions:
            return f"excluded from latest in region {region}"
        if not v.completed_replicas(region):
            return f"no completed replica in region {region}"
    return None


def boot_test_now(test: BootTest) -> BootTest:
    """A version's boot test as it stands: `running` whose runner (host:boot:pid) is gone is
    `pending` again, which the next run picks up."""
    if test.state == BootTestState.RUNNING and not _runner_alive(test.runner):
        return test.moved(BootTestState.PENDING, vm="", runner="")
    return test


def _runner_alive(runner: str) -> bool:
    """Whether the process named host:boot:pid may still be at work (none named: no)."""
    return bool(runner) and tag_alive(runner)


def gate_reason(test: BootTest) -> str:
    """Why the boot-test gate keeps a version out of latest: "boot test failed: test_x: …"."""
    test = boot_test_now(test)
    if test.state == BootTestState.FAILED:
        first = test.failures[0] if test.failures else "no test passed"
        more = f" (and {len(test.failures) - 1} more)" if len(test.failures) > 1 else ""
        return f"boot test failed: {first}{more}"
    if test.state == BootTestState.RUNNING:
        return f"boot test running (VM {test.vm})" if test.vm else "boot test running"
    return "boot test pending"


def policy_for(store: GalleryStore, gallery: str, definition: str) -> eol.Policy:
    """The eol policy that rules the definition's versions (its own, the gallery's, warn)."""
    return eol.policy_of(store.get_gallery(gallery), store.get_definition(gallery, definition))


def explain_latest(
    versions: list[ImageVersion],
    damaged: Sequence[Damaged] = (),
    region: str | None = None,
    policy: eol.Policy | None = None,
) -> list[Candidate]:
    """Each version and why it is or isn't latest (in `region`, if given): highest
    Major.Minor.Patch that is published and not excluded from latest (and, in a region,
    complete there and not excluded there), and, under an eol policy deny, not past its end
    of life. Damaged records (from list_versions) are listed with why they are, in their
    file name's place."""
    eligible = [v for v in versions if _unfit(v, region, policy) is None]
    best = max(eligible, key=lambda v: Version.parse(v.name), default=None)
    where = f" in region {region}" if region else ""
    rules = policy.described() if policy is not None else ""
    out = []
    for v in versions:
        unfit = _unfit(v, region, policy)
        ends = policy.date_text(v) if policy and policy.end_of_life(v) else v.end_of_life
        if v is best:
            why = f"highest published version not excluded from latest{where}"
            if past_end_of_life(policy.end_of_life(v) if policy else v.end_of_life):
                why += f" (past end of life {ends})"
        elif unfit is not None:
            why = unfit
        else:
            why = f"lower than {best.name}" if best else "not eligible"
        out.append((_order(v.name), Candidate(v.name, v is best, why, ends, rules)))
    out += [
        (_order(d.name), Candidate(d.name, False, f"damaged: {d.reason}", None, rules))
        for d in damaged
    ]
    out.sort(key=lambda pair: pair[0], reverse=True)
    return [candidate for _order_key, candidate in out]


def _order(name: str) -> tuple[int, ...]:
    """Highest first; a damaged file whose name is no version goes last."""
    try:
        return Version.parse(name).key
    except InvalidName:
        return (-1,)


def resolve(
    store: GalleryStore,
    ref: ImageRef,
    damaged: list[Damaged] | None = None,
    region: str | None = None,
) -> ImageVersion:
    """The version a reference names; `latest` (in `region`, if given) when it names none
    (damaged version records skipped, and handed to `damaged`). When nothing is eligible
    and a record is damaged, the damaged record is the error: it may well have been latest."""
    if ref.version is not None:
        return store.get_version(ref.gallery, ref.definition, ref.version)
    broken: list[Damaged] = []
    versions = store.list_versions(ref.gallery, ref.definition, broken)
    if damaged is not None:
        damaged += broken
    policy = policy_for(store, ref.gallery, ref.definition)
    chosen = [c for c in explain_latest(versions, region=region, policy=policy) if c.chosen]
    if not chosen:
        if broken:
            raise broken[-1].error  # the highest-named one
        _refuse_expired(ref, versions, region, policy)
        explain = (
            f"sigvirt sig image-version show-latest --gallery-name {ref.gallery} "
            f"--gallery-image-definition {ref.definition} --explain"
        )
        gated = [v for v in versions if v.published_ok and v.boot_test.gated]
        if region is None and gated:
            raise NotFound(
                f"image definition {ref.definition_ref} has no published version that is not "
                f"excluded from latest and not held by its boot test (version {gated[-1].name}: "
                f"{gate_reason(gated[-1].boot_test)})",
                hint=explain,
            )
        if region is None:
            raise NotFound(
                f"image definition {ref.definition_ref} has no published version that is not "
                "excluded from latest"
            )
        held = f" (version {gated[-1].name}: {gate_reason(gated[-1].boot_test)})" if gated else ""
        raise NotFound(
            f"image definition {ref.definition_ref} has no published version complete in "
            f"region {region} and not excluded from latest there{held}",
            hint=f"sigvirt sig image-version show-latest --gallery-name {ref.gallery} "
            f"--gallery-image-definition {ref.definition} --location {region} --explain",
        )
    return next(v for v in versions if v.name == chosen[0].version)


def _refuse_expired(
    ref: ImageRef, versions: list[ImageVersion], region: str | None, policy: eol.Policy
) -> None:
    """Nothing is latest, and the eol policy deny is why (a version would be, but for its end
    of life): EndOfLife, naming the highest such version."""
    expired = [
        v
        for v in versions
        if policy.expired(v) and _unfit(v, region) is None  # fit, but for its end of life
    ]
    if expired:
        v = max(expired, key=lambda v: Version.parse(v.name))
        where = f" in region {region}" if region else ""
        raise EndOfLife(
            f"image definition {ref.definition_ref} has no version{where} before its end of "
            f"life: {v.name} ended {policy.date_text(v)} and the eol policy of {policy.origin} "
            "is deny"
        )
