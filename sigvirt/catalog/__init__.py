"""The catalog: names, records and their states, the file store, who may do what."""
