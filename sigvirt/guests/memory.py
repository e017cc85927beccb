"""What a domain says about its guest RAM: whether the host may merge it (KSM).

libvirt has no element that allows merging: QEMU marks guest RAM mergeable (madvise
MADV_MERGEABLE, -machine mem-merge=on) unless the domain has
<memoryBacking><nosharepages/></memoryBacking>. So merge off (every region's default) is
said explicitly, and merge on is the element's absence.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sigvirt.hosts.xmlbuild import sub


def memory_backing(dom: ET.Element, merge: bool) -> None:
    """<memoryBacking><nosharepages/></memoryBacking> unless `merge`: called right after
    <memory>, where libvirt keeps it."""
    if not merge:
        sub(sub(dom, "memoryBacking"), "nosharepages")


# TCG's translation cache (-accel tcg,tb-size) is resident once filled, and a tiny guest's boot
# fills 64 MiB (QEMU's `info jit` at SSH: one flush, ~33 MiB of code after it). Side by side
# (benchmarks/bench_density.py, 128 MiB guests, host load 2-20), Pss per guest with KSM off:
# 64 MiB ~216, 48 ~198, 32 ~181. 48 never cost QEMU CPU to SSH (N=16: 7.5-7.6 s vs 7.7-8.5 at
# 64); 32 flushed 3 times and took 10-13 % more CPU at N=16 in both runs that had it (one of its
# guests also hung early in boot under load 20); 16 flushed 17 times, 8 MiB 135 (boot 2-3x).
# So a quarter of guest RAM, within 48..64 MiB: guests of 256 MiB and up keep the former 64.
TB_CACHE_MIN_MIB, TB_CACHE_MAX_MIB = 48, 64


def tb_cache_mib(memory_mib: int) -> int:
    """The TCG translation cache for a guest of `memory_mib` MiB."""
    return max(TB_CACHE_MIN_MIB, min(TB_CACHE_MAX_MIB, memory_mib // 4))
