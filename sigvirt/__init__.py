"""sigvirt: Azure Shared Image Gallery rebuilt on libvirt/QEMU."""

__version__ = "0.1.0"
