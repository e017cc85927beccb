"""What the tests share: fixtures (registered once, in tests/conftest.py) and helpers."""
