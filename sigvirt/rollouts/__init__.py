"""Rolling versions out to scale sets: the model (`model`), health (`health`), reimaging one
instance with undo (`reimage`), rolling upgrades (`rolling`), automatic upgrades
(`automatic`), the boot-test gate (`gate`) and retiring a version (`retire`)."""
