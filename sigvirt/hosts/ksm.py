"""Kernel samepage merging (KSM): is it in the kernel, is ksmd running, and what it saves.

Read from sysfs (/sys/kernel/mm/ksm); the root is a parameter so tests read a fake one. Only
memory marked mergeable is ever scanned: QEMU marks a guest's RAM so unless its domain says
<nosharepages/> (guests/memory.py), which is what a region without `memory: {merge: true}` gets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys/kernel/mm/ksm")
MiB = 1 << 20
# run: 0 stops ksmd (merged pages stay merged), 1 runs it, 2 stops it and unmerges everything
RUN_STATES = {0: "stopped", 1: "running", 2: "unmerging"}
_COUNTERS = ("run", "pages_shared", "pages_sharing", "full_scans", "sleep_millisecs",
             "pages_to_scan")  # fmt: skip


@dataclass(frozen=True)
class KsmState:
    """KSM's counters as sysfs shows them; available False when the kernel has no KSM."""

    available: bool
    run: int = 0
    pages_shared: int = 0  # distinct merged pages kept
    pages_sharing: int = 0  # further pages mapped onto them: what merging saves
    full_scans: int = 0
    sleep_millisecs: int = 0
    pages_to_scan: int = 0
    page_size: int = 4096

    @property
    def running(self) -> bool:
        return self.run == 1

    @property
    def saved_mib(self) -> float:
        return self.pages_sharing * self.page_size / MiB

    @property
    def run_state(self) -> str:
        return RUN_STATES.get(self.run, f"run={self.run}")


def read(root: Path = SYSFS) -> KsmState:
    """KSM's state under `root`; a counter that can't be read counts as 0 (never a crash)."""
    if not (root / "run").is_file():
        return KsmState(available=False)
    values = {}
    for name in _COUNTERS:
        try:
            values[name] = int((root / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            values[name] = 0
    return KsmState(available=True, page_size=os.sysconf("SC_PAGE_SIZE"), **values)


def turn_on_hint(root: Path = SYSFS) -> str:
    """The command that starts ksmd (as root; a reboot stops it again)."""
    return f"echo 1 > {root / 'run'}"
