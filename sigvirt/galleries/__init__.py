"""Use cases on galleries and image definitions."""
