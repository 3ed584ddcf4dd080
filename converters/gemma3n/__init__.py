"""Gemma 3n: configs, checkpoint reader and export-friendly modules (one file per component)."""
