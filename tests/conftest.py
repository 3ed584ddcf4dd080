"""Shared, session-scoped fixtures: tiny checkpoints are made (and artifacts built) once per run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The default tiny preset (text + vision + audio, every feature), every parameter perturbed."""
    from converters.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, preset="tiny")


@pytest.fixture(scope="session")
def tiny_e4b_ckpt(tmp_path_factory):
    """E4B-shaped miniature (KV-shared tail, a block an E2B-style slice can skip)."""
    from converters.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_e4b") / "ckpt", seed=0, preset="tiny-e4b")
