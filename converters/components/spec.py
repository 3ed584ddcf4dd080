"""What one artifact is made of: a `Component` says how to lower its graph, where its weights
come from, which contract entry it implements and what precision it takes from the recipe.
`converters/export.py` turns any component into a checked artifact; adding an artifact kind is
one Component here plus one entry in edge/format/contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Source:
    """Everything a component is exported from: the model, read lazily."""

    cfg: Any  # converters.gemma3n.config.Gemma3nConfig
    get: Callable  # a checkpoint tensor by name (torch.Tensor)
    graph_dir: Path  # the lowered-graph cache (converters/lowering/cache.py)
    reader: Any = None  # the CheckpointReader, for tables read a row block at a time
    ckpt: Path | None = None  # the checkpoint directory (its tokenizer sizes the LM head)
    context: int = 0
    prefill: tuple[int, ...] = ()
    image_size: tuple[int, int] | None = None  # the vision encoder's input (the preprocessor's)
    verbose: bool = False
    progress: Callable[[int, int, str], None] | None = None  # per spliced weight


@dataclass(frozen=True)
class Lowered:
    """A weight-free graph and the source of the weights the splice streams into it."""

    graph: Path
    weights: Any  # name -> array-like, or a mapping (converters/lowering/sources.py)
    facts: dict = field(default_factory=dict)  # what the manifest records about the graph (cache layers, ...)


def same_recipe(recipe: str) -> str:
    return recipe


def tower_recipe(recipe: str) -> str:
    """The encoders' default precision: int4 wrecks them (audio: 60% relative error at real size;
    vision convs: 55%), so int4 builds keep the towers at int8; others pass through (mixed has its
    own rule for them)."""
    return "int8" if recipe.startswith("int4") else recipe


@dataclass(frozen=True)
class Component:
    key: str  # the manifest's artifact key
    name: str  # what the recipe's rules match on (converters/quant/recipes.py)
    file: str
    kind: str  # LiteRT-LM's model type: the edge/format/contract.py entry the file must satisfy
    modality: str  # text, vision or audio: built when the modality is
    what: str  # the build's stage line
    # The weight-free graph and its weight source; or, for a graph with its few weights baked in,
    # the finished file's bytes.
    lower: Callable[[Source], Lowered | bytes]
    # The parity tolerance of the written file: (source, path, recipe, splice report) -> Tolerance.
    tolerance: Callable[[Source, Path, str, Any], Any]
    external: tuple[tuple[str, str], ...] = ()  # (weight, file): weights kept beside the flatbuffer
    precision: Callable[[str], str] = same_recipe  # the build's recipe -> this component's
    # Convolution graphs: the splice writes fp32, then this quantizes by op: (fp32 file, out, recipe).
    quantize_by_op: Callable[[Path, Path, str], Any] | None = None
    record_weights: bool = True  # the manifest records the splice's weight census (text artifacts)
