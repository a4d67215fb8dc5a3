"""Data pipeline: raw files -> canonical tables -> fixed splits on disk -> model-specific views."""
