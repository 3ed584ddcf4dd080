"""One small spec per artifact (spec.py: `Component`), grouped by modality; `export_component`
(converters/export.py) makes any of them. `all_components()` is every artifact, in manifest order."""

from __future__ import annotations


def all_components() -> tuple:
    """Every component, text first (manifest order); imported on use (torch, timm)."""
    from converters.components import audio, text, vision

    return (*text.COMPONENTS, *vision.COMPONENTS, *audio.COMPONENTS)


def components_for(modalities) -> tuple:
    """The components a build with these modalities makes."""
    return tuple(c for c in all_components() if c.modality in modalities)
