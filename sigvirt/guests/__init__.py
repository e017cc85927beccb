"""Guests: domain XML, seeds, VMs and scale sets on linked clones."""
