"""Lifecycle of what versions and guests leave on the hosts: where the space went, and garbage."""
