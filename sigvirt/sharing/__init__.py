"""Sharing through Unix groups: ACLs the kernel enforces, checks, share use cases."""
