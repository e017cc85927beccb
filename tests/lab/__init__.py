"""Lab fixtures for tests that need more than this machine's libvirtd.

See docs/lab-second-host.md.
"""
