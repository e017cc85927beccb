"""The test suite's fixtures, registered once; test modules import helpers from tests.support."""

import os
import tempfile
from collections.abc import Iterator

import pytest

# Helpers in tests/support assert too: rewrite them before anything imports them.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.base",
    "tests.support.catalog",
    "tests.support.replication",
    "tests.support.hostb",
]


@pytest.fixture(autouse=True, scope="session")
def _kept_listings_in_a_session_directory() -> Iterator[None]:
    """Long listings are kept (cli/listcache.py) in a directory of the session's own (0700),
    never in $HOME: set for the whole run, and so for every sigvirt the tests start."""
    from sigvirt.cli import listcache

    with tempfile.TemporaryDirectory(prefix="sigvirt-lists-") as folder:
        was = os.environ.get(listcache.ENV)
        os.environ[listcache.ENV] = folder
        yield
        if was is None:
            os.environ.pop(listcache.ENV, None)
        else:
            os.environ[listcache.ENV] = was
