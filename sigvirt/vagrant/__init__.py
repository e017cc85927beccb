"""Vagrant: gallery versions as vagrant-libvirt boxes, definitions as box catalogs."""
