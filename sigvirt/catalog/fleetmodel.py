"""Scale-set model records (frozen dataclasses) and their rules: Azure's upgrade policy with
its ranges, az's ISO 8601 durations, and every check a model read back from a file must pass.
The store that keeps them is catalog/fleet.py (which names all of these too)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import pwd
import re
from dataclasses import dataclass, field
from enum import StrEnum

from sigvirt.catalog import names, tags
from sigvirt.errors import InvalidArgument, InvalidName

# Azure's RollingUpgradePolicy ranges (REST reference): batch and unhealthy 5..100, unhealthy
# upgraded 0..100; all three default to 20 %, the pause to 0 s.
BATCH_RANGE = (5, 100)
UNHEALTHY_RANGE = (5, 100)
UPGRADED_RANGE = (0, 100)
# sigvirt's own bounds (Azure states none): a pause longer than a day is a typo, and a probe
# that takes more than an hour is not a health check.
MAX_PAUSE = 24 * 3600.0
MAX_PROBE_TIMEOUT = 3600.0
MAX_COMMAND = 4096
MAX_SPEC = 256 * 1024  # as guests/specrun.py's MAX_SPEC_BYTES
MAX_CUSTOM_DATA = 64 * 1024  # Azure's limit, before base64
MAX_DATA_DISKS = 16
MAX_KEYS = 32
_REGION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ZONE = re.compile(r"[A-Za-z0-9_-]{1,16}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SIZE = re.compile(r"[A-Za-z0-9_]{1,64}")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-")


class UpgradeMode(StrEnum):
    """az's upgradePolicy.mode."""

    MANUAL = "Manual"  # instances change only when told (update-instances, reimage)
    AUTOMATIC = "Automatic"  # a new latest starts a rolling upgrade on its own
    ROLLING = "Rolling"  # a model change is rolled out in batches


@dataclass(frozen=True)
class RollingPolicy:
    """Azure's RollingUpgradePolicy."""

    max_batch_instance_percent: int = 20
    max_unhealthy_instance_percent: int = 20
    max_unhealthy_upgraded_instance_percent: int = 20
    pause_time_between_batches: float = 0.0  # seconds (the CLI takes ISO 8601 "PT30S" as az)
    prioritize_unhealthy_instances: bool = False


@dataclass(frozen=True)
class HealthProbe:
    """When an instance is healthy: SSH answers, then this command (exit 0) and this spec
    (testinfra) pass. Neither given: SSH answering is enough."""

    command: str = ""  # run in the guest over SSH; exit 0 = healthy
    spec: str = ""  # testinfra spec source (stored with the model)
    owner: str = ""  # user name the spec runs as when root runs it (who stored it)
    timeout: float = 120.0

    @property
    def empty(self) -> bool:
        return not self.command and not self.spec


@dataclass(frozen=True)
class ScaleSetModel:
    name: str
    region: str
    image: str  # as the user named it: "G/D" (latest), "G/D/V" or an Azure id
    generation: int = 1  # bumped by every change of the VM profile; instances record theirs
    upgrade_mode: UpgradeMode = UpgradeMode.MANUAL
    rolling: RollingPolicy = field(default_factory=RollingPolicy)
    health: HealthProbe = field(default_factory=HealthProbe)
    size: str = ""  # hardwareProfile.vmSize: a size name, or Custom
    vcpus: int = 1
    memory_mib: int = 512
    admin_user: str = ""
    ssh_public_keys: tuple[str, ...] = ()
    key_path: str = ""  # the private key sigvirt waits for SSH with ("" if none is known)
    custom_data: str = ""  # base64 of the cloud-init user data
    os_disk_gb: int = 0  # --os-disk-size-gb as asked (0: the image's own size)
    data_disk_gb: tuple[int, ...] = ()
    resource_group: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    owner_uid: int = 0  # who created it: they and root may change it
    zones: tuple[str, ...] = ()  # az's zones: the zones of its region its instances spread over
    # instanceId → zone, for instances made in a zone: how many instances a zone that doesn't
    # answer holds (libvirt stays the record of every zone that answers)
    instance_zones: dict[str, str] = field(default_factory=dict)
    disk_controller_type: str = ""  # az's --disk-controller-type (SCSI | NVMe; "": default)
    security_type: str = ""  # TrustedLaunch when its instances launch so; "": Standard


# What an instance is made from (az's virtualMachineProfile): changing any of it makes the
# instances' model out of date (latestModelApplied false). Policy, probe and tags do not.
PROFILE_FIELDS = (
    "image", "size", "vcpus", "memory_mib", "admin_user", "ssh_public_keys", "custom_data",
    "os_disk_gb", "data_disk_gb", "disk_controller_type", "security_type",
)  # fmt: skip


def changed(model: ScaleSetModel, **changes: object) -> ScaleSetModel:
    """The model with `changes`; its generation bumped if the VM profile changed."""
    new = dataclasses.replace(model, **changes)  # type: ignore[arg-type]
    if any(getattr(new, f) != getattr(model, f) for f in PROFILE_FIELDS):
        new = dataclasses.replace(new, generation=model.generation + 1)
    return new


# -- durations (az's pauseTimeBetweenBatches) --------------------------------------------------
_ISO = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(text: str, what: str = "--pause-time-between-batches") -> float:
    """Seconds from an ISO 8601 duration as Azure takes it (PT30S, PT1M30S, P1D) or a plain
    number of seconds. Years and months have no fixed length: refused."""
    value = text.strip()
    seconds: float
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        found = _ISO.fullmatch(value.upper())
        if not found or value.upper() in ("P", "PT") or value.upper().endswith("T"):
            raise InvalidArgument(
                f"{what} {names.shorten(text)} is not a duration: ISO 8601 (PT30S, PT1M30S, "
                "PT1H) or seconds"
            )
        part = {k: float(v) if v else 0.0 for k, v in found.groupdict().items()}
        seconds = (
            part["w"] * 604800 + part["d"] * 86400 + part["h"] * 3600 + part["m"] * 60 + part["s"]
        )
    if seconds > MAX_PAUSE:
        raise InvalidArgument(f"{what} {names.shorten(text)} is longer than a day")
    return seconds


def format_duration(seconds: float) -> str:
    """ISO 8601, as Azure prints pauseTimeBetweenBatches: PT0S, PT30S, PT1M30S, PT2H."""
    whole, frac = divmod(round(seconds * 1000), 1000)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "")
    if frac:
        out += f"{s}.{frac:03d}".rstrip("0") + "S"
    elif s or out == "PT":
        out += f"{s}S"
    return out


# -- building and checking ---------------------------------------------------------------------
def _percent(value: int, bounds: tuple[int, int], what: str) -> int:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise InvalidArgument(f"{what} must be {lo}..{hi} (got {value})")
    return value


def rolling_policy(
    base: RollingPolicy,
    *,
    max_batch: int | None = None,
    max_unhealthy: int | None = None,
    max_unhealthy_upgraded: int | None = None,
    pause: str | None = None,
    prioritize_unhealthy: bool | None = None,
) -> RollingPolicy:
    """`base` with the flags given, each checked as Azure checks it."""
    if max_batch is not None and max_unhealthy is not None and max_batch > max_unhealthy:
        # Azure: "If both maxBatchInstancePercent and maxUnhealthyInstancePercent are assigned
        # with value, the value of maxBatchInstancePercent should not be more than
        # maxUnhealthyInstancePercent."
        raise InvalidArgument(
            f"--max-batch-instance-percent {max_batch} is more than "
            f"--max-unhealthy-instance-percent {max_unhealthy}"
        )
    changes: dict[str, object] = {}
    if max_batch is not None:
        changes["max_batch_instance_percent"] = _percent(
            max_batch, BATCH_RANGE, "--max-batch-instance-percent"
        )
    if max_unhealthy is not None:
        changes["max_unhealthy_instance_percent"] = _percent(
            max_unhealthy, UNHEALTHY_RANGE, "--max-unhealthy-instance-percent"
        )
    if max_unhealthy_upgraded is not None:
        changes["max_unhealthy_upgraded_instance_percent"] = _percent(
            max_unhealthy_upgraded, UPGRADED_RANGE, "--max-unhealthy-upgraded-instance-percent"
        )
    if pause is not None:
        changes["pause_time_between_batches"] = parse_duration(pause)
    if prioritize_unhealthy is not None:
        changes["prioritize_unhealthy_instances"] = prioritize_unhealthy
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def upgrade_mode(text: str, what: str = "--upgrade-policy-mode") -> UpgradeMode:
    """Manual | Automatic | Rolling, in any case (az's enum arguments are case-insensitive)."""
    for mode in UpgradeMode:
        if text.lower() == mode.value.lower():
            return mode
    raise InvalidArgument(
        f"{what} {names.shorten(text)} is not one of {', '.join(m.value for m in UpgradeMode)}"
    )


def problem(model: ScaleSetModel) -> str | None:
    """Why a model can't be one (a field and what is wrong with it); None when it can.
    Used on what a command built and on every record read back."""
    try:
        names.vm_name(model.name)
    except InvalidName as err:
        return f"name: {err.message}"
    checks: list[tuple[str, bool]] = [
        ("region", bool(_REGION.fullmatch(model.region))),
        ("generation", 1 <= model.generation <= 2**62),
        ("size", model.size == "" or bool(_SIZE.fullmatch(model.size))),
        ("vcpus", 1 <= model.vcpus <= 1024),
        ("memory_mib", 64 <= model.memory_mib <= 16 << 20),
        ("admin_user", model.admin_user == "" or (
            bool(_USER.fullmatch(model.admin_user)) and model.admin_user != "root")),
        ("key_path", model.key_path == "" or (
            model.key_path.startswith("/") and len(model.key_path) <= 4096
            and "\n" not in model.key_path)),
        ("os_disk_gb", 0 <= model.os_disk_gb <= 4095),
        ("data_disk_gb", len(model.data_disk_gb) <= MAX_DATA_DISKS
         and all(1 <= g <= 32767 for g in model.data_disk_gb)),
        ("ssh_public_keys", len(model.ssh_public_keys) <= MAX_KEYS and all(
            k.startswith(_KEY_TYPES) and len(k.split()) >= 2 and "\n" not in k and len(k) <= 16384
            for k in model.ssh_public_keys)),
        ("owner_uid", 0 <= model.owner_uid < 2**32),
        ("zones", len(model.zones) <= 16 and all(_ZONE.fullmatch(z) for z in model.zones)),
        ("instance_zones", all(k.isdigit() and _ZONE.fullmatch(v)
                               for k, v in model.instance_zones.items())),
    ]  # fmt: skip
    for name, ok in checks:
        if not ok:
            return f"{name}: {names.shorten(str(getattr(model, name)), 60)} is not valid here"
    try:
        names.parse_image_ref(model.image)
        if model.resource_group:
            names.resource_group(model.resource_group)
        for k, v in model.tags.items():
            tags.check_value(tags.check_name(k), v)
    except (InvalidName, InvalidArgument) as err:
        return err.message
    if len(model.tags) > tags.MAX_TAGS:
        return f"tags: more than {tags.MAX_TAGS}"
    if model.custom_data:
        try:
            data = base64.b64decode(model.custom_data, validate=True)
        except (binascii.Error, ValueError):
            return "custom_data: not base64"
        if len(data) > MAX_CUSTOM_DATA:
            return "custom_data: larger than 64 KB"
    return _policy_problem(model.rolling) or _probe_problem(model.health)


def _policy_problem(p: RollingPolicy) -> str | None:
    for name, value, (lo, hi) in (
        ("max_batch_instance_percent", p.max_batch_instance_percent, BATCH_RANGE),
        ("max_unhealthy_instance_percent", p.max_unhealthy_instance_percent, UNHEALTHY_RANGE),
        ("max_unhealthy_upgraded_instance_percent", p.max_unhealthy_upgraded_instance_percent,
         UPGRADED_RANGE),
    ):  # fmt: skip
        if not lo <= value <= hi:
            return f"rolling.{name}: {value} is not in {lo}..{hi}"
    if not 0 <= p.pause_time_between_batches <= MAX_PAUSE:
        return f"rolling.pause_time_between_batches: {p.pause_time_between_batches} s"
    return None


def _probe_problem(h: HealthProbe) -> str | None:
    if len(h.command) > MAX_COMMAND or "\x00" in h.command:
        return f"health.command: longer than {MAX_COMMAND} characters"
    if len(h.spec.encode(errors="replace")) > MAX_SPEC:
        return f"health.spec: larger than {MAX_SPEC // 1024} KiB"
    if h.spec and "def test" not in h.spec:
        return "health.spec: has no test functions"
    if h.owner and not (_USER.fullmatch(h.owner) or h.owner == "root"):
        return f"health.owner: {names.shorten(h.owner, 40)} is not a user name"
    if not 0 < h.timeout <= MAX_PROBE_TIMEOUT:
        return f"health.timeout: {h.timeout} is not in (0, {MAX_PROBE_TIMEOUT:.0f}]"
    return None


def checked(model: ScaleSetModel) -> ScaleSetModel:
    """The model if it can be one; InvalidArgument (exit 18) naming what is wrong."""
    if (why := problem(model)) is not None:
        raise InvalidArgument(f"scale set {model.name}: {why}")
    return model


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
