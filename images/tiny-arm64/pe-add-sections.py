#!/usr/bin/env python3
"""Append sections to a PE32+ EFI image: how the arm64 unified kernel image is assembled.

    python3 pe-add-sections.py STUB OUT NAME=FILE...

Why not objcopy: Debian's x86-64 binutils has no aarch64 PE target (`objdump -i` lists only
pe*-i386 / pe*-x86-64), and llvm-objcopy 14 adds sections without a virtual address (and zeroes
SizeOfImage), which a UEFI loader cannot map. So this does what the x86 recipe does with
`objcopy --add-section --change-section-vma`, by hand: each FILE becomes an initialized,
read-only data section NAME (at most 8 bytes) placed after the stub's sections, its address
aligned to 64 KiB (as images/lib/common.sh boot_files does), its file data aligned to
FileAlignment. The new section headers go into the header padding after the stub's section
table (systemd-stub leaves room for more than the four that a UKI needs). Reproducible:
TimeDateStamp is SOURCE_DATE_EPOCH (default 0) and CheckSum 0 (UEFI does not check it).
Standard library only; any architecture.
"""

from __future__ import annotations

import os
import struct
import sys

SECTION_HEADER = 40
CHARACTERISTICS = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
VMA_ALIGN = 0x10000


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def add_sections(image: bytes, sections: list[tuple[str, bytes]], stamp: int) -> bytes:
    out = bytearray(image)
    if out[:2] != b"MZ":
        raise ValueError("not a PE image (no MZ header)")
    pe = struct.unpack_from("<I", out, 0x3C)[0]
    if out[pe : pe + 4] != b"PE\0\0":
        raise ValueError("not a PE image (no PE signature)")
    coff = pe + 4
    count, _, _, _, opt_size = struct.unpack_from("<HIIIH", out, coff + 2)
    opt = coff + 20
    if struct.unpack_from("<H", out, opt)[0] != 0x20B:
        raise ValueError("not a PE32+ image")
    sect_align, file_align = struct.unpack_from("<II", out, opt + 32)
    size_of_headers = struct.unpack_from("<I", out, opt + 60)[0]
    table = opt + opt_size
    headers = [
        struct.unpack_from("<8sIIIIIIHHI", out, table + i * SECTION_HEADER) for i in range(count)
    ]
    # the new headers must fit before the first section's data and within SizeOfHeaders
    first_data = min((h[4] for h in headers if h[4]), default=size_of_headers)
    end = table + (count + len(sections)) * SECTION_HEADER
    if end > min(first_data, size_of_headers):
        raise ValueError(f"no room for {len(sections)} more section headers")
    vma = align(max(h[2] + max(h[1], h[3]) for h in headers), VMA_ALIGN)
    data_end = max(len(out), max(h[4] + h[3] for h in headers))
    for i, (name, data) in enumerate(sections):
        raw_name = name.encode()
        if len(raw_name) > 8:
            raise ValueError(f"section name {name!r} is longer than 8 bytes")
        offset = align(data_end, file_align)
        raw_size = align(len(data), file_align)
        out[len(out) :] = bytes(offset + raw_size - len(out))
        out[offset : offset + len(data)] = data
        struct.pack_into(
            "<8sIIIIIIHHI",
            out,
            table + (count + i) * SECTION_HEADER,
            raw_name,
            len(data),
            vma,
            raw_size,
            offset,
            0,
            0,
            0,
            0,
            CHARACTERISTICS,
        )
        data_end = offset + raw_size
        image_end = vma + len(data)
        vma = align(image_end, VMA_ALIGN)
    struct.pack_into("<H", out, coff + 2, count + len(sections))
    struct.pack_into("<I", out, coff + 4, stamp)  # TimeDateStamp
    size_of_init = struct.unpack_from("<I", out, opt + 8)[0]
    added = sum(align(len(d), file_align) for _, d in sections)
    struct.pack_into("<I", out, opt + 8, size_of_init + added)  # SizeOfInitializedData
    struct.pack_into("<I", out, opt + 56, align(image_end, sect_align))  # SizeOfImage
    struct.pack_into("<I", out, opt + 64, 0)  # CheckSum
    return bytes(out)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or not all("=" in a for a in argv[3:]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    stub, out = argv[1], argv[2]
    sections = []
    for arg in argv[3:]:
        name, path = arg.split("=", 1)
        with open(path, "rb") as f:
            sections.append((name, f.read()))
    with open(stub, "rb") as f:
        image = f.read()
    result = add_sections(image, sections, int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    with open(out, "wb") as f:
        f.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
