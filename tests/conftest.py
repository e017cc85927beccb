"""The test suite's fixtures, registered once; test modules import helpers from tests.support."""

import pytest

# Helpers in tests/support assert too: rewrite them before anything imports them.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.base",
    "tests.support.catalog",
    "tests.support.replication",
    "tests.support.hostb",
]
