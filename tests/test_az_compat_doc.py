"""docs/az-compat.md is generated from each command's --help (tools/azcompat/gen.py): it must
match what the generator writes today, or a changed option went undocumented."""

from __future__ import annotations

import runpy
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def test_az_compat_page_is_current() -> None:
    gen = runpy.run_path(str(CHECKOUT / "tools" / "azcompat" / "gen.py"))
    head = (CHECKOUT / "tools" / "azcompat" / "head.md").read_text()
    expected = head.rstrip() + "\n\n" + gen["render"]().rstrip() + "\n"
    page = (CHECKOUT / "docs" / "az-compat.md").read_text()
    assert page == expected, "docs/az-compat.md is stale: run python tools/azcompat/gen.py"
