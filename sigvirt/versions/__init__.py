"""Image versions: the import gate, publishing, replication, moving bytes, dependents."""
