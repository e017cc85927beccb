"""Libvirt hosts: the one handle every libvirt call goes through, regions, host chores."""
